"""Evaluate a policy on LIBERO tasks through gym-remote: success rates, a table, videos.

LIBERO runs in its own venv; this script needs only gym-remote (and PyAV for the videos:
``pip install '/path/to/gym-remote[eval]'``)::

    gym-remote setup libero                     # once: makes the LIBERO venv
    python examples/libero_eval.py --suite libero_spatial --tasks 0-1 --episodes 3 --output-dir out

Without ``--address`` a private server starts by itself and runs LIBERO in that venv. It is
`gym-remote eval --suite ...` in a few lines of Python: put your policy in ``StillPolicy``'s
place (``reset(env_index)`` and ``act(observations, env_indices)``, see docs/evaluation.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from gym_remote.evaluation import evaluate, libero_tasks, parse_task_ids


class StillPolicy:
    """Keeps the arm still with the gripper open: a baseline. Yours goes here."""

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: dict, env_indices: list) -> np.ndarray:
        # observations["pixels"]["image"], ["image2"] and ["robot_state"], one row per env
        return np.tile(np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32), (len(env_indices), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO task suite")
    parser.add_argument("--tasks", default="0", help="task ids within the suite, e.g. 0-4")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per task")
    parser.add_argument("--num-envs", type=int, default=1, help="sessions stepped at once")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="steps per episode (default: the suite's)"
    )
    parser.add_argument("--size", type=int, default=256, help="camera image size in pixels")
    parser.add_argument("--output-dir", default="libero_eval", help="results and the first episode's video")
    parser.add_argument("--address", default=None, help="a gym-remote server (default: a private one)")
    arguments = parser.parse_args()

    tasks = libero_tasks(
        arguments.suite,
        parse_task_ids(arguments.tasks),
        observation_height=arguments.size,
        observation_width=arguments.size,
    )
    evaluation = evaluate(
        tasks,
        StillPolicy(),
        episodes=arguments.episodes,
        num_envs=arguments.num_envs,
        address=arguments.address,
        max_steps=arguments.max_steps,
        output_dir=arguments.output_dir,
        videos_per_task=1,
    )
    print(evaluation.table())
    print(f"episodes, results and videos in {arguments.output_dir}/")


if __name__ == "__main__":
    main()
