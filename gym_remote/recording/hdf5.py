"""robomimic / LIBERO HDF5 datasets, written with h5py.

``ROOT/demo.hdf5`` is the dataset: ``data/demo_K/{actions, rewards, dones, states, obs/*}``,
``data`` carrying ``env_args`` (JSON), ``total`` and LIBERO's ``num_demos`` and
``problem_info``. Each ``data/demo_K`` is an HDF5 external link to ``ROOT/demos/demo_K.hdf5``
(h5py follows it, from any working directory): every demo is a new file renamed into place and
the index is rewritten the same way, so a recording killed at any moment leaves a dataset that
opens, with every demo it finished. HDF5 itself can corrupt a whole file when a process dies
while writing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import gymnasium as gym
import numpy as np

from gym_remote.recording.atomic import write_atomically
from gym_remote.recording.episode import RecordedEpisode
from gym_remote.recording.layout import ObservationLeaves
from gym_remote.space_walk import value_at

__all__ = ["Hdf5Writer"]

INDEX_NAME = "demo.hdf5"


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "HDF5 datasets need h5py: pip install h5py (or '/path/to/gym-remote[record]')"
        ) from None
    return h5py


class Hdf5Writer:
    """Appends episodes as robomimic demos to ``root/demo.hdf5``.

    Args:
        root: The dataset's directory.
        observation_space: The env's (single) observation space; each leaf is ``obs/<path
            joined by _>`` in its own dtype.
        env_args: robomimic's ``env_args`` (``env_name``, ``type``, ``env_kwargs``), as JSON.
        resume: Append to the dataset already in ``root``.

    Raises:
        FileExistsError: ``root`` holds a dataset and ``resume`` is False.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        observation_space: gym.Space,
        env_args: Optional[Dict[str, Any]] = None,
        resume: bool = False,
    ) -> None:
        self._h5py = _import_h5py()
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        self.leaves = ObservationLeaves(observation_space)
        self.env_args = env_args or {}
        self.demos: list[Dict[str, Any]] = []  # each demo's attributes, in order
        if self.index_path.exists():
            if not resume:
                raise FileExistsError(f"{self.root} holds a dataset; resume it or choose another directory")
            with self._h5py.File(self.index_path, "r") as index:
                self.demos = json.loads(index["data"].attrs["gym_remote_demos"])
        for stale in (self.root / "demos").glob("demo_*.hdf5"):
            if int(stale.stem.split("_")[1]) >= len(self.demos):
                stale.unlink()  # a demo a kill cut off before the index named it

    def write(self, episode: RecordedEpisode) -> None:
        """Appends ``episode`` as ``data/demo_K``."""
        name = f"demo_{len(self.demos)}"
        attributes = {
            "num_samples": episode.length,
            "task": episode.task,
            "env_index": episode.env_index,
            "success": episode.success,
            "seed": -1 if episode.seed is None else episode.seed,
            "init_state": -1 if episode.init_state is None else episode.init_state,
        }
        write_atomically(
            self.root / "demos" / f"{name}.hdf5", lambda path: self._write_demo(path, episode, attributes)
        )
        self.demos.append(attributes)
        write_atomically(self.index_path, self._write_index)

    def close(self) -> None:
        """Nothing stays open between demos: every file is whole once written."""

    def _write_demo(self, path: Path, episode: RecordedEpisode, attributes: Dict[str, Any]) -> None:
        with self._h5py.File(path, "w") as demo:
            demo.create_dataset("actions", data=np.asarray(episode.actions))
            demo.create_dataset("rewards", data=np.asarray(episode.rewards, np.float64))
            demo.create_dataset("dones", data=episode.dones.astype(np.int64))
            if episode.states is not None:
                demo.create_dataset("states", data=np.asarray(episode.states))
            observations = demo.create_group("obs")
            for leaf in self.leaves.all:
                values = np.stack([np.asarray(value_at(o, leaf.path)) for o in episode.observations])
                observations.create_dataset(leaf.name, data=values.astype(leaf.dtype, copy=False))
            demo.attrs.update(attributes)

    def _write_index(self, path: Path) -> None:
        with self._h5py.File(path, "w") as index:
            data = index.create_group("data")
            for number in range(len(self.demos)):
                data[f"demo_{number}"] = self._h5py.ExternalLink(f"demos/demo_{number}.hdf5", "/")
            tasks = sorted({demo["task"] for demo in self.demos})
            data.attrs["total"] = sum(demo["num_samples"] for demo in self.demos)
            data.attrs["num_demos"] = len(self.demos)
            data.attrs["env_args"] = json.dumps(self.env_args)
            data.attrs["problem_info"] = json.dumps(
                {"language_instruction": tasks[0] if len(tasks) == 1 else tasks}
            )
            data.attrs["gym_remote_demos"] = json.dumps(self.demos)
