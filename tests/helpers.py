"""Small helpers shared by the tests: bounded waits on real processes, observation checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
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


CRASHING_RECORDER = textwrap.dedent(
    """
    import sys
    import gym_remote.testing  # registers the image env
    import gymnasium as gym
    import numpy as np
    from gym_remote.recording import RecordEpisodes

    made = gym.make("gym_remote_testing/ImageEnv-v0", episode_length=6)
    env = RecordEpisodes(made, sys.argv[1], sys.argv[2])
    for _ in range(2):
        env.reset(seed=0)
        while not env.step(np.zeros(7, np.float32))[3]:
            pass
    env.recorder.flush()
    print("written", flush=True)
    env.reset(seed=0)
    while True:  # mid-episode until killed
        env.step(np.zeros(7, np.float32))
        env.reset(seed=0) if env.unwrapped._steps >= 5 else None
    """
)


def record_then_kill(directory: Path, format: str) -> None:
    """Runs a recording of gym-remote's image env that ends two episodes of 6 frames, then
    SIGKILLs it mid-episode."""
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RECORDER, str(directory), format],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
