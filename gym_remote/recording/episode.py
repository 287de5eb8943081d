"""One recorded episode, as every dataset writer receives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

__all__ = ["DatasetWriter", "RecordedEpisode"]


@dataclass
class RecordedEpisode:
    """An episode's frames: frame ``t`` is the observation an action was chosen from, that
    action, and what the step it made returned. The observation after the last action (and
    the simulator state then) is not a frame, as LeRobot and robomimic store episodes.

    Attributes:
        task: The task's text (LIBERO's instruction, or the env's name).
        env_index: The sub-env of a vector env that ran it (0 for a single env).
        observations: One observation per frame.
        actions: One action per frame.
        rewards: The reward of each frame's step.
        terminations: Whether each frame's step terminated the episode.
        truncations: Whether each frame's step truncated it.
        states: The simulator's flattened state at each frame (None: not recorded).
        success: Whether the episode succeeded (its last ``info["is_success"]``).
        seed: The seed of its reset, if known.
        init_state: Its initial state's index (LIBERO), if known.
    """

    task: str
    env_index: int = 0
    observations: list[Any] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminations: list[bool] = field(default_factory=list)
    truncations: list[bool] = field(default_factory=list)
    states: Optional[list[np.ndarray]] = None
    success: bool = False
    seed: Optional[int] = None
    init_state: Optional[int] = None

    @property
    def length(self) -> int:
        """The number of frames."""
        return len(self.actions)

    @property
    def dones(self) -> np.ndarray:
        """Whether each frame's step ended the episode (terminated or truncated)."""
        return np.logical_or(self.terminations, self.truncations)


class DatasetWriter(Protocol):
    """Writes whole episodes to a dataset on disk; each write leaves a dataset that loads."""

    def write(self, episode: RecordedEpisode) -> None:
        """Appends ``episode`` to the dataset."""

    def close(self) -> None:
        """Releases what the writer holds open."""
