"""Faults in connections: garbage, floods, wrong versions and tokens, and addresses that are not
gym-remote servers each get a clear typed error, and the server keeps serving the others.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time

import numpy as np
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.config import ServerConfig
from gym_remote.protocol import (
    PREFIX,
    MessageReader,
    send_buffers,
    send_message,
)
from gym_remote.server import Server
from tests.fault_helpers import assert_serves, raw_socket, remote
from tests.helpers import wait_for


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00" * 100,
        b"GET / HTTP/1.1\r\n\r\n",
        PREFIX.pack(b"GYMR", 50, 0) + b"\x01\x02",  # a truncated frame, then silence
        PREFIX.pack(b"GYMR", 10, 1 << 40),  # oversized before hello
        PREFIX.pack(b"GYMR", 1, 0) + b"\xc1",  # malformed msgpack
        PREFIX.pack(b"GYMF", 8, 8) + bytes(16),  # a fixed-layout step, outside any session
    ],
    ids=["zeros", "http", "truncated", "oversized", "malformed", "fixed-step"],
)
def test_garbage_to_the_server_is_dropped_and_others_are_served(start_server, payload):
    server = start_server("--read-timeout", "1", "--hello-timeout", "1")
    bystander = remote(server, "CartPole-v1")
    bystander.reset(seed=0)
    with raw_socket(server) as attacker:
        attacker.sendall(payload)
        attacker.shutdown(socket.SHUT_WR) if payload.startswith(b"GET") else None
        reply = MessageReader(attacker).receive(10.0)
    assert reply["error"]["code"] in {"protocol_error", "message_too_large", "timeout"}
    bystander.step(0)
    assert_serves(server)
    bystander.close()


@pytest.mark.parametrize("hello", ["as-usual", "after-the-refusal"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_connections_past_the_pending_limit_are_refused_as_busy_and_sessions_go_on(
    start_server, tmp_path, monkeypatch, capfd, transport, hello
):
    from gym_remote import connection
    from gym_remote.addresses import connect, parse_address

    address = f"unix://{tmp_path}/server.sock" if transport == "unix" else "tcp://127.0.0.1:0"
    # One peer (all of these: one address, one user) may hold half of the 4 places.
    server = start_server("--max-pending-connections", "4", address=address)
    bystander = remote(server, "CartPole-v1")
    bystander.reset(seed=0)  # its session holds no pending place
    silent = [connect(parse_address(server.address), 10.0) for _ in range(2)]  # never say hello
    if hello == "after-the-refusal":  # the server wrote its error and closed before the hello

        def send_when_refused(sock, buffers):
            poll = select.poll()
            poll.register(sock, select.POLLRDHUP)
            assert poll.poll(10_000), "the server did not close the connection"
            send_buffers(sock, buffers)

        monkeypatch.setattr(connection, "send_buffers", send_when_refused)
    try:
        for _ in range(5):
            with pytest.raises(errors.ServerBusy, match="2 connections from .* wait.*--max-pending"):
                gym_remote.list_envs(address=server.address, timeout=10.0)
        monkeypatch.undo()
        bystander.step(0)
    finally:
        silent.pop().close()

    def lists() -> bool:
        try:
            return bool(gym_remote.list_envs(address=server.address, timeout=10.0))
        except errors.ServerBusy:
            return False  # the server has yet to see the closed connection

    wait_for(lists, what="the closed connection's place to come free")
    silent[0].close()
    bystander.step(1)
    bystander.close()
    assert server.stop() == 0
    counts = [int(count) for count in re.findall(r"refused (\d+) connection", capfd.readouterr().err)]
    assert sum(counts) >= 5 and len(counts) < sum(counts), "refusals are counted, not logged one by one"


def test_garbage_inside_a_session_ends_only_that_session(server):
    env, bystander = remote(server, "CartPole-v1"), remote(server, "CartPole-v1")
    env.reset()
    bystander.reset()
    env._steps.connection._sock.sendall(b"\xff" * 64)
    reply = env._steps.connection._reader.receive(10.0)
    assert reply["error"]["code"] == "protocol_error" and "bad magic" in reply["error"]["message"]
    with pytest.raises(errors.WorkerCrashed):  # the worker closed this session
        env.step(0)
    bystander.step(0)
    env.close()
    bystander.close()


def test_oversized_message_inside_a_session(start_server):
    server = start_server("--max-message-size", "100000")
    env = remote(server, "Pendulum-v1")
    env.reset()
    with pytest.raises(errors.MessageTooLarge, match="maximum message size of 100000"):
        env.unwrapped.set_wrapper_attr("blob", np.zeros(50_000, np.float64))
    assert_serves(server)
    env.close()


def test_version_mismatch(server):
    with raw_socket(server) as sock:
        send_message(sock, {"op": "hello", "version": 999})
        reply = MessageReader(sock).receive(10.0)
    assert reply["error"]["code"] == "version_mismatch"
    error = errors.error_from_code(reply["error"]["code"], reply["error"]["message"])
    assert isinstance(error, errors.VersionMismatch) and "999" in str(error)


def test_token_is_required_when_set(start_server):
    server = start_server("--token", "s3cret")
    with pytest.raises(errors.AuthenticationFailed, match="token"):
        remote(server, "CartPole-v1").reset()
    with pytest.raises(errors.AuthenticationFailed):
        remote(server, "CartPole-v1", token="wrong").reset()
    env = remote(server, "CartPole-v1", token="s3cret")
    env.reset()
    env.close()


def test_listening_beyond_loopback_needs_a_token():
    with pytest.raises(ValueError, match="without a token"):
        Server(ServerConfig(address="tcp://0.0.0.0:0"))


def test_server_unavailable_names_the_address_quickly():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start = time.monotonic()
    env = gym_remote.RemoteEnv("CartPole-v1", address=f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(errors.ServerUnavailable, match=f"127.0.0.1:{port}"):
        env.reset()
    assert time.monotonic() - start < 2
    with pytest.raises(errors.ServerUnavailable, match="unix:///nonexistent"):
        gym_remote.RemoteEnv("CartPole-v1", address="unix:///nonexistent/gym.sock").reset()


def test_an_address_that_speaks_another_protocol_is_named_as_no_gym_remote_server():
    with socket.create_server(("127.0.0.1", 0)) as other_service:
        address = f"tcp://127.0.0.1:{other_service.getsockname()[1]}"
        env = gym_remote.RemoteEnv("CartPole-v1", address=address, timeout=10)

        def greet_like_ssh() -> None:
            connection, _ = other_service.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                connection.recv(1024)  # the hello, then the client closes

        greeter = threading.Thread(target=greet_like_ssh)
        greeter.start()
        with pytest.raises(errors.ProtocolError, match=rf"{address} does not answer as a gym-remote server"):
            env.reset()
        greeter.join(10)
        assert not greeter.is_alive()


def test_an_http_server_that_never_answers_the_hello_is_named_as_no_gym_remote_server():
    """Python's HTTP server waits for the end of a request line, which a hello never sends: the
    client stops waiting after HELLO_REPLY_SECONDS, not its 60 s call timeout, and says what it
    found (issue 24 item 9)."""
    import http.server

    from gym_remote.connection import HELLO_REPLY_SECONDS

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as http_server:
        serving = threading.Thread(target=http_server.serve_forever, daemon=True)
        serving.start()
        address = f"tcp://127.0.0.1:{http_server.server_address[1]}"
        start = time.monotonic()
        with pytest.raises(errors.ProtocolError, match=rf"{address} does not answer as a gym-remote server"):
            gym_remote.RemoteEnv("CartPole-v1", address=address, timeout=60).reset()
        assert time.monotonic() - start < HELLO_REPLY_SECONDS + 30, "the client waited its whole timeout"
        http_server.shutdown()
