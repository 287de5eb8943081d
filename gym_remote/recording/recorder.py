"""``Recorder``: collects each env's episode step by step and writes the ones that end to a
dataset in a thread of its own, so that stepping goes on while frames are encoded."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import gymnasium as gym
import numpy as np

from gym_remote.recording.episode import DatasetWriter, RecordedEpisode

__all__ = ["FORMATS", "Recorder", "open_dataset"]

FORMATS = ("lerobot", "hdf5")
# Episodes that may wait for the writer; past this, ending one waits (bounding memory).
_MAX_WAITING_EPISODES = 8


def open_dataset(
    directory: str | os.PathLike[str],
    format: str,
    observation_space: gym.Space,
    action_space: gym.Space,
    fps: int,
    *,
    env_args: Optional[Dict[str, Any]] = None,
    resume: bool = False,
) -> DatasetWriter:
    """A writer of ``format`` (``lerobot`` or ``hdf5``) for a dataset in ``directory``.

    Raises:
        ValueError: an unknown format.
        FileExistsError: ``directory`` holds a dataset and ``resume`` is False.
    """
    if format == "lerobot":
        from gym_remote.recording.lerobot import LeRobotWriter

        return LeRobotWriter(directory, observation_space, action_space, fps, resume=resume)
    if format == "hdf5":
        from gym_remote.recording.hdf5 import Hdf5Writer

        return Hdf5Writer(directory, observation_space, env_args, resume=resume)
    raise ValueError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")


class Recorder:
    """Episodes of one or more envs, written to ``writer`` as each ends.

    Call :meth:`start` after an env's reset, :meth:`step` after each of its steps and
    :meth:`end` when its episode is over (or :meth:`drop` to forget it). Episodes are written
    in the order they end, by a background thread; :meth:`close` waits for them.

    Args:
        writer: Where the episodes go (see :func:`open_dataset`).
        only_success: Keep only episodes that succeeded.
    """

    def __init__(self, writer: DatasetWriter, *, only_success: bool = False) -> None:
        self.writer = writer
        self.only_success = only_success
        self.written = 0
        self._episodes: Dict[int, RecordedEpisode] = {}
        self._pending: Dict[int, tuple[Any, Optional[np.ndarray]]] = {}  # the next frame's observation
        # (an episode to write or None, what to call once it is written); None alone: stop.
        self._queue: queue.Queue[Optional[Tuple[Optional[RecordedEpisode], Optional[Callable[[], None]]]]] = (
            queue.Queue(_MAX_WAITING_EPISODES)
        )
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._write_episodes, name="gym-remote-recorder", daemon=True)
        self._thread.start()

    def start(
        self,
        env_index: int,
        observation: Any,
        task: str,
        *,
        seed: Optional[int] = None,
        init_state: Optional[int] = None,
        state: Optional[np.ndarray] = None,
    ) -> None:
        """Begins env ``env_index``'s episode from its reset observation (and simulator state);
        an episode of that env still open is dropped."""
        self._episodes[env_index] = RecordedEpisode(
            task=task,
            env_index=env_index,
            states=None if state is None else [],
            seed=None if seed is None else int(seed),
            init_state=None if init_state is None else int(init_state),
        )
        self._pending[env_index] = (observation, state)

    def step(
        self,
        env_index: int,
        action: Any,
        observation: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        state: Optional[np.ndarray] = None,
    ) -> None:
        """Adds a frame to env ``env_index``'s episode: the observation the action was chosen
        from, the action and what its step returned (``observation`` and ``state`` are the
        next frame's)."""
        episode = self._episodes.get(env_index)
        if episode is None:
            return  # an env whose episode began before recording did
        chosen_from, state_then = self._pending[env_index]
        episode.observations.append(chosen_from)
        episode.actions.append(np.array(action))
        episode.rewards.append(float(reward))
        episode.terminations.append(bool(terminated))
        episode.truncations.append(bool(truncated))
        if episode.states is not None and state_then is not None:
            episode.states.append(np.asarray(state_then))
        self._pending[env_index] = (observation, state)

    def end(self, env_index: int, success: bool, then: Optional[Callable[[], None]] = None) -> None:
        """Ends env ``env_index``'s episode and queues it for writing (unless only successes
        are kept and it failed). ``then`` is called in the writer's thread once the episode is
        on disk (or skipped), in the order episodes end: an evaluation's results row is
        written only after its episode is.

        Raises:
            Exception: the error that stopped the writer, if it failed on an earlier episode.
        """
        self._raise_writer_error()
        episode = self._episodes.pop(env_index, None)
        self._pending.pop(env_index, None)
        if episode is not None:
            episode.success = bool(success)
        kept = episode is not None and (success or not self.only_success)
        if kept or then is not None:
            self._queue.put((episode if kept else None, then))

    def drop(self, env_index: int) -> None:
        """Forgets env ``env_index``'s open episode (it is not written)."""
        self._episodes.pop(env_index, None)
        self._pending.pop(env_index, None)

    def flush(self) -> None:
        """Waits until every episode ended so far is written.

        Raises:
            Exception: the error that stopped the writer, if one did.
        """
        self._queue.join()
        self._raise_writer_error()

    def close(self) -> None:
        """Drops open episodes, waits until every ended one is written and closes the writer.

        Raises:
            Exception: the error that stopped the writer, if one did.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self.writer.close()
        self._episodes.clear()
        self._raise_writer_error()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_episodes(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                episode, then = item
                if self._error is None:  # after a failure, drain the queue so that no producer blocks
                    if episode is not None:
                        self.writer.write(episode)
                        self.written += 1
                    if then is not None:
                        then()
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                self._error = error
            finally:
                self._queue.task_done()
