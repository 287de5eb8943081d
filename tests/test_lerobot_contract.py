"""Every call `lerobot-eval` makes on its envs, made without LeRobot, against a real server.

LeRobot wraps each task's envs in SyncVectorEnv or AsyncVectorEnv and then calls:
``call("task_description")`` (falling back to ``task``), ``call("_max_episode_steps")``,
``render()`` with ``metadata["render_fps"]`` for its videos, ``reset(seed=[...], options={...})``
with options the env does not know, ``final_info["is_success"]`` in SAME_STEP mode and
``info["is_success"]`` in NEXT_STEP mode, ``close()`` twice, and a batched observation space.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

import gym_remote  # noqa: F401
from gym_remote.simulators import recorded_routes

NUM_ENVS = 2
EPISODE_LENGTH = 3


def make_env(env_id: str, address: str, kwargs: dict) -> gym.Env:
    return gym.make(env_id, address=address, disable_env_checker=True, **kwargs)


CASES = {
    "image-env": (
        "remote/Env-v0",
        {"env_id": "gym_remote_testing/ImageEnv-v0", "max_episode_steps": EPISODE_LENGTH},
    ),
    "libero": (
        "remote/Libero-v0",
        {
            "task_suite": "libero_goal",
            "task_id": 8,
            "episode_length": EPISODE_LENGTH,
            "observation_height": 64,
            "observation_width": 64,
        },
    ),
}
VECTORIZERS = {
    "sync": lambda fns, mode: SyncVectorEnv(fns, autoreset_mode=mode),
    "async-forkserver": lambda fns, mode: AsyncVectorEnv(fns, context="forkserver", autoreset_mode=mode),
}
# LIBERO in subprocess vector envs on a busy machine: the time it needs, not the default two minutes.
pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize(
    "mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda mode: mode.value
)
@pytest.mark.parametrize("vectorizer", list(VECTORIZERS))
@pytest.mark.parametrize("case", list(CASES))
def test_the_calls_lerobot_eval_makes(server, case, vectorizer, mode):
    if case == "libero" and "libero" not in {route.name for route in recorded_routes()}:
        pytest.skip("run `gym-remote setup libero` (`make test` does)")
    env_id, kwargs = CASES[case]
    factory = functools.partial(make_env, env_id, server.address, kwargs)
    envs = VECTORIZERS[vectorizer]([factory] * NUM_ENVS, mode)

    descriptions = envs.call("task_description")
    assert len(descriptions) == NUM_ENVS and all(isinstance(text, str) and text for text in descriptions)
    if case == "libero":
        assert envs.call("task") == ("put_the_bowl_on_the_plate",) * NUM_ENVS  # LeRobot's fallback
    assert envs.call("_max_episode_steps") == (EPISODE_LENGTH,) * NUM_ENVS
    assert envs.metadata["render_fps"] > 0

    observations, infos = envs.reset(seed=[7, 8], options={"an_option_the_env_does_not_know": 1})
    assert observations in envs.observation_space
    frames = envs.render()
    assert len(frames) == NUM_ENVS and frames[0].dtype == np.uint8 and frames[0].ndim == 3

    successes_seen = 0
    for _ in range(EPISODE_LENGTH + 1):
        observations, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample() * 0)
        assert observations in envs.observation_space
        if mode == AutoresetMode.SAME_STEP and "final_info" in infos:
            successes_seen += int(np.sum(infos["final_info"]["_is_success"]))
            assert infos["final_info"]["is_success"].dtype == np.bool_
        if mode == AutoresetMode.NEXT_STEP and "is_success" in infos:
            successes_seen += int(np.sum(infos["_is_success"]))
    assert successes_seen >= NUM_ENVS, "every env reported is_success"
    envs.close()
    envs.close()
