"""Gymnasium's vector envs over RemoteEnv give the same batches as over local envs."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

import gym_remote  # noqa: F401  (registers remote/Env-v0)

NUM_ENVS = 2
STEPS = 150


def local_factory(env_id):
    return lambda: gym.make(env_id)


def make_remote_env(env_id, address):
    return gym.make("remote/Env-v0", env_id=env_id, address=address)


def remote_factory(env_id, address):
    # A module-level function travels to spawned workers by reference, so they import this
    # module and with it gym_remote; test_lambda_factories_in_a_script covers plain lambdas.
    return functools.partial(make_remote_env, env_id, address)


def run(vector_env, steps=STEPS):
    vector_env.action_space.seed(11)
    batches = [vector_env.reset(seed=[3 + index for index in range(vector_env.num_envs)])]
    for _ in range(steps):
        batches.append(vector_env.step(vector_env.action_space.sample()))
    names = vector_env.call("spec")
    vector_env.close()
    return batches, names


VECTORIZERS = [
    ("sync", lambda fns, mode: SyncVectorEnv(fns, autoreset_mode=mode)),
    ("async-spawn", lambda fns, mode: AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)),
    ("async-forkserver", lambda fns, mode: AsyncVectorEnv(fns, context="forkserver", autoreset_mode=mode)),
    ("async-fork", lambda fns, mode: AsyncVectorEnv(fns, context="fork", autoreset_mode=mode)),
]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda m: m.value)
@pytest.mark.parametrize("vectorizer", VECTORIZERS, ids=lambda v: v[0])
def test_vector_batches_equal_local(server, vectorizer, mode):
    _, make_vector = vectorizer
    env_id = "CartPole-v1"
    local_batches, _ = run(SyncVectorEnv([local_factory(env_id)] * NUM_ENVS, autoreset_mode=mode))
    remote_batches, specs = run(make_vector([remote_factory(env_id, server.address)] * NUM_ENVS, mode))
    assert len(local_batches) == len(remote_batches)
    finished = 0
    for index, (local, remote) in enumerate(zip(local_batches, remote_batches)):
        assert data_equivalence(local, remote, exact=True), f"batch {index} differs"
        if index:
            finished += int(np.sum(local[2] | local[3]))
    assert finished >= 1, "the run must cross episode boundaries"
    assert all(spec.max_episode_steps == 500 for spec in specs)


def test_async_vector_env_reaches_remote_attributes(server):
    import gym_remote.testing  # noqa: F401

    env_id = "gym_remote_testing/ImageEnv-v0"
    vector_env = AsyncVectorEnv([remote_factory(env_id, server.address)] * NUM_ENVS, context="forkserver")
    try:
        assert vector_env.call("task_description") == ("look at the two cameras",) * NUM_ENVS
        assert vector_env.get_attr("episode_length") == (50,) * NUM_ENVS
        vector_env.set_attr("episode_length", [4, 5])
        assert vector_env.get_attr("episode_length") == (4, 5)
        observations, _ = vector_env.reset(seed=0)
        assert observations["pixels"]["image"].shape == (NUM_ENVS, 256, 256, 3)
    finally:
        vector_env.close()


LAMBDA_SCRIPT = """
import sys
import gymnasium as gym
import numpy as np
import gym_remote

address, context = sys.argv[1], sys.argv[2]
if __name__ == "__main__":
    remote = gym.vector.AsyncVectorEnv(
        [lambda: gym.make("remote/Env-v0", env_id="CartPole-v1", address=address)] * 2, context=context
    )
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    remote_observations, _ = remote.reset(seed=[1, 2])
    local_observations, _ = local.reset(seed=[1, 2])
    assert np.array_equal(remote_observations, local_observations)
    for _ in range(30):
        actions = np.array([0, 1])
        assert np.array_equal(remote.step(actions)[0], local.step(actions)[0])
    remote.close()
    print("OK", context)
"""


@pytest.mark.parametrize("context", ["spawn", "forkserver", "fork"])
def test_lambda_factories_in_a_script(server, tmp_path, context):
    """The way users write it: a script that imports gym_remote and passes plain lambdas."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(LAMBDA_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), server.address, context],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK {context}"


def test_remote_errors_cross_async_vector_env_intact(server):
    import gym_remote.testing  # noqa: F401
    from gym_remote import RemoteError
    from gym_remote.testing import FAULTS

    vector_env = AsyncVectorEnv(
        [remote_factory("gym_remote_testing/Faulty-v0", server.address)] * NUM_ENVS, context="forkserver"
    )
    try:
        vector_env.reset(seed=0)
        with pytest.raises(RemoteError, match="the simulator exploded") as caught:
            vector_env.step(np.array([FAULTS.index("raise"), -1]))
        assert caught.value.remote_type == "builtins.RuntimeError"
        assert "the simulator exploded" in caught.value.remote_traceback
    finally:
        vector_env.close(terminate=True)
