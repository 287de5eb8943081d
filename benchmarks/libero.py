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


def timed_steps(env, actions_to_take: list[np.ndarray]) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds each step took."""
    durations = []
    for action in actions_to_take:
        start = time.perf_counter()
        env.step(action)
        durations.append(time.perf_counter() - start)
    return durations


def local_run() -> None:
    """Runs in the LIBERO venv: for each line "START COUNT" on stdin, times those steps, prints JSON."""
    import gymnasium as gym

    import gym_remote.envs  # noqa: F401

    env = gym.make("gym_remote/Libero-v0", **ENV_KWARGS)
    env.reset(seed=0)
    print("ready", flush=True)
    for line in sys.stdin:
        start, count = map(int, line.split())
        print(json.dumps(timed_steps(env, actions(start + count)[start:])), flush=True)
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run, in rounds")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between local and remote")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--local-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()
    if arguments.local_run:
        local_run()
        return

    import gymnasium as gym

    import gym_remote  # noqa: F401
    from benchmarks.common import machine_line, record
    from gym_remote.simulators import recorded_routes
    from gym_remote.testing import ServerProcess

    routes = {route.name: route for route in recorded_routes()}
    if "libero" not in routes:
        sys.exit("run `gym-remote setup libero` first")
    # -I keeps this file's folder off sys.path: benchmarks/libero.py would shadow the libero package.
    local_process = subprocess.Popen(
        [routes["libero"].python, "-I", __file__, "--local-run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    while local_process.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
        pass
    local: list[float] = []
    remote: list[float] = []
    per_round = arguments.steps // arguments.rounds
    with ServerProcess() as server:
        env = gym.make("remote/Libero-v0", address=server.address, **ENV_KWARGS)
        env.reset(seed=0)
        position = 0
        # Local and remote take turns, so that drift in the machine's speed hits both alike.
        for round_index in range(arguments.rounds + 1):
            count = arguments.warmup if round_index == 0 else per_round
            local_process.stdin.write(f"{position} {count}\n")  # type: ignore[union-attr]
            local_process.stdin.flush()  # type: ignore[union-attr]
            local_times = json.loads(local_process.stdout.readline())  # type: ignore[union-attr]
            remote_times = timed_steps(env, actions(position + count)[position:])
            if round_index:
                local += local_times
                remote += remote_times
            position += count
        env.close()
    local_process.stdin.close()  # type: ignore[union-attr]
    local_process.wait(60)

    local_mean, remote_mean = float(np.mean(local)), float(np.mean(remote))
    local_median, remote_median = float(np.median(local)), float(np.median(remote))
    overhead = (remote_median - local_median) / local_median
    table = "\n".join(
        [
            f"Measured {machine_line()}; libero_spatial task 0, two 256x256 cameras, OSMesa, "
            f"{len(local)} timed steps each after {arguments.warmup}, local and remote taking turns "
            f"in {arguments.rounds} rounds.",
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
