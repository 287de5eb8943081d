"""Fixed-layout frames: a ``step`` or ``reset`` and its reply as raw bytes behind a small
binary header.

When a session's action is one fixed-shape array (Box, Discrete, MultiDiscrete, MultiBinary)
and its observation is such arrays in Dicts and Tuples, the worker offers a layout in its
``make`` reply and the client may then send steps and resets as ``GYMF`` frames::

    request header = request kind: uint8 | reply buffer: uint8 | batch buffer: uint8 | 1 zero byte
                     | batch row: uint32
                     data = the action's bytes (a step), nothing or an int64 seed (a reset)
    reply header   = reward: 8 bytes | reward kind: uint8 | terminated: uint8 | truncated: uint8
                     | 1 zero byte | info length: uint32 | info  data = the observation's arrays

where info is a MessagePack value as in ordinary headers (empty for ``{}``); a reset's reply
has reward 0.0 and both flags False. A step request may name one of the session's reply buffers
(shared memory the client made, see ``use_reply_buffers`` in ``docs/protocol.md``; 0: none,
``n``: the n-th): the worker then writes the observation's data section there, and its reply has
an empty data section. A step or reset request may instead name a row of one of the session's
shared batches (see ``use_shared_batches``; batch buffer 0: none, ``n``: the n-th), where the
worker then writes the observation, as an ordinary request's ``into`` asks. Both ends fall back
to ordinary frames wherever a value does not fit exactly (another action type, a reset with
options, a reward or flag of another type, an info holding arrays, an observation of another
dtype, shape or structure), so what user code gets is always what the env returned. See
``docs/protocol.md``. This module runs inside simulator interpreters too: it keeps to
Python 3.8 and gymnasium 0.29.
"""

import struct
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.errors import InvalidCall, ProtocolError, UnsupportedValue, shown
from gym_remote.protocol import MAGIC_FIXED, PREFIX, decode_frame, encode_frame, shape_problem, wire_dtype
from gym_remote.space_walk import leaf_subspaces
from gym_remote.step.layout import IN_REPLY, ObservationLayout, Placement, in_batch_row, in_reply_buffer

__all__ = ["FixedLayout", "ACTION_HEADER", "REPLY_HEADER", "MAX_REPLY_BUFFERS"]

ACTION_HEADER = struct.Struct("<BBBxI")
# Where a request header names a shared batch row: batch buffer, a zero byte, batch row.
_BATCH_ROW = struct.Struct("<BBI")
# The most reply buffers a session can have (a request names one by 1, 2, ...; 0: none).
MAX_REPLY_BUFFERS = 3
REPLY_HEADER = struct.Struct("<8sBBBxI")
# What a request's reply buffer code (0, 1, ...) places the observation in.
_PLACEMENT_OF_CODE = [IN_REPLY] + [in_reply_buffer(number) for number in range(1, MAX_REPLY_BUFFERS + 1)]

