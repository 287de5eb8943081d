"""A policy behind a websocket, wire-compatible with openpi's policy servers.

The protocol (openpi's ``WebsocketPolicyServer``): on connecting, the server sends a metadata
frame; then each observation dict the client sends, msgpack-encoded with NumPy arrays as
``{"__ndarray__": True, "data", "dtype", "shape"}`` maps, gets one reply: a dict with
``"actions"``, an ``(H, A)`` chunk, or a text frame holding the server's traceback when the
policy raised. ``GET /healthz`` answers 200. Every frame from the server is checked before it
is used: size, array dtypes, shapes and lengths.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np

from gym_remote.errors import ProtocolError, RemoteError, RemoteTimeout, ServerUnavailable, shown

__all__ = ["WebsocketPolicy", "pack", "unpack", "OBSERVATION_KEYS"]

# Frames above this are refused (openpi's chunks and images are a few MB at most).
MAX_FRAME_BYTES = 64 << 20
_MAX_DIMENSIONS = 32


def pack(value: Any) -> bytes:
    """``value`` as openpi's msgpack-numpy encodes it."""
    return msgpack.packb(value, default=_pack_array)


def unpack(frame: bytes) -> Any:
    """A frame openpi's msgpack-numpy encoded, with arrays checked before they are made.

    Raises:
        ProtocolError: not msgpack, or an array whose dtype, shape or length is wrong.
    """
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"a policy server frame of {len(frame)} bytes (at most {MAX_FRAME_BYTES})")
    try:
        return msgpack.unpackb(frame, object_hook=_unpack_array, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack's own errors: ExtraData, StackError, FormatError, ...
        raise ProtocolError(f"a policy server frame that is not msgpack: {shown(error)}") from None


def _pack_array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"an array of dtype {value.dtype} cannot be sent to a policy server")
        return {
            b"__ndarray__": True,
            b"data": value.tobytes(),
            b"dtype": value.dtype.str,
            b"shape": value.shape,
        }
    if isinstance(value, np.generic):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}
    raise TypeError(f"{type(value).__name__} cannot be sent to a policy server")


def _unpack_array(value: dict) -> Any:
    if b"__ndarray__" in value:
        dtype, shape, data = _dtype(value.get(b"dtype")), value.get(b"shape"), value.get(b"data")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > _MAX_DIMENSIONS
            or not all(type(size) is int and size >= 0 for size in shape)
        ):
            raise ProtocolError(f"a policy server array has shape {shown(shape)}")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise ProtocolError(
                f"a policy server array of shape {shape} and dtype {dtype} has the wrong bytes"
            )
        return np.frombuffer(data, dtype).reshape(shape)
    if b"__npgeneric__" in value:
        return _dtype(value.get(b"dtype")).type(value.get(b"data"))
    return value


def _dtype(text: Any) -> np.dtype:
    try:
        dtype = np.dtype(text) if isinstance(text, str) and len(text) <= 8 else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ProtocolError(f"a policy server array has dtype {shown(text)}")
    return dtype


def _flat(observation: Any, task: str) -> dict[str, Any]:
    """Every array of the observation under its path (``pixels/image``), and the task as ``prompt``."""
    flat: dict[str, Any] = {"prompt": task}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}/{key}" if path else str(key))
        else:
            flat[path or "observation"] = np.asarray(value)

    walk(observation, "")
    return flat


def _axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """An ``(x, y, z, w)`` quaternion as an axis-angle vector (robosuite's ``quat2axisangle``)."""
    w = float(np.clip(quaternion[3], -1.0, 1.0))
    sine = math.sqrt(1.0 - w * w)
    if math.isclose(sine, 0.0):
        return np.zeros(3)
    return np.asarray(quaternion[:3]) * 2.0 * math.acos(w) / sine


