"""The worker's end of a remote vector env's shared batches: observations written straight
into the client's batch memory (same host only).

This module runs inside simulator interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

import socket
from typing import Any, List

import numpy as np
from gymnasium import spaces

from gym_remote.errors import InvalidCall
from gym_remote.sharedmem import DATA_START, SharedSegment
from gym_remote.step.layout import ObservationLayout

__all__ = ["BatchWriter"]


class BatchWriter:
    """Writes observations straight into a remote vector env's batch memory (same host only).

    The client makes the buffers (shared memory segments, one whole observation batch each)
    and says where each leaf of the observation lies in them: ``layout`` lists, per leaf, its
    ``path`` of keys and indices into the observation, its ``offset`` in a buffer, and the
    ``dtype`` and ``shape`` of the leaf's whole batch (first axis: the env), as
    :meth:`ObservationLayout.to_wire <gym_remote.step.layout.ObservationLayout.to_wire>` gives it.
    """

    def __init__(
        self, segments: List[SharedSegment], layout: ObservationLayout, arrays: List[List[np.ndarray]]
    ) -> None:
        self.segments = segments
        self.layout = layout
        self.arrays_by_buffer = arrays  # per buffer: each leaf's batch array there

    @classmethod
    def attach(cls, buffers: Any, layout: Any, space: spaces.Space, peer: socket.socket) -> "BatchWriter":
        """Opens the buffers of the client at the other end of ``peer`` (writable) and maps each
        leaf's batch of ``space``'s observations in each of them.

        Raises:
            InvalidCall: the buffers cannot be opened from here, or the layout is malformed or
                does not describe batches of ``space``.
        """
        if not isinstance(buffers, list) or not isinstance(layout, list):
            raise InvalidCall("use_shared_batches needs lists of buffers and of leaves")
        try:
            batch_size = layout[0]["shape"][0]
            if type(batch_size) is not int or batch_size < 1:
                raise ValueError(f"a batch of {batch_size!r} envs")
            checked = ObservationLayout.from_wire(layout, space, batch_size, start=DATA_START)
        except (LookupError, TypeError, ValueError) as error:
            raise InvalidCall(f"use_shared_batches: the layout does not fit {space}: {error}") from None

        def arrays_in(segment: SharedSegment) -> List[np.ndarray]:
            return [segment.array(leaf.dtype, leaf.shape, leaf.offset) for leaf in checked.leaves]

        segments, arrays = SharedSegment.attach_offered("use_shared_batches", buffers, arrays_in, peer)
        return cls(segments, checked, arrays)

    def write(self, observation: Any, buffer: int, row: int) -> bool:
        """Writes ``observation`` into row ``row`` (not negative) of buffer ``buffer`` (one of
        these); False unless its leaves are arrays of the batch's dtypes and shapes and the row
        exists (then the reply carries it instead)."""
        return self.layout.write_row(self.arrays_by_buffer[buffer], row, observation, exact=True)

    def close(self) -> None:
        """Closes the buffers (the client's batches stay: the client holds them too)."""
        self.arrays_by_buffer = []
        for segment in self.segments:
            segment.close()
