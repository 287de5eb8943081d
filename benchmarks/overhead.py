"""Per-step overhead of RemoteEnv on loopback, against a bare TCP round trip as the floor.

For CartPole-v1 and a 393 KB image env (two 256x256x3 uint8 images and a 9-float state), in
one run: local steps/s, remote steps/s over loopback TCP, the per-step overhead (remote step
time minus local step time), and a bare TCP_NODELAY socket round trip that carries the same
payload sizes. Target: overhead <= 2x the bare round trip. Results go to docs/benchmarks.md.

Run: ``python benchmarks/overhead.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import time

import gymnasium as gym
import numpy as np

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the image env)
from benchmarks.common import machine_line, record
from gym_remote.sharedmem import MINIMUM_SHARED_BYTES
from gym_remote.testing import ServerProcess

WORKLOADS = {
    "CartPole-v1": "CartPole-v1",
    "image env (393 KB)": "gym_remote_testing/ImageEnv-v0",
}


def run_episodes(env: gym.Env, actions: list, seed: int = 0) -> float:
    """Steps ``env`` through ``actions`` (resetting at episode ends); returns seconds per step."""
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / len(actions)


def payload_sizes(env_id: str) -> tuple[int, int]:
    """Bytes of one action and one observation of ``env_id``."""
    env = gym.make(env_id)
    observation, _ = env.reset(seed=0)
    action = env.action_space.sample()
    env.close()
    observation_bytes = sum(np.asarray(leaf).nbytes for leaf in _leaves(observation))
    return max(np.asarray(action).nbytes, 1), observation_bytes


def _leaves(value):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _echo_server(listener: socket.socket, request_bytes: int, reply_bytes: int) -> None:
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = bytearray(request_bytes)
    reply = bytes(reply_bytes)
    view = memoryview(request)
    while True:
        received = 0
        while received < request_bytes:
            count = connection.recv_into(view[received:])
            if not count:
                return
            received += count
        connection.sendall(reply)


def bare_socket_round_trip(request_bytes: int, reply_bytes: int, count: int) -> float:
    """Seconds per round trip of a bare TCP_NODELAY socket carrying these payloads."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.get_context("fork").Process(
        target=_echo_server, args=(listener, request_bytes, reply_bytes), daemon=True
    )
    server.start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = bytes(request_bytes)
    reply = bytearray(reply_bytes)
    view = memoryview(reply)
    for _ in range(2):  # warm-up, then the timed run
        start = time.perf_counter()
        for _ in range(count):
            client.sendall(request)
            received = 0
            while received < reply_bytes:
                received += client.recv_into(view[received:])
        elapsed = (time.perf_counter() - start) / count
    client.close()
    server.join(10)
    listener.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps per measurement")
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--same-core",
        action="store_true",
        help="pin this process, the server, its workers and the echo server to one CPU core",
    )
    arguments = parser.parse_args()
    if arguments.same_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it

    rows = []
    with ServerProcess("--import", "gym_remote.testing") as server:
        for name, env_id in WORKLOADS.items():
            steps = arguments.steps if "CartPole" in env_id else max(arguments.steps // 5, 200)
            local_env = gym.make(env_id)
            local_env.action_space.seed(0)
            actions = [local_env.action_space.sample() for _ in range(steps)]
            run_episodes(local_env, actions[: steps // 10])
            local = run_episodes(local_env, actions)
            local_env.close()

            request_bytes, reply_bytes = payload_sizes(env_id)
            floor = bare_socket_round_trip(request_bytes, reply_bytes, steps)
            # Replies with 64 KiB of arrays or more take the same-host shared memory path.
            transports = ("shared memory", "socket") if reply_bytes >= MINIMUM_SHARED_BYTES else ("socket",)
            for transport in transports:
                os.environ["GYM_REMOTE_SHARED_MEMORY"] = str(int(transport == "shared memory"))
                remote_env = gym_remote.RemoteEnv(env_id, address=server.address)
                run_episodes(remote_env, actions[: steps // 10])
                remote = run_episodes(remote_env, actions)
                remote_env.close()
                overhead = remote - local
                rows.append(
                    (name, transport, 1 / local, 1 / remote, overhead * 1e6, floor * 1e6, overhead / floor)
                )

    lines = [
        f"Measured {machine_line()}; loopback TCP, {arguments.steps} steps, "
        + ("every process on one core." if arguments.same_core else "processes scheduled freely."),
        "",
        "| workload | reply through | local steps/s | remote steps/s | overhead per step "
        "| bare TCP round trip | overhead / round trip (target <= 2) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, transport, local_rate, remote_rate, overhead_us, floor_us, ratio in rows:
        lines.append(
            f"| {name} | {transport} | {local_rate:,.0f} | {remote_rate:,.0f} | {overhead_us:.1f} us "
            f"| {floor_us:.1f} us | {ratio:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if not arguments.no_record:
        section = "overhead-same-core" if arguments.same_core else "overhead"
        title = "one core" if arguments.same_core else "free scheduling"
        record(section, f"### Per-step overhead, {title} (`benchmarks/overhead.py`)\n\n" + table)


if __name__ == "__main__":
    main()
