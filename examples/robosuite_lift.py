"""Lift a cube with robosuite through gym-remote, with a scripted policy: the success rate and a video.

robosuite 1.5 runs in its own venv; this script needs only gym-remote (and PyAV for the video:
``pip install '/path/to/gym-remote[eval]'``)::

    gym-remote setup robosuite                  # once: makes the robosuite venv
    python examples/robosuite_lift.py --episodes 3 --output-dir lift

The scripted policy (``gym-remote eval --env-name Lift --policy lift`` runs the same one) reads
``gripper_to_cube_pos`` from the observation: move above the cube, descend, close the gripper,
lift.
"""

from __future__ import annotations

import argparse

from gym_remote.evaluation import evaluate, robosuite_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument(
        "--output-dir", default="robosuite_lift", help="results and the first episode's video"
    )
    parser.add_argument("--address", default=None, help="a gym-remote server (default: a private one)")
    arguments = parser.parse_args()

    task = robosuite_task("Lift", robots="Panda", use_camera_obs=False, horizon=arguments.max_steps)
    evaluation = evaluate(
        [task],
        "lift",
        episodes=arguments.episodes,
        address=arguments.address,
        output_dir=arguments.output_dir,
        videos_per_task=1,
    )
    print(evaluation.table())
    successes = sum(result.success for result in evaluation.episodes)
    print(f"success rate: {successes}/{arguments.episodes} = {successes / arguments.episodes:.2f}")


if __name__ == "__main__":
    main()
