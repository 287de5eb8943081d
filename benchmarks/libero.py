"""Remote overhead on LIBERO: local vs remote step time with two 256x256 cameras, in one run.

The local run makes the env directly in the LIBERO venv (``gym-remote setup libero``); the
remote run drives the same task through a real server on loopback that starts its worker in that
venv. Same task, init state and actions. Target: remote overhead at most 2% of the local step.
Results go to docs/benchmarks.md.

Run: ``make bench-libero`` or ``python -m benchmarks.libero [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

ENV_KWARGS = {"task_suite": "libero_spatial", "task_id": 0, "init_state_id": 0}


def actions(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-0.3, 0.3, 7).astype(np.float32) for _ in range(count)]


def time_steps(env, steps: int, warmup: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds of each of ``steps`` timed steps, after ``warmup`` untimed ones."""
    env.reset(seed=0)
    durations = []
    for index, action in enumerate(actions(warmup + steps)):
        start = time.perf_counter()
        env.step(action)
        if index >= warmup:
            durations.append(time.perf_counter() - start)
    return durations


def local_run(steps: int, warmup: int) -> None:
    """Runs in the LIBERO venv: prints the local step durations as JSON."""
    import gymnasium as gym

    import gym_remote.envs  # noqa: F401

    env = gym.make("gym_remote/Libero-v0", **ENV_KWARGS)
    print(json.dumps(time_steps(env, steps, warmup)))
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--local-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()
    if arguments.local_run:
        local_run(arguments.steps, arguments.warmup)
        return

    import gymnasium as gym

    import gym_remote  # noqa: F401
    from benchmarks.common import machine_line, record
    from gym_remote.simulators import recorded_routes
    from gym_remote.testing import ServerProcess

    routes = {route.name: route for route in recorded_routes()}
    if "libero" not in routes:
        sys.exit("run `gym-remote setup libero` first")
    local_output = subprocess.run(
        [
            routes["libero"].python,
            __file__,
            "--local-run",
            "--steps",
            str(arguments.steps),
            "--warmup",
            str(arguments.warmup),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    local = json.loads(local_output.strip().splitlines()[-1])
    with ServerProcess() as server:
        env = gym.make("remote/Libero-v0", address=server.address, **ENV_KWARGS)
        remote = time_steps(env, arguments.steps, arguments.warmup)
        env.close()

    local_mean, remote_mean = float(np.mean(local)), float(np.mean(remote))
    local_median, remote_median = float(np.median(local)), float(np.median(remote))
    overhead = (remote_median - local_median) / local_median
    table = "\n".join(
        [
            f"Measured {machine_line()}; libero_spatial task 0, two 256x256 cameras, OSMesa, "
            f"{arguments.steps} timed steps after {arguments.warmup}.",
            "",
            "| run | mean step | median step | steps/s |",
            "|---|---|---|---|",
            f"| local (in the LIBERO venv) | {local_mean * 1e3:.1f} ms | {local_median * 1e3:.1f} ms "
            f"| {1 / local_mean:.2f} |",
            f"| remote (gym-remote, loopback) | {remote_mean * 1e3:.1f} ms | {remote_median * 1e3:.1f} ms "
            f"| {1 / remote_mean:.2f} |",
            "",
            f"Remote overhead on the median step: {overhead * 100:+.2f}% (target <= 2%).",
        ]
    )
    print(table)
    if not arguments.no_record:
        record("libero", "### LIBERO step time, local vs remote (`benchmarks/libero.py`)\n\n" + table)


if __name__ == "__main__":
    main()
