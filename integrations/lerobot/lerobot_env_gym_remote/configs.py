"""The env types ``remote_libero`` and ``remote``, registered with LeRobot's ``EnvConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.envs.configs import EnvConfig, LiberoEnv
from lerobot.envs.utils import parse_camera_names

import gym_remote
from gym_remote.addresses import server_list
from gym_remote.config import ClientConfig, resolve
from lerobot_env_gym_remote.observations import LeRobotObservations, features_of
from lerobot_env_gym_remote.vectorize import LazyVectorEnv, probe, remote_env_fns

__all__ = ["RemoteLiberoEnv", "RemoteEnv"]


@EnvConfig.register_subclass("remote_libero")
@dataclass
class RemoteLiberoEnv(LiberoEnv):
    """LeRobot's ``libero`` env type with LIBERO served by gym-remote (from its own venv).

    Every flag of ``--env.type=libero`` works the same, plus:

    Attributes:
        address: The gym-remote server, for example ``tcp://127.0.0.1:5555``, or several
            separated by commas, which sub-env ``i`` takes in turn (``i % count``; those
            ``gym-remote ray-serve`` started on a Ray cluster, say). None: ``GYM_REMOTE_ADDRESS``,
            else a private local server. Their token, if any, is read from ``GYM_REMOTE_TOKEN``.
        timeout: Seconds every remote call may take (None: ``GYM_REMOTE_TIMEOUT`` or 60).
        restart_failed_envs: Make a sub-env again when its simulator worker crashes, is killed
            or times out (its rollout ends as truncated, ``info["episode_lost"]`` True), and
            reconnect when the server restarts (None: ``GYM_REMOTE_RESTART_FAILED_ENVS``).
    """

    address: str | None = None
    timeout: float | None = None
    restart_failed_envs: bool | None = None

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the remote ``gym_remote/Libero-v0``, shared by all its tasks."""
        kwargs = {
            "obs_type": self.obs_type,
            "render_mode": self.render_mode,
            "observation_height": self.observation_height,
            "observation_width": self.observation_width,
            "control_freq": self.fps,
            "hard_reset": self.hard_reset,
            "control_mode": self.control_mode,
            "camera_names": parse_camera_names(self.camera_name),
            "seed_restarts_init_states": False,  # LeRobot moves on to new init states every rollout
        }
        if self.camera_name_mapping is not None:
            kwargs["camera_name_mapping"] = self.camera_name_mapping
        return kwargs

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, LazyVectorEnv]]:
        """``{suite: {task_id: vector env}}`` for the suites in ``task``, the tasks in ``task_ids``.

        Suite sizes and episode lengths come from the server. Sub-env ``i`` of a task starts at
        init state ``i`` and moves on by ``n_envs`` each rollout, as LeRobot's ``libero`` does.
        """
        if self.is_libero_plus:
            raise ValueError("remote_libero serves LIBERO; LIBERO-plus is not supported")
        addresses = _server_addresses(self.address)
        suites = gym_remote.list_tasks("Libero-v0", address=addresses[0], timeout=self.timeout)["suites"]
        names = [name.strip() for name in str(self.task).split(",") if name.strip()]
        unknown = [name for name in names if name not in suites]
        if not names or unknown:
            raise ValueError(f"unknown LIBERO suites {unknown or names}; the server has {', '.join(suites)}")
        envs: dict[str, dict[int, LazyVectorEnv]] = {}
        for suite in names:
            tasks = suites[suite]
            task_ids = sorted(set(self.task_ids)) if self.task_ids is not None else range(len(tasks))
            outside = [task_id for task_id in task_ids if not 0 <= task_id < len(tasks)]
            if outside:
                raise ValueError(f"task_ids {outside} are outside {suite} (0..{len(tasks) - 1})")
            spaces = None
            envs[suite] = {}
            for task_id in task_ids:
                per_env = [
                    {
                        "task_suite": suite,
                        "task_id": task_id,
                        "init_state_id": index if self.init_states else None,
                        "init_state_stride": n_envs,
                        "episode_length": self.episode_length or tasks[task_id]["episode_length"],
                        "address": addresses[index % len(addresses)],
                    }
                    for index in range(n_envs)
                ]
                env_fns = remote_env_fns(
                    "remote/Libero-v0",
                    per_env,
                    timeout=self.timeout,
                    restart_failed_envs=self.restart_failed_envs,
                    **self.gym_kwargs,
                )
                spaces = spaces or probe(env_fns[0])  # every task of a suite has the same spaces
                envs[suite][task_id] = LazyVectorEnv(env_fns, use_async_envs, spaces)
        return envs


@EnvConfig.register_subclass("remote")
@dataclass
class RemoteEnv(EnvConfig):
    """Any env id a gym-remote server serves, its observations in LeRobot's layout.

    Images become ``observation.images.<key>`` (``observation.image`` for an image-only env);
    every other numeric array is concatenated into ``observation.state``. ``features`` and
    ``features_map`` are filled from the remote spaces when the envs are made.

    Attributes:
        env_id: The id the server makes, for example ``gym_remote/Robosuite-v0``.
        env_kwargs: Keyword arguments of the remote ``gym.make``.
        address: The gym-remote server, or several separated by commas (as for ``remote_libero``).
        timeout: Seconds every remote call may take (None: ``GYM_REMOTE_TIMEOUT`` or 60).
        restart_failed_envs: As for ``remote_libero``.
        episode_length: Steps before truncation (None: the env's own limit).
    """

    env_id: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    timeout: float | None = None
    restart_failed_envs: bool | None = None
    episode_length: int | None = None
    render_mode: str = "rgb_array"

    def __post_init__(self) -> None:
        if not self.env_id:
            raise ValueError("--env.type=remote needs --env.env_id, an id the gym-remote server serves")

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``gym.make("remote/Env-v0", ...)``."""
        kwargs = {"env_id": self.env_id, "render_mode": self.render_mode, **self.env_kwargs}
        if self.episode_length is not None:
            kwargs["max_episode_steps"] = self.episode_length
        return kwargs

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, LazyVectorEnv]]:
        """``{"remote": {0: vector env}}``; also fills ``features`` and ``features_map``."""
        addresses = _server_addresses(self.address)
        env_fns = remote_env_fns(
            "remote/Env-v0",
            [{"address": addresses[index % len(addresses)]} for index in range(n_envs)],
            wrapper=LeRobotObservations,
            timeout=self.timeout,
            restart_failed_envs=self.restart_failed_envs,
            **self.gym_kwargs,
        )
        spaces = probe(env_fns[0])
        self.features, self.features_map = features_of(spaces[0], spaces[1])
        return {self.type: {0: LazyVectorEnv(env_fns, use_async_envs, spaces)}}


def _server_addresses(address: str | None) -> list[str | None]:
    """The servers sub-envs take in turn: ``address`` (or ``GYM_REMOTE_ADDRESS``) split at its
    commas; ``[None]`` (a private local server each) where neither names one."""
    text = resolve(ClientConfig, address=address).address
    return list(server_list(text)) if text else [None]
