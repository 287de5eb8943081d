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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.errors import InvalidCall, ProtocolError, UnsupportedValue, shown
from gym_remote.protocol import (
    DATA_ALIGNMENT,
    MAGIC_FIXED,
    PREFIX,
    decode_frame,
    encode_frame,
    shape_problem,
    wire_dtype,
)
from gym_remote.space_walk import leaf_subspaces

__all__ = ["FixedLayout", "ACTION_HEADER", "REPLY_HEADER", "MAX_REPLY_BUFFERS", "IN_THE_DATA"]

ACTION_HEADER = struct.Struct("<BBBxI")
# Where a request header names a shared batch row: batch buffer, a zero byte, batch row.
_BATCH_ROW = struct.Struct("<BBI")
# The most reply buffers a session can have (a request names one by 1, 2, ...; 0: none).
MAX_REPLY_BUFFERS = 3
REPLY_HEADER = struct.Struct("<8sBBBxI")
# Says to FixedLayout.decode_reply that a reply's observation is in its data section.
IN_THE_DATA: Any = object()

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
_FIXED_SHAPE_SPACES = (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)

# A shared batch buffer (0, 1, ...) and a row of it, where a request asks for its observation.
BatchRow = Tuple[int, int]
# An observation's structure: a leaf's number, or ("dict" or "tuple", [(key, structure), ...]).
_Structure = Union[int, Tuple[str, list]]
# One Dict or Tuple of an observation, in a list of its values that starts with the whole
# observation and where each container's items follow the values before them: its place, whether
# it is a dict, its keys, and where its items start and end. Containers come in the order of
# their places.
_Container = Tuple[int, bool, tuple, int, int]


class _Leaf:
    """One array of the observation: where it lies in the data section and what it is."""

    __slots__ = ("path", "dtype", "shape", "offset", "nbytes")

    def __init__(self, path: list, dtype: np.dtype, shape: Tuple[int, ...], offset: int) -> None:
        self.path = path
        self.dtype = dtype
        self.shape = shape
        self.offset = offset
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def to_wire(self) -> Dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype.str, "shape": list(self.shape), "offset": self.offset}


