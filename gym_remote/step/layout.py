"""Where an observation's arrays lie in flat memory, and where a request asks it to be put.

:class:`ObservationLayout` is the one description of "a leaf at an offset": the fixed-layout
frames' data sections, the client's reply buffers, a remote vector env's shared batches and
the worker's batch writer all use it. Leaves are the observation space's fixed-shape arrays
(:data:`~gym_remote.space_walk.ARRAY_SPACES`) in Gymnasium's order, each at an offset aligned
to 8 bytes (``protocol.DATA_ALIGNMENT``), the wire's alignment of every array in a data section.

:class:`Placement` says where a step's or reset's observation goes: in the reply (its data
section travels on the socket, or through the session's shared memory segment when large),
in one of the client's reply buffers, or in a row of one of its shared batches.

This module runs inside simulator interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from gymnasium import spaces

from gym_remote.errors import InvalidCall, ProtocolError, shown
from gym_remote.protocol import DATA_ALIGNMENT, shape_problem, wire_dtype
from gym_remote.space_walk import children, leaf_subspaces, value_at

__all__ = ["Leaf", "ObservationLayout", "Placement", "IN_REPLY", "in_reply_buffer", "in_batch_row"]


class Leaf:
    """One array of the observation (or of a batch of them): its path, what it holds, and
    where its bytes start."""

    __slots__ = ("path", "dtype", "shape", "offset", "nbytes")

    def __init__(self, path: list, dtype: np.dtype, shape: Tuple[int, ...], offset: int) -> None:
        self.path = path
        self.dtype = dtype
        self.shape = shape
        self.offset = offset
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def to_wire(self) -> Dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype.str, "shape": list(self.shape), "offset": self.offset}

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is exactly this leaf: an array of its dtype and shape."""
        return type(value) is np.ndarray and value.dtype == self.dtype and value.shape == self.shape


# One Dict or Tuple of an observation, in a list of its values that starts with the whole
# observation and where each container's items follow the values before them: its place,
# whether it is a dict, its keys, and where its items start and end.
_Container = Tuple[int, bool, tuple, int, int]