# Request kinds: a step whose action is an array of the layout's dtype and shape, or (for a
# scalar layout) a numpy scalar of its dtype or a Python int (sent as int64); or a reset.
ACTION_ARRAY, ACTION_NUMPY_SCALAR, ACTION_INT, RESET = 0, 1, 2, 3
# A whole reset request without a seed, and the start of one with a seed (8 bytes follow).
_UNSEEDED_RESET = PREFIX.pack(MAGIC_FIXED, ACTION_HEADER.size, 0) + ACTION_HEADER.pack(RESET, 0, 0, 0)
_SEEDED_RESET_START = PREFIX.pack(MAGIC_FIXED, ACTION_HEADER.size, 8) + ACTION_HEADER.pack(RESET, 0, 0, 0)
_REPLY_BUFFER_CODES = range(MAX_REPLY_BUFFERS + 1)
# Reward kinds: the type and the reply header that holds it (as a float64 or an int64).
_FLOAT_REPLY = struct.Struct("<dBBBxI")
_INT_REPLY = struct.Struct("<qBBBxI")
_REWARD_KINDS = [
    (float, _FLOAT_REPLY),
    (int, _INT_REPLY),
    (np.float64, _FLOAT_REPLY),
    (np.float32, _FLOAT_REPLY),
]
# Where a whole frame's reward and data section start.
_REWARD_AT = PREFIX.size
_REQUEST_DATA_AT = PREFIX.size + ACTION_HEADER.size
_BATCH_ROW_AT = PREFIX.size + 2  # in a whole request
_NO_BATCH_ROW = bytes(_BATCH_ROW.size)
_REPLY_DATA_AT = PREFIX.size + REPLY_HEADER.size
# Flag codes for terminated and truncated: Python bools (0, 1), then numpy bools (2, 3).
_FLAGS = [False, True, np.False_, np.True_]
_FLAG_BASE = {bool: 0, np.bool_: 2}
# A whole reply: its prefix, the reward read as a float64, and the 8 header bytes after it.
_WHOLE_REPLY = struct.Struct("<16sd8s")
_INT64 = struct.Struct("<q")
# Per valid 8 bytes after the reward with an empty info: the reward's type and the two flags.
_EMPTY_INFO_TAILS = {
    struct.pack("<BBBxI", number, terminated, truncated, 0): (
        reward_type,
        _FLAGS[terminated],
        _FLAGS[truncated],
    )
    for number, (reward_type, _) in enumerate(_REWARD_KINDS)
    for terminated in range(len(_FLAGS))
    for truncated in range(len(_FLAGS))
}
# Per (reward, terminated, truncated) types that fit: the reward kind, its reply header and the
# flags' bases.
_STEP_KINDS = {
    (reward_type, terminated_type, truncated_type): (number, header, terminated_base, truncated_base)
    for number, (reward_type, header) in enumerate(_REWARD_KINDS)
    for terminated_type, terminated_base in _FLAG_BASE.items()
    for truncated_type, truncated_base in _FLAG_BASE.items()
}
_INT64_RANGE = range(-(1 << 63), 1 << 63)
_FIXED_SHAPE_ACTIONS = (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)


