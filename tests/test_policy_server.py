"""Policies behind websockets: gym-remote's client against a server built on openpi's own codec,
and `gym-remote policy-serve` against gym-remote's client."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import websockets.sync.server
from openpi_client import msgpack_numpy  # openpi's wire codec

from gym_remote import errors
from gym_remote.embedded import wait_until_serving
from gym_remote.evaluation import Task, evaluate
from gym_remote.evaluation.websocket import WebsocketPolicy, pack, unpack
from tests.test_evaluation import BalancingPolicy

CARTPOLE = Task("cartpole", "CartPole-v1")


class OpenpiStyleServer:
    """openpi's WebsocketPolicyServer in miniature: metadata first, then one reply per
    observation, or the traceback as text when ``infer`` raises."""

    def __init__(self, infer) -> None:
        self.requests: list[dict] = []

        def handle(connection) -> None:
            connection.send(msgpack_numpy.packb({"server": "openpi-style"}))
            for frame in connection:
                observation = msgpack_numpy.unpackb(frame)
                self.requests.append(observation)
                try:
                    connection.send(msgpack_numpy.packb(infer(observation)))
                except Exception:
                    import traceback

                    connection.send(traceback.format_exc())
                    connection.close(1011, "internal error")
                    return

        self._server = websockets.sync.server.serve(handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture
def openpi_style():
    started = []

    def start(infer):
        server = OpenpiStyleServer(infer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_an_openpi_style_server_drives_an_eval_chunk_by_chunk(server, openpi_style):
    def infer(observation):
        leaning_right = observation["observation"][2] > 0
        return {"actions": np.full(5, int(leaning_right), np.int64), "server_timing": {"infer_ms": 1.0}}

    policy_server = openpi_style(infer)
    evaluation = evaluate(
        [CARTPOLE], policy_server.url, episodes=2, address=server.address, replan_steps=5, max_steps=30
    )
    lengths = [result.length for result in evaluation.episodes]
    assert len(policy_server.requests) == sum(-(-length // 5) for length in lengths)
    first = policy_server.requests[0]
    assert first["prompt"] == "cartpole" and first["observation"].shape == (4,)


def test_a_policy_that_raises_is_a_remote_error_with_the_servers_traceback(server, openpi_style):
    policy_server = openpi_style(lambda observation: 1 / 0)
    with pytest.raises(errors.RemoteError, match="ZeroDivisionError") as raised:
        evaluate([CARTPOLE], policy_server.url, episodes=1, address=server.address)
    assert "Traceback" in raised.value.remote_traceback and "1 / 0" in raised.value.remote_traceback


def test_an_unreachable_policy_server_fails_fast_and_says_where():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(errors.ServerUnavailable, match=f"ws://127.0.0.1:{port}"):
        WebsocketPolicy(f"ws://127.0.0.1:{port}", timeout=5)


@pytest.mark.parametrize(
    "frame, problem",
    [
        (
            pack({"actions": {b"__ndarray__": True, b"data": b"x" * 7, b"dtype": "<f4", b"shape": [2]}}),
            "bytes",
        ),
        (pack({"actions": {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}}), "dtype"),
        (pack({"actions": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}}), "shape"),
        (
            pack({"actions": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [1] * 40}}),
            "shape",
        ),
        (b"\xc1", "not msgpack"),
    ],
    ids=["short-data", "object-dtype", "negative-shape", "too-many-dimensions", "not-msgpack"],
)
def test_a_hostile_policy_servers_frames_are_protocol_errors(frame, problem):
    with pytest.raises(errors.ProtocolError, match=problem):
        unpack(frame)


def test_the_codec_reads_what_openpis_writes_and_back():
    value = {"actions": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.int64(3), "prompt": "pick"}
    for decoded in (unpack(msgpack_numpy.packb(value)), msgpack_numpy.unpackb(pack(value))):
        np.testing.assert_array_equal(decoded["actions"], value["actions"])
        assert decoded["n"] == 3 and decoded["prompt"] == "pick"


class ServedBalancing:
    """BalancingPolicy as `policy-serve` serves it: observations arrive as openpi-style dicts."""

    def reset(self, env_index):
        pass

    def act(self, observations, env_indices):
        return (np.asarray(observations["observation"])[:, 2] > 0).astype(np.int64)


def served_balancing():
    return ServedBalancing()


def test_policy_serve_serves_a_python_policy_that_evaluates_as_it_does_in_process(server):
    command = [
        sys.executable,
        "-m",
        "gym_remote",
        "policy-serve",
        "tests.test_policy_server:served_balancing",
    ]
    process = subprocess.Popen([*command, "--port", "0"], stdout=subprocess.PIPE)
    try:
        url = wait_until_serving(process, 60, prefix=b"gym-remote policy serving on ")
        with urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=10) as health:
            assert health.status == 200
        remote = evaluate([CARTPOLE], url, episodes=3, address=server.address, max_steps=40)
        local = evaluate([CARTPOLE], BalancingPolicy(), episodes=3, address=server.address, max_steps=40)

        def outcomes(evaluation):
            return sorted((r.episode, r.length, r.failure) for r in evaluation.episodes)

        assert outcomes(remote) == outcomes(local)
    finally:
        process.kill()
        process.wait()


def test_policy_serve_answers_a_hostile_clients_frames_with_a_traceback_and_serves_on():
    import websockets.sync.client

    command = [
        sys.executable,
        "-m",
        "gym_remote",
        "policy-serve",
        "tests.test_policy_server:served_balancing",
    ]
    process = subprocess.Popen([*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        url = wait_until_serving(process, 60, prefix=b"gym-remote policy serving on ")
        nested = b"\x91" * 100_000 + b"\xc0"  # an array in an array ... 100,000 deep
        huge_array = pack(
            {"observation": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [1 << 40]}}
        )
        for frame in (b"\xc1", nested, huge_array, "text, not binary"):
            with websockets.sync.client.connect(url, proxy=None, open_timeout=10) as connection:
                unpack(connection.recv(timeout=10))  # the metadata frame
                connection.send(frame)
                answer = connection.recv(timeout=30)
                assert isinstance(answer, str) and "Traceback" in answer
        policy = WebsocketPolicy(url, timeout=10)
        actions = policy.act({"observation": np.array([[0.0, 0.0, 0.1, 0.0]])}, [0])
        assert actions.tolist() == [1]
        policy.close()
    finally:
        process.kill()
        process.wait()
