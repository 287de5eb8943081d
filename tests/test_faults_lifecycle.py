"""Sessions and processes over their lifetime: slow neighbours, many clients, vanished clients,
idle and silent sessions, session and descriptor limits, and worker memory settings.
"""

from __future__ import annotations

import os
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
from gym_remote.protocol import (
    PROTOCOL_VERSION,
    MessageReader,
    encode_frame,
    send_message,
)
from tests.fault_helpers import assert_serves, client_connection, fault, raw_socket, remote
from tests.helpers import all_gone, wait_for, worker_pids


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
    dropped._steps.connection._sock.close()  # gone without a word
    dropped.close()  # finds the session gone: nothing to raise
    with raw_socket(server) as sock:
        send_message(sock, {"op": "hello", "version": PROTOCOL_VERSION})
        assert "ok" in MessageReader(sock).receive(10.0)
    raw_socket(server).close()  # connected, then gone before hello


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
    connection = client_connection(server)
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
