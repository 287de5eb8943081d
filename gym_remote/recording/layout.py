"""Where each part of an env's observation goes in a dataset.

An observation space is cut into its leaves (Boxes and discrete spaces below Dicts and Tuples).
Each leaf keeps its own dtype and shape for HDF5 (``obs/<path joined by _>``). For LeRobot the
leaves are laid out as ``lerobot-eval`` sees them through gym-remote's LeRobot plugin: every
image (uint8, height x width x 1-4 channels) becomes a video ``observation.images.<key>`` (its
path joined by ``_`` without a leading ``pixels``; ``observation.image`` for an image-only env),
and every other leaf is flattened and concatenated, in the space's order, into one float32
``observation.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.space_walk import ARRAY_SPACES, leaf_subspaces, value_at

__all__ = ["Leaf", "ObservationLeaves", "is_image"]


def is_image(space: gym.Space) -> bool:
    """Whether ``space`` holds images: uint8, height x width x 1-4 channels, wider than 4."""
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and 1 <= space.shape[2] <= 4 < min(space.shape[:2])
    )


@dataclass(frozen=True)
class Leaf:
    """One leaf of an observation space: where it is, and what it holds."""

    path: tuple[Any, ...]
    space: gym.Space

    @property
    def name(self) -> str:
        """The path joined by ``_`` (``observation`` for the whole observation)."""
        return "_".join(map(str, self.path)) or "observation"

    @property
    def image_key(self) -> str:
        """The camera's key: its path joined by ``_``, without a leading ``pixels``."""
        path = self.path[1:] if len(self.path) > 1 and self.path[0] == "pixels" else self.path
        return "_".join(map(str, path))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.space.shape or ())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.space.dtype)


class ObservationLeaves:
    """An observation space's leaves, split into images and everything else.

    Raises:
        TypeError: the space has a part that is not a Box or a discrete space (a Text, a Graph,
            a Sequence), or a Dict with keys that are not strings.
    """

    def __init__(self, observation_space: gym.Space) -> None:
        leaves = leaf_subspaces(observation_space, ARRAY_SPACES)
        if leaves is None:
            raise TypeError(
                "recording needs an observation space of Box and discrete spaces below Dicts "
                f"(with str keys) and Tuples; this env's is {observation_space}"
            )
        self.all = [Leaf(tuple(path), space) for path, space in leaves]
        self.images = [leaf for leaf in self.all if is_image(leaf.space)]
        self.states = [leaf for leaf in self.all if not is_image(leaf.space)]
        self.state_size = sum(int(np.prod(leaf.shape)) for leaf in self.states)

    def lerobot_image_key(self, leaf: Leaf) -> str:
        """The LeRobot feature of an image leaf."""
        if self.images == [leaf] and leaf.path == ():
            return "observation.image"
        return f"observation.images.{leaf.image_key}"

    def state_of(self, observation: Any) -> np.ndarray:
        """The non-image leaves of ``observation``, flattened and concatenated as float32."""
        parts = [np.asarray(value_at(observation, leaf.path), np.float32).ravel() for leaf in self.states]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def state_names(self) -> list[str]:
        """A name for each element of :meth:`state_of`: the leaf's name, and its index if it has several."""
        names = []
        for leaf in self.states:
            size = int(np.prod(leaf.shape))
            names += [leaf.name] if leaf.shape == () else [f"{leaf.name}_{i}" for i in range(size)]
        return names
