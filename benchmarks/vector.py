"""Vector env throughput: RemoteVectorEnv against Gymnasium's own vector envs, in one run.

8 envs of CartPole-v1 and 8 of the 393 KB image env (two 256x256x3 uint8 images and a state),
stepped with random actions through: ``RemoteVectorEnv`` (one client process, send to all then
gather; one env per worker, then 4 per worker; and envpool style, ``send()``/``recv()`` of
whichever half is ready first), ``AsyncVectorEnv`` over ``RemoteEnv``, and
Gymnasium's local ``AsyncVectorEnv(shared_memory=True)`` and ``SyncVectorEnv``. Plus 2 LIBERO
sessions in parallel against 1 (when ``gym-remote setup libero`` was run). Targets:
RemoteVectorEnv at least 1.5x the local AsyncVectorEnv's env-steps/s on both workloads; 2 LIBERO
sessions at least 1.8x one. Results go to docs/benchmarks.md.

Run: ``python -m benchmarks.vector [--steps N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable, Sequence

import gymnasium as gym
import psutil

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the image env)
from benchmarks.common import client_settings, machine_line, record
from gym_remote.testing import ServerProcess

NUM_ENVS = 8
ENVS_PER_WORKER = 4  # 8 envs in 2 workers: one per core here
WORKLOADS = {"CartPole-v1": "CartPole-v1", "image env (393 KB)": "gym_remote_testing/ImageEnv-v0"}


def env_steps_per_second(envs: gym.vector.VectorEnv, steps: int) -> float:
    """Env-steps per second over ``steps`` vector steps, after a short warm-up."""
    return timed_run(envs, steps)[0]


def timed_run(envs: gym.vector.VectorEnv, steps: int, watched: Sequence[int] = ()) -> tuple[float, float]:
    """Env-steps per second over ``steps`` vector steps after a short warm-up, and how many
    cores the processes ``watched`` (pids) kept busy meanwhile, on average."""
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(steps + 10)]
    envs.reset(seed=0)
    for action in actions[:10]:
        envs.step(action)
    processes = [psutil.Process(pid) for pid in watched]
    cpu_start = sum(sum(process.cpu_times()[:2]) for process in processes)
    start = time.perf_counter()
    for action in actions[10:]:
        envs.step(action)
    elapsed = time.perf_counter() - start
    cpu_seconds = sum(sum(process.cpu_times()[:2]) for process in processes) - cpu_start
    envs.close()
    return steps * envs.num_envs / elapsed, cpu_seconds / elapsed


def envpool_rate(envs: gym_remote.RemoteVectorEnv, steps: int) -> float:
    """Env-steps per second of envpool-style stepping over ``steps`` vector steps' worth of
    env-steps, after a short warm-up: each ``recv()`` takes whichever half of the envs is ready
    first, and those are sent their next actions at once."""
    envs.action_space.seed(0)
    actions = envs.action_space.sample()
    half = envs.num_envs // 2

    def take_ready_and_resend(env_steps: int) -> int:
        returned = 0
        while returned < env_steps:
            env_ids = envs.recv(min_envs=half)[-1]
            envs.send(actions[: len(env_ids)], env_ids)
            returned += len(env_ids)
        return returned

    envs.reset(seed=0)
    envs.send(actions)
    take_ready_and_resend(10 * envs.num_envs)
    start = time.perf_counter()
    returned = take_ready_and_resend(steps * envs.num_envs)
    elapsed = time.perf_counter() - start
    envs.recv(min_envs=envs.num_envs)
    envs.close()
    return returned / elapsed


def vectorizers(env_id: str, address: str, unix_address: str) -> dict[str, Callable[[int], float]]:
    """Each vectorizer's measurement: given a number of vector steps, its env-steps per second."""

    def remote_factory() -> gym.Env:
        return gym_remote.RemoteEnv(env_id, address=address)

    def local_factory() -> gym.Env:
        return gym.make(env_id)

    def socket_only() -> gym.vector.VectorEnv:
        with client_settings(shared_memory=False):
            return gym_remote.RemoteVectorEnv(env_id, NUM_ENVS, address=address)

    def remote_vector_env() -> gym_remote.RemoteVectorEnv:
        return gym_remote.RemoteVectorEnv(env_id, NUM_ENVS, address=address)

    def stepped(make: Callable[[], gym.vector.VectorEnv]) -> Callable[[int], float]:
        return lambda steps: env_steps_per_second(make(), steps)

    grouped = f"RemoteVectorEnv, {ENVS_PER_WORKER} envs per worker"
    return {
        "RemoteVectorEnv": stepped(remote_vector_env),
        "RemoteVectorEnv, socket only": stepped(socket_only),
        grouped: stepped(
            lambda: gym_remote.RemoteVectorEnv(
                env_id, NUM_ENVS, address=address, envs_per_worker=ENVS_PER_WORKER
            )
        ),
        f"{grouped}, Unix socket": stepped(
            lambda: gym_remote.RemoteVectorEnv(
                env_id, NUM_ENVS, address=unix_address, envs_per_worker=ENVS_PER_WORKER
            )
        ),
        f"RemoteVectorEnv, send/recv of the first {NUM_ENVS // 2} ready": lambda steps: envpool_rate(
            remote_vector_env(), steps
        ),
        "AsyncVectorEnv over RemoteEnv": stepped(
            lambda: gym.vector.AsyncVectorEnv([remote_factory] * NUM_ENVS, context="forkserver")
        ),
        "local AsyncVectorEnv(shared_memory=True)": stepped(
            lambda: gym.vector.AsyncVectorEnv(
                [local_factory] * NUM_ENVS, shared_memory=True, context="forkserver"
            )
        ),
        "local SyncVectorEnv": stepped(lambda: gym.vector.SyncVectorEnv([local_factory] * NUM_ENVS)),
    }


