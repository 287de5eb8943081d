"""A hostile server (or a hostile peer's shared memory) against a default client and a real
worker: nothing it says may make either run its code, follow it elsewhere with the token, or
map memory that is not a segment of that very peer (issue 23). Loopback only."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.addresses import parse_address
from gym_remote.connection import Connection
from gym_remote.protocol import PREFIX
from gym_remote.sharedmem import DATA_START, SharedSegment
from tests.test_decoder_bounds import nested_tuples

# A server that answers hello with WELCOME and every later request with REPLY, for one client
# at a time, in a process of its own (so that it is not the client's own process).
FAKE_SERVER = textwrap.dedent(
    """
    import pickle, socket, sys
    from gym_remote.protocol import MessageReader, send_message, encode_frame, send_buffers
    welcome, reply = pickle.loads(bytes.fromhex(sys.argv[1]))
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        connection, _ = listener.accept()
        reader = MessageReader(connection)
        try:
            reader.receive(30.0)
            send_message(connection, {"ok": welcome})
            while True:
                reader.receive(30.0)
                if isinstance(reply, bytes):
                    connection.sendall(reply)
                else:
                    send_message(connection, reply)
        except Exception:
            connection.close()
    """
)


class FakeServer:
    def __init__(self, welcome: dict, reply) -> None:
        argument = pickle.dumps((welcome, reply)).hex()
        self.process = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER, argument], stdout=subprocess.PIPE, text=True
        )
        self.address = f"tcp://127.0.0.1:{int(self.process.stdout.readline())}"

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.kill()
        self.process.wait()


class RunsOnLoad:
    """Unpickling this creates ``path``: the proof that a pickle from the peer ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_reply(path: str) -> bytes:
    """A reply frame whose result is a pickle extension that creates ``path`` when loaded."""
    import msgpack

    from gym_remote.protocol import EXT_PICKLE

    header = msgpack.packb({"ok": msgpack.ExtType(EXT_PICKLE, pickle.dumps(RunsOnLoad(path)))})
    return PREFIX.pack(b"GYMR", len(header), 0) + header


def test_a_server_saying_it_allows_pickle_does_not_make_a_default_client_unpickle(tmp_path):
    marker = tmp_path / "ran"
    welcome = {"version": 1, "server": "gym-remote hostile", "allow_pickle": True}
    with FakeServer(welcome, pickled_reply(str(marker))) as fake:
        with pytest.raises(errors.UnsupportedValue, match="pickle is not enabled"):
            gym_remote.list_envs(address=fake.address, timeout=10.0)
        with pytest.raises((errors.UnsupportedValue, errors.ProtocolError)):
            gym_remote.RemoteEnv("CartPole-v1", address=fake.address, timeout=10.0).reset()
    assert not marker.exists()


@pytest.mark.parametrize("welcome", [["not", "a", "map"], "hello", 7])
def test_a_hello_reply_that_is_no_map_is_a_protocol_error(welcome):
    with FakeServer(welcome, {"ok": None}) as fake:
        with pytest.raises(errors.ProtocolError, match="not a map"):
            gym_remote.ping(address=fake.address, timeout=10.0)


def test_a_local_address_of_another_process_gets_no_token(monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "1")
    attacker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"@gym-remote-test-attacker-{os.getpid()}-{np.random.default_rng().integers(1 << 60)}"
    attacker.bind("\0" + name[1:])
    attacker.listen(4)
    heard: list[bytes] = []

    def listen() -> None:
        attacker.settimeout(20.0)
        try:
            connection, _ = attacker.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(10.0)
            try:
                while chunk := connection.recv(4096):
                    heard.append(chunk)
            except OSError:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    welcome = {"version": 1, "server": "gym-remote hostile", "allow_pickle": False}
    welcome["local_address"] = f"unix://{name}"
    not_found = {
        "error": {"code": "env_not_found", "message": "no such env", "type": None, "traceback": None}
    }
    try:
        with FakeServer(welcome, not_found) as fake:
            with pytest.raises(errors.EnvNotFound):  # it stayed with the server it was given
                gym_remote.RemoteEnv(
                    "CartPole-v1", address=fake.address, token="secret-token", timeout=10.0
                ).reset()
        listener.join(20.0)
    finally:
        attacker.close()
    assert b"secret-token" not in b"".join(heard)
    assert heard == []


def test_the_real_local_socket_is_still_taken(server, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "1")
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        assert env._steps.connection.address.scheme == "unix"
    finally:
        env.close()


# ------------------------------------------------------------------ offered segments


def own_file_offer(tmp_path) -> tuple[dict, int, bytes]:
    """An offer of a plain file this process holds open, its first 16 bytes as the token."""
    path = tmp_path / "log.txt"
    contents = b"0123456789abcdef" + b"the server's log\n" * 64
    path.write_bytes(contents)
    descriptor = os.open(path, os.O_RDWR)
    return {"pid": os.getpid(), "fd": descriptor, "token": contents[:16].hex()}, descriptor, contents


def unsealed_memfd_offer() -> tuple[dict, int]:
    descriptor = os.memfd_create("gym-remote")
    os.ftruncate(descriptor, 1 << 16)
    token = os.urandom(16)
    os.pwrite(descriptor, token, 0)
    return {"pid": os.getpid(), "fd": descriptor, "token": token.hex()}, descriptor


