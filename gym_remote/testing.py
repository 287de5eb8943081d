"""Small envs for tests, benchmarks and demos; importing this module registers them.

Serve them with ``gym-remote serve --import gym_remote.testing``. The ids:

- ``gym_remote_testing/ImageEnv-v0``: two 256x256x3 uint8 images and a 9-float state (393 KB
  per observation), like a two-camera robot env;
- ``gym_remote_testing/RichSpaces-v0``: Dict, Tuple, Text, MultiBinary and Sequence spaces;
- ``gym_remote_testing/VaryingSteps-v0``: steps whose values change type from step to step,
  to test that fixed-layout steps fall back wherever a value does not fit;
- ``gym_remote_testing/Faulty-v0``: misbehaves on request (``options={"fault": ...}`` on reset,
  or the action that names the fault), to test crashes, exceptions and slow calls;
- ``gym_remote_testing/Crashing-v0``: CartPole whose worker crashes, is killed or wedges at a
  given step or reset (once, or every time), to test restarts.

This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import ctypes
import os
import signal
import sys
import time
from typing import Any, Dict, Optional, SupportsFloat, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ImageEnv", "RichSpacesEnv", "VaryingStepsEnv", "FaultyEnv", "FAULTS", "CrashingEnv", "CRASHES"]

IMAGE_SHAPE = (256, 256, 3)


class ImageEnv(gym.Env):
    """Two uint8 camera images and a robot state; the pixels depend on the step count."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: Optional[str] = None, episode_length: int = 50) -> None:
        self.render_mode = render_mode
        self.episode_length = episode_length
        self.task_description = "look at the two cameras"
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict(
                    {
                        "image": spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
                        "image2": spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
                    }
                ),
                "state": spaces.Box(-np.inf, np.inf, (9,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._steps = 0

    def _observation(self) -> Dict[str, Any]:
        value = self._steps % 256
        state = self.np_random.standard_normal(9).astype(np.float32)
        return {
            "pixels": {
                "image": np.full(IMAGE_SHAPE, value, dtype=np.uint8),
                "image2": np.full(IMAGE_SHAPE, 255 - value, dtype=np.uint8),
            },
            "state": state,
        }

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return self._observation(), {}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, dict]:
        self._steps += 1
        reward = float(np.sum(action))
        truncated = self._steps >= self.episode_length
        return self._observation(), reward, False, truncated, {"is_success": False}

    def render(self) -> np.ndarray:
        return np.full(IMAGE_SHAPE, self._steps % 256, dtype=np.uint8)


class RichSpacesEnv(gym.Env):
    """An env whose spaces use Dict, Tuple, Text, MultiBinary and Sequence, with a uint8 image."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: Optional[str] = None) -> None:
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "pair": spaces.Tuple((spaces.Discrete(5, start=-2), spaces.MultiBinary(4))),
                "text": spaces.Text(12, min_length=1),
                "trail": spaces.Sequence(spaces.Box(-1.0, 1.0, (2,), np.float32), stack=True),
                "flags": spaces.MultiBinary((2, 3)),
                "levels": spaces.MultiDiscrete([3, 4], start=[1, -1]),
            }
        )
        self.action_space = spaces.Dict(
            {"move": spaces.Discrete(4), "force": spaces.Box(-1.0, 1.0, (2,), np.float32)}
        )
        self._steps = 0

    def _observation(self) -> Dict[str, Any]:
        space = self.observation_space
        space.seed(int(self.np_random.integers(2**31)))
        return space.sample()

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return self._observation(), {"note": "reset", "options": options}

    def step(self, action: Any) -> Tuple[Any, SupportsFloat, bool, bool, dict]:
        self._steps += 1
        reward = np.float32(action["force"].sum())
        terminated = self._steps >= 20
        info = {"steps": np.int64(self._steps), "pair": (1, "two"), "nothing": None, "raw": b"\x00\x01"}
        return self._observation(), reward, terminated, False, info

    def render(self) -> np.ndarray:
        return np.zeros((16, 16, 3), dtype=np.uint8)


class VaryingStepsEnv(gym.Env):
    """Fixed-shape spaces, but step values whose types change from step to step: rewards of
    every kind, Python and numpy flags, infos with and without values (arrays too), and now and
    then an observation leaf of another dtype or a list for a tuple. A seeded reset starts at
    step ``seed % 13``, with that step's observation and info (and ``options`` in its info)."""

    metadata = {"render_modes": []}
    REWARDS = (1.5, 2, np.float64(0.25), np.float32(-0.5), np.int32(3), -(2**63), True, 2**63 - 1)
    INFOS: Tuple[Dict[str, Any], ...] = (
        {},
        {"is_success": False},
        {"array": np.arange(3)},
        {"nested": {"pair": (1, "a")}},
    )

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "camera": spaces.Box(0, 255, (4, 4, 3), np.uint8),
                "joints": spaces.Tuple((spaces.Box(-9.0, 9.0, (3,), np.float32), spaces.MultiBinary(2))),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._steps = 0

    def _observation(self) -> Dict[str, Any]:
        steps = self._steps
        positions = np.array([steps, -steps, steps / 2], np.float64 if steps % 5 == 4 else np.float32)
        joints: Any = (positions, np.array([steps % 2, 1], np.int8))
        return {
            "camera": np.full((4, 4, 3), steps % 256, np.uint8),
            "joints": list(joints) if steps % 6 == 3 else joints,
        }

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        self._steps = 0 if seed is None else seed % 13
        info = dict(self.INFOS[self._steps % len(self.INFOS)])
        if options is not None:
            info["options"] = options
        return self._observation(), info

    def step(self, action: Any) -> Tuple[Any, Any, Any, Any, dict]:
        self._steps += 1
        steps = self._steps
        observation = self._observation()
        observation["camera"][0, 0, :2] = (np.asarray(action) * 100).astype(np.uint8)
        ending = steps % 13 == 0
        terminated = np.bool_(ending) if steps % 2 else ending
        truncated = np.False_ if steps % 3 else False
        info = dict(self.INFOS[steps % len(self.INFOS)])
        return observation, self.REWARDS[steps % len(self.REWARDS)], terminated, truncated, info


FAULTS = ("raise", "exit", "segfault", "sleep", "custom_info", "allocate", "end", "end_then_fail_reset")


class _NotWireSafe:
    """A custom object, which only travels when both ends allow pickle."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NotWireSafe)


class FaultyEnv(gym.Env):
    """An env that misbehaves when asked: the action is an index into :data:`FAULTS`, or -1 for none.

    ``sleep`` sleeps ``sleep_seconds``; ``allocate`` returns an observation of
    ``allocate_bytes`` bytes; ``custom_info`` puts an unpicklable-by-default object in info;
    ``end`` ends the episode; ``end_then_fail_reset`` ends it too, and the reset after it raises.
    """

    metadata = {"render_modes": []}

    def __init__(self, sleep_seconds: float = 5.0, allocate_bytes: int = 1 << 20) -> None:
        self.sleep_seconds = sleep_seconds
        self.allocate_bytes = allocate_bytes
        self.observation_space = spaces.Box(0, 255, (allocate_bytes,), np.uint8)
        self.action_space = spaces.Discrete(len(FAULTS) + 1, start=-1)
        self._failing_reset = False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        if self._failing_reset:
            self._failing_reset = False
            raise RuntimeError("the reset exploded")
        return np.zeros(self.allocate_bytes, np.uint8), {}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, dict]:
        fault = FAULTS[int(action)] if int(action) >= 0 else None
        info: Dict[str, Any] = {}
        if fault == "raise":
            raise RuntimeError("the simulator exploded")
        if fault == "exit":
            os._exit(3)
        if fault == "segfault":
            ctypes.string_at(0)
        if fault == "sleep":
            time.sleep(self.sleep_seconds)
        if fault == "custom_info":
            info["custom"] = _NotWireSafe()
        self._failing_reset = fault == "end_then_fail_reset"
        terminated = fault in ("end", "end_then_fail_reset")
        return np.zeros(self.allocate_bytes, np.uint8), 0.0, terminated, False, info

    def describe(self, prefix: str, *, suffix: str = "") -> str:
        """A plain method, for remote calls."""
        return f"{prefix}:{type(self).__name__}{suffix}"


CRASHES = ("segfault", "kill", "exit", "wedge")


class CrashingEnv(gym.Env):
    """CartPole (the same observations for the same seeds) whose process ends badly on cue.

    Args:
        crash_at_step: Crash at this step of the process's life (1: its first step), or never.
        crash_on_reset: Crash in every reset instead.
        crash: How: ``segfault``, ``kill`` (SIGKILL itself), ``exit`` (code 3) or ``wedge``
            (a native call that holds the interpreter, signals blocked, for ``wedge_seconds``).
        once_marker: A file path: crash only while it does not exist (it is made just before the
            crash), so that the env made again runs clean.
        success_after: End each episode after this many steps (terminated), with
            ``info["is_success"]`` True where the episode's reset seed was even, for
            evaluations whose success count is known in advance.
        render_mode: None, or ``rgb_array`` (a small black frame).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        crash_at_step: Optional[int] = None,
        crash_on_reset: bool = False,
        crash: str = "segfault",
        once_marker: Optional[str] = None,
        wedge_seconds: int = 120,
        success_after: Optional[int] = None,
        render_mode: Optional[str] = None,
    ) -> None:
        if crash not in CRASHES:
            raise ValueError(f"crash must be one of {CRASHES}, got {crash!r}")
        self._cartpole = gym.make("CartPole-v1").unwrapped
        self.observation_space = self._cartpole.observation_space
        self.action_space = self._cartpole.action_space
        self.crash_at_step = crash_at_step
        self.crash_on_reset = crash_on_reset
        self.crash = crash
        self.once_marker = once_marker
        self.wedge_seconds = wedge_seconds
        self.success_after = success_after
        self.render_mode = render_mode
        self.pid = os.getpid()
        self.steps_taken = 0
        self._episode_steps = 0
        self._episode_seed: Optional[int] = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        if self.crash_on_reset:
            self._crash()
        self._episode_steps = 0
        self._episode_seed = seed
        return self._cartpole.reset(seed=seed, options=options)

    def step(self, action: Any) -> Tuple[Any, SupportsFloat, bool, bool, dict]:
        self.steps_taken += 1
        self._episode_steps += 1
        if self.steps_taken == self.crash_at_step:
            self._crash()
        observation, reward, terminated, truncated, info = self._cartpole.step(action)
        if self.success_after is not None and self._episode_steps >= self.success_after:
            terminated = True
            info = {"is_success": self._episode_seed is not None and self._episode_seed % 2 == 0}
        return observation, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        return np.zeros((8, 8, 3), dtype=np.uint8)

    def _crash(self) -> None:
        if self.once_marker is not None:
            try:  # made atomically: of several envs sharing the marker, one crashes
                os.close(os.open(self.once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        print(f"crashing-env: about to {self.crash} (pid {os.getpid()})", file=sys.stderr, flush=True)
        if self.crash == "segfault":
            ctypes.string_at(0)
        elif self.crash == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.crash == "exit":
            os._exit(3)
        else:  # a C call that keeps the GIL: no Python thread, timeout or handled signal ends it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
            ctypes.PyDLL(None).sleep(self.wedge_seconds)


def _register(env_id: str, entry_point: str, **kwargs: Any) -> None:
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=entry_point, **kwargs)


_register("gym_remote_testing/ImageEnv-v0", "gym_remote.testing:ImageEnv")
_register("gym_remote_testing/RichSpaces-v0", "gym_remote.testing:RichSpacesEnv", max_episode_steps=100)
_register("gym_remote_testing/VaryingSteps-v0", "gym_remote.testing:VaryingStepsEnv")
_register("gym_remote_testing/Faulty-v0", "gym_remote.testing:FaultyEnv")
_register("gym_remote_testing/Crashing-v0", "gym_remote.testing:CrashingEnv", max_episode_steps=500)


class ServerProcess:
    """A real ``gym-remote serve`` process, for tests and benchmarks (a context manager).

    Args:
        *arguments: Extra ``serve`` options, for example ``"--allow", "CartPole-*"``.
        address: Where to listen; the default picks a free loopback port.
        timeout: Seconds to wait for the server to listen.
        env: Environment variables of the server process (default: this process's).
        cwd: The server's working directory (default: this process's).
        python: The interpreter that runs the server (default: this process's).
    """

    def __init__(
        self,
        *arguments: str,
        address: str = "tcp://127.0.0.1:0",
        timeout: float = 60.0,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        python: Optional[str] = None,
    ) -> None:
        import subprocess
        import sys

        from gym_remote.embedded import wait_until_serving

        command = [python or sys.executable, "-m", "gym_remote", "serve", "--address", address]
        command += ["--log-level", "warning"] + list(arguments)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=cwd)
        try:
            self.address = wait_until_serving(self.process, timeout)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> int:
        """Sends SIGTERM and waits for the server to end; returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
