"""A client on the server's host, given a loopback TCP address, moves to the Unix socket the
server offers there: the same session with less work per message."""

from __future__ import annotations

import socket
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
from gym_remote import errors
from gym_remote.addresses import parse_address
from gym_remote.connection import Connection
from gym_remote.peers import is_on_this_host
from gym_remote.testing import FAULTS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux's"
)


@pytest.fixture(autouse=True)
def local_socket_on(monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "1")  # the default, which conftest turns off


def test_a_loopback_tcp_client_moves_to_the_local_socket_with_the_same_results(server):
    remote = gym.make("remote/Env-v0", env_id="CartPole-v1", address=server.address)
    local = gym.make("CartPole-v1")
    try:
        for env in (remote, local):
            env.action_space.seed(3)
        results = {}
        for name, env in (("remote", remote), ("local", local)):
            steps = [env.reset(seed=7)]
            for _ in range(300):  # across several episode ends
                step = env.step(env.action_space.sample())
                steps.append(step)
                if step[2] or step[3]:
                    steps.append(env.reset())
            results[name] = steps
        assert data_equivalence(results["remote"], results["local"])
        assert remote.unwrapped._steps.connection._sock.family == socket.AF_UNIX
    finally:
        remote.close()
        local.close()


def test_errors_name_the_address_given(server):
    env = gym_remote.RemoteEnv("gym_remote_testing/Faulty-v0", address=server.address)
    env.reset(seed=0)
    with pytest.raises(errors.WorkerCrashed, match=rf"at {server.address} \(through unix://@gym-remote-"):
        env.step(FAULTS.index("exit"))
    env.close()


@pytest.mark.parametrize("off_where", ["client", "server"])
def test_with_the_local_socket_off_a_session_stays_on_tcp(server, start_server, monkeypatch, off_where):
    if off_where == "client":
        monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "0")
    else:
        server = start_server("--tcp-only")
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        assert env._steps.connection._sock.family == socket.AF_INET
    finally:
        env.close()


def test_the_local_socket_asks_for_the_token_too(start_server):
    server = start_server("--token", "s3cret")
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token="s3cret")
    try:
        env.reset(seed=0)
        assert env._steps.connection._sock.family == socket.AF_UNIX
        local_address = env._steps.connection.address
    finally:
        env.close()
    with pytest.raises(errors.AuthenticationFailed):
        Connection(local_address, timeout=10.0, token="wrong", max_message_size=1 << 20)


def test_a_local_socket_out_of_reach_leaves_the_session_on_tcp(server, monkeypatch):
    class OfferingAnotherSocket(Connection):
        def __init__(self, *arguments, **options) -> None:
            super().__init__(*arguments, **options)
            if self.local_address:
                self.local_address = "unix://@gym-remote-nobody-listens-here"

    monkeypatch.setattr(gym_remote.client, "Connection", OfferingAnotherSocket)
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        assert env.reset(seed=0)[0].shape == (4,)
        assert env._steps.connection._sock.family == socket.AF_INET
    finally:
        env.close()


def test_only_loopback_tcp_peers_are_told_of_the_local_socket(server, start_server, tmp_path):
    over_tcp = Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 20)
    assert over_tcp.local_address and over_tcp.local_address.startswith("unix://@gym-remote-")
    over_tcp.close()
    unix_server = start_server(address=f"unix://{tmp_path}/server.sock")
    over_unix = Connection(parse_address(unix_server.address), timeout=10.0, max_message_size=1 << 20)
    assert over_unix.local_address is None  # it is a Unix socket already
    over_unix.close()

    class Peer:
        family = socket.AF_INET6

        def __init__(self, host: str) -> None:
            self.host = host

        def getpeername(self) -> tuple[str, int]:
            return (self.host, 40000)

    assert [is_on_this_host(Peer(host)) for host in ("192.0.2.7", "::ffff:192.0.2.7")] == [False, False]
    assert [is_on_this_host(Peer(host)) for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == [True] * 3
    left, right = socket.socketpair()
    with left, right:
        assert is_on_this_host(left)  # the server offers its local socket to TCP peers only (above)


def test_discovery_stays_on_the_address_given(server):
    assert gym_remote.ping(3, address=server.address).address == server.address
    assert "CartPole-v1" in gym_remote.list_envs(address=server.address)


def test_an_abstract_unix_address_can_be_served_and_reached(start_server):
    name = f"unix://@gym-remote-test-{np.random.default_rng().integers(1 << 62)}"
    server = start_server(address=name)
    assert server.address == name
    env = gym_remote.RemoteEnv("CartPole-v1", address=name)
    try:
        assert env.reset(seed=0)[0].shape == (4,)
    finally:
        env.close()


def test_an_idle_session_on_the_local_socket_expires_as_it_does_over_tcp(start_server):
    from tests.helpers import wait_for, worker_pids

    server = start_server("--idle-timeout", "1")
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        assert env._steps.connection.address.scheme == "unix"
        wait_for(lambda: not worker_pids(server.pid), what="the idle session's worker to end")
        with pytest.raises(errors.SessionExpired, match="idle timeout"):
            env.step(0)
    finally:
        env.close()
