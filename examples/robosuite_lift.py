"""Lift a cube with robosuite through gym-remote, with a scripted policy: a video and the success rate.

robosuite 1.5 runs in its own venv; this script needs only gym-remote (and tqdm, imageio:
``pip install '/path/to/gym-remote[examples]'``)::

    gym-remote setup robosuite                  # once: makes the robosuite venv
    python examples/robosuite_lift.py --episodes 3 --video lift.mp4

The scripted policy (``gym-remote eval --env-name Lift --policy lift`` runs the same one over
many sessions) reads ``gripper_to_cube_pos`` from the observation: move above the cube,
descend, close the gripper, lift.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import imageio
import numpy as np
from tqdm import tqdm

import gym_remote  # noqa: F401  (registers remote/Robosuite-v0)
from gym_remote.evaluation.policies import ScriptedLift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument(
        "--video", default="robosuite_lift.mp4", help="where to write the video ('' for none)"
    )
    parser.add_argument("--address", default=None, help="a gym-remote server (default: a private one)")
    arguments = parser.parse_args()

    env = gym.make(
        "remote/Robosuite-v0",
        address=arguments.address,
        env_name="Lift",
        robots="Panda",
        camera_names=["agentview"],
        camera_height=84,
        camera_width=84,
        horizon=arguments.max_steps,
    )
    frames, successes = [], 0
    with tqdm(total=arguments.episodes * arguments.max_steps, unit="step") as progress:
        for episode in range(arguments.episodes):
            observation, info = env.reset(seed=episode)
            policy = ScriptedLift()  # gym-remote eval's `--policy lift`; it acts on batches of observations
            policy.reset(0)
            for step in range(arguments.max_steps):
                batch_of_one = {key: value[np.newaxis] for key, value in observation.items()}
                action = policy.act(batch_of_one, [0])[0]
                observation, reward, terminated, truncated, info = env.step(action)
                if arguments.video:
                    frames.append(env.render())
                progress.update(1)
                if terminated or truncated:
                    progress.update(arguments.max_steps - step - 1)
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