class ObservationLayout:
    """The leaves of an observation space laid out in one buffer, with ``nbytes`` in all.

    With a ``batch_size``, each leaf is the whole batch of that leaf (first axis: the env), as
    Gymnasium's ``create_empty_array(space, n)`` lays a batch out.
    """

    def __init__(self, space: spaces.Space, leaves: List[Leaf], batch_size: Optional[int] = None) -> None:
        self.space = space
        self.leaves = leaves
        self.batch_size = batch_size
        self.nbytes = max([leaf.offset + leaf.nbytes for leaf in leaves] + [0])
        # How the observation's containers and leaves lie in a list of its values: values are
        # built and taken apart by plain loops, without a walk per step.
        self._containers, self._leaf_places = _flattened(space)
        self._value_count = len(self._containers) + len(leaves)
        # Per leaf: its place among the values, and what makes its array over memory.
        self._placed_leaves = [
            (place, leaf.shape, leaf.dtype, leaf.offset) for place, leaf in zip(self._leaf_places, leaves)
        ]
        # The observation's one array, unless it is empty or in a Dict or Tuple.
        self.single_leaf = leaves[0] if not self._containers and leaves[0].nbytes else None

    @classmethod
    def for_space(
        cls, space: spaces.Space, batch_size: Optional[int] = None, start: int = 0
    ) -> Optional["ObservationLayout"]:
        """The layout of ``space``'s values (or batches of ``batch_size``), from offset
        ``start`` on; None unless every leaf is a fixed-shape array in Dicts with string keys
        and Tuples."""
        found = leaf_subspaces(space)
        if not found:
            return None
        leaves = []
        offset = start
        for path, subspace in found:
            assert subspace.shape is not None  # fixed-shape spaces have one
            shape = tuple(subspace.shape) if batch_size is None else (batch_size,) + tuple(subspace.shape)
            leaf = Leaf(path, np.dtype(subspace.dtype), shape, offset)
            leaves.append(leaf)
            offset += leaf.nbytes + (-leaf.nbytes % DATA_ALIGNMENT)
        return cls(space, leaves, batch_size)

    def to_wire(self) -> List[Dict[str, Any]]:
        """Each leaf's path, dtype, shape and offset, as offers on the wire list them."""
        return [leaf.to_wire() for leaf in self.leaves]

    @classmethod
    def from_wire(
        cls, payload: Any, space: spaces.Space, batch_size: Optional[int] = None, start: int = 0
    ) -> "ObservationLayout":
        """The layout a peer offered for ``space``'s values (or batches): exactly the space's
        leaves, in order, each with the dtype and shape the space gives it, at aligned offsets
        from ``start`` on that do not overlap.

        Raises:
            ValueError: the payload is malformed or does not describe ``space``.
        """
        expected = cls.for_space(space, batch_size, start)
        if expected is None:
            raise ValueError(f"the space {space} has no fixed layout")
        if not isinstance(payload, list) or len(payload) != len(expected.leaves):
            raise ValueError(f"expected a list of {len(expected.leaves)} leaves, got {shown(payload)}")
        leaves = []
        end = start
        for entry, own in zip(payload, expected.leaves):
            if not isinstance(entry, dict):
                raise ValueError(f"a leaf must be a map, got {shown(entry)}")
            shape, offset = entry.get("shape"), entry.get("offset")
            if entry.get("path") != own.path or shape_problem(shape) or tuple(shape or ()) != own.shape:
                raise ValueError(f"leaf {shown(entry)} is not {own.path} of shape {own.shape}")
            try:
                dtype = wire_dtype(entry.get("dtype"))
            except ProtocolError as error:
                raise ValueError(f"leaf {own.path}: {error}") from None
            if dtype != own.dtype:
                raise ValueError(
                    f"leaf {own.path} has dtype {shown(entry.get('dtype'))}, expected {own.dtype}"
                )
            if type(offset) is not int or offset < end or offset % DATA_ALIGNMENT:
                raise ValueError(
                    f"leaf {own.path} is at {shown(offset)}: not aligned, or over the leaf before"
                )
            leaves.append(Leaf(own.path, own.dtype, own.shape, offset))
            end = offset + own.nbytes
        return cls(space, leaves, batch_size)

    # ------------------------------------------------------------------ values and memory

    def observation(self, data: Any) -> Any:
        """The observation whose arrays lie in ``data`` (writable memory of the layout's size,
        or more): each a view of its bytes, then the containers built from the innermost out."""
        if not self._containers:
            leaf = self.leaves[0]
            return np.ndarray(leaf.shape, leaf.dtype, data, leaf.offset)
        values: List[Any] = [None] * self._value_count
        for place, shape, dtype, offset in self._placed_leaves:
            values[place] = np.ndarray(shape, dtype, data, offset)
        return self._contained(values)

    def assembled(self, leaf_values: Sequence[Any]) -> Any:
        """The value made of these leaves (in layout order) in the space's dicts and tuples."""
        if not self._containers:
            return leaf_values[0]
        values: List[Any] = [None] * self._value_count
        for place, value in zip(self._leaf_places, leaf_values):
            values[place] = value
        return self._contained(values)

    def _contained(self, values: List[Any]) -> Any:
        """The whole value, from a list of its values whose leaves are in place: each container
        built from its items, the innermost first."""
        for place, is_dict, keys, first, end in reversed(self._containers):
            values[place] = dict(zip(keys, values[first:end])) if is_dict else tuple(values[first:end])
        return values[0]

    def leaf_values(self, observation: Any) -> Optional[List[Any]]:
        """The observation's leaves in layout order; None unless its dicts (exactly ``dict``,
        keys in the space's order) and tuples are the space's."""
        if not self._containers:
            return [observation]
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
        return [values[place] for place in self._leaf_places]

    def arrays_in(self, memory: Any) -> List[np.ndarray]:
        """Each leaf's array over ``memory`` (bytes of the layout's size, or more)."""
        return [np.ndarray(leaf.shape, leaf.dtype, memory, leaf.offset) for leaf in self.leaves]

    def write_row(self, arrays: Sequence[np.ndarray], row: int, observation: Any, exact: bool) -> bool:
        """Writes one env's ``observation`` into row ``row`` of a batch's ``arrays`` (one per
        leaf, first axis the env). With ``exact``, only numpy arrays of the batch's own dtypes
        are taken, so the row equals the observation; otherwise values are cast as Gymnasium's
        batching casts them (``same_kind``). Returns False, having maybe written part of the
        row, where the observation does not fit."""
        try:
            for leaf, batch in zip(self.leaves, arrays):
                value = value_at(observation, leaf.path)
                destination = batch[row, ...]
                if np.shape(value) != destination.shape:
                    return False
                if exact and (type(value) is not np.ndarray or value.dtype != destination.dtype):
                    return False
                np.copyto(destination, value, casting="same_kind")
        except (LookupError, TypeError, ValueError):
            return False
        return True