class FixedLayout:
    """What fixed-layout frames hold in one session: the action's array, and the observation's
    arrays laid out by an :class:`~gym_remote.step.layout.ObservationLayout`."""

    def __init__(
        self,
        action_dtype: np.dtype,
        action_shape: Tuple[int, ...],
        observation: ObservationLayout,
        takes_resets: bool = True,
        takes_batch_rows: bool = True,
    ) -> None:
        self.action_dtype = action_dtype
        self.action_shape = action_shape
        self.action_nbytes = int(np.prod(action_shape, dtype=np.int64)) * action_dtype.itemsize
        self.observation_layout = observation
        self.observation_nbytes = observation.nbytes
        # Whether the worker takes fixed-layout resets, and writes observations into the shared
        # batch rows requests name (its offer says both).
        self.takes_resets = takes_resets
        self.takes_batch_rows = takes_batch_rows
        # Per leaf, in order: the leaf, and the zeros before it in the data section.
        ends = [0] + [leaf.offset + leaf.nbytes for leaf in observation.leaves]
        self._leaves_padded = [
            (leaf, bytes(leaf.offset - end)) for leaf, end in zip(observation.leaves, ends)
        ]
        # Per action kind, the start (prefix and header) of a step request per reply buffer code.
        action_start = _frame_start(ACTION_HEADER.size, self.action_nbytes)
        int_start = _frame_start(ACTION_HEADER.size, 8)
        self._array_action_starts, self._scalar_action_starts, self._int_action_starts = (
            [start + ACTION_HEADER.pack(kind, code, 0, 0) for code in _REPLY_BUFFER_CODES]
            for start, kind in [
                (action_start, ACTION_ARRAY),
                (action_start, ACTION_NUMPY_SCALAR),
                (int_start, ACTION_INT),
            ]
        )
        self._action_of_kind = {
            ACTION_ARRAY: self._array_action,
            ACTION_NUMPY_SCALAR: self._numpy_scalar_action,
            ACTION_INT: _int_action,
        }
        self._request_starts, self._scalar_action_type = self._whole_request_starts()
        self._reply_start = _frame_start(REPLY_HEADER.size, self.observation_nbytes)
        # The length of a reply with an empty info, and the most buffers a reply takes.
        self.whole_reply_length = _REPLY_DATA_AT + self.observation_nbytes
        self.most_reply_buffers = 2 + 2 * len(observation.leaves)

    def _whole_request_starts(
        self,
    ) -> Tuple[Dict[bytes, Tuple[int, Callable[[Any], Any], int]], Optional[type]]:
        """The starts (prefix and header) of the step requests this layout takes, each with its
        whole length, what turns its data section into the action, and its reply buffer code;
        and the numpy scalar type of a scalar layout's actions."""
        array_request_length = _REQUEST_DATA_AT + self.action_nbytes
        starts: Dict[bytes, Tuple[int, Callable[[Any], Any], int]] = {
            start: (array_request_length, self._array_action, code)
            for code, start in enumerate(self._array_action_starts)
        }
        if self.action_shape:
            return starts, None
        for code in _REPLY_BUFFER_CODES:
            starts[self._scalar_action_starts[code]] = (array_request_length, self._numpy_scalar_action, code)
            starts[self._int_action_starts[code]] = (_REQUEST_DATA_AT + 8, _int_action, code)
        scalar_type = (
            self.action_dtype.type if np.dtype(self.action_dtype.type) == self.action_dtype else None
        )
        return starts, scalar_type

    # ------------------------------------------------------------------ agreeing on it

    @classmethod
    def for_env(cls, env: gym.Env) -> Optional["FixedLayout"]:
        """The layout of ``env``'s steps, or None when its action is not one fixed-shape array
        or its observation not fixed-shape arrays (a Discrete observation is a numpy scalar,
        which these frames do not carry)."""
        action_space = env.action_space
        if isinstance(action_space, spaces.Discrete):
            action_shape: Tuple[int, ...] = ()
        elif isinstance(action_space, _FIXED_SHAPE_ACTIONS):
            action_shape = tuple(action_space.shape)
        else:
            return None
        observation = ObservationLayout.for_space(env.observation_space)
        if observation is None or any(
            isinstance(subspace, spaces.Discrete)
            for _, subspace in leaf_subspaces(env.observation_space) or []
        ):
            return None
        return cls(np.dtype(action_space.dtype), action_shape, observation)

    def to_wire(self) -> Dict[str, Any]:
        """The ``fixed_steps`` field of a ``make`` reply."""
        return {
            "action": {"dtype": self.action_dtype.str, "shape": list(self.action_shape)},
            "observation": self.observation_layout.to_wire(),
            "resets": self.takes_resets,
            "batch_rows": self.takes_batch_rows,
        }

    @classmethod
    def from_wire(cls, payload: Any, observation_space: spaces.Space) -> "FixedLayout":
        """The layout a ``make`` reply's ``fixed_steps`` field describes for a session whose
        observation space is ``observation_space``.

        Raises:
            ProtocolError: the field is malformed, or does not describe that space's leaves.
        """
        try:
            action = payload["action"]
            observation = ObservationLayout.from_wire(payload["observation"], observation_space)
            takes_resets, takes_batch_rows = (_flag(payload, name) for name in ("resets", "batch_rows"))
            return cls(
                wire_dtype(action["dtype"]),
                _shape(action["shape"]),
                observation,
                takes_resets,
                takes_batch_rows,
            )
        except (LookupError, TypeError, ValueError, ProtocolError) as error:
            raise ProtocolError(f"malformed fixed_steps layout {shown(payload)}: {error}") from None

    # ------------------------------------------------------------------ the client's end

    def encode_step(self, action: Any, placement: Placement = IN_REPLY) -> Optional[bytes]:
        """The whole fixed-layout step request for ``action``, asking for the observation where
        ``placement`` says; None if it does not fit (or the worker takes no batch rows)."""
        code = placement.reply_buffer
        kind_of = type(action)
        if kind_of is np.ndarray:
            if action.shape != self.action_shape or action.dtype != self.action_dtype:
                return None
            request = self._array_action_starts[code] + action.tobytes()
        elif self.action_shape:
            return None
        elif kind_of is int:
            if action not in _INT64_RANGE:
                return None
            request = self._int_action_starts[code] + action.to_bytes(8, "little", signed=True)
        elif kind_of is self._scalar_action_type:
            request = self._scalar_action_starts[code] + action.tobytes()
        else:
            return None
        return request if placement.batch_buffer is None else self._into_batch_row(request, placement)

    def encode_reset(self, seed: Optional[int], placement: Placement = IN_REPLY) -> Optional[bytes]:
        """The whole fixed-layout reset request for ``seed``, asking for the observation in the
        reply or the shared batch row ``placement`` names; None if the worker takes no
        fixed-layout resets (or batch rows), or ``seed`` is not None or an int within int64."""
        if not self.takes_resets or placement.reply_buffer:
            return None
        if seed is None:
            request = _UNSEEDED_RESET
        elif type(seed) is not int or seed not in _INT64_RANGE:
            return None
        else:
            request = _SEEDED_RESET_START + seed.to_bytes(8, "little", signed=True)
        return request if placement.batch_buffer is None else self._into_batch_row(request, placement)

    def _into_batch_row(self, request: bytes, placement: Placement) -> Optional[bytes]:
        """``request`` (which names no reply buffer) naming the shared batch row of ``placement``."""
        buffer, row = placement.batch_buffer, placement.row
        assert buffer is not None
        if not self.takes_batch_rows or not (0 <= buffer < 255 and 0 <= row < 1 << 32):
            return None
        return request[:_BATCH_ROW_AT] + _BATCH_ROW.pack(buffer + 1, 0, row) + request[_REQUEST_DATA_AT:]

    def decode_whole_reply(self, chunk: Any) -> Optional[Tuple[Any, Any, Any, Any, Dict[str, Any]]]:
        """The step result in ``chunk`` when it is exactly one fixed-layout reply with an empty
        info (the usual step: one receive, one parse); otherwise None, and
        :meth:`MessageReader.receive_frame <gym_remote.protocol.MessageReader.receive_frame>`
        and :meth:`decode_reply` take the frame."""
        if len(chunk) != self.whole_reply_length:
            return None
        start, reward, tail = _WHOLE_REPLY.unpack_from(chunk)
        kinds = _EMPTY_INFO_TAILS.get(tail)
        if kinds is None or start != self._reply_start:
            return None
        reward_type, terminated, truncated = kinds
        if reward_type is not float:
            reward = _INT64.unpack_from(chunk, _REWARD_AT)[0] if reward_type is int else reward_type(reward)
        data = bytearray(chunk[_REPLY_DATA_AT:])
        leaf = self.observation_layout.single_leaf
        if leaf is None:
            return self.observation_layout.observation(data), reward, terminated, truncated, {}
        return np.ndarray(leaf.shape, leaf.dtype, data), reward, terminated, truncated, {}

    def decode_reply(
        self, header: Any, data: Any, allow_pickle: bool = False, elsewhere: bool = False
    ) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        """A fixed-layout reply's ``(observation, reward, terminated, truncated, info)``; with
        ``elsewhere`` (the worker wrote the observation into a reply buffer or a shared batch
        row, and the data section is empty), the observation is None.

        Raises:
            ProtocolError: the header or data section does not fit the layout.
        """
        try:
            reward_type, reply_header = _REWARD_KINDS[header[8]]
            reward, _, terminated, truncated, info_length = reply_header.unpack_from(header)
            flags = _FLAGS[terminated], _FLAGS[truncated]
        except (struct.error, IndexError) as error:
            raise ProtocolError(f"malformed fixed-layout reply header ({error})") from None
        if type(reward) is not reward_type:
            reward = reward_type(reward)
        if len(header) != REPLY_HEADER.size + info_length:
            raise ProtocolError(
                f"fixed-layout reply header has {len(header)} bytes, its info length says "
                f"{REPLY_HEADER.size + info_length}"
            )
        info = decode_frame(header[REPLY_HEADER.size :], b"", allow_pickle) if info_length else {}
        if type(info) is not dict:
            raise ProtocolError(f"the info of a fixed-layout reply is a {type(info).__name__}, not a map")
        if elsewhere:
            return None, reward, flags[0], flags[1], info
        if len(data) != self.observation_nbytes:
            raise ProtocolError(
                f"fixed-layout reply has {len(data)} bytes of observation, expected {self.observation_nbytes}"
            )
        return self.observation_layout.observation(data), reward, flags[0], flags[1], info

    # ------------------------------------------------------------------ the worker's end

    def whole_step_request(self, chunk: Any) -> Optional[Tuple[Any, Placement]]:
        """The action and placement in ``chunk`` when it is exactly one well-formed fixed-layout
        step request (one receive, one or two lookups); otherwise None, and
        :meth:`MessageReader.receive_frame <gym_remote.protocol.MessageReader.receive_frame>`
        and :meth:`decode_request` take the frame (and say what is wrong with it)."""
        start = bytes(chunk[:_REQUEST_DATA_AT])
        request = self._request_starts.get(start)
        placement = None
        if request is None:  # one naming a batch row has a known start but for the header's end
            request = self._request_starts.get(start[:_BATCH_ROW_AT] + _NO_BATCH_ROW)
            if request is None or request[2] or len(start) != _REQUEST_DATA_AT:
                return None
            try:
                placement = _batch_row_named(start[PREFIX.size :])
            except InvalidCall:
                return None
        if len(chunk) != request[0]:
            return None
        return request[1](chunk[_REQUEST_DATA_AT:]), placement or _PLACEMENT_OF_CODE[request[2]]

    def decode_request(self, header: Any, data: Any) -> Tuple[str, Any, Placement]:
        """A fixed-layout request's op (``"step"`` or ``"reset"``), its action or seed (None for
        none), and where it asks for the observation.

        Raises:
            InvalidCall: the header or data section does not fit the layout.
        """
        if len(header) != ACTION_HEADER.size:
            raise InvalidCall(
                f"a fixed-layout request header has {ACTION_HEADER.size} bytes, got {len(header)}"
            )
        kind, reply_buffer = header[0], header[1]
        batch_row = _batch_row_named(header)
        if kind == RESET:
            if len(data) not in (0, 8):
                raise InvalidCall(f"a fixed-layout reset has 0 or 8 bytes of seed, got {len(data)}")
            if reply_buffer:
                raise InvalidCall(
                    f"a fixed-layout reset names reply buffer {reply_buffer}: only steps take one"
                )
            seed = int.from_bytes(data, "little", signed=True) if data else None
            return "reset", seed, batch_row or IN_REPLY
        expected = 8 if kind == ACTION_INT else self.action_nbytes
        if kind > ACTION_INT or (kind != ACTION_ARRAY and self.action_shape):
            raise InvalidCall(f"action kind {kind} does not fit the action layout {self.action_shape}")
        if len(data) != expected:
            raise InvalidCall(f"a fixed-layout action of kind {kind} has {expected} bytes, got {len(data)}")
        if batch_row is not None and reply_buffer:
            raise InvalidCall(f"a fixed-layout step names both reply buffer {reply_buffer} and a batch row")
        return "step", self._action_of_kind[kind](data), batch_row or in_reply_buffer(reply_buffer)

    def _array_action(self, data: Any) -> np.ndarray:
        """An array action in memory of its own (``data`` may be a receive buffer's)."""
        return np.ndarray(self.action_shape, self.action_dtype, bytearray(data))

    def _numpy_scalar_action(self, data: Any) -> Any:
        return np.ndarray((), self.action_dtype, data)[()]

    def encode_reset_reply(
        self, observation: Any, info: Any, allow_pickle: bool = False
    ) -> Optional[List[Any]]:
        """The buffers of a fixed-layout reply to a reset that returned ``(observation, info)``: a
        step reply's with reward 0.0 and both flags False; None unless both values fit."""
        return self.encode_reply((observation, 0.0, False, False, info), allow_pickle)

    def encode_reply(self, result: Sequence[Any], allow_pickle: bool = False) -> Optional[List[Any]]:
        """The buffers of a fixed-layout reply to a step that returned ``result``; None unless
        that is ``(observation, reward, terminated, truncated, info)`` and every value fits."""
        if len(result) != 5:
            return None
        observation, reward, terminated, truncated, info = result
        kinds = _STEP_KINDS.get((type(reward), type(terminated), type(truncated)))
        if kinds is None or type(info) is not dict:
            return None
        number, reply_header, terminated_base, truncated_base = kinds
        if number == 1 and reward not in _INT64_RANGE:
            return None
        codes = (number, terminated_base + terminated, truncated_base + truncated)
        leaf = self.observation_layout.single_leaf
        if leaf is not None and not info:  # the usual step: one array, no info
            if not leaf.fits(observation):
                return None
            return [
                self._reply_start,
                reply_header.pack(reward, *codes, 0),
                np.ascontiguousarray(observation),
            ]
        values = self.observation_layout.leaf_values(observation)
        info_bytes = _encoded_info(info, allow_pickle) if info else b""
        if values is None or info_bytes is None:
            return None
        header = reply_header.pack(reward, *codes, len(info_bytes))
        if info_bytes:
            start = _frame_start(REPLY_HEADER.size + len(info_bytes), self.observation_nbytes)
            buffers: List[Any] = [start, header + info_bytes]
        else:
            buffers = [self._reply_start, header]
        for (leaf, padding), array in zip(self._leaves_padded, values):
            if not leaf.fits(array):
                return None
            if padding:
                buffers.append(padding)
            if leaf.nbytes:
                buffers.append(np.ascontiguousarray(array))
        return buffers


