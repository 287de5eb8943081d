"""Faults and bad input: each gets a clear typed error, and the server keeps serving the others."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import psutil
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.config import ServerConfig
from gym_remote.protocol import (
    PREFIX,
    PROTOCOL_VERSION,
    MessageReader,
    encode_frame,
    send_buffers,
    send_message,
)
from gym_remote.server import Server
from gym_remote.testing import FAULTS
from tests.helpers import all_gone, wait_for, worker_pids

FAULTY = "gym_remote_testing/Faulty-v0"


def fault(name: str) -> int:
    return FAULTS.index(name)


def remote(server, env_id=FAULTY, **kwargs):
    return gym_remote.RemoteEnv(env_id, address=server.address, **kwargs)


def assert_serves(server):
    """The server still makes sessions that work."""
    env = remote(server, "CartPole-v1")
    try:
        env.reset(seed=0)
        assert env.step(1)[0].shape == (4,)
    finally:
        env.close()


@pytest.mark.parametrize("kind", ["exit", "segfault"])
def test_worker_crash_ends_only_its_session(server, kind):
    victim, bystander = remote(server), remote(server, "CartPole-v1")
    try:
        victim.reset()
        bystander.reset(seed=1)
        # The client hears how its worker ended, as the server saw it (issue 24 item 9).
        how = "exited with code 3" if kind == "exit" else "was killed by SIGSEGV"
        with pytest.raises(errors.WorkerCrashed, match=f"Faulty-v0 {how} during the session"):
            victim.step(fault(kind))
        with pytest.raises(errors.SessionClosed, match="ended earlier"):
            victim.step(-1)
        for _ in range(10):
            bystander.step(0)
        assert_serves(server)
    finally:
        victim.close()
        bystander.close()


@pytest.mark.parametrize("action", [2, np.int64(-1), 10**30], ids=["int", "numpy", "huge"])
def test_a_discrete_action_out_of_range_is_an_invalid_call_and_the_session_goes_on(server, action):
    """Not the env's AssertionError wrapped in a RemoteError (issue 24 item 9)."""
    env = remote(server, "CartPole-v1")
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match=r"action is .*out of range.*Discrete\(2\)"):
            env.step(action)
        assert env.step(1)[0].shape == (4,)
    finally:
        env.close()


def test_multi_discrete_and_multi_binary_actions_out_of_range_are_invalid_calls():
    from gym_remote.space_walk import describe_mismatch as describe_action_mismatch

    multi = gym.spaces.MultiDiscrete([3, 2])
    assert describe_action_mismatch(multi, np.array([2, 1]), "action") is None
    assert "out of range" in describe_action_mismatch(multi, np.array([3, 0]), "action")
    assert "out of range" in describe_action_mismatch(multi, np.array([0, -1]), "action")
    binary = gym.spaces.MultiBinary(3)
    assert describe_action_mismatch(binary, np.array([0, 1, 1]), "action") is None
    assert "not all 0 or 1" in describe_action_mismatch(binary, np.array([0, 2, 1]), "action")


def test_env_exception_carries_the_remote_traceback_and_the_session_goes_on(server):
    env = remote(server)
    try:
        env.reset()
        with pytest.raises(errors.RemoteError) as caught:
            env.step(fault("raise"))
        assert caught.value.remote_type == "builtins.RuntimeError"
        assert "the simulator exploded" in caught.value.remote_traceback
        assert "Traceback" in str(caught.value) and "testing.py" in str(caught.value)
        assert env.step(-1)[1] == 0.0
    finally:
        env.close()


def test_unknown_env(server):
    env = remote(server, "NoSuchEnv-v9")
    with pytest.raises(errors.EnvNotFound, match="NoSuchEnv"):
        env.reset()
    env.close()


