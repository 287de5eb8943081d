"""A seeded fuzz run against a real server: thousands of malformed frames before hello, after it
and inside sessions. Afterwards the server still serves an episode equal to a local env's, its
memory stayed within a bound, and no worker or shared memory segment is left. Loopback only,
bounded in count and time (issue 23)."""

from __future__ import annotations

import contextlib
import os
import socket

import msgpack
import numpy as np
import psutil
import pytest

import gym_remote
from gym_remote.errors import RemoteEnvError
from gym_remote.protocol import PREFIX, PROTOCOL_VERSION, MessageReader, encode_bytes
from tests.helpers import wait_for, worker_pids
from tests.test_hostile_clients import assert_serves, raw_connection

SEED = 20261202
FRAMES_BEFORE_HELLO = 1500
FRAMES_AFTER_HELLO = 1500
FRAMES_IN_SESSIONS = 1000
MOST_SESSIONS = 60  # sessions a malformed frame may end before the run stops making new ones
MEMORY_GROWTH_BOUND = 100 << 20

OPS = ["hello", "ping", "list", "tasks", "make", "reset", "step", "step_chunk", "observe", "render"]
OPS += ["getattr", "call", "setattr", "batch", "close", "use_shared_memory", "use_shared_batches"]
OPS += ["use_reply_buffers", "nonsense"]
DTYPES = ["<f4", "|u1", "<i8", "<U0", "|V0", "S", "|O", "<f4,<f4", "(2,)<f4", "<M8[ns]", "nope", 7]


class Fuzzer:
    """Malformed frames, from bytes at random to well-framed requests full of odd values."""

    def __init__(self, seed: int) -> None:
        self.random = np.random.default_rng(seed)
        self.extensions = True

    def below(self, high: int, low: int = 0) -> int:
        return int(self.random.integers(low, high))

    def frame(self, plain_share: float = 0.0) -> bytes:
        """A malformed frame; with ``plain_share``, that share are well framed requests of plain
        MessagePack values (which a session answers and survives)."""
        if self.random.random() < plain_share:
            self.extensions = False
            try:
                return self._framed(msgpack.packb(self.request()))
            finally:
                self.extensions = True
        kind = self.random.integers(6)
        if kind == 0:  # bytes at random
            return self.random.bytes(self.below(200, 1))
        if kind == 1:  # a prefix declaring anything, then a little
            magic = [b"GYMR", b"GYMS", b"GYMF", b"GYMG", b"XXXX"][self.random.integers(5)]
            header, data = (self.below(1 << 32, 0) for _ in range(2))
            return PREFIX.pack(magic, header, data) + self.random.bytes(self.below(64, 0))
        if kind == 2:  # a well-formed request with bytes flipped
            raw = bytearray(self._framed(msgpack.packb(self.request())))
            for _ in range(self.below(4, 1)):
                raw[int(self.random.integers(PREFIX.size, len(raw)))] ^= 1 << self.below(8)
            return bytes(raw)
        return self._framed(msgpack.packb(self.request()))  # well framed, odd values

    def request(self) -> dict:
        request = {"op": OPS[self.random.integers(len(OPS))] if self.random.random() < 0.9 else self.value(2)}
        for _ in range(self.below(5, 0)):
            key = ["version", "token", "env_id", "name", "args", "kwargs", "value", "seed", "action"]
            request[key[self.random.integers(len(key))]] = self.value(4)
        return request

    def value(self, depth: int):
        kind = self.random.integers((11 if self.extensions else 8) if depth > 0 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.random.integers(2))
        if kind == 2:
            return self.below(1 << 63, -(1 << 63)) >> self.below(64)
        if kind == 3:
            return float(self.random.normal()) * 10 ** float(self.random.integers(-300, 300))
        if kind == 4:
            return "".join(chr(int(c)) for c in self.random.integers(32, 0x2FF, self.below(20, 0)))
        if kind == 5:
            return self.random.bytes(self.below(32, 0))
        if kind == 6:
            return [self.value(depth - 1) for _ in range(self.below(4, 0))]
        if kind == 7:
            return {self.value(0): self.value(depth - 1) for _ in range(self.below(4, 0))}
        if kind == 8:  # an array descriptor, plausible or not
            shape = [int(size) for size in self.random.integers(-2, 1 << 40, self.below(40, 0))]
            descriptor = [DTYPES[self.random.integers(len(DTYPES))], shape, self.below(64, -8)]
            descriptor.append(self.below(1 << 40, -8))
            return msgpack.ExtType(1, msgpack.packb(descriptor))
        if kind == 9:  # nested extensions
            inner = msgpack.packb([self.value(depth - 1)])
            for _ in range(self.below(60, 0)):
                inner = msgpack.packb([msgpack.ExtType(2, inner)])
            return msgpack.ExtType(self.below(8, 0), inner)
        return msgpack.ExtType(self.below(11), self.random.bytes(self.below(16, 0)))

    @staticmethod
    def _framed(header: bytes) -> bytes:
        return PREFIX.pack(b"GYMR", len(header), 0) + header


