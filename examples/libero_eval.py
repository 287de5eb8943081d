"""Evaluate a policy on a LIBERO task through gym-remote: episodes, a video, the success rate.

LIBERO runs in its own venv; this script needs only gym-remote (and tqdm, imageio for the
progress bar and the video: ``pip install '/path/to/gym-remote[examples]'``)::

    gym-remote setup libero                     # once: makes the LIBERO venv
    python examples/libero_eval.py --suite libero_spatial --task 0 --episodes 3 --video libero.mp4

Without ``--address`` a private server starts by itself and runs LIBERO in that venv. The
policy here is random (or ``--policy still``); put yours in ``choose_action``.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import imageio
import numpy as np
from tqdm import tqdm

import gym_remote  # noqa: F401  (registers remote/Libero-v0)


def choose_action(policy: str, observation: dict, action_space: gym.spaces.Box) -> np.ndarray:
    """Your policy goes here: observation["pixels"]["image"], ["image2"] and ["robot_state"] in."""
    if policy == "still":
        return np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
    return action_space.sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO task suite")
    parser.add_argument("--task", type=int, default=0, help="task id within the suite")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="steps per episode (default: the suite's)"
    )
    parser.add_argument("--policy", choices=["random", "still"], default="random")
    parser.add_argument("--video", default="libero_eval.mp4", help="where to write the video ('' for none)")
    parser.add_argument("--size", type=int, default=256, help="camera image size in pixels")
    parser.add_argument("--address", default=None, help="a gym-remote server (default: a private one)")
    arguments = parser.parse_args()

    env = gym.make(
        "remote/Libero-v0",
        address=arguments.address,
        task_suite=arguments.suite,
        task_id=arguments.task,
        episode_length=arguments.max_steps,
        observation_height=arguments.size,
        observation_width=arguments.size,
    )
    print(f"task: {env.get_wrapper_attr('task_description')}")
    env.action_space.seed(0)
    frames, successes = [], 0
    steps_per_episode = env.get_wrapper_attr("_max_episode_steps")
    with tqdm(total=arguments.episodes * steps_per_episode, unit="step") as progress:
        for episode in range(arguments.episodes):
            observation, info = env.reset(seed=episode)
            for step in range(steps_per_episode):
                action = choose_action(arguments.policy, observation, env.action_space)
                observation, reward, terminated, truncated, info = env.step(action)
                if arguments.video:
                    frames.append(env.render())
                progress.update(1)
                if terminated or truncated:
                    progress.update(steps_per_episode - step - 1)
                    break
            successes += bool(info["is_success"])
            progress.set_postfix(success_rate=f"{successes / (episode + 1):.2f}")
    env.close()
    if arguments.video and frames:
        imageio.mimsave(arguments.video, frames, fps=20)
        print(f"video: {arguments.video} ({len(frames)} frames)")
    print(f"success rate: {successes}/{arguments.episodes} = {successes / arguments.episodes:.2f}")


if __name__ == "__main__":
    main()
