"""One walk over Gymnasium spaces: the Dicts and Tuples they nest, and the leaves below them.

Every place that looks into a space (fixed-layout frames, reply buffers, shared batches, the
batch writer, recording, the worker's action check) goes through the functions here. Each is a
``functools.singledispatch`` function with one implementation per space type, as Gymnasium's
``vector/utils/shared_memory.py`` does: a new container type is one ``register`` away.

A leaf's *path* is the list of Dict keys (str) and Tuple indices (int) that lead to it from the
top of the space, or of a value of the space.

This module runs inside simulator interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

import functools
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from gymnasium import spaces

from gym_remote.errors import shown

__all__ = [
    "ARRAY_SPACES",
    "children",
    "leaf_subspaces",
    "build",
    "value_at",
    "describe_mismatch",
]

# The spaces whose values are one array of a fixed dtype and shape (Discrete's: a 0-d int).
ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


@functools.singledispatch
def children(space: spaces.Space) -> Optional[List[Tuple[Any, spaces.Space]]]:
    """The subspaces a container space holds, each with its key (a Dict's key, a Tuple's
    index), in Gymnasium's order; None for a space that is not a container (a leaf)."""
    return None


@children.register(spaces.Dict)
def _dict_children(space: spaces.Dict) -> Optional[List[Tuple[Any, spaces.Space]]]:
    return list(space.spaces.items())


@children.register(spaces.Tuple)
def _tuple_children(space: spaces.Tuple) -> Optional[List[Tuple[Any, spaces.Space]]]:
    return list(enumerate(space.spaces))


def leaf_subspaces(
    space: spaces.Space, leaf_types: Tuple[type, ...] = ARRAY_SPACES
) -> Optional[List[Tuple[list, spaces.Space]]]:
    """Each leaf below ``space``'s containers with its path, in Gymnasium's order; None unless
    every leaf is of ``leaf_types`` and every Dict's keys are strings."""
    if isinstance(space, leaf_types):
        return [([], space)]
    items = children(space)
    if items is None or (isinstance(space, spaces.Dict) and not all(type(key) is str for key, _ in items)):
        return None
    leaves = []
    for key, subspace in items:
        below = leaf_subspaces(subspace, leaf_types)
        if below is None:
            return None
        leaves += [([key] + path, leaf) for path, leaf in below]
    return leaves


def build(space: spaces.Space, make_leaf: Callable[[spaces.Space], Any]) -> Any:
    """A value shaped as ``space``: its Dicts and Tuples as dicts and tuples, and
    ``make_leaf(subspace)`` for every leaf, called in Gymnasium's order."""
    items = children(space)
    if items is None:
        return make_leaf(space)
    built = [(key, build(subspace, make_leaf)) for key, subspace in items]
    return dict(built) if isinstance(space, spaces.Dict) else tuple(value for _, value in built)


def value_at(value: Any, path: Sequence[Any]) -> Any:
    """The item at ``path`` in ``value`` (nested dicts and tuples, or a batch of them)."""
    for key in path:
        value = value[key]
    return value


_INTEGER_SCALAR_TYPES = frozenset(
    [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
)


@functools.singledispatch
def describe_mismatch(space: spaces.Space, value: Any, where: str) -> Optional[str]:
    """Says how ``value`` fails to have the structure of ``space`` (shape, kind) or, for
    discrete spaces, its range; or None. Spaces with no check here take any value.

    Box values are left to the env (many envs clip), as they would be locally.
    """
    return None


@describe_mismatch.register(spaces.Box)
def _box_mismatch(space: spaces.Box, value: Any, where: str) -> Optional[str]:
    return _array_mismatch(space, value, where, "biuf")


@describe_mismatch.register(spaces.MultiDiscrete)
def _multi_discrete_mismatch(space: spaces.MultiDiscrete, value: Any, where: str) -> Optional[str]:
    mismatch = _array_mismatch(space, value, where, "biu")
    array = np.asarray(value)
    if mismatch is None and not ((array >= space.start) & (array < space.start + space.nvec)).all():
        return f"{where} is {shown(value)}, out of range"
    return mismatch


@describe_mismatch.register(spaces.MultiBinary)
def _multi_binary_mismatch(space: spaces.MultiBinary, value: Any, where: str) -> Optional[str]:
    mismatch = _array_mismatch(space, value, where, "biu")
    array = np.asarray(value)
    if mismatch is None and not ((array == 0) | (array == 1)).all():
        return f"{where} is {shown(value)}, not all 0 or 1"
    return mismatch


def _array_mismatch(space: spaces.Space, value: Any, where: str, kinds: str) -> Optional[str]:
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        return f"{where} has dtype {array.dtype}"
    if array.shape != space.shape:
        return f"{where} has shape {array.shape}, expected {space.shape}"
    return None


@describe_mismatch.register(spaces.Discrete)
def _discrete_mismatch(space: spaces.Discrete, value: Any, where: str) -> Optional[str]:
    if type(value) not in _INTEGER_SCALAR_TYPES and (
        np.ndim(value) != 0 or np.asarray(value).dtype.kind not in "iu"
    ):
        return f"{where} is {shown(value)}, expected an integer"
    if not space.start <= value < space.start + space.n:
        return f"{where} is {shown(value)}, out of range"
    return None


@describe_mismatch.register(spaces.Dict)
def _dict_mismatch(space: spaces.Dict, value: Any, where: str) -> Optional[str]:
    if not isinstance(value, Mapping):
        return f"{where} is a {type(value).__name__}, expected a dict"
    if set(value) != set(space.spaces):
        return f"{where} has keys {sorted(map(str, value))}, expected {sorted(map(str, space.spaces))}"
    return _first_mismatch(
        (subspace, value[key], f"{where}[{shown(key)}]") for key, subspace in space.spaces.items()
    )


@describe_mismatch.register(spaces.Tuple)
def _tuple_mismatch(space: spaces.Tuple, value: Any, where: str) -> Optional[str]:
    if not isinstance(value, (tuple, list)) or len(value) != len(space.spaces):
        return f"{where} is not a tuple of {len(space.spaces)} items"
    return _first_mismatch(
        (subspace, item, f"{where}[{index}]")
        for index, (subspace, item) in enumerate(zip(space.spaces, value))
    )


def _first_mismatch(items: Any) -> Optional[str]:
    """The first mismatch among ``(subspace, value, where)`` items, checked in order."""
    for subspace, value, where in items:
        mismatch = describe_mismatch(subspace, value, where)
        if mismatch is not None:
            return mismatch
    return None
