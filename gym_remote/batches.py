"""Memory for a remote vector env's observation batches.

A batch has Gymnasium's layout (``create_empty_array(space, num_envs)``): dicts and tuples of
arrays whose first axis is the env. Batches handed to the caller are reused only once the
caller holds no reference to them (nor to a view of them), so a kept batch is never
overwritten; a fresh multi-megabyte array per step would cost page faults instead (glibc maps
and unmaps big blocks), about 1 ms per step for 8 image observations here.

:class:`SharedBatches` puts whole batches in shared memory segments that the workers on this
host write observations into, so replies carry no observation and the client copies nothing.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import create_empty_array

from gym_remote.sharedmem import DATA_START, MINIMUM_SHARED_BYTES, SharedSegment
from gym_remote.space_walk import ARRAY_SPACES, build, value_at
from gym_remote.step.layout import ObservationLayout

__all__ = ["PooledBatches", "SharedBatches"]


def _only_held_here(arrays: list[np.ndarray]) -> bool:
    """Whether this module's list ``arrays`` (of ``SharedSegment.array``) holds the only
    references to its arrays and to views of them. Views of such an array refer to its base
    (``SharedSegment.bytes_at``), not to it."""
    # References to each array: the list, `array`, and getrefcount's argument; to its base: the
    # array, and getrefcount's argument.
    return all(sys.getrefcount(array) == 3 and sys.getrefcount(array.base) == 2 for array in arrays)


class PooledBatches:
    """New batches in ordinary memory, each leaf reused once the caller let go of it."""

    _KEPT_PER_LEAF = 3

    def __init__(self, space: gym.Space, num_envs: int) -> None:
        self.space = space
        self.num_envs = num_envs
        self._arrays: dict[int, list[np.ndarray]] = {}

    def take(self) -> Any:
        """A batch laid out as ``create_empty_array(space, num_envs)``, with contents to overwrite."""
        leaf_numbers = itertools.count()

        def make_leaf(space: gym.Space) -> Any:
            if isinstance(space, ARRAY_SPACES):
                return self._free_array(next(leaf_numbers), space)
            return create_empty_array(space, n=self.num_envs, fn=np.empty)

        return build(self.space, make_leaf)

    def _free_array(self, leaf_number: int, space: gym.Space) -> np.ndarray:
        arrays = self._arrays.setdefault(leaf_number, [])
        for array in arrays:
            # References: the list, `array`, and getrefcount's argument.
            if sys.getrefcount(array) == 3:
                return array
        # All held by the caller: a new array, which the pool keeps in place of its oldest.
        array = _empty_batch(space, self.num_envs)
        arrays.append(array)
        if len(arrays) > self._KEPT_PER_LEAF:
            del arrays[0]
        return array


class SharedBatches:
    """A few whole batches in shared memory segments, which workers on this host fill in place.

    Workers get :meth:`offer` once (``use_shared_batches``); then a ``step`` or ``reset`` request
    with ``into: [buffer, row]`` has the worker write its observation into that row. When every
    buffer is still held by the caller, :meth:`take` says so and the observations travel in
    the replies as usual.
    """

    COUNT = 3
    # The least array data one env's observation must hold: below it the replies carry the
    # observations for less work than writing them into rows takes (as for shared memory).
    MINIMUM_ROW_BYTES = MINIMUM_SHARED_BYTES

    def __init__(self, layout: ObservationLayout) -> None:
        self.layout = layout
        self.segments = SharedSegment.create_many(self.COUNT, layout.nbytes)
        self._arrays = [
            [segment.array(leaf.dtype, leaf.shape, leaf.offset) for leaf in layout.leaves]
            for segment in self.segments
        ]

    @classmethod
    def for_space(cls, space: gym.Space, num_envs: int) -> SharedBatches | None:
        """Shared batches for ``space``, or None when its batches are not plain arrays or one
        env's observation holds fewer than :attr:`MINIMUM_ROW_BYTES` bytes."""
        layout = ObservationLayout.for_space(space, num_envs, start=DATA_START)
        if layout is None or sum(leaf.nbytes for leaf in layout.leaves) < cls.MINIMUM_ROW_BYTES * num_envs:
            return None
        return cls(layout)

    def offer(self) -> dict[str, Any]:
        """The fields of ``use_shared_batches``: the buffers and where each leaf lies in them."""
        return {"buffers": [segment.offer() for segment in self.segments], "layout": self.layout.to_wire()}

    def take(self) -> int | None:
        """A buffer the caller holds nothing of (to be written now), or None."""
        for buffer, arrays in enumerate(self._arrays):
            if _only_held_here(arrays):
                return buffer
        return None

    def batch(self, buffer: int) -> Any:
        """The batch that lives in ``buffer``."""
        return self.layout.assembled(self._arrays[buffer])

    def arrays(self, buffer: int) -> list[np.ndarray]:
        """Each leaf's batch array in ``buffer``, in layout order."""
        return self._arrays[buffer]

    def arrays_of(self, batch: Any) -> list[np.ndarray]:
        """Each leaf's array in ``batch``, a batch of this space (of any size), in layout order."""
        return [value_at(batch, leaf.path) for leaf in self.layout.leaves]

    def copy_row(self, buffer: int, row: int, arrays: list[np.ndarray], position: int) -> None:
        """Copies one env's observation from row ``row`` of ``buffer`` into row ``position`` of
        another batch's ``arrays`` (:meth:`arrays_of`)."""
        for array, destination in zip(self._arrays[buffer], arrays):
            destination[position, ...] = array[row, ...]

    def row_copy(self, buffer: int, row: int) -> Any:
        """A copy of one env's observation from ``buffer``."""
        # `[row, ...]`: a 0-d array where a leaf holds scalars, as the worker wrote only arrays.
        return self.layout.assembled([array[row, ...].copy() for array in self._arrays[buffer]])

    def close(self) -> None:
        """Closes the segments; batches the caller still holds stay valid."""
        for segment in self.segments:
            segment.close()


def _empty_batch(space: gym.Space, num_envs: int) -> np.ndarray:
    """An uninitialised batch array of ``num_envs`` values of an array space (Box, Discrete,
    MultiDiscrete, MultiBinary)."""
    return cast(np.ndarray, create_empty_array(space, n=num_envs, fn=np.empty))