def without_data(buffers: List[Any]) -> List[Any]:
    """A fixed-layout reply's ``buffers`` without their data section (written elsewhere)."""
    header_length = PREFIX.unpack_from(buffers[0])[1]
    return [PREFIX.pack(MAGIC_FIXED, header_length, 0), buffers[1]]


def _int_action(data: Any) -> int:
    return int.from_bytes(data, "little", signed=True)


def _batch_row_named(header: Any) -> Optional[Placement]:
    """The shared batch row a fixed-layout request header names, or None.

    Raises:
        InvalidCall: its batch buffer, zero byte and batch row are malformed.
    """
    buffer, zero, row = _BATCH_ROW.unpack_from(header, 2)
    if zero or (row and not buffer):
        raise InvalidCall(
            f"a fixed-layout request header's batch row is malformed (batch buffer {buffer}, "
            f"zero byte {zero}, row {row})"
        )
    return in_batch_row(buffer - 1, row) if buffer else None


def _flag(payload: Dict[str, Any], name: str) -> bool:
    """A layout offer's bool field ``name`` (False when missing: an older worker's offer)."""
    value = payload.get(name, False)
    if type(value) is not bool:
        raise ValueError(f"{name} must be a bool, got {shown(value)}")
    return value


def _encoded_info(info: Dict[str, Any], allow_pickle: bool) -> Optional[bytes]:
    """``info`` as an ordinary frame's header; None if it holds arrays (they need a data section)
    or values that cannot travel (the ordinary reply then says which)."""
    try:
        _, header, *data = encode_frame(info, allow_pickle)
    except UnsupportedValue:
        return None
    return None if data else bytes(header)


def _frame_start(header_length: int, data_length: int) -> bytes:
    """The prefix of a fixed-layout frame."""
    return PREFIX.pack(MAGIC_FIXED, header_length, data_length)


def _shape(value: Any) -> Tuple[int, ...]:
    problem = shape_problem(value)
    if problem is not None:
        raise ValueError(f"shape {shown(value)}: {problem}")
    return tuple(value)