def cartpole_batch_layout() -> list[dict]:
    return [{"path": [], "offset": DATA_START, "dtype": "<f4", "shape": [1, 4]}]


def test_a_worker_never_writes_into_a_file_a_client_names(server, tmp_path):
    offer, descriptor, contents = own_file_offer(tmp_path)
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match="not a gym-remote shared memory segment"):
            env._steps.request("use_shared_batches", buffers=[offer], layout=cartpole_batch_layout())
        with pytest.raises(errors.InvalidCall, match="not a gym-remote shared memory segment"):
            env._steps.request("use_reply_buffers", buffers=[offer])
        server_log = {"pid": server.pid, "fd": 2, "token": contents[:16].hex()}
        with pytest.raises(errors.InvalidCall, match="not at the other end of this connection"):
            env._steps.connection.request(
                "use_shared_batches", buffers=[server_log], layout=cartpole_batch_layout()
            )
        env.step(0)
        assert os.pread(descriptor, len(contents), 0) == contents
    finally:
        env.close()
        os.close(descriptor)


def test_a_worker_refuses_a_segment_that_could_shrink_under_it(server):
    offer, descriptor = unsealed_memfd_offer()
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match="not sealed"):
            env._steps.request("use_shared_batches", buffers=[offer], layout=cartpole_batch_layout())
        env.step(0)
    finally:
        env.close()
        os.close(descriptor)


def test_a_worker_refuses_a_segment_of_a_process_other_than_its_client(server):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from gym_remote.sharedmem import SharedSegment; import json, sys; "
            "segment = SharedSegment.create(0, fixed_size=True); "
            "print(json.dumps(segment.offer()), flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        import json

        offer = json.loads(holder.stdout.readline())
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match=f"process {offer['pid']} is not at the other end"):
            env._steps.request("use_reply_buffers", buffers=[offer])
        env.step(0)
    finally:
        env.close()
        holder.kill()
        holder.wait()


def test_a_client_maps_only_segments_its_own_worker_offers(server, tmp_path):
    offer, descriptor, _ = own_file_offer(tmp_path)
    connection = Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 26)
    try:
        assert connection.use_shared_memory(offer) is False
        assert not connection.uses_shared_memory
        memfd_offer, memfd = unsealed_memfd_offer()
        assert connection.use_shared_memory(memfd_offer) is False
        os.close(memfd)
    finally:
        connection.close()
        os.close(descriptor)


def test_a_segment_made_here_is_sealed_and_attaches_for_its_own_peer():
    left, right = socket.socketpair()
    segment = SharedSegment.create(0, size=1 << 16, fixed_size=True)
    try:
        with left, right:
            attached = SharedSegment.attach(segment.offer(), right)  # this process is both ends
            attached.close()
            with pytest.raises(OSError):
                os.ftruncate(segment.fd, 0)  # sealed: it never shrinks under a mapping
    finally:
        segment.close()


@pytest.mark.parametrize(
    "reply, error",
    [
        (None, errors.ProtocolError),  # 200 nested tuples, framed below
        (PREFIX.pack(b"GYMR", 16, 1 << 40), errors.MessageTooLarge),
        (PREFIX.pack(b"GYMR", 8, 0) + b"\xc1" * 8, errors.ProtocolError),
    ],
    ids=["deeply-nested", "oversized", "malformed"],
)
def test_a_hostile_reply_is_a_typed_error_in_a_default_client(reply, error):
    if reply is None:
        header = nested_tuples(200)
        reply = PREFIX.pack(b"GYMR", len(header), 0) + header
    welcome = {"version": 1, "server": "gym-remote hostile", "allow_pickle": False}
    with FakeServer(welcome, reply) as fake:
        with pytest.raises(error):
            gym_remote.list_envs(address=fake.address, timeout=10.0, max_message_size=1 << 20)


@pytest.mark.parametrize(
    "observation_leaf",
    [
        {"path": [], "dtype": "<f8", "shape": [4], "offset": 0},  # another dtype than the space's
        {"path": [], "dtype": "<f4", "shape": [1 << 30], "offset": 0},  # past the data it sends
        {"path": [], "dtype": "<f4", "shape": [4], "offset": 3},  # unaligned
    ],
    ids=["dtype", "shape", "offset"],
)
def test_a_fixed_layout_offer_that_does_not_fit_the_space_is_a_protocol_error(observation_leaf):
    import gymnasium as gym

    from gym_remote.worker import describe_env

    description = describe_env(gym.make("CartPole-v1"), allow_pickle=False)
    description["fixed_steps"] = {
        "action": {"dtype": "<i8", "shape": []},
        "observation": [observation_leaf],
        "resets": True,
        "batch_rows": True,
    }
    welcome = {"version": 1, "server": "gym-remote hostile", "allow_pickle": False}
    with FakeServer(welcome, {"ok": description}) as fake:
        env = gym_remote.RemoteEnv("CartPole-v1", address=fake.address, timeout=10.0)
        with pytest.raises(errors.ProtocolError, match="malformed fixed_steps layout"):
            env.reset(seed=0)
        assert env.gym_remote.state.value == "not_connected"  # nothing of the session was kept
        env.close()
