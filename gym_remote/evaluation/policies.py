"""Policies an evaluation runs: built-ins, or a factory named ``package.module:factory``.

A policy sees the observations of the envs that need actions, batched, and returns one action
each, ``(n, *action_shape)``, or a chunk each, ``(n, H, *action_shape)``; the evaluation runs
``replan_steps`` actions of a chunk before it asks again.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from gymnasium import spaces

__all__ = [
    "Policy",
    "RandomPolicy",
    "ZerosPolicy",
    "ScriptedLift",
    "BUILT_IN_POLICIES",
    "factory_named",
    "load_policy",
]


@runtime_checkable
class Policy(Protocol):
    """What an evaluation drives."""

    def reset(self, env_index: int) -> None:
        """Env ``env_index`` starts a new episode (forget what its last one left)."""

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        """Actions (or chunks of them) for envs ``env_indices``, whose observations are batched
        in ``observations`` in that order."""


class RandomPolicy:
    """Uniform samples of the action space, seeded."""

    def __init__(self, action_space: spaces.Space, seed: int = 0, **_: Any) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.action_space.sample() for _ in env_indices])


class ZerosPolicy:
    """The zero action, always (a still robot, for a baseline)."""

    def __init__(self, action_space: spaces.Space, **_: Any) -> None:
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"the zeros policy needs a Box action space, got {action_space}")
        self.action = np.zeros(action_space.shape, action_space.dtype)

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.action] * len(env_indices))


class ScriptedLift:
    """robosuite's Lift: approach the cube from above, descend, grasp, lift, in OSC_POSE deltas.
    Reads ``gripper_to_cube_pos`` (cube minus gripper position) from each observation."""

    def __init__(self, **_: Any) -> None:
        self._phases: dict[int, tuple[str, int]] = {}  # env index -> (phase, steps grasping)

    def reset(self, env_index: int) -> None:
        self._phases[env_index] = ("approach", 0)

    def act(self, observations: Any, env_indices: Sequence[int]) -> np.ndarray:
        return np.stack(
            [
                self._act_one(index, np.asarray(observations["gripper_to_cube_pos"][position]))
                for position, index in enumerate(env_indices)
            ]
        )

    def _act_one(self, env_index: int, to_cube: np.ndarray) -> np.ndarray:
        phase, grasping = self._phases.get(env_index, ("approach", 0))
        action = np.zeros(7, dtype=np.float32)
        action[6] = -1.0  # open
        if phase == "approach":
            to_target = to_cube + np.array([0.0, 0.0, 0.04])  # a little above the cube
            action[:3] = np.clip(to_target * 8, -1, 1)
            if np.linalg.norm(to_target) < 0.01:
                phase = "descend"
        elif phase == "descend":
            action[:3] = np.clip(to_cube * 8, -1, 1)
            if abs(to_cube[2]) < 0.01:
                phase = "grasp"
        elif phase == "grasp":
            action[6] = 1.0
            grasping += 1
            if grasping > 10:
                phase = "lift"
        else:
            action[2], action[6] = 0.6, 1.0
        self._phases[env_index] = (phase, grasping)
        return action


BUILT_IN_POLICIES = {"random": RandomPolicy, "zeros": ZerosPolicy, "lift": ScriptedLift}


def factory_named(name: str) -> Any:
    """The callable ``package.module:factory`` names.

    Raises:
        ValueError: ``name`` is not of that form, or names nothing importable.
    """
    module_name, separator, attribute = name.partition(":")
    if not separator or not module_name or not attribute:
        raise ValueError(f"policy {name!r}: expected package.module:factory")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"policy {name!r}: {error}") from None


def load_policy(name: str, observation_keys: str = "flat", **context: Any) -> Policy:
    """The policy ``name`` names: a built-in (``random``, ``zeros``, ``lift``), a policy server
    (``ws://HOST:PORT``, sent observations as ``observation_keys`` says: see
    :class:`~gym_remote.evaluation.websocket.WebsocketPolicy`) or ``package.module:factory``,
    called with keyword arguments ``action_space``, ``observation_space``, ``num_envs`` and
    ``seed`` (a factory may take ``**_`` for those it does not need).

    Raises:
        ValueError: no such policy, or the factory's result has no ``reset`` and ``act``.
        ServerUnavailable: no policy server answers at the ``ws://`` address.
    """
    if name.startswith(("ws://", "wss://")):
        from gym_remote.evaluation.websocket import WebsocketPolicy

        return WebsocketPolicy(name, observation_keys)
    if name in BUILT_IN_POLICIES:
        return BUILT_IN_POLICIES[name](**context)
    if ":" not in name:
        raise ValueError(
            f"unknown policy {name!r}: use {', '.join(BUILT_IN_POLICIES)} or package.module:factory"
        )
    policy = factory_named(name)(**context)
    if not isinstance(policy, Policy):
        raise ValueError(f"policy {name!r} made {policy!r}, which has no reset(env_index) and act(...)")
    return policy
