"""Per-step overhead of RemoteEnv on loopback, against a bare TCP round trip as the floor.

For CartPole-v1 and a 393 KB image env (two 256x256x3 uint8 images and a 9-float state), in
one run: local steps/s, remote steps/s given a loopback TCP address (over TCP alone, and by
default, through the Unix socket the server offers on its host), the per-step overhead (remote
step time minus local step time), and a bare TCP_NODELAY socket round trip that carries the
same payload sizes. Target: overhead <= 2x the bare round trip. Beside it, the same ratio for the
minimal Python pair of ``benchmarks/python_floor.py``: what any Python remote env costs. The
same again over a Unix socket (where a RemoteEnv given no address meets its private server),
against a bare Unix round trip and the pair over a Unix socket. All take turns in rounds (the
remote ones in a rotating order) and the medians are reported. Results go to docs/benchmarks.md.

Run: ``python -m benchmarks.overhead [--steps N] [--rounds R] [--same-core]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the image env)
from benchmarks.common import (
    accepted,
    client_settings,
    guest_halt_poll_ns,
    loopback_connection,
    loopback_listener,
    machine_line,
    observation_leaves,
    record,
)
from benchmarks.python_floor import MinimalPythonEnv
from gym_remote.sharedmem import MINIMUM_SHARED_BYTES
from gym_remote.testing import ServerProcess

TCP, UNIX = "TCP", "Unix socket"
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
    observation_bytes = sum(leaf.nbytes for _, leaf in observation_leaves(observation))
    return max(np.asarray(action).nbytes, 1), observation_bytes


def _echo_server(listener: socket.socket, request_bytes: int, reply_bytes: int) -> None:
    connection = accepted(listener)
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


class BareSocket:
    """A bare round trip to a forked Python echo server, with fixed payload sizes: over loopback
    TCP (TCP_NODELAY), or over a Unix socket listening at ``unix_path``."""

    def __init__(self, request_bytes: int, reply_bytes: int, unix_path: str | None = None) -> None:
        self._listener = loopback_listener(unix_path)
        self._server = multiprocessing.get_context("fork").Process(
            target=_echo_server, args=(self._listener, request_bytes, reply_bytes), daemon=True
        )
        self._server.start()
        self._client = loopback_connection(self._listener.getsockname())
        self._request = bytes(request_bytes)
        self._reply = bytearray(reply_bytes)

    def round_trip_seconds(self, count: int) -> float:
        """Seconds per round trip over ``count`` round trips."""
        view = memoryview(self._reply)
        start = time.perf_counter()
        for _ in range(count):
            self._client.sendall(self._request)
            received = 0
            while received < len(view):
                received += self._client.recv_into(view[received:])
        return (time.perf_counter() - start) / count

    def close(self) -> None:
        self._client.close()
        self._server.join(10)
        self._listener.close()


class Row(NamedTuple):
    """One remote env's medians, in seconds per step, beside the floors on its connection."""

    connection: str
    transport: str
    local: float
    remote: float
    minimal: float
    bare: float
    bare_tcp: float


