"""Recording wrappers: any Gymnasium env (a ``RemoteEnv`` or a local one) and any vector env
(a ``RemoteVectorEnv``, an ``AsyncVectorEnv``) record their episodes into one dataset."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import iterate

from gym_remote.recording.recorder import Recorder, open_dataset

__all__ = ["RecordEpisodes", "RecordVectorEpisodes", "vector_info_value"]


def _attribute(env: Any, name: str) -> Any:
    """``name`` of the env below its wrappers (remote or local), or None."""
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


def _fps(env: Any) -> int:
    """The env's control rate (``control_freq``), else its ``render_fps``, else 30."""
    rate = _attribute(env, "control_freq") or (env.metadata or {}).get("render_fps") or 30
    return int(round(float(rate)))


def _env_args(env: Any) -> dict[str, Any]:
    """robomimic's ``env_args``: the env's id and the kwargs it was made with."""
    spec = env.spec
    return {
        "env_name": spec.id if spec is not None else type(env.unwrapped).__name__,
        "type": "gymnasium",
        "env_kwargs": {k: v for k, v in (spec.kwargs if spec is not None else {}).items() if _is_json(v)},
    }


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _task_of(env: Any) -> str:
    text = _attribute(env, "task_description")
    if text is not None:
        return str(text)
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def _states_for(env: Any, format: str, states: Optional[bool]) -> bool:
    """Whether to record simulator states: asked for, or HDF5 and the env has ``get_state``."""
    if states is not None:
        return states
    return format == "hdf5" and callable(_attribute(env, "get_state"))


class RecordEpisodes(gym.Wrapper):
    """Records every episode of ``env`` that ends into a dataset in ``directory``.

    An episode is kept when a step terminates or truncates it; one cut off by a reset or by
    :meth:`close` is dropped. ``close`` waits until every kept episode is on disk.

    Args:
        env: The env to record.
        directory: The dataset's directory.
        format: ``lerobot`` (LeRobotDataset v3.0) or ``hdf5`` (robomimic).
        fps: Frames a second (None: the env's ``control_freq``, else its ``render_fps``).
        only_success: Keep only episodes whose last ``info["is_success"]`` is true.
        states: Record the simulator state of each frame with the env's ``get_state()``
            (None: for ``hdf5`` when the env has one).
        resume: Append to the dataset already in ``directory``.
    """

    def __init__(
        self,
        env: gym.Env,
        directory: str | os.PathLike[str],
        format: str = "lerobot",
        *,
        fps: Optional[int] = None,
        only_success: bool = False,
        states: Optional[bool] = None,
        resume: bool = False,
    ) -> None:
        super().__init__(env)
        writer = open_dataset(
            directory,
            format,
            env.observation_space,
            env.action_space,
            fps or _fps(env),
            env_args=_env_args(env),
            resume=resume,
        )
        self.recorder = Recorder(writer, only_success=only_success)
        self._records_states = _states_for(env, format, states)

    def _state(self) -> Optional[np.ndarray]:
        return np.asarray(self.env.get_wrapper_attr("get_state")()) if self._records_states else None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        observation, info = self.env.reset(seed=seed, options=options)
        init_state = (options or {}).get("init_state_id")
        self.recorder.start(
            0, observation, _task_of(self.env), seed=seed, init_state=init_state, state=self._state()
        )
        return observation, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.recorder.step(0, action, observation, float(reward), terminated, truncated, self._state())
        if terminated or truncated:
            self.recorder.end(0, bool(info.get("is_success", False)))
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        try:
            self.recorder.close()
        finally:
            super().close()


