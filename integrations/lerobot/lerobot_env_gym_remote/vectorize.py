"""Vector envs as ``lerobot-eval`` expects them, over remote sessions made on first use."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space
from lerobot.envs.utils import freeze_after_episode_end

import gym_remote  # noqa: F401  (registers the remote/ ids in forkserver children too)

__all__ = ["LazyVectorEnv", "make_remote_env", "probe", "remote_env_fns"]


def make_remote_env(
    registered_id: str, /, wrapper: Callable[[gym.Env], gym.Env] | None = None, **kwargs: Any
) -> gym.Env:
    """``gym.make(registered_id, **kwargs)``, optionally wrapped (picklable once partially applied)."""
    env = gym.make(registered_id, disable_env_checker=True, **kwargs)
    return wrapper(env) if wrapper is not None else env


def probe(env_fn: Callable[[], gym.Env]) -> tuple[gym.Space, gym.Space, dict[str, Any]]:
    """The observation space, action space and metadata of the env ``env_fn`` makes."""
    env = env_fn()
    try:
        return env.observation_space, env.action_space, dict(env.metadata)
    finally:
        env.close()


class LazyVectorEnv(VectorEnv):
    """A vector env made on first use, so that only the task being evaluated holds remote sessions.

    It is what LeRobot builds for its own LIBERO envs: with ``use_async``, an ``AsyncVectorEnv``
    (forkserver, shared memory) whose sub-envs stop stepping once their episode ends until the next
    rollout; otherwise a ``SyncVectorEnv``. Both autoreset in ``NEXT_STEP`` mode.

    Args:
        env_fns: One factory per sub-env.
        use_async: Whether to step the sub-envs in parallel processes.
        spaces: The single observation space, action space and metadata (see :func:`probe`).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        use_async: bool,
        spaces: tuple[gym.Space, gym.Space, dict[str, Any]],
    ) -> None:
        super().__init__()
        self.env_fns = list(env_fns)
        self.use_async = use_async and len(self.env_fns) > 1
        self.num_envs = len(self.env_fns)
        self.single_observation_space, self.single_action_space, metadata = spaces
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(metadata, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.render_mode = "rgb_array"
        self._env: VectorEnv | None = None

    @property
    def vector_env(self) -> VectorEnv:
        """The vector env, made on first use."""
        if self._env is None:
            if self.use_async:
                self._env = AsyncVectorEnv(
                    [freeze_after_episode_end(env_fn) for env_fn in self.env_fns],
                    context="forkserver",
                    shared_memory=True,
                    autoreset_mode=AutoresetMode.NEXT_STEP,
                )
            else:
                self._env = SyncVectorEnv(self.env_fns, autoreset_mode=AutoresetMode.NEXT_STEP)
        return self._env

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.vector_env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        return self.vector_env.step(actions)

    def render(self) -> Any:
        return self.vector_env.render()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self.vector_env.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.vector_env.get_attr(name)

    def set_attr(self, name: str, values: Any) -> None:
        self.vector_env.set_attr(name, values)

    def close_extras(self, **kwargs: Any) -> None:
        if self._env is not None:
            self._env.close(**kwargs)
            self._env = None


def remote_env_fns(
    registered_id: str, kwargs_per_env: Sequence[dict[str, Any]], /, **shared: Any
) -> list[Callable[[], gym.Env]]:
    """One picklable factory per sub-env: ``gym.make(registered_id, **shared, **kwargs_per_env[i])``."""
    return [
        functools.partial(make_remote_env, registered_id, **shared, **kwargs) for kwargs in kwargs_per_env
    ]
