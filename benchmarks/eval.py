"""Evaluation throughput: `evaluate`'s overlapped loop against a lockstep loop, in one run.

4 sessions of an env whose step takes a fixed 20 ms without using a core (the test envs'
``Faulty-v0`` sleeping: a GPU simulator, say), and a policy that takes a fixed 100 ms per call
and returns chunks of 5 actions, run 5 per request. Lockstep: infer for every env, then step
all envs 5 times, over and over. Overlapped: ``evaluate`` (inference in its own thread while
envs with actions left keep stepping), which only hides inference when it asks for the next
chunk before the last one runs out (``prefetch_steps``; with 0 its calls are the lockstep
loop's). Target (issue 25): at least 1.3x the lockstep loop's episodes per hour. Results go to
docs/benchmarks.md.

Run: ``python -m benchmarks.eval [--episodes N]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode

import gym_remote
from benchmarks.common import machine_line, record
from gym_remote.evaluation import Task, evaluate
from gym_remote.testing import FAULTS, ServerProcess

NUM_ENVS = 4
CHUNK = 5
STEP_SECONDS = 0.02
POLICY_SECONDS = 0.1
EPISODE_STEPS = 50
# evaluate's prefetch_steps, and what each means here.
PREFETCHES = {
    0: "prefetch_steps=0 (a chunk is asked for when the last one ran out)",
    2: "prefetch_steps=2 (asked for 2 steps before)",
    CHUNK: f"prefetch_steps={CHUNK} (asked for as the last one starts: a chunk ahead)",
}
TASK = Task(
    "sleeping steps", "gym_remote_testing/Faulty-v0", {"sleep_seconds": STEP_SECONDS, "allocate_bytes": 16}
)


class SlowChunkPolicy:
    """A fixed 100 ms per call, chunks of 5 sleeping steps each."""

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        time.sleep(POLICY_SECONDS)
        return np.full((len(env_indices), CHUNK), FAULTS.index("sleep"), dtype=np.int64)


def lockstep_episodes_per_hour(address: str, episodes: int) -> float:
    """Infer for all, then step all ``CHUNK`` times, until ``episodes`` episodes have ended."""
    envs = gym_remote.RemoteVectorEnv(
        TASK.env_id, NUM_ENVS, address=address, autoreset_mode=AutoresetMode.DISABLED, **TASK.env_kwargs
    )
    policy = SlowChunkPolicy()
    try:
        start = time.perf_counter()
        ended = 0
        while ended < episodes:
            envs.reset(seed=ended)
            for _ in range(EPISODE_STEPS // CHUNK):
                chunks = policy.act(None, list(range(NUM_ENVS)))
                for step in range(CHUNK):
                    envs.step(chunks[:, step])
            ended += NUM_ENVS
        return ended / (time.perf_counter() - start) * 3600
    finally:
        envs.close()


def overlapped_episodes_per_hour(address: str, episodes: int, prefetch_steps: int) -> float:
    start = time.perf_counter()
    evaluation = evaluate(
        [TASK],
        SlowChunkPolicy(),
        episodes=episodes,
        num_envs=NUM_ENVS,
        address=address,
        replan_steps=CHUNK,
        prefetch_steps=prefetch_steps,
        max_steps=EPISODE_STEPS,
    )
    return len(evaluation.episodes) / (time.perf_counter() - start) * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16, help="episodes per loop")
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()
    with ServerProcess("--import", "gym_remote.testing") as server:
        lockstep = lockstep_episodes_per_hour(server.address, arguments.episodes)
        overlapped = {
            prefetch: overlapped_episodes_per_hour(server.address, arguments.episodes, prefetch)
            for prefetch in PREFETCHES
        }
    table = (
        f"Measured {machine_line()}; {NUM_ENVS} sessions, {STEP_SECONDS * 1000:g} ms steps that use no core, "
        f"a policy of {POLICY_SECONDS * 1000:g} ms a call returning chunks of {CHUNK}, "
        f"{EPISODE_STEPS}-step episodes, {arguments.episodes} per loop.\n\n"
        "| loop | episodes/hour | vs lockstep (target >= 1.3x) |\n|---|---|---|\n"
        f"| lockstep (infer all, then step all {CHUNK} times) | {lockstep:,.0f} | 1.00x |\n"
        + "".join(
            f"| `evaluate`, {PREFETCHES[prefetch]} | {rate:,.0f} | {rate / lockstep:.2f}x |\n"
            for prefetch, rate in overlapped.items()
        )
    )
    table += (
        "\nWith `prefetch_steps=0` the policy is asked when chunks run out, as in the lockstep loop, "
        "so nothing is hidden and the per-env sends cost a little; asking a chunk ahead hides the "
        "100 ms calls behind 100 ms of steps. A prefetched chunk starts that many steps after the "
        "observation it was computed from (always the same number, so results stay deterministic).\n"
    )
    print(table)
    if not arguments.no_record:
        record("eval", "### Evaluation loop (`benchmarks/eval.py`)\n\n" + table)


if __name__ == "__main__":
    main()
