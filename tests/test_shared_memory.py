"""The same-host fast path: large replies through a shared memory segment, never leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
from gym_remote import RemoteEnv, RemoteVectorEnv, WorkerCrashed
from gym_remote.batches import SharedBatches
from gym_remote.sharedmem import ReplyBuffers, available
from gym_remote.step.layout import in_reply_buffer
from tests.helpers import all_gone, wait_for, worker_pids

pytestmark = pytest.mark.skipif(not available(), reason="shared memory needs Linux's memfd_create")

IMAGE_ENV = "gym_remote_testing/ImageEnv-v0"


def mapped_segments(pid: int | str = "self") -> int:
    """How many gym-remote segments a process has mapped."""
    with open(f"/proc/{pid}/maps") as maps:
        return sum("memfd:gym-remote" in line for line in maps)


def in_shared_memory(array: np.ndarray) -> bool:
    """Whether ``array``'s memory lies in a gym-remote segment this process has mapped."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:gym-remote" in line:
                start, end = (int(part, 16) for part in line.split()[0].split("-"))
                if start <= address < end:
                    return True
    return False


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
        assert shared.gym_remote.uses_shared_memory and not plain.gym_remote.uses_shared_memory
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


def test_step_observations_lie_in_reply_buffers_and_kept_ones_are_never_overwritten(server):
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    local = gym.make(IMAGE_ENV)
    try:
        env.reset(seed=5)
        local.reset(seed=5)
        kept, expected = [], []
        for step in range(12):
            action = local.action_space.sample()
            result, local_result = env.step(action), local.step(action)
            assert data_equivalence(result, local_result, exact=True)
            image = result[0]["pixels"]["image"]
            assert image.flags.writeable
            # Dropped observations free their buffer: every step's lies in one, until the caller
            # keeps them all (from step 6 on): then they come in the replies.
            assert in_shared_memory(image) == (step < 6 + ReplyBuffers.COUNT)
            if step >= 6:
                kept.append(result[0])
                expected.append(local_result[0])
        env.close()  # what the caller keeps outlives the session, its reply buffers included
        assert data_equivalence(kept, expected, exact=True)
    finally:
        env.close()
        local.close()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"buffers": []}, "a list of 1 to 3 buffers"),
        ({"buffers": "segment"}, "a list of 1 to 3 buffers"),
        ({"buffers": [{"pid": 1, "fd": 999, "token": "00"}]}, "use_reply_buffers: "),
    ],
)
def test_bad_reply_buffers_are_refused_with_a_typed_error(server, monkeypatch, fields, message):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")  # no reply buffers of the client's own
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    try:
        env.reset(seed=0)
        connection = env._connect()
        with pytest.raises(gym_remote.InvalidCall, match=message):
            connection.request("use_reply_buffers", **fields)
        # A step naming a reply buffer the session does not have: refused, the session goes on.
        with pytest.raises(gym_remote.InvalidCall, match="reply buffer 2; this session has 0"):
            connection.send("step", {"action": np.zeros(7, np.float32)}, in_reply_buffer(2))
            connection.receive()
        assert env.step(np.zeros(7, np.float32))[0]["pixels"]["image"][0, 0, 0] == 1
    finally:
        env.close()


def test_reply_buffers_are_given_once_and_only_with_a_fixed_layout(server):
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    plain = RemoteEnv("gym_remote_testing/RichSpaces-v0", address=server.address)
    try:
        env.reset(seed=0)
        env.step(np.zeros(7, np.float32))  # the first step gives the worker the buffers
        with pytest.raises(gym_remote.InvalidCall, match="already has reply buffers"):
            env._connect().request("use_reply_buffers", buffers=[])
        with pytest.raises(gym_remote.InvalidCall, match="offered no fixed layout"):
            plain._connect().request("use_reply_buffers", buffers=[])
    finally:
        env.close()
        plain.close()


def test_replies_larger_than_the_segment_grow_it(server):
    env = RemoteEnv(IMAGE_ENV, address=server.address)
    try:
        env.reset(seed=0)
        chunk = env.step_chunk(np.zeros((8, 7), np.float32), all_observations=True)  # 3.1 MB
        assert env.gym_remote.uses_shared_memory
        assert [observation["pixels"]["image"][0, 0, 0] for observation in chunk.observations] == list(
            range(1, 9)
        )
        assert env.step(np.zeros(7, np.float32))[0]["pixels"]["image"][0, 0, 0] == 9
    finally:
        env.close()


def test_vector_envs_use_it_too(server):
    envs = RemoteVectorEnv(IMAGE_ENV, 2, address=server.address)
    try:
        assert all(env.gym_remote.uses_shared_memory for env in envs.sessions)
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
    env.step(np.zeros(7, np.float32))  # and the client's reply buffers, from the first step on
    assert mapped_segments() == mapped_segments(worker) + before == before + 1 + ReplyBuffers.COUNT
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


def test_a_kept_view_of_a_shared_batch_is_never_overwritten(server):
    envs = RemoteVectorEnv(IMAGE_ENV, 2, address=server.address, envs_per_worker=2)
    try:
        assert envs.uses_shared_batches
        envs.reset(seed=0)
        observations, *_ = envs.step(envs.action_space.sample())
        row = observations["pixels"]["image"][1]  # a view of the batch, kept without the batch
        expected = row.copy()
        del observations
        for _ in range(2 * SharedBatches.COUNT):
            envs.step(envs.action_space.sample())
        assert np.array_equal(row, expected)
    finally:
        envs.close()


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
        ("gym_remote.RemoteEnv({env!r}, address={address!r})", "env.gym_remote.uses_shared_memory", 1),
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