class RecordVectorEpisodes(VectorWrapper):
    """Records the episodes of every sub-env of ``envs`` into one dataset, in the order they
    end, each noting its sub-env and task. Works in each of Gymnasium's autoreset modes.

    Args:
        envs: The vector env to record.
        directory, format, fps, only_success, states, resume: As for :class:`RecordEpisodes`
            (``fps`` and ``states`` are looked up on the sub-envs with ``get_attr``).
    """

    def __init__(
        self,
        envs: VectorEnv,
        directory: str | os.PathLike[str],
        format: str = "lerobot",
        *,
        fps: Optional[int] = None,
        only_success: bool = False,
        states: Optional[bool] = None,
        resume: bool = False,
    ) -> None:
        super().__init__(envs)
        self._envs: Any = envs  # get_attr and call are on every vector env, not on VectorEnv
        self.autoreset_mode = AutoresetMode(envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
        writer = open_dataset(
            directory,
            format,
            envs.single_observation_space,
            envs.single_action_space,
            fps
            or int(
                round(float(self._first_attribute("control_freq") or envs.metadata.get("render_fps") or 30))
            ),
            env_args={
                "env_name": envs.spec.id if envs.spec is not None else type(envs).__name__,
                "type": "gymnasium",
            },
            resume=resume,
        )
        self.recorder = Recorder(writer, only_success=only_success)
        self._records_states = states if states is not None else format == "hdf5" and self._has_get_state()
        self._tasks = self._task_texts()
        self._resets_next = np.zeros(envs.num_envs, bool)  # NEXT_STEP: sub-envs whose next step resets

    def _first_attribute(self, name: str) -> Any:
        try:
            return self._envs.get_attr(name)[0]
        except Exception:  # noqa: BLE001 - an env without it, local or remote
            return None

    def _has_get_state(self) -> bool:
        try:
            self._envs.call("get_state")
        except Exception:  # noqa: BLE001 - an env without it, local or remote
            return False
        return True

    def _task_texts(self) -> list[str]:
        try:
            return [str(text) for text in self._envs.get_attr("task_description")]
        except Exception:  # noqa: BLE001 - an env without it, local or remote
            name = self.env.spec.id if self.env.spec is not None else "task"
            return [name] * self.num_envs

    def _states(self) -> list[Optional[np.ndarray]]:
        if not self._records_states:
            return [None] * self.num_envs
        return [np.asarray(state) for state in self._envs.call("get_state")]

    def reset(self, *, seed: Any = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        mask = (options or {}).get("reset_mask")  # read first: Gymnasium's vector envs pop it
        observations, infos = self.env.reset(seed=seed, options=options)
        rows = list(iterate(self.single_observation_space, observations))
        states = self._states()
        seeds = (
            seed
            if isinstance(seed, (list, tuple))
            else [None if seed is None else seed + i for i in range(self.num_envs)]
        )
        for index in range(self.num_envs):
            if mask is None or mask[index]:
                self.recorder.start(
                    index, rows[index], self._tasks[index], seed=seeds[index], state=states[index]
                )
        self._resets_next[:] = False if mask is None else self._resets_next & ~np.asarray(mask)
        return observations, infos

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        rows = list(iterate(self.single_observation_space, observations))
        action_rows = list(iterate(self.single_action_space, actions))
        states = self._states()
        for index in range(self.num_envs):
            if self._resets_next[index]:  # this step was a reset: its observation starts an episode
                self.recorder.start(index, rows[index], self._tasks[index], state=states[index])
                continue
            done = bool(terminations[index] or truncations[index])
            final = done and self.autoreset_mode == AutoresetMode.SAME_STEP
            observation = infos["final_obs"][index] if final else rows[index]
            self.recorder.step(
                index,
                action_rows[index],
                observation,
                rewards[index],
                terminations[index],
                truncations[index],
                None if final else states[index],
            )
            if done:
                info = infos["final_info"] if final else infos
                self.recorder.end(index, bool(vector_info_value(info, "is_success", index)))
                if final:
                    self.recorder.start(index, rows[index], self._tasks[index], state=states[index])
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._resets_next = np.logical_or(terminations, truncations)
        return observations, rewards, terminations, truncations, infos

    def close(self, **kwargs: Any) -> None:
        try:
            self.recorder.close()
        finally:
            self.env.close(**kwargs)


def vector_info_value(infos: dict[str, Any], key: str, position: int) -> Any:
    """``key`` of the info of sub-env ``position`` in a vector env's batched infos, or None."""
    if key not in infos or not infos.get(f"_{key}", np.ones(position + 1, bool))[position]:
        return None
    return infos[key][position]
