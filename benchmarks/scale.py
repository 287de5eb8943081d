"""Scale-out: Ray-placed servers against servers started by hand, and TLS against plain TCP.

1. Env-steps/s of a ``RemoteVectorEnv`` of 4 envs over 2 servers that ``gym_remote.ray``
   started as Ray actors (a Ray cluster of this machine, on 127.0.0.1), against the same over 2
   servers started by hand, in alternating rounds. Ray places the servers and carries no step,
   so the target is no slower beyond noise (a ratio near 1.00x).
2. The time of one step of the 393 KB image env (and of CartPole) through a TLS server, against
   plain TCP: both servers ``--tcp-only`` and the client without shared memory, as a client on
   another host meets them. TLS costs its encryption and the server's relay copy per message.

Results go to docs/benchmarks.md. Run: ``python -m benchmarks.scale [--steps N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the image env)
from benchmarks.common import client_settings, machine_line, record
from gym_remote.testing import ServerProcess

NUM_ENVS = 4
SERVERS = 2
TLS_WORKLOADS = {"CartPole-v1": "CartPole-v1", "image env (393 KB)": "gym_remote_testing/ImageEnv-v0"}
TOKEN = "benchmark-token"


def vector_rate(addresses: list[str], token: str, steps: int) -> float:
    """Env-steps/s of CartPole over ``addresses``, after a short warm-up."""
    envs = gym_remote.RemoteVectorEnv("CartPole-v1", NUM_ENVS, address=addresses, token=token)
    try:
        envs.action_space.seed(0)
        actions = [envs.action_space.sample() for _ in range(steps + 20)]
        envs.reset(seed=0)
        for action in actions[:20]:
            envs.step(action)
        start = time.perf_counter()
        for action in actions[20:]:
            envs.step(action)
        return steps * NUM_ENVS / (time.perf_counter() - start)
    finally:
        envs.close()


def step_seconds(env_id: str, address: str, steps: int, **tls: str) -> float:
    """Median seconds of one step of ``env_id`` at ``address`` (a session of its own)."""
    env = gym_remote.RemoteEnv(env_id, address=address, token=TOKEN, **tls)
    try:
        env.action_space.seed(0)
        env.reset(seed=0)
        times = []
        for _ in range(steps):
            action = env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset()
        return statistics.median(times)
    finally:
        env.close()


def ray_against_hand(steps: int, rounds: int) -> list[str]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
    import ray

    from gym_remote.ray import start_servers

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    by_ray, by_hand = [], []
    try:
        with start_servers(SERVERS) as placed:
            hand = [ServerProcess("--token", TOKEN) for _ in range(SERVERS)]
            try:
                measurements = [
                    (by_ray, lambda: vector_rate(placed.addresses, placed.token, steps)),
                    (by_hand, lambda: vector_rate([server.address for server in hand], TOKEN, steps)),
                ]
                for number in range(rounds):
                    # Which goes first alternates: on this machine the first of a pair runs faster.
                    for results, measure in measurements[:: 1 if number % 2 == 0 else -1]:
                        results.append(measure())
            finally:
                for server in hand:
                    server.stop()
    finally:
        ray.shutdown()
    ray_rate, hand_rate = statistics.median(by_ray), statistics.median(by_hand)
    return [
        f"| servers started by hand | {hand_rate:,.0f} | 1.00x |",
        f"| servers placed by `gym_remote.ray` | {ray_rate:,.0f} | {ray_rate / hand_rate:.2f}x |",
    ]


def tls_against_plain(steps: int, rounds: int) -> list[str]:
    from gym_remote.certs import make_certificates

    rows = []
    with tempfile.TemporaryDirectory() as folder, client_settings(shared_memory=False, local_socket=False):
        files = make_certificates(folder, ["127.0.0.1"])
        tls_options = ("--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key))
        common = ("--token", TOKEN, "--tcp-only", "--import", "gym_remote.testing")
        with ServerProcess(*common) as plain, ServerProcess(*common, *tls_options) as tls:
            for name, env_id in TLS_WORKLOADS.items():
                plain_times, tls_times = [], []
                for _ in range(rounds):
                    plain_times.append(step_seconds(env_id, plain.address, steps))
                    tls_times.append(step_seconds(env_id, tls.address, steps, tls_ca=str(files.ca)))
                plain_step, tls_step = np.median(plain_times), np.median(tls_times)
                rows.append(
                    f"| {name} | {plain_step * 1e6:,.0f} | {tls_step * 1e6:,.0f} | "
                    f"{(tls_step - plain_step) * 1e6:+,.0f} | {tls_step / plain_step:.2f}x |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="steps per measurement (default 4000)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds, median taken (default 6)")
    parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    arguments = parser.parse_args()
    placement = ray_against_hand(arguments.steps, arguments.rounds)
    encryption = tls_against_plain(arguments.steps, arguments.rounds)
    markdown = "\n".join(
        [
            f"Measured {machine_line()}; `python -m benchmarks.scale --steps {arguments.steps} "
            f"--rounds {arguments.rounds}` (medians of alternating rounds).",
            "",
            f"{NUM_ENVS} CartPole-v1 envs over {SERVERS} servers (target: Ray no slower beyond noise):",
            "",
            "| servers | env-steps/s | vs by hand |",
            "|---|---|---|",
            *placement,
            "",
            "One step through TLS against plain TCP (both `--tcp-only`, no shared memory):",
            "",
            "| workload | plain TCP (us) | TLS (us) | TLS adds (us) | ratio |",
            "|---|---|---|---|---|",
            *encryption,
        ]
    )
    print(markdown)
    if not arguments.no_record:
        record("scale", markdown)


if __name__ == "__main__":
    main()
