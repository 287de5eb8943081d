"""The ``gym-remote`` command: ``serve``, ``list`` and ``ping``."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

from gym_remote import __version__
from gym_remote.addresses import parse_address
from gym_remote.config import ClientConfig, ServerConfig, add_arguments, resolve
from gym_remote.connection import Connection
from gym_remote.errors import RemoteEnvError

__all__ = ["main"]

_DEFAULT_CLIENT_ADDRESS = "tcp://127.0.0.1:5555"


def main(argv: list[str] | None = None) -> None:
    """Runs the ``gym-remote`` command line."""
    parser = argparse.ArgumentParser(
        prog="gym-remote",
        description="Serve Gymnasium environments to remote clients, and query servers.",
        epilog="Every option can also be set with the GYM_REMOTE_* variable shown beside it.",
    )
    parser.add_argument("--version", action="version", version=f"gym-remote {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve environments (one worker process per session)")
    add_arguments(serve, ServerConfig)
    serve.set_defaults(run=_serve)

    for name, run, help_text in (
        ("list", _list, "list the env ids a server serves"),
        ("ping", _ping, "measure the round-trip time to a server"),
    ):
        command = commands.add_parser(name, help=help_text)
        add_arguments(command, ClientConfig)
        if name == "ping":
            command.add_argument("--count", type=int, default=100, help="round trips to time (default 100)")
        command.set_defaults(run=run)

    arguments = parser.parse_args(argv)
    options = {key: value for key, value in vars(arguments).items() if key not in {"command", "run", "count"}}
    try:
        arguments.run(arguments, options)
    except (RemoteEnvError, ValueError, OSError) as error:
        print(f"gym-remote {arguments.command}: {error}", file=sys.stderr)
        sys.exit(1)


def _serve(arguments: argparse.Namespace, options: dict) -> None:
    from gym_remote.server import run_server

    config = resolve(ServerConfig, **options)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s gym-remote %(levelname)s %(message)s"
    )
    run_server(config, on_ready=lambda address: print(f"gym-remote serving on {address}", flush=True))


def _connect(options: dict) -> Connection:
    config = resolve(ClientConfig, **options)
    return Connection(
        parse_address(config.address or _DEFAULT_CLIENT_ADDRESS),
        timeout=config.timeout,
        token=config.token,
        allow_pickle=False,
        max_message_size=config.max_message_size,
    )


def _list(arguments: argparse.Namespace, options: dict) -> None:
    connection = _connect(options)
    try:
        for env_id in connection.request("list"):
            print(env_id)
    finally:
        connection.close()


def _ping(arguments: argparse.Namespace, options: dict) -> None:
    connection = _connect(options)
    try:
        times = []
        for _ in range(max(arguments.count, 1)):
            start = time.perf_counter()
            connection.request("ping")
            times.append(time.perf_counter() - start)
    finally:
        connection.close()
    print(
        f"{connection.server_version} at {connection.address}: {len(times)} round trips, "
        f"median {statistics.median(times) * 1e6:.1f} us, min {min(times) * 1e6:.1f} us"
    )
