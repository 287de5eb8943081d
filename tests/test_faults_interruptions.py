"""Deadlines and interruptions: timed-out, interrupted, concurrent and forked calls keep requests
and replies paired, or end their session clearly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

import gym_remote
from gym_remote import errors
from tests.fault_helpers import FAULTY, assert_serves, fault, remote
from tests.helpers import all_gone, wait_for, worker_pids


def test_a_slow_call_times_out_and_closes_the_session(server):
    env = remote(server, sleep_seconds=30)
    env.reset()  # starting the worker may take seconds on a busy machine: only the step is timed
    env._steps.connection.timeout = 0.5
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
    env._steps.connection.timeout = 0.5
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
    reader = env._steps.connection._reader

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
    reader = env._steps.connection._reader
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
        wait_for(env._steps.connection._in_flight.locked, what="the other thread's step to be sent")
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
