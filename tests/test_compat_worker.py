"""Workers under an old simulator-side stack (gymnasium 0.29, numpy 1.x), as LIBERO installs have.

`make test` builds that interpreter and points GYM_REMOTE_COMPAT_PYTHON at it.
"""

from __future__ import annotations

import os
import subprocess

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import gym_remote

COMPAT_PYTHON = os.environ.get("GYM_REMOTE_COMPAT_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not os.path.exists(COMPAT_PYTHON),
    reason="set GYM_REMOTE_COMPAT_PYTHON to a gymnasium 0.29 interpreter (`make test` does)",
)


@pytest.fixture(scope="module")
def compat_server():
    from gym_remote.testing import ServerProcess

    with ServerProcess("--import", "gym_remote.testing", "--python", f"*={COMPAT_PYTHON}") as server:
        yield server


def test_the_compat_interpreter_is_old():
    versions = subprocess.run(
        [
            COMPAT_PYTHON,
            "-c",
            "import sys, gymnasium, numpy; print(gymnasium.__version__, numpy.__version__, sys.version)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert versions[0].startswith("0.29") and versions[1].startswith("1.")
    print(f"worker interpreter: Python {versions[2]}, gymnasium {versions[0]}, numpy {versions[1]}")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "gym_remote_testing/RichSpaces-v0"])
def test_check_env_on_an_old_worker(compat_server, env_id):
    env = gym.make("remote/Env-v0", env_id=env_id, address=compat_server.address)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_old_worker_matches_a_local_env(compat_server):
    local = gym.make("Pendulum-v1")
    remote = gym_remote.RemoteEnv("Pendulum-v1", address=compat_server.address)
    try:
        assert data_equivalence(local.reset(seed=3), remote.reset(seed=3), exact=True)
        for step in range(250):
            action = np.array([np.sin(step)], dtype=np.float32)
            local_result, remote_result = local.step(action), remote.step(action)
            # Another numpy and gymnasium may round the last bits differently.
            assert np.allclose(local_result[0], remote_result[0], atol=1e-5)
            assert np.isclose(local_result[1], remote_result[1])
            assert local_result[2:] == remote_result[2:]
        assert remote.get_wrapper_attr("max_speed") == 8
    finally:
        local.close()
        remote.close()


def test_old_worker_takes_and_returns_integers_beyond_64_bits(compat_server):
    local = gym.make("gym_remote_testing/VaryingSteps-v0")
    remote = gym_remote.RemoteEnv("gym_remote_testing/VaryingSteps-v0", address=compat_server.address)
    try:
        for seed, options in [(2**64 + 3, None), (7, {"level": -(2**70), 2**65: (2**100,)})]:
            local_result = local.reset(seed=seed, options=options)
            assert data_equivalence(local_result, remote.reset(seed=seed, options=options), exact=True)
            assert remote.np_random.integers(1 << 30) == local.np_random.integers(1 << 30)
    finally:
        local.close()
        remote.close()


def test_old_worker_sends_large_replies_through_shared_memory(compat_server):
    env = gym_remote.RemoteEnv("gym_remote_testing/ImageEnv-v0", address=compat_server.address)
    try:
        env.reset(seed=0)
        assert env.gym_remote.uses_shared_memory
        chunk = env.step_chunk(np.zeros((6, 7), np.float32), all_observations=True)  # grows the segment
        pixels = [observation["pixels"]["image2"][5, 5, 0] for observation in chunk.observations]
        assert pixels == list(range(254, 248, -1))
        # Steps: into the client's reply buffers, and through the worker's segment once the
        # caller holds them all; either way, what the caller keeps stays as it came.
        kept = [env.step(np.zeros(7, np.float32))[0]["pixels"]["image"] for _ in range(5)]
        assert [image[0, 0, 0] for image in kept] == list(range(7, 12))
        assert all(image.flags.writeable for image in kept)
    finally:
        env.close()


def test_old_workers_host_several_envs_and_write_into_shared_batches(compat_server):
    import gym_remote.testing  # noqa: F401

    env_id = "gym_remote_testing/ImageEnv-v0"
    local = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * 3)
    remote = gym_remote.RemoteVectorEnv(env_id, 3, address=compat_server.address, envs_per_worker=2)
    try:
        assert remote.uses_shared_batches
        assert data_equivalence(local.reset(seed=1), remote.reset(seed=1), exact=True)
        actions = np.zeros((3, 7), np.float32)
        for _ in range(3):
            assert data_equivalence(local.step(actions), remote.step(actions), exact=True)
    finally:
        local.close()
        remote.close()
