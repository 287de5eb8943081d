"""Any env's observations in LeRobot's layout, and the policy features that layout has.

``lerobot-eval`` understands observations with ``pixels`` (an image, or a dict of images) and
``agent_pos`` (one state vector). An env served by gym-remote may have any observation space, so
``--env.type=remote`` maps it: every image (uint8, height x width x 1-4 channels) becomes
``pixels/<key>``, its key path joined by ``_`` without a leading ``pixels`` (``pixels`` alone for
an image-only env); every other numeric array is flattened and concatenated, in the order of the
space, into ``agent_pos`` as float32.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_IMAGES, OBS_STATE

from gym_remote.recording.layout import is_image

__all__ = ["LeRobotObservations", "features_of"]


def _leaves(space: gym.Space, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], spaces.Box]]:
    """The Box leaves of a space of Boxes, Dicts and Tuples, in the space's order."""
    if isinstance(space, spaces.Box):
        return [(path, space)]
    if isinstance(space, spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, (*path, str(key)))]
    if isinstance(space, spaces.Tuple):
        return [leaf for index, sub in enumerate(space.spaces) for leaf in _leaves(sub, (*path, str(index)))]
    name = "/".join(path) or "the observation"
    raise TypeError(
        f"--env.type=remote maps Box, Dict and Tuple observation spaces to LeRobot's layout; "
        f"{name} is a {type(space).__name__}"
    )


def _image_key(path: tuple[str, ...]) -> str:
    return "_".join(path[1:] if len(path) > 1 and path[0] == "pixels" else path)


def _at(observation: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        observation = observation[int(key)] if isinstance(observation, (tuple, list)) else observation[key]
    return observation


class LeRobotObservations(gym.ObservationWrapper):
    """Rewrites observations into ``{"pixels": ..., "agent_pos": ...}`` (see the module's text)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        leaves = _leaves(env.observation_space)
        images = {path: space for path, space in leaves if is_image(space)}
        states = {path: space for path, space in leaves if not is_image(space)}
        self.image_paths = list(images)
        self.state_paths = list(states)
        observation_spaces: dict[str, gym.Space] = {}
        if self.image_paths == [()]:
            observation_spaces["pixels"] = env.observation_space
        elif images:
            observation_spaces["pixels"] = spaces.Dict(
                {_image_key(path): space for path, space in images.items()}
            )
        if states:
            size = sum(int(np.prod(space.shape)) for space in states.values())
            observation_spaces["agent_pos"] = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.observation_space = spaces.Dict(observation_spaces)

    def observation(self, observation: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.image_paths == [()]:
            result["pixels"] = observation
        elif self.image_paths:
            result["pixels"] = {_image_key(path): _at(observation, path) for path in self.image_paths}
        if self.state_paths:
            parts = [np.asarray(_at(observation, path), np.float32).ravel() for path in self.state_paths]
            result["agent_pos"] = np.concatenate(parts)
        return result


def features_of(
    observation_space: spaces.Dict, action_space: gym.Space
) -> tuple[dict[str, PolicyFeature], dict[str, str]]:
    """LeRobot ``features`` and ``features_map`` of a :class:`LeRobotObservations` env."""
    if not isinstance(action_space, spaces.Box):
        raise TypeError(f"LeRobot policies output Box actions; this env's action space is {action_space}")
    features = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=tuple(action_space.shape))}
    features_map = {ACTION: ACTION}
    pixels = observation_space.spaces.get("pixels")
    if isinstance(pixels, spaces.Box):
        features["pixels"] = PolicyFeature(type=FeatureType.VISUAL, shape=pixels.shape)
        features_map["pixels"] = OBS_IMAGE
    elif isinstance(pixels, spaces.Dict):
        for key, image in pixels.spaces.items():
            features[f"pixels/{key}"] = PolicyFeature(type=FeatureType.VISUAL, shape=image.shape)
            features_map[f"pixels/{key}"] = f"{OBS_IMAGES}.{key}"
    if "agent_pos" in observation_space.spaces:
        features["agent_pos"] = PolicyFeature(
            type=FeatureType.STATE, shape=observation_space.spaces["agent_pos"].shape
        )
        features_map["agent_pos"] = OBS_STATE
    return features, features_map
