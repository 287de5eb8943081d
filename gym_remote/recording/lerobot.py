"""LeRobotDataset v3.0, written with pyarrow and PyAV (no torch, no LeRobot).

Each episode gets its own data file and one mp4 per camera (the v3.0 layout lets an episode's
metadata name any file), so that every episode is written by new files renamed into place:
a recording killed at any moment leaves a dataset that loads, with every episode it finished.
``meta/info.json`` is written last, after an episode's files; :class:`LeRobotWriter` with
``resume=True`` removes the files of an episode a kill cut off before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.recording.atomic import write_atomically
from gym_remote.recording.episode import RecordedEpisode
from gym_remote.recording.layout import ObservationLeaves
from gym_remote.recording.stats import Stats, feature_stats, from_json, image_stats, merge_stats, to_json
from gym_remote.space_walk import value_at

__all__ = ["CODEBASE_VERSION", "LeRobotWriter"]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory, as LeRobot
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# H.264 at a constant quality, a key frame every 2 frames (LeRobot's GOP, for random access).
VIDEO_CODEC = "h264"
VIDEO_GOP = 2
VIDEO_CRF = 18
_INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError(
            "LeRobot datasets need pyarrow and PyAV: pip install pyarrow av "
            "(or '/path/to/gym-remote[record]')"
        ) from None
    return pyarrow


def _action_feature(action_space: gym.Space) -> Dict[str, Any]:
    if isinstance(action_space, spaces.Box):
        return {"dtype": "float32", "shape": [int(np.prod(action_space.shape))], "names": None}
    if isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return {"dtype": "int64", "shape": [int(np.prod(action_space.shape or (1,)))], "names": None}
    raise TypeError(f"LeRobot datasets hold Box and discrete actions; this env's are {action_space}")


class LeRobotWriter:
    """Appends episodes to a LeRobotDataset v3.0 in ``root``.

    Args:
        root: The dataset's directory (``LeRobotDataset(repo_id, root=root)`` loads it).
        observation_space: The env's (single) observation space; see
            :mod:`gym_remote.recording.layout` for where each part goes.
        action_space: The env's (single) action space.
        fps: Frames a second (the env's control rate).
        robot_type: ``info.json``'s robot type.
        resume: Append to the dataset already in ``root`` (its features must match).

    Raises:
        FileExistsError: ``root`` holds a dataset and ``resume`` is False.
        ValueError: a camera's height or width is odd (H.264 in yuv420p needs even ones), or
            the dataset to resume has other features.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        observation_space: gym.Space,
        action_space: gym.Space,
        fps: int,
        robot_type: Optional[str] = None,
        resume: bool = False,
    ) -> None:
        self._pyarrow = _import_pyarrow()
        self.root = Path(root)
        self.fps = int(fps)
        self.leaves = ObservationLeaves(observation_space)
        for leaf in self.leaves.images:
            if leaf.shape[0] % 2 or leaf.shape[1] % 2 or leaf.shape[2] != 3:
                raise ValueError(
                    f"camera {leaf.name} is {leaf.shape}: LeRobot videos need RGB images with even "
                    "heights and widths"
                )
        self.video_keys = {self.leaves.lerobot_image_key(leaf): leaf for leaf in self.leaves.images}
        self.features = self._features(action_space)
        self.info: Dict[str, Any] = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": self.fps,
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        self.tasks: Dict[str, int] = {}
        self.stats: Dict[str, Stats] = {}
        info_path = self.root / "meta" / "info.json"
        if info_path.exists():
            if not resume:
                raise FileExistsError(f"{self.root} holds a dataset; resume it or choose another directory")
            self._resume(json.loads(info_path.read_text()))
        self.root.mkdir(parents=True, exist_ok=True)

    def _features(self, action_space: gym.Space) -> Dict[str, Any]:
        features: Dict[str, Any] = {}
        for key, leaf in self.video_keys.items():
            height, width, channels = leaf.shape
            features[key] = {
                "dtype": "video",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": VIDEO_CODEC,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": channels,
                    "video.g": VIDEO_GOP,
                    "video.crf": VIDEO_CRF,
                    "has_audio": False,
                },
            }
        if self.leaves.states:
            features["observation.state"] = {
                "dtype": "float32",
                "shape": [self.leaves.state_size],
                "names": self.leaves.state_names(),
            }
        features["action"] = _action_feature(action_space)
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in _INDEX_FEATURES[1:]:
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        return features

    def _resume(self, info: Dict[str, Any]) -> None:
        if info.get("features") != self.features or info.get("fps") != self.fps:
            raise ValueError(
                f"the dataset in {self.root} has other features or another fps than this env's; "
                "record into a new directory"
            )
        self.info = info
        episodes = info["total_episodes"]
        self._remove_episodes_from(episodes)
        stats_path = self.root / "meta" / "stats.json"
        if episodes and stats_path.exists():
            self.stats = from_json(json.loads(stats_path.read_text()))
        tasks_path = self.root / "meta" / "tasks.parquet"
        if tasks_path.exists():
            table = self._pyarrow.parquet.read_table(tasks_path)
            self.tasks = dict(zip(table.column("task").to_pylist(), table.column("task_index").to_pylist()))

    def _remove_episodes_from(self, first: int) -> None:
        """Deletes the files of episodes ``first`` and later: what a kill left unannounced."""
        patterns = [DATA_PATH, EPISODES_PATH] + [
            VIDEO_PATH.replace("{video_key}", key) for key in self.video_keys
        ]
        index = first
        while True:
            paths = [self.root / self._path(pattern, index) for pattern in patterns]
            existing = [path for path in paths if path.exists()]
            if not existing:
                return
            for path in existing:
                path.unlink()
            index += 1

    @staticmethod
    def _path(pattern: str, episode_index: int) -> str:
        chunk, file = divmod(episode_index, CHUNKS_SIZE)
        return pattern.format(chunk_index=chunk, file_index=file)

    def write(self, episode: RecordedEpisode) -> None:
        """Appends ``episode`` (one with no frames is skipped: LeRobot has no empty episodes)."""
        if episode.length == 0:
            return
        index = self.info["total_episodes"]
        first_frame = self.info["total_frames"]
        task_index = self.tasks.setdefault(episode.task, len(self.tasks))
        columns = self._columns(episode, index, first_frame, task_index)
        episode_stats = {name: feature_stats(values) for name, values in columns.items()}
        for key, leaf in self.video_keys.items():
            frames = np.stack([value_at(observation, leaf.path) for observation in episode.observations])
            self._write_video(self.root / self._path(VIDEO_PATH.replace("{video_key}", key), index), frames)
            episode_stats[key] = image_stats(frames)
        write_atomically(
            self.root / self._path(DATA_PATH, index), lambda path: self._write_data(path, columns)
        )
        self._write_episode_metadata(episode, index, first_frame, episode_stats)
        if len(self.tasks) > self.info["total_tasks"]:
            write_atomically(self.root / "meta" / "tasks.parquet", self._write_tasks)
        self.stats = {
            name: merge_stats(self.stats[name], values) if name in self.stats else values
            for name, values in episode_stats.items()
        }
        write_atomically(
            self.root / "meta" / "stats.json", lambda path: _write_json(path, to_json(self.stats))
        )
        self.info["total_episodes"] = index + 1
        self.info["total_frames"] = first_frame + episode.length
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{index + 1}"}
        write_atomically(self.root / "meta" / "info.json", lambda path: _write_json(path, self.info))

    def close(self) -> None:
        """Nothing stays open between episodes: every file is whole once written."""

    def _columns(
        self, episode: RecordedEpisode, index: int, first_frame: int, task_index: int
    ) -> Dict[str, np.ndarray]:
        length = episode.length
        columns: Dict[str, np.ndarray] = {}
        if self.leaves.states:
            columns["observation.state"] = np.stack([self.leaves.state_of(o) for o in episode.observations])
        action_dtype = np.float32 if self.features["action"]["dtype"] == "float32" else np.int64
        columns["action"] = np.stack([np.asarray(a, action_dtype).ravel() for a in episode.actions])
        columns["next.reward"] = np.asarray(episode.rewards, np.float32)
        columns["next.done"] = episode.dones
        columns["timestamp"] = (np.arange(length) / self.fps).astype(np.float32)
        columns["frame_index"] = np.arange(length, dtype=np.int64)
        columns["episode_index"] = np.full(length, index, np.int64)
        columns["index"] = np.arange(first_frame, first_frame + length, dtype=np.int64)
        columns["task_index"] = np.full(length, task_index, np.int64)
        return columns

    def _write_data(self, path: Path, columns: Dict[str, np.ndarray]) -> None:
        pyarrow = self._pyarrow
        arrays = {}
        hf_features = {}
        for name, values in columns.items():
            feature = self.features[name]
            if values.ndim == 2:
                flat = pyarrow.array(values.ravel())
                arrays[name] = pyarrow.FixedSizeListArray.from_arrays(flat, values.shape[1])
                hf_features[name] = {
                    "feature": {"dtype": feature["dtype"], "_type": "Value"},
                    "length": values.shape[1],
                    "_type": "List",
                }
            else:
                arrays[name] = pyarrow.array(values)
                hf_features[name] = {"dtype": feature["dtype"], "_type": "Value"}
        table = pyarrow.table(arrays)
        # The Hugging Face datasets library reads a file's features from this entry.
        metadata = {"huggingface": json.dumps({"info": {"features": hf_features}})}
        pyarrow.parquet.write_table(table.replace_schema_metadata(metadata), path)

    def _write_video(self, path: Path, frames: np.ndarray) -> None:
        from gym_remote.evaluation.videos import write_video

        write_atomically(
            path, lambda temporary: write_video(temporary, frames, self.fps, gop=VIDEO_GOP, crf=VIDEO_CRF)
        )

    def _write_episode_metadata(
        self, episode: RecordedEpisode, index: int, first_frame: int, episode_stats: Dict[str, Stats]
    ) -> None:
        pyarrow = self._pyarrow
        chunk, file = divmod(index, CHUNKS_SIZE)
        row: Dict[str, Any] = {
            "episode_index": index,
            "tasks": [episode.task],
            "length": episode.length,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": first_frame,
            "dataset_to_index": first_frame + episode.length,
        }
        for key in self.video_keys:
            row[f"videos/{key}/chunk_index"] = chunk
            row[f"videos/{key}/file_index"] = file
            row[f"videos/{key}/from_timestamp"] = 0.0
            row[f"videos/{key}/to_timestamp"] = episode.length / self.fps
        for name, values in episode_stats.items():
            for stat, value in values.items():
                row[f"stats/{name}/{stat}"] = value.tolist()
        row["meta/episodes/chunk_index"] = chunk
        row["meta/episodes/file_index"] = file
        row["gym_remote/env_index"] = episode.env_index
        row["gym_remote/success"] = episode.success
        row["gym_remote/seed"] = episode.seed
        row["gym_remote/init_state"] = episode.init_state
        table = pyarrow.Table.from_pylist([row])
        write_atomically(
            self.root / self._path(EPISODES_PATH, index),
            lambda path: pyarrow.parquet.write_table(table, path),
        )

    def _write_tasks(self, path: Path) -> None:
        pyarrow = self._pyarrow
        ordered: List[str] = sorted(self.tasks, key=self.tasks.__getitem__)
        table = pyarrow.table(
            {"task_index": pyarrow.array([self.tasks[t] for t in ordered], pyarrow.int64()), "task": ordered}
        )
        # pandas metadata naming ``task`` as the index: LeRobot looks tasks up by their text.
        pandas_metadata = {
            "index_columns": ["task"],
            "column_indexes": [],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pyarrow.__version__},
        }
        metadata = {"pandas": json.dumps(pandas_metadata)}
        pyarrow.parquet.write_table(table.replace_schema_metadata(metadata), path)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=4))
