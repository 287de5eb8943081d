"""Small helpers shared by the tests: bounded waits on real processes."""

from __future__ import annotations

import time
from typing import Callable

import psutil


def worker_pids(server_pid: int) -> set[int]:
    """The pids of a server's worker processes (its children)."""
    try:
        return {child.pid for child in psutil.Process(server_pid).children()}
    except psutil.NoSuchProcess:
        return set()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Polls ``predicate`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def all_gone(pids: set[int], timeout: float = 15.0) -> bool:
    """Waits (bounded) until none of ``pids`` runs; returns True when they are all gone."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not [process for process in alive if process.status() != psutil.STATUS_ZOMBIE]
