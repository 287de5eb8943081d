"""The least a Python remote env can do per step: a second floor beside the bare socket.

A minimal client and worker that do only what any Python remote env must: send the action,
step the env in a separately started interpreter (as gym-remote's workers are), send the
observation's arrays back and rebuild them as writable numpy arrays. No checks, no deadlines,
no spaces, no typed errors, no general encoding: both ends know the observation's layout in
advance, and infos are dropped. What gym-remote costs beyond this pair is its own design; what
the pair costs beyond the bare socket is Python's.
"""

from __future__ import annotations

import pathlib
import socket
import struct
import subprocess
import sys
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np

from benchmarks.common import observation_leaves

# Every message: the header's length and the data's length, then a msgpack header, then data.
_PREFIX = struct.Struct("<II")
_SCRATCH_BYTES = 1 << 16


def _receive(sock: socket.socket, scratch: bytearray) -> tuple[bytes, np.ndarray]:
    """One message: its header and its data (writable memory of its own). A small message takes
    one ``recv``; a large one's data is received in place after the part that came first."""
    view = memoryview(scratch)
    received = 0
    while received < _PREFIX.size:
        count = sock.recv_into(view[received:])
        if not count:
            raise EOFError
        received += count
    header_length, data_length = _PREFIX.unpack_from(scratch)
    header_end = _PREFIX.size + header_length
    while received < min(header_end + data_length, len(scratch)):
        received += sock.recv_into(view[received:])
    data = np.empty(data_length, dtype=np.uint8)
    have = received - header_end
    data[:have] = view[header_end:received]
    data_view = memoryview(data)
    while have < data_length:
        have += sock.recv_into(data_view[have:])
    return view[_PREFIX.size : header_end].tobytes(), data


def _send(sock: socket.socket, header: Any, data: list) -> None:
    packed = msgpack.packb(header)
    sock.sendmsg([_PREFIX.pack(len(packed), sum(chunk.nbytes for chunk in data)), packed, *data])


def _worker(env_id: str, port: int) -> None:
    import gym_remote.testing  # noqa: F401  (registers the image env)

    env = gym.make(env_id)
    action_space = env.action_space
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    scratch = bytearray(_SCRATCH_BYTES)
    while True:
        try:
            header, data = _receive(sock, scratch)
        except EOFError:
            return
        operation, seed = msgpack.unpackb(header)
        if operation == "reset":
            observation, _ = env.reset(seed=seed)
            reward, terminated, truncated = 0.0, False, False
        else:
            action = data.view(action_space.dtype).reshape(action_space.shape)
            if not action.shape:
                action = action[()]
            observation, reward, terminated, truncated, _ = env.step(action)
        arrays = [array for _, array in observation_leaves(observation)]
        _send(sock, [float(reward), bool(terminated), bool(truncated)], arrays)


class MinimalPythonEnv:
    """The client end: ``reset()`` and ``step(action)`` like an env, over the minimal protocol."""

    def __init__(self, env_id: str) -> None:
        local_env = gym.make(env_id)
        observation, _ = local_env.reset(seed=0)
        local_env.close()
        self._layout = [
            (path, array.dtype, array.shape, array.nbytes) for path, array in observation_leaves(observation)
        ]
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(60)  # a worker that never connects is an error, not a hang
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.python_floor", env_id, str(listener.getsockname()[1])],
            cwd=pathlib.Path(__file__).resolve().parent.parent,
        )
        self._sock, _ = listener.accept()
        listener.close()
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._scratch = bytearray(_SCRATCH_BYTES)

    def reset(self, seed: int | None = None) -> tuple[Any, dict]:
        _send(self._sock, ["reset", seed], [])
        observation, _, _, _ = self._reply()
        return observation, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        _send(self._sock, ["step", None], [np.ascontiguousarray(action)])
        observation, reward, terminated, truncated = self._reply()
        return observation, reward, terminated, truncated, {}

    def _reply(self) -> tuple[Any, float, bool, bool]:
        header, data = _receive(self._sock, self._scratch)
        reward, terminated, truncated = msgpack.unpackb(header)
        observation: Any = {}
        offset = 0
        for path, dtype, shape, nbytes in self._layout:
            array = data[offset : offset + nbytes].view(dtype).reshape(shape)
            offset += nbytes
            if not path:
                observation = array
                break
            place = observation
            for key in path[:-1]:
                place = place.setdefault(key, {})
            place[path[-1]] = array
        return observation, reward, terminated, truncated

    def close(self) -> None:
        self._sock.close()
        self._worker.wait(10)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
