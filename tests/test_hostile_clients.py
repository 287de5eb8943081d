"""A hostile client against a real server: each hole the hostile-input campaign found (issue 23),
before hello, after it and inside a session. The server must answer each with a typed error,
keep serving everyone else and keep nothing of it. Loopback only."""

from __future__ import annotations

import socket
import struct
import threading
import time

import msgpack
import numpy as np
import psutil
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.protocol import (
    EXT_NDARRAY,
    PREFIX,
    PROTOCOL_VERSION,
    MessageReader,
    PeerClosed,
    decode_frame,
    encode_frame,
)
from tests.helpers import wait_for, worker_pids
from tests.test_decoder_bounds import nested_tuples


def tcp_endpoint(server) -> tuple[str, int]:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def raw_connection(server, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to ``server`` from the loopback address ``source``."""
    return socket.create_connection(tcp_endpoint(server), timeout=timeout, source_address=(source, 0))


def frame(header: bytes, data: bytes = b"") -> bytes:
    return PREFIX.pack(b"GYMR", len(header), len(data)) + header + data


def hello(**changes) -> bytes:
    fields = {"op": "hello", "version": PROTOCOL_VERSION, "token": "", "allow_pickle": False, **changes}
    return b"".join(memoryview(chunk).cast("B") for chunk in encode_frame(fields))


def reply_to(sock: socket.socket, *frames: bytes) -> dict:
    """Sends ``frames`` and reads the reply to the last one."""
    reader = MessageReader(sock)
    for index, payload in enumerate(frames):
        sock.sendall(payload)
        reply = reader.receive(10.0)
        if index < len(frames) - 1:
            assert "ok" in reply, reply
    return reply


def error_code(reply: dict) -> str:
    assert "error" in reply, f"expected an error reply, got {reply}"
    return reply["error"]["code"]


def assert_serves(server) -> None:
    """The server still runs sessions whose episodes equal a local env's."""
    import gymnasium as gym

    local, env = gym.make("CartPole-v1"), gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        assert np.array_equal(local.reset(seed=3)[0], env.reset(seed=3)[0])
        for action in [0, 1, 1, 0, 1]:
            assert np.array_equal(local.step(action)[0], env.step(action)[0])
    finally:
        env.close()


# ------------------------------------------------------------------ 1: nesting


def test_a_deeply_nested_hello_is_refused_and_the_server_lives(start_server):
    server = start_server()
    bystander = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    bystander.reset(seed=0)
    header = nested_tuples(200)
    assert len(header) < 1000  # the 964-byte hello that used to overflow the C stack
    with raw_connection(server) as attacker:
        assert error_code(reply_to(attacker, frame(header))) == "protocol_error"
    assert server.process.poll() is None
    bystander.step(0)
    bystander.close()
    assert_serves(server)


def test_a_deeply_nested_request_after_hello_and_in_a_session_is_refused(server):
    with raw_connection(server) as attacker:
        reply = reply_to(attacker, hello(), frame(nested_tuples(200)))
        assert error_code(reply) == "protocol_error"
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    env.reset(seed=0)
    env._steps.connection._sock.sendall(frame(nested_tuples(200)))
    assert "nested" in env._steps.connection._reader.receive(10.0)["error"]["message"]
    env.close()
    assert_serves(server)


# ------------------------------------------------------------------ 4, 5: declared sizes


def array_value(dtype, shape, offset=0, nbytes=0) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([dtype, shape, offset, nbytes]))


@pytest.mark.parametrize(
    "version, problem",
    [
        (array_value("<U0", [1 << 27]), "has no size"),  # 71 bytes that allocated 128 MiB
        (array_value("|u1", [1 << 30] * 3000), "at most 32 dimensions"),
        (array_value("|u1", [-1, -4], 0, 4), "non-negative"),
    ],
    ids=["unsized-dtype", "many-dimensions", "negative-dimension"],
)
def test_a_hello_declaring_what_it_does_not_hold_is_refused_before_allocating(server, version, problem):
    header = msgpack.packb({"op": "hello", "version": version, "token": ""})
    before = psutil.Process(server.pid).memory_info().rss
    with raw_connection(server) as attacker:
        reply = reply_to(attacker, frame(header))
    assert error_code(reply) == "protocol_error" and problem in reply["error"]["message"]
    assert psutil.Process(server.pid).memory_info().rss - before < 64 << 20
    assert_serves(server)