def send(sock: socket.socket, frame: bytes) -> bool:
    """Sends a fuzzed frame, ending the stream after one that is not a whole GYMR frame (so a
    cut one fails at once); False where the peer had closed the connection already."""
    try:
        sock.sendall(frame)
        if not frame.startswith(b"GYMR") or len(frame) < PREFIX.size:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def answer(sock: socket.socket, reader: MessageReader) -> bool:
    """Reads the peer's answer to a frame; False once it closed the connection (as it may)."""
    try:
        reply = reader.receive(15.0)
    except RemoteEnvError:
        return False
    except OSError:
        return False
    assert isinstance(reply, dict) and ("ok" in reply or reply["error"]["code"]), reply
    return True


def own_memfds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:")
        except OSError:
            pass
    return count


HELLO = encode_bytes({"op": "hello", "version": PROTOCOL_VERSION, "token": "", "allow_pickle": False})


@pytest.mark.timeout(900)
def test_thousands_of_malformed_frames_leave_the_server_serving_and_nothing_behind(start_server, capfd):
    server = start_server("--max-sessions", "8", "--hello-timeout", "3", "--read-timeout", "3")
    server_process = psutil.Process(server.pid)
    assert_serves(server)  # the first session's imports are part of the baseline
    memfds_before = own_memfds()
    memory_before = server_process.memory_info().rss
    fuzzer = Fuzzer(SEED)

    for _ in range(FRAMES_BEFORE_HELLO):
        with raw_connection(server) as sock:
            frame = fuzzer.frame()
            sock.sendall(frame)
            with contextlib.suppress(OSError):  # the frame is all there is: a cut one ends at once
                sock.shutdown(socket.SHUT_WR)
            answer(sock, MessageReader(sock))

    sent = 0
    while sent < FRAMES_AFTER_HELLO:
        with raw_connection(server) as sock:
            reader = MessageReader(sock)
            sock.sendall(HELLO)
            assert "ok" in reader.receive(15.0)
            open_ = True
            while open_ and sent < FRAMES_AFTER_HELLO:
                frame = fuzzer.frame()
                sent += 1
                if msgpack.packb("make") in frame:
                    continue  # a make that works would start a session: the next phase's part
                open_ = send(sock, frame) and answer(sock, reader) and frame.startswith(b"GYMR")

    sent, sessions = 0, 0
    while sent < FRAMES_IN_SESSIONS and sessions < MOST_SESSIONS:
        env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
        env.reset(seed=sessions)
        sessions += 1
        sock, reader = env._steps.connection._sock, env._steps.connection._reader
        open_ = True
        while open_ and sent < FRAMES_IN_SESSIONS:
            frame = fuzzer.frame(plain_share=0.9)
            sent += 1
            open_ = send(sock, frame) and answer(sock, reader) and frame.startswith(b"GYMR")
        env.close()
    assert sent > FRAMES_IN_SESSIONS // 2, f"only {sent} frames reached sessions"

    assert server_process.is_running() and server_process.status() != psutil.STATUS_ZOMBIE
    assert_serves(server)
    wait_for(lambda: not worker_pids(server.pid), timeout=60.0, what="every worker to end")
    growth = server_process.memory_info().rss - memory_before
    assert growth < MEMORY_GROWTH_BOUND, f"the server grew by {growth >> 20} MiB"
    assert own_memfds() == memfds_before, "a shared memory segment was left open here"
    log = capfd.readouterr().err
    for sign_of_an_escape in ("Traceback", "Exception in thread", "sent a request that failed"):
        assert sign_of_an_escape not in log, log[-3000:]
