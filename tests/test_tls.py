"""TLS on loopback (issue 28): real servers with certificates `gym-remote certs` made, clients with
the right and the wrong CA, mutual TLS, plain and TLS peers meeting each other, hostile bytes."""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gym_remote
from gym_remote.certs import make_certificates
from gym_remote.protocol import PREFIX, MessageReader, send_message
from gym_remote.testing import ServerProcess
from gym_remote.tls import TlsSocket, server_context
from tests.helpers import wait_for, worker_pids
from tests.test_decoder_bounds import nested_tuples
from tests.vector_helpers import run_both

pytest.importorskip("cryptography", reason="cryptography is in the dev extra (`make test` installs it)")

TOKEN = "tls-test-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """Certificates of another CA, which nothing here trusts."""
    return make_certificates(tmp_path_factory.mktemp("other-certs"), ["127.0.0.1"])


def tls_server(certs, *extra: str) -> ServerProcess:
    return ServerProcess(
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--token", TOKEN, "--tcp-only", "--import", "gym_remote.testing", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(certs):
    with tls_server(certs) as process:
        yield process


@pytest.fixture(scope="module")
def mutual_server(certs):
    with tls_server(certs, "--tls-client-ca", str(certs.ca)) as process:
        yield process


def test_certificates_are_written_with_private_keys_readable_by_their_owner_only(certs, tmp_path):
    for key in (certs.server_key, certs.client_key, certs.ca.with_name("ca-key.pem")):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    # A CA already there signs the new certificates: clients that trust it trust them too.
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(certs.ca.with_name(name), tmp_path / name)
    again = make_certificates(tmp_path, ["localhost"])
    assert again.ca.read_bytes() == certs.ca.read_bytes()
    assert again.server_cert.read_bytes() != certs.server_cert.read_bytes()
    with pytest.raises(ValueError, match="at least one host"):
        make_certificates(tmp_path / "none", [])


def test_a_client_with_the_right_ca_steps_as_a_local_env(server, certs):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN, tls_ca=str(certs.ca))
    local = gym.make("CartPole-v1")
    try:
        np.testing.assert_array_equal(env.reset(seed=5)[0], local.reset(seed=5)[0])
        for step in range(60):
            remote_step, local_step = env.step(step % 2), local.step(step % 2)
            for remote_value, local_value in zip(remote_step[:4], local_step[:4]):
                np.testing.assert_array_equal(remote_value, local_value)
            if local_step[2] or local_step[3]:
                np.testing.assert_array_equal(env.reset(seed=step)[0], local.reset(seed=step)[0])
        assert not env.gym_remote.uses_shared_memory  # the worker is behind the server's relay
    finally:
        env.close()


def test_images_larger_than_a_tls_record_travel_whole(server, certs):
    env = gym_remote.RemoteEnv(
        "gym_remote_testing/ImageEnv-v0", address=server.address, token=TOKEN, tls_ca=str(certs.ca)
    )
    local = gym.make("gym_remote_testing/ImageEnv-v0")
    try:
        remote_observation, _ = env.reset(seed=1)
        local_observation, _ = local.reset(seed=1)
        action = np.zeros(7, np.float32)
        for _ in range(5):
            remote_observation = env.step(action)[0]
            local_observation = local.step(action)[0]
        for name in ("image", "image2"):
            np.testing.assert_array_equal(
                remote_observation["pixels"][name], local_observation["pixels"][name]
            )
        assert remote_observation["pixels"]["image"].nbytes > 16384
    finally:
        env.close()


def test_a_vector_env_over_tls_steps_as_a_local_one(server, certs):
    envs = gym_remote.RemoteVectorEnv(
        "CartPole-v1", 3, address=server.address, token=TOKEN, tls_ca=str(certs.ca)
    )
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    try:
        assert run_both(local, envs, 60) > 0  # episodes ended and autoreset alike
    finally:
        envs.close()


def test_the_variables_set_tls_and_the_cli_pings_with_them(server, certs, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_TLS_CA", str(certs.ca))
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN)
    try:
        env.reset(seed=0)
    finally:
        env.close()
    monkeypatch.delenv("GYM_REMOTE_TLS_CA")
    command = [sys.executable, "-m", "gym_remote", "ping", "--address", server.address, "--token", TOKEN]
    pinged = subprocess.run(command + ["--tls-ca", str(certs.ca)], capture_output=True, text=True, timeout=60)
    assert pinged.returncode == 0 and "round trips" in pinged.stdout, pinged.stderr
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "speaks TLS only" in refused.stderr


def test_a_wrong_ca_is_a_tls_error(server, other_certs):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN, tls_ca=str(other_certs.ca))
    with pytest.raises(gym_remote.TlsError, match="not trusted"):
        env.reset()


def test_a_certificate_for_another_host_is_a_tls_error(certs, tmp_path):
    files = make_certificates(certs.ca.parent / "elsewhere", ["gpu-node.example"])
    with ServerProcess(
        "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key), "--token", TOKEN
    ) as process:
        env = gym_remote.RemoteEnv("CartPole-v1", address=process.address, token=TOKEN, tls_ca=str(files.ca))
        with pytest.raises(gym_remote.TlsError, match="not trusted"):
            env.reset()


def test_a_plain_client_to_a_tls_server_is_told_to_use_tls(server):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN)
    with pytest.raises(gym_remote.TlsError, match="speaks TLS only"):
        env.reset()


def test_a_tls_client_to_a_plain_server_is_a_tls_error(certs, start_server):
    plain = start_server()
    env = gym_remote.RemoteEnv("CartPole-v1", address=plain.address, tls_ca=str(certs.ca))
    with pytest.raises(gym_remote.TlsError, match="without --tls-cert"):
        env.reset()


def test_the_token_is_still_checked_inside_tls(server, certs):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token="wrong", tls_ca=str(certs.ca))
    with pytest.raises(gym_remote.AuthenticationFailed):
        env.reset()


def test_mutual_tls_needs_a_client_certificate_its_ca_signed(mutual_server, certs, other_certs):
    def make(**tls) -> gym_remote.RemoteEnv:
        return gym_remote.RemoteEnv(
            "CartPole-v1", address=mutual_server.address, token=TOKEN, tls_ca=str(certs.ca), **tls
        )

    with pytest.raises(gym_remote.TlsError, match="certificate"):
        make().reset()
    with pytest.raises(gym_remote.TlsError, match="certificate"):
        make(tls_cert=str(other_certs.client_cert), tls_key=str(other_certs.client_key)).reset()
    env = make(tls_cert=str(certs.client_cert), tls_key=str(certs.client_key))
    try:
        env.reset(seed=0)
        env.step(0)
    finally:
        env.close()


def test_hostile_bytes_and_silent_peers_leave_the_server_serving(server, certs):
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    garbage = socket.create_connection((host, int(port)), timeout=30)
    garbage.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(64))  # a handshake record that is not one
    silent = socket.create_connection((host, int(port)), timeout=30)  # says nothing at all
    try:
        garbage.settimeout(30)
        assert garbage.recv(4096) is not None  # an alert, or the end: the server let go of it
        env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN, tls_ca=str(certs.ca))
        try:
            env.reset(seed=0)
        finally:
            env.close()
    finally:
        garbage.close()
        silent.close()


def test_a_tls_handshake_dribbled_past_the_hello_deadline_is_cut(certs):
    # A real ClientHello, from an SSL object writing into memory, sent a byte at a time.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context(cafile=str(certs.ca)).wrap_bio(
        incoming, outgoing, server_hostname="x"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    client_hello = outgoing.read()
    with tls_server(certs, "--hello-timeout", "1") as process:
        host, port = process.address.removeprefix("tcp://").rsplit(":", 1)
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=30) as dribbler:
            cut = False
            for byte in client_hello:  # bounded: a few hundred bytes
                try:
                    dribbler.sendall(bytes([byte]))
                except OSError:
                    cut = True
                    break
                if select.select([dribbler], [], [], 0.2)[0]:  # pacing, and a look for the close
                    cut = dribbler.recv(1) == b""
                    break
        assert cut and time.monotonic() - started < 15.0


def test_the_worker_ends_when_its_tls_client_goes(server, certs):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, token=TOKEN, tls_ca=str(certs.ca))
    env.reset(seed=0)
    before = worker_pids(server.pid)
    assert before
    env.close()
    wait_for(lambda: not (worker_pids(server.pid) & before), timeout=60, what="the worker to end")


def test_a_tls_client_on_the_servers_host_moves_to_its_plain_local_socket(certs, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "1")
    with ServerProcess(
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--token", TOKEN
    ) as process:
        env = gym_remote.RemoteEnv("CartPole-v1", address=process.address, token=TOKEN, tls_ca=str(certs.ca))
        try:
            env.reset(seed=0)
            connection = env._connect().connection
            assert connection.address.scheme == "unix" and not connection.uses_tls
        finally:
            env.close()


def test_mutual_tls_offers_no_plain_local_socket_to_go_around_it(certs, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_LOCAL_SOCKET", "1")
    with ServerProcess(
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca), "--token", TOKEN,
    ) as process:  # fmt: skip
        env = gym_remote.RemoteEnv(
            "CartPole-v1",
            address=process.address,
            token=TOKEN,
            tls_ca=str(certs.ca),
            tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key),
        )
        try:
            env.reset(seed=0)
            connection = env._connect().connection
            assert connection.address.scheme == "tcp" and connection.uses_tls
        finally:
            env.close()


def test_incomplete_tls_settings_are_value_errors(certs):
    with pytest.raises(ValueError, match="need tls_ca"):
        gym_remote.RemoteEnv("CartPole-v1", address="tcp://127.0.0.1:1", tls_cert=str(certs.client_cert))
    with pytest.raises(ValueError, match="no such file"):
        gym_remote.RemoteEnv("CartPole-v1", address="tcp://127.0.0.1:1", tls_ca="/nonexistent/ca.pem")
    served = subprocess.run(
        [sys.executable, "-m", "gym_remote", "serve", "--tls-cert", str(certs.server_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert served.returncode != 0 and "--tls-key" in served.stderr


PYTHON_313 = next(iter(sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))), None)


@pytest.mark.skipif(PYTHON_313 is None, reason="no Python 3.13 on this machine")
def test_python_313s_default_strict_verification_accepts_the_servers_certificate(server, certs):
    """Python 3.13's ``create_default_context`` verifies strictly (``VERIFY_X509_STRICT``): key
    usage, key identifiers, SAN. Its own interpreter makes the handshake with the server."""
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    handshake = (
        "import socket, ssl, sys\n"
        f"context = ssl.create_default_context(cafile={str(certs.ca)!r})\n"
        "assert context.verify_flags & ssl.VERIFY_X509_STRICT\n"
        f"with socket.create_connection(({host!r}, {port}), timeout=30) as sock:\n"
        f"    with context.wrap_socket(sock, server_hostname={host!r}) as tls:\n"
        "        print(tls.version(), sys.version_info[:2])\n"
    )
    result = subprocess.run([str(PYTHON_313), "-c", handshake], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "(3, 13)" in result.stdout


class HostileTlsServer:
    """A TLS server (the real certificates) that answers the hello as gym-remote does and then
    replies ``reply``'s bytes to the next request; ``reply`` None: it never answers at all."""

    def __init__(self, certs, reply: bytes | None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.context = server_context(str(certs.server_cert), str(certs.server_key))
        self.reply = reply
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
            stream = TlsSocket(self.context.wrap_socket(connection, server_side=True))
            self.connections.append(stream)
            if self.reply is None:
                return  # the handshake, then silence
            reader = MessageReader(stream)
            reader.receive(30.0)
            send_message(
                stream, {"ok": {"version": 1, "server": "gym-remote hostile", "allow_pickle": False}}
            )
            reader.receive(30.0)
            stream.sendall(self.reply)
        except OSError:
            pass

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.listener.close()


@pytest.mark.parametrize(
    "reply, error",
    [
        (None, gym_remote.RemoteTimeout),  # silent after the handshake: the deadline still holds
        (PREFIX.pack(b"GYMR", 16, 1 << 40), gym_remote.MessageTooLarge),
        (b"nested", gym_remote.ProtocolError),  # 200 nested tuples, framed below
        (PREFIX.pack(b"GYMR", 8, 0) + b"\xc1" * 8, gym_remote.ProtocolError),
    ],
    ids=["silent", "oversized", "deeply-nested", "malformed"],
)
def test_a_hostile_tls_server_is_a_typed_error_within_the_deadline(certs, reply, error):
    if reply == b"nested":
        header = nested_tuples(200)
        reply = PREFIX.pack(b"GYMR", len(header), 0) + header
    hostile = HostileTlsServer(certs, reply)
    try:
        started = time.monotonic()
        with pytest.raises(error):
            gym_remote.list_envs(
                address=hostile.address, timeout=2.0, max_message_size=1 << 20, tls_ca=str(certs.ca)
            )
        assert time.monotonic() - started < 15.0
    finally:
        hostile.close()