def test_a_hello_is_kept_small(server):
    header = msgpack.packb({"op": "hello", "version": 1, "token": "", "padding": b"x" * (100 << 10)})
    with raw_connection(server) as attacker:
        assert error_code(reply_to(attacker, frame(header))) == "message_too_large"


def test_a_call_declaring_a_million_empty_rows_is_refused_in_the_worker(server):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    env.reset(seed=0)
    header = msgpack.packb({"op": "call", "name": "reset", "args": [array_value("|V0", [1 << 20])]})
    env._steps.connection._sock.sendall(frame(header))
    reply = env._steps.connection._reader.receive(10.0)
    assert error_code(reply) == "protocol_error" and "has no size" in reply["error"]["message"]
    env.close()


@pytest.mark.parametrize("version", [True, 1.0, np.float32(1), np.int64(1), "1"], ids=repr)
def test_the_version_must_be_the_integer_1(server, version):
    with raw_connection(server) as attacker:
        assert error_code(reply_to(attacker, hello(version=version))) == "version_mismatch"


# ------------------------------------------------------------------ 6: errors that escaped


@pytest.mark.parametrize(
    "frames, code",
    [
        ([hello(op=np.array(["hello"]))], "protocol_error"),
        ([hello(op=["hello"])], "protocol_error"),
        ([hello(token=np.zeros(3))], "authentication_failed"),
        ([hello(token=[1, 2])], "authentication_failed"),
        ([hello(), hello(op="tasks", env_id=["a", "b"])], "invalid_call"),
        ([hello(), hello(op=np.zeros(2))], "invalid_call"),
        ([hello(), hello(op="make", env_id=10**12000)], "invalid_call"),
        ([hello(), hello(op="make", env_id="CartPole-v1", num_envs=10**5000)], "invalid_call"),
    ],
    ids=[
        "op-array",
        "op-list",
        "token-array",
        "token-list",
        "tasks-env-id-list",
        "request-op-array",
        "env-id-huge-int",
        "num-envs-huge-int",
    ],
)
def test_malformed_requests_get_a_typed_error_not_a_closed_connection(server, frames, code, capfd):
    with raw_connection(server) as attacker:
        assert error_code(reply_to(attacker, *frames)) == code
    assert_serves(server)
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------ 7: leaked session slots


def deepest_make() -> bytes:
    """A ``make`` header whose kwargs nest as deep as MessagePack decodes them: the server can
    read it, but (with a map level of its own around it) not encode it again for a worker."""
    for depth in range(2000, 0, -1):
        kwargs = msgpack.packb({"x": 0})[:-1] + b"\x91" * depth + msgpack.packb(None)
        names = ["op", "make", "env_id", "CartPole-v1", "kwargs"]
        make = b"\x83" + b"".join(map(msgpack.packb, names)) + kwargs
        try:
            request = decode_frame(make, b"")
        except errors.ProtocolError:
            continue
        with pytest.raises(errors.UnsupportedValue, match="nested this deeply"):
            encode_frame({"request": request})
        return make
    raise AssertionError("no depth decodes")


def test_makes_whose_kwargs_cannot_reach_a_worker_take_no_session_slot(start_server):
    server = start_server("--max-sessions", "2")
    make = deepest_make()
    for _ in range(4):
        with raw_connection(server) as attacker:
            reply = reply_to(attacker, hello(), frame(make))
        assert error_code(reply) == "unsupported_value"
    assert not worker_pids(server.pid)
    envs = [gym_remote.RemoteEnv("CartPole-v1", address=server.address) for _ in range(2)]
    for env in envs:
        env.reset(seed=0)
        env.close()


# ------------------------------------------------------------------ 8: pending connections


def test_dribbled_hellos_from_one_peer_leave_room_for_everyone_else(start_server):
    server = start_server("--max-pending-connections", "8", "--hello-timeout", "2")
    stop = threading.Event()
    held = []

    def dribble() -> None:  # one byte a second, reconnecting whenever cut
        payload = hello()
        while not stop.is_set():
            try:
                with raw_connection(server, source="127.0.0.2", timeout=5.0) as sock:
                    held.append(1)
                    for byte in payload:
                        if stop.wait(1.0):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                stop.wait(0.05)

    attackers = [threading.Thread(target=dribble, daemon=True) for _ in range(8)]
    for attacker in attackers:
        attacker.start()
    try:
        wait_for(lambda: len(held) >= 8, what="the dribblers to connect")
        served = 0
        for _ in range(22):
            gym_remote.ping(address=server.address, timeout=10.0)
            served += 1
        assert served == 22
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(10.0)