def _flattened(space: spaces.Space) -> Tuple[List[_Container], List[int]]:
    """The containers of ``space``'s values (see ``_Container``), and each leaf's place among
    its values, in leaf order."""
    containers: List[_Container] = []
    leaves: List[Tuple[Tuple[int, ...], int]] = []  # each leaf's route of indices, and its place
    queue: List[Tuple[int, spaces.Space, Tuple[int, ...]]] = [(0, space, ())]
    next_place = 1
    for place, node, route in queue:
        items = children(node)
        if items is None:
            leaves.append((route, place))
            continue
        keys = tuple(key for key, _ in items)
        containers.append((place, isinstance(node, spaces.Dict), keys, next_place, next_place + len(keys)))
        queue.extend((next_place + index, item, route + (index,)) for index, (_, item) in enumerate(items))
        next_place += len(items)
    # Sorted routes are depth-first order, Gymnasium's (and the layout's) order of leaves.
    return containers, [place for _, place in sorted(leaves)]


class Placement(NamedTuple):
    """Where a step's or reset's observation goes.

    Attributes:
        reply_buffer: The client's reply buffer (1, 2, ...) the worker writes it into; 0: none.
        batch_buffer: The client's shared batch buffer (0, 1, ...) whose row ``row`` the worker
            writes it into; None: none.
        row: The row of ``batch_buffer``.
    """

    reply_buffer: int = 0
    batch_buffer: Optional[int] = None
    row: int = 0

    @property
    def in_reply(self) -> bool:
        """Whether the observation travels in the reply (its data section)."""
        return not self.reply_buffer and self.batch_buffer is None

    @property
    def in_batch_row(self) -> bool:
        return self.batch_buffer is not None

    def into_field(self) -> Optional[List[int]]:
        """The ``into`` field of an ordinary request: ``[buffer, row]`` for a batch row, else None."""
        return None if self.batch_buffer is None else [self.batch_buffer, self.row]

    @classmethod
    def from_into_field(cls, into: Any) -> "Placement":
        """The placement an ordinary request's ``into`` field (``[buffer, row]`` or None) names.

        Raises:
            InvalidCall: it is malformed.
        """
        if into is None:
            return IN_REPLY
        if not isinstance(into, list) or len(into) != 2 or not all(type(item) is int for item in into):
            raise InvalidCall(f"into must be [buffer, row], got {shown(into)}")
        return in_batch_row(into[0], into[1])


IN_REPLY = Placement()


def in_reply_buffer(number: int) -> Placement:
    """The observation goes into the client's reply buffer ``number`` (1, 2, ...)."""
    return Placement(reply_buffer=number)


def in_batch_row(buffer: int, row: int) -> Placement:
    """The observation goes into row ``row`` of the client's shared batch buffer ``buffer``."""
    return Placement(batch_buffer=buffer, row=row)