def median_rates(measures: dict[str, Callable[[int], float]], steps: int, rounds: int) -> dict[str, float]:
    """Each vectorizer's median env-steps/s over ``rounds`` rounds in which they all take turns.

    Taking turns spreads the machine's drift (its speed wanders by tens of percent over
    minutes) over every vectorizer alike.
    """
    samples: dict[str, list[float]] = {label: [] for label in measures}
    for _ in range(rounds):
        for label, measure in measures.items():
            samples[label].append(measure(steps))
    return {label: statistics.median(values) for label, values in samples.items()}


def libero_scaling(steps: int) -> list[tuple[float, float]] | None:
    """Env-steps/s of 1 and of 2 parallel LIBERO sessions, each with the cores their workers kept
    busy; None when LIBERO is not set up."""
    from gym_remote.simulators import recorded_routes

    if "libero" not in {route.name for route in recorded_routes()}:
        return None
    results = []
    with ServerProcess() as server:
        for count in (1, 2):
            envs = gym_remote.RemoteVectorEnv(
                "gym_remote/Libero-v0", count, address=server.address, task_suite="libero_spatial", task_id=0
            )
            workers = [process.pid for process in psutil.Process(server.pid).children()]
            results.append(timed_run(envs, steps, workers))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per CartPole measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which every vectorizer takes a turn")
    parser.add_argument("--libero-steps", type=int, default=30)
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()

    lines = [
        f"Measured {machine_line()}; {NUM_ENVS} envs given a loopback TCP address unless stated "
        "(their sessions take the server's local socket, the default since 2026-11-24); the median "
        f"of {arguments.rounds} rounds in which every vectorizer takes a turn.",
        "",
        "| workload | vectorizer | env-steps/s | vs local AsyncVectorEnv (RemoteVectorEnv target >= 1.5x) |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as directory, ServerProcess(
        "--import", "gym_remote.testing"
    ) as server, ServerProcess(
        "--import", "gym_remote.testing", address=f"unix://{directory}/server.sock"
    ) as unix_server:
        for name, env_id in WORKLOADS.items():
            steps = arguments.steps if "CartPole" in env_id else max(arguments.steps // 4, 50)
            measures = vectorizers(env_id, server.address, unix_server.address)
            rates = median_rates(measures, steps, arguments.rounds)
            baseline = rates["local AsyncVectorEnv(shared_memory=True)"]
            for label, rate in rates.items():
                lines.append(f"| {name} | {label} | {rate:,.0f} | {rate / baseline:.2f}x |")
    scaling = libero_scaling(arguments.libero_steps)
    if scaling is not None:
        (one, one_cores), (two, two_cores) = scaling
        lines += [
            "",
            f"LIBERO (libero_spatial task 0, two 256x256 cameras): 1 session {one:.2f} env-steps/s "
            f"keeping {one_cores:.2f} cores busy, 2 parallel sessions {two:.2f} env-steps/s keeping "
            f"{two_cores:.2f} cores busy: {two / one:.2f}x (target >= 1.8x). Env-steps per busy "
            f"core-second: {one / one_cores:.2f} and {two / two_cores:.2f}.",
        ]
    table = "\n".join(lines)
    print(table)
    if not arguments.no_record:
        record("vector", "### Vector envs (`benchmarks/vector.py`)\n\n" + table)


if __name__ == "__main__":
    main()