def _openpi_libero(observation: Any, task: str) -> dict[str, Any]:
    """openpi's LIBERO keys (its examples/libero/main.py): both images turned upright, and the
    end effector's position and axis-angle with the gripper's joints as the state."""
    pixels, state = observation["pixels"], observation["robot_state"]
    return {
        "observation/image": np.ascontiguousarray(pixels["image"][::-1, ::-1]),
        "observation/wrist_image": np.ascontiguousarray(pixels["image2"][::-1, ::-1]),
        "observation/state": np.concatenate(
            [state["eef"]["pos"], _axis_angle(state["eef"]["quat"]), state["gripper"]["qpos"]]
        ).astype(np.float32),
        "prompt": task,
    }


# How an env's observation (one env's) and task text become what the policy server reads.
OBSERVATION_KEYS: dict[str, Callable[[Any, str], dict[str, Any]]] = {
    "flat": _flat,
    "openpi_libero": _openpi_libero,
}


class WebsocketPolicy:
    """A :class:`~gym_remote.evaluation.Policy` whose actions come from a policy server.

    Args:
        url: ``ws://HOST:PORT`` (or ``wss://``).
        keys: How observations are sent: ``flat`` (every array under its path, the task as
            ``prompt``) or ``openpi_libero`` (openpi's LIBERO example's keys).
        api_key: Sent as ``Authorization: Api-Key ...``, as openpi's client does.
        timeout: Seconds to connect, and for each reply.

    Raises:
        ServerUnavailable: nothing answers at ``url`` within ``timeout``.
        ValueError: ``keys`` names no mapping.
    """

    def __init__(
        self, url: str, keys: str = "flat", api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        from websockets.sync.client import connect

        if keys not in OBSERVATION_KEYS:
            raise ValueError(f"observation keys {keys!r}: choose one of {', '.join(OBSERVATION_KEYS)}")
        self.url = url
        self.timeout = timeout
        self._observation_keys = OBSERVATION_KEYS[keys]
        self._tasks: dict[int, str] = {}
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._open = contextlib.ExitStack()  # websockets wants its connections used as contexts
        try:
            self._connection = self._open.enter_context(
                connect(
                    url,
                    open_timeout=timeout,
                    max_size=MAX_FRAME_BYTES,
                    compression=None,
                    additional_headers=headers,
                    proxy=None,  # straight to the address given, never through an HTTP proxy
                )
            )
            self.metadata = unpack(self._receive())
        except (OSError, TimeoutError) as error:
            raise ServerUnavailable(f"no policy server answers at {url}: {error}") from None

    def set_task(self, env_index: int, description: str) -> None:
        """The task text env ``env_index`` works on (sent as the prompt)."""
        self._tasks[env_index] = description

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        chunks = []
        for position, index in enumerate(env_indices):
            element = self._observation_keys(_row(observations, position), self._tasks.get(index, ""))
            self._connection.send(pack(element))
            reply = self._receive()
            if isinstance(reply, str):
                last_line = (reply.strip().splitlines() or ["(no message)"])[-1]
                raise RemoteError(
                    f"the policy server at {self.url} raised: {last_line}", remote_traceback=reply
                )
            result = unpack(reply)
            if not isinstance(result, dict) or not isinstance(
                result.get("actions"), (np.ndarray, np.generic)
            ):
                raise ProtocolError(f"the policy server at {self.url} answered {shown(result)}, not actions")
            chunks.append(np.asarray(result["actions"]))
        return np.stack(chunks)

    def close(self) -> None:
        self._open.close()

    def _receive(self) -> Any:
        from websockets.exceptions import ConnectionClosed

        try:
            return self._connection.recv(timeout=self.timeout)
        except TimeoutError:
            raise RemoteTimeout(
                f"the policy server at {self.url} sent nothing within {self.timeout:g} s"
            ) from None
        except ConnectionClosed as error:
            raise ServerUnavailable(
                f"the policy server at {self.url} closed the connection ({error})"
            ) from None


def _row(batch: Any, position: int) -> Any:
    """The observation at ``position`` of a batch of (nested dicts of) arrays."""
    if isinstance(batch, Mapping):
        return {key: _row(value, position) for key, value in batch.items()}
    return batch[position]
