"""Helpers of the step path tests: layouts for given spaces, frames taken apart, and a nested
observation space.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the test envs)
from gym_remote.protocol import (
    PREFIX,
    byte_view,
    decode_bytes,
    encode_bytes,
)
from gym_remote.step.frames import FixedLayout

TWO_ACTIONS = spaces.Discrete(2)


class SpacesOnly(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space


def layout_for(observation_space: gym.Space, action_space: gym.Space = TWO_ACTIONS) -> FixedLayout | None:
    return FixedLayout.for_env(SpacesOnly(observation_space, action_space))


def through_the_wire(layout: FixedLayout) -> FixedLayout:
    return FixedLayout.from_wire(
        decode_bytes(encode_bytes(layout.to_wire())), layout.observation_layout.space
    )


def split_frame(frame: bytes) -> tuple[bytes, bytearray]:
    _, header_length, _ = PREFIX.unpack_from(frame)
    return frame[PREFIX.size : PREFIX.size + header_length], bytearray(frame[PREFIX.size + header_length :])


NESTED = spaces.Dict(
    {
        "camera": spaces.Box(0, 255, (5, 3), np.uint8),
        "arm": spaces.Tuple((spaces.Box(-1, 1, (3,), np.float64), spaces.MultiBinary(3))),
        "levels": spaces.MultiDiscrete([2, 3]),
    }
)


def nested_observation(value: int = 7) -> dict:
    """An observation of NESTED, its keys in the space's (sorted) order."""
    return {
        "arm": (np.array([0.5, -0.5, value], np.float64), np.array([1, 0, 1], np.int8)),
        "camera": np.full((5, 3), value, np.uint8),
        "levels": np.array([1, 2], np.int64),
    }


# ---------------------------------------------------------------------- over a real server


def joined_frame(buffers: list) -> bytes:
    return b"".join(bytes(byte_view(chunk)) for chunk in buffers)