def measure_workload(env_id: str, addresses: dict[str, str], steps: int, rounds: int) -> list[Row]:
    """A row per remote env: given the TCP address, over TCP alone per reply transport and by
    default (through the server's local Unix socket); given a Unix socket's address, by default;
    each beside the minimal Python pair and the bare round trip on the connection it was given.
    The medians of ``rounds`` rounds in which the local env, each remote env, each minimal Python
    pair and each bare socket take turns, so that the machine's drift hits them alike.

    The remote envs and the pairs take their turns in an order that rotates from round to round,
    and each timed run follows an untimed tenth of one: with free scheduling, whichever
    process pair runs first after the local env was measured here about 10 us a CartPole step
    slower than the same code run after another remote env (where the scheduler puts the
    processes it wakes), so a fixed order favours whoever comes later."""
    local_env = gym.make(env_id)
    local_env.action_space.seed(0)
    actions = [local_env.action_space.sample() for _ in range(steps)]
    request_bytes, reply_bytes = payload_sizes(env_id)
    # (The address given, the row's path, shared memory, the local socket.) Replies with 64 KiB
    # of arrays or more take the same-host shared memory path by default.
    large = reply_bytes >= MINIMUM_SHARED_BYTES
    default = "local socket, shared memory" if large else "local socket"
    variants = [(TCP, "TCP, socket", False, False)]
    variants += [(TCP, "TCP, shared memory", True, False)] if large else []
    variants += [(TCP, f"{default} (the default)", True, True)]
    variants += [(UNIX, "shared memory" if large else "socket", True, True)]
    with tempfile.TemporaryDirectory() as directory:
        # The bare sockets fork their echo servers first, so that those hold no other socket.
        bares = {TCP: BareSocket(request_bytes, reply_bytes)}
        bares[UNIX] = BareSocket(request_bytes, reply_bytes, unix_path=f"{directory}/bare.sock")
        remote_envs = {}
        for connection, path, shared_memory, local_socket in variants:
            with client_settings(shared_memory=shared_memory, local_socket=local_socket):
                remote_envs[connection, path] = gym_remote.RemoteEnv(env_id, address=addresses[connection])
        minimal = {
            ("minimal", TCP): MinimalPythonEnv(env_id),
            ("minimal", UNIX): MinimalPythonEnv(env_id, unix_path=f"{directory}/pair.sock"),
        }
        envs = {"local": local_env, **remote_envs, **minimal}
        samples: dict[Any, list[float]] = {name: [] for name in (*envs, *bares)}
        try:
            for env in envs.values():  # warm-up
                run_episodes(env, actions[: steps // 10])
            settle = actions[: steps // 10]
            contenders = [name for name in envs if name != "local"]
            for round_number in range(rounds):
                shift = round_number % len(contenders)
                for name in ["local", *contenders[shift:], *contenders[:shift]]:
                    run_episodes(envs[name], settle)
                    samples[name].append(run_episodes(envs[name], actions))
                for name, bare in bares.items():
                    bare.round_trip_seconds(len(settle))
                    samples[name].append(bare.round_trip_seconds(steps))
        finally:
            for env in envs.values():
                env.close()
            for bare in bares.values():
                bare.close()
    median = {name: statistics.median(values) for name, values in samples.items()}
    return [
        Row(
            connection,
            transport,
            median["local"],
            median[connection, transport],
            median["minimal", connection],
            median[connection],
            median[TCP],
        )
        for connection, transport in remote_envs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps per measurement")
    parser.add_argument(
        "--rounds", type=int, default=6, help="rounds in which every measurement takes a turn"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--same-core",
        action="store_true",
        help="pin this process, the servers, their workers and the echo servers to one CPU core",
    )
    arguments = parser.parse_args()
    if arguments.same_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it

    rows = []
    with tempfile.TemporaryDirectory() as directory, ServerProcess(
        "--import", "gym_remote.testing"
    ) as server, ServerProcess(
        "--import", "gym_remote.testing", address=f"unix://{directory}/server.sock"
    ) as unix_server:
        addresses = {TCP: server.address, UNIX: unix_server.address}
        for name, env_id in WORKLOADS.items():
            steps = arguments.steps if "CartPole" in env_id else max(arguments.steps // 5, 200)
            rows += [(name, row) for row in measure_workload(env_id, addresses, steps, arguments.rounds)]

    table = "\n".join(
        [
            f"Measured {machine_line()}; {arguments.steps} steps per measurement, the median of "
            f"{arguments.rounds} rounds in which every measurement takes a turn (the remote ones in a "
            "rotating order, each after an untimed tenth of a run); "
            + ("every process on one core." if arguments.same_core else "processes scheduled freely."),
            "",
            "Given a loopback TCP address: over TCP alone (`GYM_REMOTE_LOCAL_SOCKET=0`, with replies on "
            "the socket or in shared memory), and by default, where the client moves to the Unix "
            "socket the server offers on its host (after its hello over TCP):",
            "",
            "| workload | path | local steps/s | remote steps/s | overhead per step "
            "| bare TCP round trip | overhead / round trip (target <= 2) "
            "| minimal Python pair: overhead / round trip |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {row.transport} | {1 / row.local:,.0f} | {1 / row.remote:,.0f} "
                f"| {_overhead(row) * 1e6:.1f} us | {row.bare * 1e6:.1f} us "
                f"| {_overhead(row) / row.bare:.2f}x | {(row.minimal - row.local) / row.bare:.2f}x |"
                for name, row in rows
                if row.connection == TCP
            ),
            "",
            "Over a Unix socket (where a `RemoteEnv` given no address meets its private server), "
            "with the reply path it takes there by default:",
            "",
            "| workload | replies through | remote steps/s | overhead per step | bare Unix round trip "
            "| overhead / round trip | minimal Python pair: overhead / round trip "
            "| overhead / bare TCP round trip |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {row.transport} | {1 / row.remote:,.0f} | {_overhead(row) * 1e6:.1f} us "
                f"| {row.bare * 1e6:.1f} us | {_overhead(row) / row.bare:.2f}x "
                f"| {(row.minimal - row.local) / row.bare:.2f}x | {_overhead(row) / row.bare_tcp:.2f}x |"
                for name, row in rows
                if row.connection == UNIX
            ),
        ]
    )
    print(table)
    polling_ns = guest_halt_poll_ns()
    if polling_ns == 0 and not arguments.same_core:
        print(
            "\nThis machine's idle vCPUs halt at once, so every message to the other core wakes one "
            "through the hypervisor: see 'Low latency on a virtual machine' in docs/howto.md."
        )
    if not arguments.no_record:
        section = "overhead-same-core" if arguments.same_core else "overhead"
        title = "one core" if arguments.same_core else "free scheduling"
        if polling_ns:  # beside the usual sections, which this project's machines (halting) write
            section, title = section + "-halt-polling", title + ", guest halt polling on"
        record(section, f"### Per-step overhead, {title} (`benchmarks/overhead.py`)\n\n" + table)


def _overhead(row: Row) -> float:
    """Seconds a remote step costs beyond the local step."""
    return row.remote - row.local


if __name__ == "__main__":
    main()
