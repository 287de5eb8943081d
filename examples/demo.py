"""The demo: serve an env, run episodes against it, print steps/s.

Starts a real ``gym-remote serve`` on loopback, then drives CartPole-v1 and a 393 KB
two-camera image env through ``gym.make("remote/Env-v0", ...)``, next to the same envs made
locally. Run it with ``make demo`` or ``python examples/demo.py``.
"""

from __future__ import annotations

import time

import gymnasium as gym

import gym_remote  # noqa: F401  (registers remote/Env-v0)
from gym_remote.testing import ServerProcess

EPISODES = 20


def run_episodes(env: gym.Env, episodes: int) -> tuple[int, float, float]:
    """Runs random episodes; returns steps taken, mean return and seconds spent."""
    env.action_space.seed(0)
    steps, total_return = 0, 0.0
    start = time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total_return += float(reward)
            steps += 1
            done = terminated or truncated
    return steps, total_return / episodes, time.perf_counter() - start


def main() -> None:
    with ServerProcess("--import", "gym_remote.testing") as server:
        print(f"server: gym-remote serve --address {server.address} --import gym_remote.testing")
        for env_id in ("CartPole-v1", "gym_remote_testing/ImageEnv-v0"):
            local = gym.make(env_id)
            remote = gym.make("remote/Env-v0", env_id=env_id, address=server.address)
            for name, env in (("local ", local), ("remote", remote)):
                steps, mean_return, seconds = run_episodes(env, EPISODES)
                print(
                    f"{name} {env_id:32s} {EPISODES} episodes, {steps:5d} steps, "
                    f"mean return {mean_return:7.2f}, {steps / seconds:8.0f} steps/s"
                )
                env.close()


if __name__ == "__main__":
    main()
