"""Helpers of the fault tests: the faulty test env, a remote env on a server, and a check that the
server still serves.
"""

from __future__ import annotations

import socket

import gym_remote
from gym_remote.testing import FAULTS

FAULTY = "gym_remote_testing/Faulty-v0"


def fault(name: str) -> int:
    return FAULTS.index(name)


def remote(server, env_id=FAULTY, **kwargs):
    return gym_remote.RemoteEnv(env_id, address=server.address, **kwargs)


def own_address(tmp_path) -> str:
    """An address no other test's server can take while this test's server is down (a TCP port
    freed by a killed server may go to the next server that binds port 0)."""
    return f"unix://{tmp_path / 'server.sock'}"


def command_line(process) -> list[str]:
    """A psutil process's command line; empty for one that ended meanwhile (a zombie, say)."""
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def private_servers() -> set:
    """The private servers this process runs now (psutil processes)."""
    import psutil

    return {child for child in psutil.Process().children() if "--watch-stdin" in command_line(child)}


def assert_serves(server):
    """The server still makes sessions that work."""
    env = remote(server, "CartPole-v1")
    try:
        env.reset(seed=0)
        assert env.step(1)[0].shape == (4,)
    finally:
        env.close()


def client_connection(server, **options):
    from gym_remote.addresses import parse_address
    from gym_remote.connection import Connection

    return Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 26, **options)


def raw_socket(server) -> socket.socket:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)
