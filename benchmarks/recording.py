"""What recording costs an evaluation: `evaluate` with and without `record=`, in one run.

4 sessions of robosuite Lift with two 128x128 cameras, the scripted Lift policy, 60-step
episodes. Each loop runs the same planned episodes: without recording, recording a
LeRobotDataset (H.264 videos, encoded in the recorder's thread) and recording robomimic HDF5
(with simulator states). The loops alternate, twice each by default, and each keeps its fastest run.
Target (issue 25): recording costs at most 10% of eval time. Results go to docs/benchmarks.md.

Run: ``python -m benchmarks.recording [--episodes N]`` (needs ``gym-remote setup robosuite``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_line, record
from gym_remote.evaluation import evaluate, robosuite_task
from gym_remote.testing import ServerProcess

NUM_ENVS = 4
EPISODE_STEPS = 60
TASK = robosuite_task(
    "Lift",
    camera_names=["agentview", "robot0_eye_in_hand"],
    camera_height=128,
    camera_width=128,
    horizon=EPISODE_STEPS,
)
LOOPS = {None: "no recording", "lerobot": "`record=`, LeRobotDataset", "hdf5": "`record=`, HDF5 with states"}


def eval_seconds(address: str, episodes: int, format: str | None, directory: Path) -> float:
    start = time.perf_counter()
    evaluate(
        [TASK],
        "lift",
        episodes=episodes,
        num_envs=NUM_ENVS,
        address=address,
        record=None if format is None else directory / f"{format}-{time.monotonic_ns()}",
        record_format=format or "lerobot",
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes per loop")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each loop; each keeps its fastest")
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()
    seconds: dict = {format: [] for format in LOOPS}
    with ServerProcess() as server, tempfile.TemporaryDirectory() as directory:
        for _ in range(arguments.rounds):
            for format in LOOPS:
                seconds[format].append(
                    eval_seconds(server.address, arguments.episodes, format, Path(directory))
                )
    best = {format: min(runs) for format, runs in seconds.items()}
    table = (
        f"Measured {machine_line()}; {NUM_ENVS} sessions of robosuite Lift with two 128x128 cameras, "
        f"the scripted Lift policy, {EPISODE_STEPS}-step episodes, {arguments.episodes} per loop "
        f"(best of {arguments.rounds}, loops alternating).\n\n"
        "| loop | seconds | vs no recording (target <= 1.10x) |\n|---|---|---|\n"
        + "".join(
            f"| {LOOPS[format]} | {best[format]:.1f} | {best[format] / best[None]:.2f}x |\n"
            for format in LOOPS
        )
    )
    print(table)
    if not arguments.no_record:
        record("recording", "### Recording cost (`benchmarks/recording.py`)\n\n" + table)


if __name__ == "__main__":
    main()
