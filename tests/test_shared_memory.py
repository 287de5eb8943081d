"""The same-host fast path: large replies through a shared memory segment, never leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
from gym_remote import RemoteEnv, RemoteVectorEnv, WorkerCrashed
from gym_remote.batches import SharedBatches
from gym_remote.sharedmem import available
from tests.helpers import all_gone, wait_for, worker_pids

pytestmark = pytest.mark.skipif(not available(), reason="shared memory needs Linux's memfd_create")

IMAGE_ENV = "gym_remote_testing/ImageEnv-v0"


def mapped_segments(pid: int | str = "self") -> int:
    """How many gym-remote segments a process has mapped."""
    with open(f"/proc/{pid}/maps") as maps:
        return sum("memfd:gym-remote" in line for line in maps)


def rollout(env, steps: int = 6) -> list:
    env.action_space.seed(3)
    results = [env.reset(seed=3)]
    results += [env.step(env.action_space.sample()) for _ in range(steps)]
    return results


def test_a_loopback_session_takes_large_replies_through_shared_memory(server, monkeypatch):
    shared = RemoteEnv(IMAGE_ENV, address=server.address)
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")
    plain = RemoteEnv(IMAGE_ENV, address=server.address)
    try:
        assert shared.uses_shared_memory and not plain.uses_shared_memory
        through_memory, through_socket = rollout(shared), rollout(plain)
        assert data_equivalence(through_memory, through_socket, exact=True)
        # Observations a caller keeps are its own: the next reply does not overwrite them.
        first = through_memory[1][0]["pixels"]["image"]
        assert first[0, 0, 0] == 1 and through_memory[2][0]["pixels"]["image"][0, 0, 0] == 2
        first[:] = 0
        assert through_memory[2][0]["pixels"]["image"][0, 0, 0] == 2
    finally:
        shared.close()
        plain.close()


def test_replies_larger_than_the_segment_grow_it(server):
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    try:
        env.reset(seed=0)
        chunk = env.step_chunk(np.zeros((8, 7), np.float32), all_observations=True)  # 3.1 MB
        assert env.uses_shared_memory
        assert [observation["pixels"]["image"][0, 0, 0] for observation in chunk.observations] == list(
            range(1, 9)
        )
        assert env.step(np.zeros(7, np.float32))[0]["pixels"]["image"][0, 0, 0] == 9
    finally:
        env.close()


def test_vector_envs_use_it_too(server):
    envs = RemoteVectorEnv(IMAGE_ENV, 2, address=server.address)
    try:
        assert all(env.uses_shared_memory for env in envs.sessions)
        envs.reset(seed=0)
        observations, *_ = envs.step(envs.action_space.sample())
        assert observations["pixels"]["image"][:, 0, 0, 0].tolist() == [1, 1]
    finally:
        envs.close()


def test_no_segment_remains_after_close(start_server):
    server = start_server("--import", "gym_remote.testing")
    before = mapped_segments()  # sessions other tests in this process may still hold
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    env.reset(seed=0)
    (worker,) = worker_pids(server.pid)
    assert mapped_segments() == before + 1 and mapped_segments(worker) == 1
    env.close()
    assert mapped_segments() == before
    assert all_gone({worker}), "the worker, the segment's last holder, did not end"
    # Segments are anonymous: none ever has a name in /dev/shm (other tests' semaphores come and go).
    assert not [name for name in os.listdir("/dev/shm") if "gym" in name]


def test_shared_batches_leave_no_segment_after_close_but_kept_batches_stay_valid(start_server):
    server = start_server("--import", "gym_remote.testing")
    before = mapped_segments()
    envs = RemoteVectorEnv(IMAGE_ENV, 2, address=server.address, envs_per_worker=2)
    assert envs.uses_shared_batches
    (worker,) = worker_pids(server.pid)
    assert mapped_segments(worker) == 1 + SharedBatches.COUNT  # its own, and the client's batches
    assert mapped_segments() == before + 1 + SharedBatches.COUNT
    observations, _ = envs.reset(seed=0)
    kept = observations["pixels"]["image"]
    del observations
    envs.close()
    assert all_gone({worker})
    assert mapped_segments() == before + 1, "only the batch still held stays mapped"
    assert (kept == 0).all()
    del kept
    assert mapped_segments() == before


def test_no_segment_remains_after_the_worker_is_killed(start_server):
    server = start_server("--import", "gym_remote.testing")
    before = mapped_segments()
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    env.reset(seed=0)
    (worker,) = worker_pids(server.pid)
    os.kill(worker, signal.SIGKILL)
    assert all_gone({worker})
    with pytest.raises(WorkerCrashed):
        env.step(np.zeros(7, np.float32))
    assert mapped_segments() == before  # the failed call released the session and its segment
    env.close()


@pytest.mark.parametrize(
    ("make", "check", "segments_in_worker"),
    [
        ("gym_remote.RemoteEnv({env!r}, address={address!r})", "env.uses_shared_memory", 1),
        (
            "gym_remote.RemoteVectorEnv({env!r}, 2, address={address!r}, envs_per_worker=2)",
            "env.uses_shared_batches",
            1 + SharedBatches.COUNT,
        ),
    ],
    ids=["env", "vector env"],
)
def test_no_segment_remains_after_the_client_is_killed(start_server, make, check, segments_in_worker):
    server = start_server("--import", "gym_remote.testing")
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, gym_remote\n"
            f"env = {make.format(env=IMAGE_ENV, address=server.address)}\n"
            "env.reset(seed=0)\n"
            f"assert {check}\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        (worker,) = worker_pids(server.pid)
        assert mapped_segments(worker) == segments_in_worker
        client.kill()
        client.wait(timeout=15)
        # The worker sees its client go, ends, and with it the segment's last reference.
        wait_for(lambda: not worker_pids(server.pid), what="the worker to end after its client died")
        assert all_gone({worker})
    finally:
        client.kill()
        client.wait(timeout=15)


def test_an_unoffered_use_shared_memory_call_is_a_typed_error(server, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")
    env = RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        with pytest.raises(gym_remote.InvalidCall, match="offered no shared memory"):
            env._connect().request("use_shared_memory")
        assert env.step(0)[0].shape == (4,)  # the session carries on
    finally:
        env.close()