def test_a_hello_dribbled_past_its_deadline_is_cut(start_server):
    server = start_server("--hello-timeout", "1", "--read-timeout", "30")
    with raw_connection(server) as attacker:
        started = time.monotonic()
        payload = hello()
        reader = MessageReader(attacker)
        attacker.sendall(payload[:20])  # a started hello, then nothing more
        reply = reader.receive(15.0)
        assert error_code(reply) == "timeout"
        assert time.monotonic() - started < 15.0  # the hello deadline, not the read timeout


def test_a_connection_that_never_reads_its_replies_loses_its_slot(start_server):
    server = start_server("--max-pending-connections", "1", "--read-timeout", "1")
    pipeliner = raw_connection(server, source="127.0.0.2", timeout=2.0)
    pipeliner.sendall(hello())
    request = frame(msgpack.packb({"op": "list"}))
    try:
        for _ in range(1_000_000):  # until both sides' buffers are full
            pipeliner.sendall(request * 64)
        raise AssertionError("the server read every request without replying")
    except (TimeoutError, OSError):
        pass

    def served_again() -> bool:
        try:
            with raw_connection(server, source="127.0.0.2") as sock:
                return "ok" in reply_to(sock, hello())
        except (OSError, PeerClosed):
            return False

    try:
        wait_for(served_again, timeout=30.0, what="the pipeliner's slot to come free")
    finally:
        pipeliner.close()


# ------------------------------------------------------------------ 9: the working directory


def test_modules_in_the_servers_working_directory_do_not_run_in_workers(start_server, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "pygame.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    server = start_server(cwd=str(tmp_path))
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, render_mode="rgb_array")
    env.reset(seed=0)
    frame_shape = env.render().shape
    env.close()
    assert frame_shape == (400, 600, 3)
    assert not marker.exists()
    assert gym_remote.list_envs(address=server.address)


# ------------------------------------------------------------------ 10: names


@pytest.mark.parametrize(
    "method, args",
    [
        ("get_wrapper_attr", ["__module__"]),
        ("get_wrapper_attr", ["__class__"]),
        ("set_wrapper_attr", ["__doc__", "changed"]),
        ("has_wrapper_attr", ["__dict__"]),
    ],
)
def test_dunder_names_stay_out_of_reach_through_wrapper_methods(server, method, args):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        with pytest.raises(errors.InvalidCall, match="attribute name .* is not allowed"):
            env._request("call", name=method, args=args, kwargs={})
        with pytest.raises(errors.InvalidCall, match="attribute name .* is not allowed"):
            env._request("call", name=method, args=[], kwargs={"name": args[0]})
        assert env.get_wrapper_attr("gravity") == 9.8  # the session goes on
    finally:
        env.close()


# ------------------------------------------------------------------ 12: slow sends


def test_a_reply_read_slowly_has_one_deadline_for_all_of_it(start_server, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")  # the reply travels on the socket
    server = start_server("--idle-timeout", "1")
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    env.reset(seed=0)
    env.unwrapped.set_wrapper_attr("blob", np.zeros(32 << 20, np.uint8))
    connection = env._steps.connection
    connection.send("getattr", name="blob")
    sock = connection._sock
    sock.settimeout(10.0)
    received, ended = 0, False
    for _ in range(300):  # 64 KiB every 0.1 s: the whole reply would take 50 s
        chunk = sock.recv(64 << 10)
        if not chunk:
            ended = True
            break
        received += len(chunk)
        time.sleep(0.1)
    env.close()
    assert ended, f"the worker still sent after {received} bytes read slowly"
    assert received < 32 << 20
    assert_serves(server)


def test_connections_reset_before_they_are_accepted_leave_the_server_serving(start_server):
    """The kernel hands over a connection its peer reset (SO_LINGER 0) already; asking who the
    peer is then fails (ENOTCONN), and must end that connection only, not the server."""
    server = start_server()
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    for _ in range(100):
        resetting = socket.create_connection((host, int(port)), timeout=10)
        resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resetting.close()
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        assert env.reset(seed=0)[0].shape == (4,)
    finally:
        env.close()
    assert server.process.poll() is None