def test_allowlist_and_module_ids(start_server):
    server = start_server("--allow", "CartPole-*")
    with pytest.raises(errors.EnvNotAllowed, match="allowlist"):
        remote(server, "Pendulum-v1").reset()
    with pytest.raises(errors.EnvNotAllowed, match="--import gym_remote.testing"):
        remote(server, "gym_remote.testing:CartPole-v1").reset()
    with pytest.raises(errors.EnvNotAllowed, match="client-side remote id"):
        remote(server, "remote/Env-v0").reset()
    assert_serves(server)
    connection = _client_connection(server)
    assert connection.request("list") == ["CartPole-v0", "CartPole-v1"]
    connection.close()

    importing = start_server("--import", "gym_remote.testing", "--allow", "*ImageEnv*")
    env = remote(importing, "gym_remote.testing:gym_remote_testing/ImageEnv-v0")
    assert env.reset(seed=0)[0]["state"].shape == (9,)
    env.close()


@pytest.mark.parametrize(
    "env_id, action, message",
    [
        ("CartPole-v1", np.array([1, 0]), "expected an integer"),
        ("CartPole-v1", 1.5, "expected an integer"),
        ("CartPole-v1", "left", "expected an integer"),
        ("Pendulum-v1", np.zeros(3), r"action has shape \(3,\), expected \(1,\); the action space is Box"),
        ("Pendulum-v1", np.array(["x"]), "dtype <U1"),
        ("gym_remote_testing/RichSpaces-v0", {"move": 1}, "keys"),
        ("gym_remote_testing/RichSpaces-v0", {"move": 1, "force": np.zeros(5)}, r"action\['force'\]"),
    ],
)
def test_wrong_actions_are_invalid_calls_and_the_session_goes_on(server, env_id, action, message):
    env = remote(server, env_id)
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match=message):
            env.step(action)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_step_before_reset_is_an_invalid_call(server):
    env = remote(server, "CartPole-v1")
    with pytest.raises(errors.InvalidCall, match="reset"):
        env.step(0)
    env.close()


def test_unsupported_info_value_names_the_key_and_pickle_is_opt_in(server, start_server):
    env = remote(server)
    try:
        env.reset()
        with pytest.raises(errors.UnsupportedValue, match=r"\['custom'\]"):
            env.step(fault("custom_info"))
        env.step(-1)
    finally:
        env.close()
    pickling = start_server("--import", "gym_remote.testing", "--allow-pickle")
    refusing = remote(pickling)  # the client has not opted in
    refusing.reset()
    with pytest.raises(errors.UnsupportedValue):
        refusing.step(fault("custom_info"))
    refusing.close()
    accepting = remote(pickling, allow_pickle=True)
    accepting.reset()
    info = accepting.step(fault("custom_info"))[4]
    assert type(info["custom"]).__name__ == "_NotWireSafe"
    accepting.close()


def _client_connection(server, **options):
    from gym_remote.addresses import parse_address
    from gym_remote.connection import Connection

    return Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 26, **options)


def _raw_socket(server) -> socket.socket:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


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
    with _raw_socket(server) as attacker:
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
    env._connection._sock.sendall(b"\xff" * 64)
    reply = env._connection._reader.receive(10.0)
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
    with _raw_socket(server) as sock:
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


def test_a_slow_call_times_out_and_closes_the_session(server):
    env = remote(server, sleep_seconds=30)
    env.reset()  # starting the worker may take seconds on a busy machine: only the step is timed
    env._connection.timeout = 0.5
    start = time.monotonic()
    with pytest.raises(errors.RemoteTimeout, match="within 0.5 s"):
        env.step(fault("sleep"))
    assert time.monotonic() - start < 5
    with pytest.raises(errors.SessionClosed):
        env.step(-1)
    env.close()


