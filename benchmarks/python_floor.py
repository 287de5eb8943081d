"""The least a Python remote env can do per step: a second floor beside the bare socket.

A minimal client and worker that do only what any Python remote env must: send the action's
bytes, step the env in a separately started interpreter (as gym-remote's workers are), send the
observation's arrays back and rebuild them as writable numpy arrays. Fixed binary headers
(``struct``), no general encoding, no checks, deadlines, spaces or typed errors: both ends know
the action's and the observation's layout in advance, rewards travel as float64 and infos are
dropped. What gym-remote costs beyond this pair is its own design; what the pair costs beyond
the bare socket is Python's.
"""

from __future__ import annotations

import pathlib
import socket
import struct
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks.common import accepted, loopback_connection, loopback_listener, observation_leaves

# A request: reset (with a seed, -1 for none) or step, then the action's bytes.
_REQUEST = struct.Struct("<?q")
# A reply: reward, terminated, truncated and the length of the observation's bytes that follow.
_REPLY = struct.Struct("<d??I")
_SCRATCH_BYTES = 1 << 16


def _worker(env_id: str, address: str) -> None:
    """Serves ``env_id`` to the client listening at ``address``: a TCP port on 127.0.0.1, or a
    Unix socket's path (starting with ``/``)."""
    import gym_remote.testing  # noqa: F401  (registers the image env)

    env = gym.make(env_id)
    action_dtype, action_shape = env.action_space.dtype, env.action_space.shape
    action_count = int(np.prod(action_shape))
    sock = loopback_connection(address if address.startswith("/") else ("127.0.0.1", int(address)))
    scratch = bytearray(_SCRATCH_BYTES)
    while sock.recv_into(scratch):  # requests are small: one receive each
        is_step, seed = _REQUEST.unpack_from(scratch)
        if is_step:
            action = np.frombuffer(scratch, action_dtype, action_count, _REQUEST.size)
            action = action.reshape(action_shape).copy() if action_shape else action[0]
            observation, reward, terminated, truncated, _ = env.step(action)
        else:
            observation, _ = env.reset(seed=None if seed < 0 else seed)
            reward, terminated, truncated = 0.0, False, False
        arrays = [array for _, array in observation_leaves(observation)]
        header = _REPLY.pack(reward, terminated, truncated, sum(array.nbytes for array in arrays))
        sock.sendmsg([header, *arrays])


class MinimalPythonEnv:
    """The client end: ``reset()`` and ``step(action)`` like an env, over the minimal protocol,
    on loopback TCP or, given ``unix_path`` (an absolute path to listen at), over a Unix socket."""

    def __init__(self, env_id: str, unix_path: str | None = None) -> None:
        local_env = gym.make(env_id)
        observation, _ = local_env.reset(seed=0)
        local_env.close()
        self._layout = [
            (path, array.dtype, array.shape, array.nbytes) for path, array in observation_leaves(observation)
        ]
        listener = loopback_listener(unix_path)
        listener.settimeout(60)  # a worker that never connects is an error, not a hang
        address = unix_path or str(listener.getsockname()[1])
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.python_floor", env_id, address],
            cwd=pathlib.Path(__file__).resolve().parent.parent,
        )
        self._sock = accepted(listener)
        listener.close()
        # A worker that dies makes receives fail after a minute instead of hanging (the kernel's
        # timeout: no extra poll per receive).
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 60, 0))
        self._scratch = bytearray(_SCRATCH_BYTES)

    def reset(self, seed: int | None = None) -> tuple[Any, dict]:
        self._sock.sendall(_REQUEST.pack(False, -1 if seed is None else seed))
        observation, _, _, _ = self._reply()
        return observation, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._sock.sendmsg([_REQUEST.pack(True, 0), np.ascontiguousarray(action)])
        observation, reward, terminated, truncated = self._reply()
        return observation, reward, terminated, truncated, {}

    def _reply(self) -> tuple[Any, float, bool, bool]:
        """One reply, its observation's bytes in memory of their own: a small reply takes one
        ``recv``, a large one's bytes after the first part are received in place."""
        view = memoryview(self._scratch)
        received = self._sock.recv_into(view)
        while received < _REPLY.size:
            received += self._sock.recv_into(view[received:])
        reward, terminated, truncated, data_length = _REPLY.unpack_from(view)
        end = _REPLY.size + data_length
        if end <= len(view):
            while received < end:
                received += self._sock.recv_into(view[received:end])
            data: Any = bytearray(view[_REPLY.size : end])
        else:
            data = np.empty(data_length, dtype=np.uint8)
            data[: received - _REPLY.size] = view[_REPLY.size : received]
            data_view = memoryview(data)
            have = received - _REPLY.size
            while have < data_length:
                have += self._sock.recv_into(data_view[have:])
        return self._observation(data), reward, terminated, truncated

    def _observation(self, data: Any) -> Any:
        observation: Any = {}
        offset = 0
        for path, dtype, shape, nbytes in self._layout:
            array = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset).reshape(shape)
            offset += nbytes
            if not path:
                return array
            place = observation
            for key in path[:-1]:
                place = place.setdefault(key, {})
            place[path[-1]] = array
        return observation

    def close(self) -> None:
        self._sock.close()
        self._worker.wait(10)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
