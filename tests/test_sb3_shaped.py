"""The most ordinary Stable-Baselines3 script, against envs with no address (private servers):
check the env, train on a subprocess vector env, then evaluate with the first env again.

Issue 24 item 2 broke its last step: the first env's session had died while the vector env
trained. Stable-Baselines3 needs torch, so its own run is in LeRobot's venv (`make test-lerobot`);
the same shape with Gymnasium's own tools runs everywhere.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import gym_remote  # noqa: F401  (registers remote/Env-v0)

# SB3 and torch start slowly on a busy machine; the rest is seconds.
pytestmark = pytest.mark.timeout(600)


def make_cartpole() -> gym.Env:
    return gym.make("remote/Env-v0", env_id="CartPole-v1")


def test_check_env_then_a_subprocess_vector_env_then_the_first_env_again():
    env = make_cartpole()
    try:
        check_env(env.unwrapped, skip_render_check=True)  # renders need pygame, not here
        vector = gym.vector.AsyncVectorEnv([make_cartpole, make_cartpole], context="forkserver")
        try:
            vector.reset(seed=0)
            for _ in range(200):
                vector.step(vector.action_space.sample())
        finally:
            vector.close()
        observation, _ = env.reset(seed=1)
        for _ in range(50):
            observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                observation, _ = env.reset()
        assert observation.shape == (4,)
    finally:
        env.close()


def test_stable_baselines3_check_env_ppo_on_subprocesses_then_evaluate_policy():
    pytest.importorskip("stable_baselines3", reason="Stable-Baselines3 lives in LeRobot's venv (its torch)")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import SubprocVecEnv

    env = make_cartpole()
    try:
        sb3_check_env(env)
        training = SubprocVecEnv([make_cartpole, make_cartpole])
        try:
            model = PPO("MlpPolicy", training, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
            model.learn(total_timesteps=512)
        finally:
            training.close()
        mean_reward, _ = evaluate_policy(model, env, n_eval_episodes=2)
        assert np.isfinite(mean_reward) and mean_reward > 0  # CartPole gives 1 a step
    finally:
        env.close()