def test_a_timed_out_call_ends_its_worker_and_frees_its_slot(start_server):
    """The client gives up on a call that outlasts its timeout: the worker ends then, not when
    the env's call returns, so a server at --max-sessions 1 serves the next client at once
    (issue 24 item 4)."""
    server = start_server("--import", "gym_remote.testing", "--max-sessions", "1")
    env = remote(server, sleep_seconds=600, allocate_bytes=4)
    env.reset()
    (worker,) = worker_pids(server.pid)
    env._connection.timeout = 0.5
    with pytest.raises(errors.RemoteTimeout):
        env.step(fault("sleep"))
    assert all_gone({worker}, timeout=60), "the worker of the abandoned call must end"
    assert_serves(server)
    env.close()


class Interrupted(BaseException):
    """Raised in the main thread by a signal handler, as KeyboardInterrupt is by Ctrl-C."""


@contextlib.contextmanager
def interrupt_after(seconds: float):
    """Interrupts the main thread (this test's) after ``seconds``, wherever it waits."""

    def raise_interrupted(signal_number, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    main_thread = threading.main_thread().ident
    timer = threading.Timer(seconds, signal.pthread_kill, (main_thread, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join(10)
        signal.signal(signal.SIGUSR1, previous)


def test_a_call_interrupted_while_it_waits_leaves_the_session_in_step(server):
    env = remote(server, sleep_seconds=1.0, allocate_bytes=8)
    env.reset(seed=0)
    with interrupt_after(0.2), pytest.raises(Interrupted):
        env.step(fault("sleep"))
    # The interrupted step's reply is read and dropped first: every later call gets its own.
    assert env.get_wrapper_attr("describe")("after") == "after:FaultyEnv"
    observation, reward, terminated, truncated, info = env.step(-1)
    assert observation.shape == (8,) and info == {}
    with interrupt_after(0.2), pytest.raises(Interrupted):
        env.step(fault("sleep"))
    env.close()  # does not wait for the dropped reply
    assert_serves(server)


def test_a_call_interrupted_in_the_middle_of_its_reply_ends_its_session_clearly(start_server, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")  # the 1 MB reply comes over the socket
    server = start_server("--import", "gym_remote.testing")
    env = remote(server)
    env.reset(seed=0)
    reader = env._connection._reader

    def interrupted_mid_frame(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(reader, "_receive_into", interrupted_mid_frame)
    with pytest.raises(Interrupted):
        env.step(-1)
    with pytest.raises(errors.SessionClosed, match="step call was interrupted in the middle"):
        env.step(-1)
    with pytest.raises(errors.SessionClosed, match="ended earlier"):
        env.reset()
    env.close()
    wait_for(lambda: not worker_pids(server.pid), what="the interrupted session's worker to end")
    assert_serves(server)


class _InterruptedJustAfterReceiving:
    """A socket whose receives take the bytes and are then interrupted, as by a signal that
    lands after the kernel returned them and before any Python code noted them."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv_into(self, *args):
        self._sock.recv_into(*args)
        raise Interrupted

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_a_call_interrupted_just_after_its_reply_arrived_ends_its_session_clearly(server):
    env = remote(server, "CartPole-v1", timeout=5)
    env.reset(seed=0)
    reader = env._connection._reader
    reader.sock = _InterruptedJustAfterReceiving(reader.sock)
    with pytest.raises(Interrupted):
        env.step(0)
    # The reply is gone from the stream: waiting for it again would hang or pair wrongly.
    with pytest.raises(errors.SessionClosed, match="step call was interrupted in the middle"):
        env.step(0)
    env.close()
    assert_serves(server)


@pytest.mark.parametrize("envs_per_worker", [1, 3])
def test_a_vector_step_interrupted_while_it_waits_leaves_every_session_in_step(server, envs_per_worker):
    envs = gym_remote.RemoteVectorEnv(
        FAULTY, 3, address=server.address, envs_per_worker=envs_per_worker, sleep_seconds=1, allocate_bytes=4
    )
    envs.reset(seed=0)
    with interrupt_after(0.2), pytest.raises(Interrupted):
        envs.step(np.array([fault("sleep")] * 3))
    assert envs.call("describe", "after") == ("after:FaultyEnv",) * 3
    observations, rewards, terminations, truncations, infos = envs.step(np.array([-1] * 3))
    assert observations.shape == (3, 4) and not terminations.any()
    envs.close()


def test_a_call_from_another_thread_while_one_waits_is_refused_and_replies_stay_paired(server):
    env = remote(server, sleep_seconds=1.0, allocate_bytes=8)
    env.reset(seed=0)
    results = []
    stepping = threading.Thread(target=lambda: results.append(env.step(fault("sleep"))))
    stepping.start()
    try:
        wait_for(env._connection._in_flight.locked, what="the other thread's step to be sent")
        with pytest.raises(errors.InvalidCall, match="one thread at a time"):
            env.get_wrapper_attr("describe")("meanwhile")
    finally:
        stepping.join(15)
    assert not stepping.is_alive() and len(results) == 1
    observation, reward, terminated, truncated, info = results[0]  # the step got its own reply
    assert observation.shape == (8,) and not terminated
    assert env.get_wrapper_attr("describe")("after") == "after:FaultyEnv"
    env.close()


def test_a_recv_interrupted_while_it_waits_loses_no_result(server):
    envs = gym_remote.RemoteVectorEnv(FAULTY, 3, address=server.address, sleep_seconds=1, allocate_bytes=4)
    envs.reset(seed=0)
    envs.send(np.array([-1, fault("sleep"), -1]))
    with interrupt_after(0.2), pytest.raises(Interrupted):
        envs.recv(min_envs=3)
    observations, rewards, terminations, truncations, infos, env_ids = envs.recv(min_envs=3)
    assert env_ids.tolist() == [0, 1, 2] and observations.shape == (3, 4)
    envs.close()


def test_closing_with_slow_steps_in_flight_does_not_wait_for_them(server):
    envs = gym_remote.RemoteVectorEnv(FAULTY, 2, address=server.address, sleep_seconds=30, allocate_bytes=4)
    envs.reset(seed=0)
    envs.send(np.array([fault("sleep")] * 2))
    closing = threading.Thread(target=envs.close)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close() waited for the steps in flight"
    assert_serves(server)


def test_a_forked_child_can_neither_use_nor_end_its_parents_session(server):
    env = remote(server, "CartPole-v1")
    env.reset(seed=0)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # report what stepping and closing the inherited env did, then leave at once
        try:
            try:
                env.step(0)
                outcome = "stepped"
            except errors.SessionClosed as error:
                outcome = f"refused: {error}"
            env.close()
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        outcome = reader.read().decode()
    os.waitpid(child, 0)
    assert outcome.startswith("refused") and f"belongs to process {os.getpid()}" in outcome
    for _ in range(5):  # the parent's session goes on, each reply its own
        observation, _, terminated, _, info = env.step(1)
        assert observation.shape == (4,) and info == {}
    assert env.get_wrapper_attr("gravity") == 9.8
    env.close()


def test_a_slow_env_never_delays_another_session(server):
    slow, fast = remote(server, sleep_seconds=3), remote(server, "CartPole-v1")
    slow.reset()
    fast.reset(seed=0)
    slow_call = threading.Thread(target=slow.step, args=(fault("sleep"),))
    slow_call.start()
    for _ in range(50):
        fast.step(0) if not fast.step(1)[2] else fast.reset()
    assert slow_call.is_alive(), "50 fast steps finished while the slow step still runs"
    slow_call.join(10)
    slow.close()
    fast.close()


def test_many_clients_at_once(server):
    local = gym.make("CartPole-v1")
    local.reset(seed=9)
    expected = [local.step(step % 2)[0] for step in range(15)]
    results: dict[int, list] = {}

    def client(index: int) -> None:
        env = remote(server, "CartPole-v1")
        env.reset(seed=9)
        results[index] = [env.step(step % 2)[0] for step in range(15)]
        env.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(16))
    for observations in results.values():
        assert all(np.array_equal(a, b) for a, b in zip(observations, expected))


CLIENT_THAT_VANISHES = """
import os, sys, gym_remote
env = gym_remote.RemoteEnv("CartPole-v1", address=sys.argv[1])
env.reset(seed=0)
env.step(0)
print("stepping", flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_client_that_vanishes_mid_episode_is_reaped(start_server):
    server = start_server()
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_THAT_VANISHES, server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "stepping" and result.returncode == -9
    wait_for(lambda: not worker_pids(server.pid), what="the worker of the vanished client to end")
    assert_serves(server)


def _one_round_of_churn(server) -> None:
    """Sessions ended every way a client can end them, and connections that never make one."""
    env = remote(server, "CartPole-v1")
    env.reset(seed=0)
    env.step(0)
    env.close()
    in_flight = gym_remote.RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    in_flight.reset(seed=0)
    in_flight.send(np.array([0, 1]))
    in_flight.close()  # with both steps still in flight
    dropped = remote(server, "CartPole-v1")
    dropped.reset(seed=0)
    dropped._connection._sock.close()  # gone without a word
    dropped.close()  # finds the session gone: nothing to raise
    with _raw_socket(server) as sock:
        send_message(sock, {"op": "hello", "version": PROTOCOL_VERSION})
        assert "ok" in MessageReader(sock).receive(10.0)
    _raw_socket(server).close()  # connected, then gone before hello


def test_sessions_ended_every_way_over_and_over_leave_nothing_behind(start_server):
    server = start_server()
    server_process = psutil.Process(server.pid)
    _one_round_of_churn(server)
    wait_for(lambda: not worker_pids(server.pid), what="the first round's workers to end")
    descriptors = server_process.num_fds()
    for _ in range(8):
        _one_round_of_churn(server)
    wait_for(lambda: not worker_pids(server.pid), what="every churned session's worker to end")
    # At most as many as after the first round: that count may still have held a session's
    # socket the server closes just after its worker's exit.
    wait_for(
        lambda: server_process.num_fds() <= descriptors,
        what=f"the server to hold at most {descriptors} file descriptors again",
    )
    assert_serves(server)


def test_idle_sessions_are_reaped_and_the_client_is_told(start_server):
    server = start_server("--idle-timeout", "0.5")
    env = remote(server, "CartPole-v1")
    env.reset()
    pids = worker_pids(server.pid)
    assert len(pids) == 1
    assert all_gone(pids, timeout=15), "the idle worker must end"
    with pytest.raises(errors.SessionExpired, match="idle timeout"):
        env.step(0)
    env.close()


def test_a_reader_sets_the_receive_timeout_its_socket_inherited():
    """A socket handed over with ``SO_RCVTIMEO`` set: the first receive without a wait clears it."""
    left, right = socket.socketpair()
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
        send_message(right, {"op": "ping"})
        assert MessageReader(left).receive(None) == {"op": "ping"}
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)


def test_a_client_that_never_reads_its_replies_is_reaped_after_the_idle_timeout(start_server):
    """Its worker blocks sending replies once the socket's buffers are full; a send blocked for
    the idle timeout ends the session as idleness does."""
    server = start_server("--import", "gym_remote.testing", "--idle-timeout", "1")
    connection = _client_connection(server)
    connection.request("make", env_id="gym_remote_testing/ImageEnv-v0", kwargs={}, render_mode=None)
    connection.request("reset", seed=0, options=None)
    (worker,) = worker_pids(server.pid)
    action = np.zeros(7, np.float32)
    step = b"".join(bytes(chunk) for chunk in encode_frame({"op": "step", "action": action}))
    for _ in range(400):  # 400 replies of 393 KB: more than any socket buffer holds
        connection._sock.sendall(step)
    assert all_gone({worker}, timeout=15), "the worker blocked on its replies must end"
    connection.close()
    assert_serves(server)


def test_max_sessions(start_server):
    server = start_server("--max-sessions", "1")
    first = remote(server, "CartPole-v1")
    first.reset()
    with pytest.raises(errors.ServerBusy, match="maximum of 1"):
        remote(server, "CartPole-v1").reset()
    first.close()
    wait_for(lambda: not worker_pids(server.pid), what="the closed session's worker to end")
    assert_serves(server)


def test_a_server_out_of_descriptors_retries_instead_of_spinning_and_serves_once_some_free():
    import resource
    import selectors

    from gym_remote.embedded import wait_until_serving

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    command = [sys.executable, "-m", "gym_remote", "serve", "--address", "tcp://127.0.0.1:0"]
    server = subprocess.Popen(
        command + ["--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=few_descriptors,
    )
    silent: list[socket.socket] = []
    try:
        address = wait_until_serving(server, 60.0)
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        # More connections than the server has descriptors: the last wait in the backlog.
        silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(60)]
        cpu_seconds, retries, log = [], 0, b""
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as selector:
            selector.register(server.stderr, selectors.EVENT_READ)
            while retries < 3 and time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    log += os.read(server.stderr.fileno(), 65536)
                    if log.count(b"cannot accept a connection") > retries:
                        retries = log.count(b"cannot accept a connection")
                        cpu_seconds.append(sum(psutil.Process(server.pid).cpu_times()[:2]))
        assert retries >= 3, f"the server never said it ran out of descriptors: {log[-500:]!r}"
        assert b"Too many open files" in log
        # Between retries it waits (0.1 s each): a spinning accept loop would burn all of that.
        assert cpu_seconds[-1] - cpu_seconds[0] < 0.1
        for connection in silent:
            connection.close()
        assert "CartPole-v1" in gym_remote.list_envs(address=address, timeout=10.0)
    finally:
        for connection in silent:
            connection.close()
        server.terminate()
        try:  # reading what it still logs, so that a full stderr pipe never holds it up
            server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
            raise


@pytest.mark.parametrize(
    "error_type",
    [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)],
)
def test_every_error_is_picklable(error_type):
    error = error_type("what went wrong", remote_type="builtins.ValueError", remote_traceback="Traceback...")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_type and isinstance(copy, errors.RemoteEnvError)
    assert (copy.message, copy.remote_type, copy.remote_traceback) == (
        "what went wrong",
        "builtins.ValueError",
        "Traceback...",
    )
    assert str(copy) == str(error)
    error.add_note("also RemoteError: sub-env 3 (...): it broke too")
    assert pickle.loads(pickle.dumps(error)).__notes__ == ["also RemoteError: sub-env 3 (...): it broke too"]


@pytest.mark.parametrize("idle_timeout", ["600", "0"], ids=["idle-timeout", "no-idle-timeout"])
def test_a_session_outlives_the_read_timeout(start_server, idle_timeout):
    """The server reads a ``make`` with its read timeout set on the socket, and a worker reads its
    settings with it: neither may limit the session's life. Without an idle timeout (private
    servers) the worker once inherited the socket's as one (issue 24 item 2)."""
    server = start_server("--read-timeout", "0.3", "--idle-timeout", idle_timeout)
    env = remote(server, "CartPole-v1")
    env.reset(seed=0)
    (worker,) = [psutil.Process(pid) for pid in worker_pids(server.pid)]
    with pytest.raises(psutil.TimeoutExpired):
        worker.wait(timeout=1.5)  # five read timeouts without a call: the worker must still run
    assert env.step(0)[0].shape == (4,)
    env.close()


def test_each_request_of_a_batch_gets_its_own_answer_and_bad_ones_harm_nothing(server):
    envs = gym_remote.RemoteVectorEnv("CartPole-v1", 2, address=server.address, envs_per_worker=2)
    try:
        connection = envs.sessions[0]._connect()
        outcomes = connection.request(
            "batch",
            requests=[
                {"op": "reset", "env": 1, "seed": 3},
                {"op": "step", "env": 0, "action": 1},
                {"op": "close"},
                {"op": "batch", "requests": []},
                "garbage",
                {"op": "step", "env": 2, "action": 0},
                {"op": "step", "env": 1, "action": 0},
            ],
        )
        errors_by_item = [outcome.get("error", {}).get("message") for outcome in outcomes]
        assert errors_by_item[0] is None and errors_by_item[6] is None
        assert "call reset() before step()" in errors_by_item[1]
        assert all("must be a map whose op is one of" in message for message in errors_by_item[2:5])
        assert "env 2 is not one of this session's 2 envs" in errors_by_item[5]
        expected, _ = gym.make("CartPole-v1").reset(seed=3)
        assert np.array_equal(outcomes[0]["ok"][0], expected)
        with pytest.raises(errors.InvalidCall, match="batch needs a list of requests"):
            connection.request("batch", requests=None)
        with pytest.raises(errors.InvalidCall, match="env -1 is not one of"):
            connection.request("step", env=-1, action=0)
        assert envs.reset(seed=0)[0].shape == (2, 4)  # the session goes on
    finally:
        envs.close()


@pytest.mark.parametrize("user_setting", [{}, {"MALLOC_ARENA_MAX": "2"}])
def test_workers_keep_freed_memory_unless_the_user_tuned_glibc(user_setting):
    import os

    script = "from gym_remote.worker import keep_freed_memory_for_reuse as keep; print(keep())"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**environment, **user_setting},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == ("False" if user_setting else "True"), result.stderr


def test_bad_shared_batches_are_invalid_calls_and_the_session_goes_on(server):
    from gym_remote.sharedmem import SharedSegment

    env = remote(server, "CartPole-v1")
    segment = SharedSegment.create(0, size=4096)
    try:
        env.reset(seed=0)
        connection = env._connect()
        before = connection.request("observe")
        with pytest.raises(errors.InvalidCall, match=r"buffer 0; this session has 0 \(use_shared_batches\)"):
            connection.request("step", action=0, into=[0, 0])
        leaf = {"path": [], "offset": 64, "dtype": "<f4", "shape": [1, 4]}
        bad_requests = [
            ({"buffers": None, "layout": []}, "lists of buffers and of leaves"),
            ({"buffers": [{"pid": 1, "fd": 999, "token": "00"}], "layout": [leaf]}, "use_shared_batches"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "shape": [-1, 4]}]}, "at most 32 sizes"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "dtype": "|O"}]}, "cannot be shared"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "offset": 4090}]}, "does not fit"),
        ]
        for fields, message in bad_requests:
            with pytest.raises(errors.InvalidCall, match=message):
                connection.request("use_shared_batches", **fields)
        connection.request("use_shared_batches", buffers=[segment.offer()], layout=[leaf])
        for into, message in [
            ([0], r"into must be \[buffer, row\]"),
            ([1, 0], "row 0 of shared batch buffer 1; this session has 1"),
            ([0, -1], "row -1 of shared batch buffer 0"),
        ]:
            with pytest.raises(errors.InvalidCall, match=message):
                connection.request("step", action=0, into=into)
        for op, fields in [("reset", {"seed": 3}), ("observe", {})]:
            with pytest.raises(errors.InvalidCall, match="buffer 2; this session has 1"):
                connection.request(op, into=[2, 0], **fields)
        # Each refused before its env ran: not one step or reset was lost.
        assert np.array_equal(connection.request("observe"), before)
        observation, *_ = connection.request("step", action=0, into=[0, 0])
        assert observation is None, "written into the batch, not sent"
        assert np.array_equal(segment.array(np.float32, (1, 4), 64)[0], connection.request("observe"))
        assert env.step(1)[0].shape == (4,)  # plain requests go on as before
    finally:
        env.close()
        segment.close()
