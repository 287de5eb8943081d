"""Small helpers shared by the tests: bounded waits on real processes, observation checks."""

from __future__ import annotations

import time
from typing import Any, Callable

import gymnasium as gym
import psutil


def descendants() -> set[int]:
    """The pids of this process's children, grandchildren and so on."""
    return {child.pid for child in psutil.Process().children(recursive=True)}


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


def assert_keys_in_space_order(observation: Any, space: gym.Space, path: str = "observation") -> None:
    """Asserts that every dict in ``observation`` lists its keys in its Dict space's order (the
    order of the space's samples, and what fixed-layout steps need)."""
    if isinstance(space, gym.spaces.Dict):
        assert list(observation) == list(space.spaces), (
            f"{path} has keys {list(observation)}, its space {list(space.spaces)}"
        )
        for key, subspace in space.spaces.items():
            assert_keys_in_space_order(observation[key], subspace, f"{path}[{key!r}]")
    elif isinstance(space, gym.spaces.Tuple):
        for index, (item, subspace) in enumerate(zip(observation, space.spaces)):
            assert_keys_in_space_order(item, subspace, f"{path}[{index}]")