class FixedLayout:
    """What fixed-layout frames hold in one session: the action's array and the
    observation's arrays, in order, each at an 8-byte aligned offset of the data section."""

    def __init__(
        self,
        action_dtype: np.dtype,
        action_shape: Tuple[int, ...],
        leaves: List[_Leaf],
        takes_resets: bool = True,
        takes_batch_rows: bool = True,
    ) -> None:
        self.action_dtype = action_dtype
        self.action_shape = action_shape
        self.action_nbytes = int(np.prod(action_shape, dtype=np.int64)) * action_dtype.itemsize
        self.leaves = leaves
        self.observation_nbytes = max([leaf.offset + leaf.nbytes for leaf in leaves] + [0])
        structure = _structure_of([leaf.path for leaf in leaves])
        # The observation's one array, unless it is empty or in a Dict or Tuple.
        self._single_array = leaves[0] if structure == 0 and leaves[0].nbytes else None
        # How the observation's containers and leaves lie in a list of its values (see _Container):
        # replies are built from it and taken apart by plain loops, without recursion.
        self._containers, leaf_places = _flattened(structure)
        self._value_count = len(self._containers) + len(leaves)
        # Per leaf, in order: its place among the values, and the zeros before it in the data section.
        ends = [0] + [leaf.offset + leaf.nbytes for leaf in leaves]
        self._leaves_placed = [
            (place, leaf, bytes(leaf.offset - end)) for place, leaf, end in zip(leaf_places, leaves, ends)
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
        # Whether the worker takes fixed-layout resets (it says so in its offer).
        self.takes_resets = takes_resets
        # Whether it writes observations into the shared batch rows requests name (it says so too).
        self.takes_batch_rows = takes_batch_rows
        array_request_length = _REQUEST_DATA_AT + self.action_nbytes
        # Per action kind, what turns a request's data section into the action.
        self._action_of_kind = {
            ACTION_ARRAY: self._array_action,
            ACTION_NUMPY_SCALAR: self._numpy_scalar_action,
            ACTION_INT: _int_action,
        }
        # The starts (prefix and header) of the requests this layout takes, with their whole
        # length, what turns their data section into the action, and their reply buffer code.
        self._request_starts: Dict[bytes, Tuple[int, Callable[[Any], Any], int]] = {
            start: (array_request_length, self._array_action, code)
            for code, start in enumerate(self._array_action_starts)
        }
        # The numpy scalar type of a scalar layout's actions (its dtype is the layout's).
        self._scalar_action_type: Optional[type] = None
        if not action_shape:
            for code in _REPLY_BUFFER_CODES:
                scalar_start, int_start = self._scalar_action_starts[code], self._int_action_starts[code]
                self._request_starts[scalar_start] = (array_request_length, self._numpy_scalar_action, code)
                self._request_starts[int_start] = (_REQUEST_DATA_AT + 8, _int_action, code)
            if np.dtype(action_dtype.type) == action_dtype:
                self._scalar_action_type = action_dtype.type
        self._reply_start = _frame_start(REPLY_HEADER.size, self.observation_nbytes)
        # The length of a reply with an empty info, and the most buffers a reply takes.
        self.whole_reply_length = _REPLY_DATA_AT + self.observation_nbytes
        self.most_reply_buffers = 2 + 2 * len(leaves)

    # ------------------------------------------------------------------ agreeing on it

    @classmethod
    def for_env(cls, env: gym.Env) -> Optional["FixedLayout"]:
        """The layout of ``env``'s steps, or None when its spaces are not fixed-shape arrays."""
        action_space = env.action_space
        if isinstance(action_space, spaces.Discrete):
            action_shape: Tuple[int, ...] = ()
        elif isinstance(action_space, _FIXED_SHAPE_SPACES):
            action_shape = tuple(action_space.shape)
        else:
            return None
        paths = leaf_subspaces(env.observation_space, _FIXED_SHAPE_SPACES)
        if not paths:
            return None
        leaves = []
        offset = 0
        for path, subspace in paths:
            assert subspace.shape is not None  # fixed-shape spaces have one
            leaf = _Leaf(path, np.dtype(subspace.dtype), tuple(subspace.shape), offset)
            leaves.append(leaf)
            offset += leaf.nbytes + (-leaf.nbytes % DATA_ALIGNMENT)
        return cls(np.dtype(action_space.dtype), action_shape, leaves)

    def to_wire(self) -> Dict[str, Any]:
        """The ``fixed_steps`` field of a ``make`` reply."""
        return {
            "action": {"dtype": self.action_dtype.str, "shape": list(self.action_shape)},
            "observation": [leaf.to_wire() for leaf in self.leaves],
            "resets": self.takes_resets,
            "batch_rows": self.takes_batch_rows,
        }

    @classmethod
    def from_wire(cls, payload: Any) -> "FixedLayout":
        """The layout a ``make`` reply's ``fixed_steps`` field describes.

        Raises:
            ProtocolError: the field is malformed.
        """
        try:
            action = payload["action"]
            leaves = [
                _Leaf(
                    list(leaf["path"]),
                    wire_dtype(leaf["dtype"]),
                    _shape(leaf["shape"]),
                    int(leaf["offset"]),
                )
                for leaf in payload["observation"]
            ]
            if not leaves or any(leaf.offset < 0 or leaf.offset % DATA_ALIGNMENT for leaf in leaves):
                raise ValueError("observation leaves must be at 8-byte aligned offsets")
            takes_resets, takes_batch_rows = (_flag(payload, name) for name in ("resets", "batch_rows"))
            return cls(
                wire_dtype(action["dtype"]), _shape(action["shape"]), leaves, takes_resets, takes_batch_rows
            )
        except (LookupError, TypeError, ValueError, ProtocolError) as error:
            raise ProtocolError(f"malformed fixed_steps layout {shown(payload)}: {error}") from None

    # ------------------------------------------------------------------ the client's end

    def encode_action(self, action: Any, reply_buffer: int = 0) -> Optional[bytes]:
        """The whole fixed-layout step request for ``action``, asking for the observation in
        reply buffer ``reply_buffer`` (1, 2, ...; 0: in the reply); None if it does not fit."""
        kind_of = type(action)
        if kind_of is np.ndarray:
            if action.shape != self.action_shape or action.dtype != self.action_dtype:
                return None
            return self._array_action_starts[reply_buffer] + action.tobytes()
        if self.action_shape:
            return None
        if kind_of is int:
            if action not in _INT64_RANGE:
                return None
            return self._int_action_starts[reply_buffer] + action.to_bytes(8, "little", signed=True)
        if kind_of is self._scalar_action_type:
            return self._scalar_action_starts[reply_buffer] + action.tobytes()
        return None

    def encode_action_into(self, action: Any, into: Sequence[int]) -> Optional[bytes]:
        """The whole fixed-layout step request for ``action``, asking for the observation in
        row ``into[1]`` of shared batch buffer ``into[0]``; None if it does not fit or the
        worker takes no batch rows."""
        request = self.encode_action(action)
        return None if request is None else self._into_batch_row(request, into)

    def encode_reset(self, seed: Optional[int], into: Optional[Sequence[int]] = None) -> Optional[bytes]:
        """The whole fixed-layout reset request for ``seed`` (asking for the observation in row
        ``into[1]`` of shared batch buffer ``into[0]``, if given); None if the worker takes no
        fixed-layout resets (or batch rows), or ``seed`` is not None or an int within int64."""
        if not self.takes_resets:
            return None
        if seed is None:
            request = _UNSEEDED_RESET
        elif type(seed) is not int or seed not in _INT64_RANGE:
            return None
        else:
            request = _SEEDED_RESET_START + seed.to_bytes(8, "little", signed=True)
        return request if into is None else self._into_batch_row(request, into)

    def _into_batch_row(self, request: bytes, into: Sequence[int]) -> Optional[bytes]:
        """``request`` (which names no reply buffer) naming shared batch row ``into`` instead."""
        buffer, row = into
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
        leaf = self._single_array
        if leaf is None:
            return self.observation(data), reward, terminated, truncated, {}
        return np.ndarray(leaf.shape, leaf.dtype, data), reward, terminated, truncated, {}

    def decode_reply(
        self, header: Any, data: Any, allow_pickle: bool = False, placed: Any = IN_THE_DATA
    ) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        """A fixed-layout reply's ``(observation, reward, terminated, truncated, info)``; the
        observation is ``placed`` where given (the reply's data section is then empty: the
        worker wrote it into a reply buffer, or a shared batch row, for which None is given).

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
        if placed is not IN_THE_DATA:
            return placed, reward, flags[0], flags[1], info
        if len(data) != self.observation_nbytes:
            raise ProtocolError(
                f"fixed-layout reply has {len(data)} bytes of observation, expected {self.observation_nbytes}"
            )
        return self.observation(data), reward, flags[0], flags[1], info

    def observation(self, data: Any) -> Any:
        """The observation whose arrays lie in ``data`` (writable memory of their own, the
        layout's size): each a view of its bytes, then the containers built from the innermost
        out."""
        leaf = self._single_array
        if leaf is not None:
            return np.ndarray(leaf.shape, leaf.dtype, data)
        values: List[Any] = [None] * self._value_count
        for place, leaf, _ in self._leaves_placed:
            values[place] = np.ndarray(leaf.shape, leaf.dtype, data, leaf.offset)
        for place, is_dict, keys, first, end in reversed(self._containers):
            values[place] = dict(zip(keys, values[first:end])) if is_dict else tuple(values[first:end])
        return values[0]

    # ------------------------------------------------------------------ the worker's end

    def action_of_whole_request(self, chunk: Any) -> Optional[Tuple[Any, int, Optional[BatchRow]]]:
        """The action, reply buffer code and shared batch row (or None) in ``chunk`` when it is
        exactly one well-formed fixed-layout step request (one receive, one or two lookups);
        otherwise None, and
        :meth:`MessageReader.receive_frame <gym_remote.protocol.MessageReader.receive_frame>`
        and :meth:`decode_action` take the frame (and say what is wrong with it)."""
        start = bytes(chunk[:_REQUEST_DATA_AT])
        request = self._request_starts.get(start)
        into = None
        if request is None:  # one naming a batch row has a known start but for the header's end
            request = self._request_starts.get(start[:_BATCH_ROW_AT] + _NO_BATCH_ROW)
            if request is None or request[2] or len(start) != _REQUEST_DATA_AT:
                return None
            try:
                into = _batch_row_named(start[PREFIX.size :])
            except InvalidCall:
                return None
        if len(chunk) != request[0]:
            return None
        return request[1](chunk[_REQUEST_DATA_AT:]), request[2], into

    @staticmethod
    def is_reset(header: Any) -> bool:
        """Whether a fixed-layout request's header asks for a reset (:meth:`decode_reset` reads
        it) rather than a step (:meth:`decode_action` reads it)."""
        return len(header) == ACTION_HEADER.size and header[0] == RESET

    @staticmethod
    def decode_reset(header: Any, data: Any) -> Tuple[Optional[int], Optional[BatchRow]]:
        """The seed (None for no data) and the shared batch row (or None) a fixed-layout reset
        request carries.

        Raises:
            InvalidCall: the data section is neither empty nor 8 bytes, or the header names a
                reply buffer or a malformed batch row.
        """
        if len(data) not in (0, 8):
            raise InvalidCall(f"a fixed-layout reset has 0 or 8 bytes of seed, got {len(data)}")
        if header[1]:
            raise InvalidCall(f"a fixed-layout reset names reply buffer {header[1]}: only steps take one")
        seed = int.from_bytes(data, "little", signed=True) if data else None
        return seed, _batch_row_named(header)

    def decode_action(self, header: Any, data: Any) -> Tuple[Any, int, Optional[BatchRow]]:
        """The action, the reply buffer code and the shared batch row (or None) a fixed-layout
        step request carries.

        Raises:
            InvalidCall: the header or data section does not fit the layout.
        """
        if len(header) != ACTION_HEADER.size:
            raise InvalidCall(f"a fixed-layout step header has {ACTION_HEADER.size} bytes, got {len(header)}")
        kind, reply_buffer = header[0], header[1]
        expected = 8 if kind == ACTION_INT else self.action_nbytes
        if kind > ACTION_INT or (kind != ACTION_ARRAY and self.action_shape):
            raise InvalidCall(f"action kind {kind} does not fit the action layout {self.action_shape}")
        if len(data) != expected:
            raise InvalidCall(f"a fixed-layout action of kind {kind} has {expected} bytes, got {len(data)}")
        into = _batch_row_named(header)
        if into is not None and reply_buffer:
            raise InvalidCall(f"a fixed-layout step names both reply buffer {reply_buffer} and a batch row")
        return self._action_of_kind[kind](data), reply_buffer, into

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
        terminated_code, truncated_code = terminated_base + terminated, truncated_base + truncated
        leaf = self._single_array
        if leaf is not None and not info:  # the usual step: one array, no info
            if not _fits(leaf, observation):
                return None
            header = reply_header.pack(reward, number, terminated_code, truncated_code, 0)
            return [self._reply_start, header, np.ascontiguousarray(observation)]
        values = self._values(observation)
        if values is None:
            return None
        info_bytes = _encoded_info(info, allow_pickle) if info else b""
        if info_bytes is None:
            return None
        header = reply_header.pack(reward, number, terminated_code, truncated_code, len(info_bytes))
        if info_bytes:
            start = _frame_start(REPLY_HEADER.size + len(info_bytes), self.observation_nbytes)
            buffers: List[Any] = [start, header + info_bytes]
        else:
            buffers = [self._reply_start, header]
        for place, leaf, padding in self._leaves_placed:
            array = values[place]
            if not _fits(leaf, array):
                return None
            if padding:
                buffers.append(padding)
            if leaf.nbytes:
                buffers.append(np.ascontiguousarray(array))
        return buffers

    def _values(self, observation: Any) -> Optional[List[Any]]:
        """The observation's containers and leaves, in the places ``_containers`` gives them;
        None unless its dicts (exactly ``dict``, keys in the layout's order) and tuples are the
        layout's."""
        values = [observation]
        for place, is_dict, keys, _, _ in self._containers:
            value = values[place]
            if is_dict:
                if type(value) is not dict or tuple(value) != keys:
                    return None
                values.extend(value.values())
            elif type(value) is tuple and len(value) == len(keys):
                values.extend(value)
            else:
                return None
        return values


def _int_action(data: Any) -> int:
    return int.from_bytes(data, "little", signed=True)


def _batch_row_named(header: Any) -> Optional[BatchRow]:
    """The shared batch row ``(buffer, row)`` a fixed-layout request header names, or None.

    Raises:
        InvalidCall: its batch buffer, zero byte and batch row are malformed.
    """
    buffer, zero, row = _BATCH_ROW.unpack_from(header, 2)
    if zero or (row and not buffer):
        raise InvalidCall(
            f"a fixed-layout request header's batch row is malformed (batch buffer {buffer}, "
            f"zero byte {zero}, row {row})"
        )
    return (buffer - 1, row) if buffer else None


def _flag(payload: Dict[str, Any], name: str) -> bool:
    """A layout offer's bool field ``name`` (False when missing: an older worker's offer)."""
    value = payload.get(name, False)
    if type(value) is not bool:
        raise ValueError(f"{name} must be a bool, got {shown(value)}")
    return value


def _structure_of(paths: List[list]) -> _Structure:
    """The nesting the leaves' paths describe: str keys make dicts, int indices tuples.

    Raises:
        ValueError: the paths do not describe one tree with leaves in order.
    """
    if paths == [[]]:
        return 0
    numbers = iter(range(len(paths)))

    def build(prefix: list, group: List[list]) -> _Structure:
        if group == [[]]:
            return next(numbers)
        if not group or [] in group:
            raise ValueError("a leaf's path is the prefix of another's")
        keys: list = []
        for path in group:
            if not keys or keys[-1] != path[0]:
                if path[0] in keys:
                    raise ValueError(f"the leaves under {prefix + [path[0]]} are not together")
                keys.append(path[0])
        kinds = {type(key) for key in keys}
        if kinds == {int} and keys == list(range(len(keys))):
            container = "tuple"
        elif kinds == {str}:
            container = "dict"
        else:
            raise ValueError(f"the keys under {prefix} are neither strings nor indices 0, 1, ...")
        return (
            container,
            [(key, build(prefix + [key], [path[1:] for path in group if path[0] == key])) for key in keys],
        )

    return build([], paths)


def _flattened(structure: _Structure) -> Tuple[List[_Container], List[int]]:
    """The containers of an observation with ``structure`` (see ``_Container``), and each
    leaf's place among its values, in leaf order."""
    containers: List[_Container] = []
    leaf_places: Dict[int, int] = {}
    queue = [(0, structure)]
    next_place = 1
    for place, node in queue:
        if isinstance(node, int):
            leaf_places[node] = place
            continue
        container, items = node
        keys = tuple(key for key, _ in items)
        containers.append((place, container == "dict", keys, next_place, next_place + len(keys)))
        queue.extend((next_place + index, below) for index, (_, below) in enumerate(items))
        next_place += len(items)
    return containers, [leaf_places[number] for number in range(len(leaf_places))]


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


def _fits(leaf: _Leaf, value: Any) -> bool:
    return type(value) is np.ndarray and value.dtype == leaf.dtype and value.shape == leaf.shape


def _shape(value: Any) -> Tuple[int, ...]:
    problem = shape_problem(value)
    if problem is not None:
        raise ValueError(f"shape {shown(value)}: {problem}")
    return tuple(value)
