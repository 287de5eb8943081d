"""The robosuite adapter: ``gym_remote/Robosuite-v0``, any robosuite environment as a Gymnasium env.

Runs in a robosuite interpreter (``gym-remote setup robosuite`` makes one with robosuite 1.5).
The observation space is a Dict with every key robosuite returns, with its exact shape and
dtype; camera images are robosuite's own (uint8, as rendered, bottom row first).
This module keeps to Python 3.8.
"""

import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.envs import configure_mujoco_gl

__all__ = ["RobosuiteEnv", "list_tasks"]

SETUP_HINT = "run `gym-remote setup robosuite` to make a working robosuite environment"


def import_robosuite() -> Any:
    configure_mujoco_gl()
    try:
        import robosuite
    except ImportError as error:
        raise ImportError(f"cannot import robosuite in {sys.executable} ({error}); {SETUP_HINT}") from None
    return robosuite


def list_tasks() -> Dict[str, Any]:
    """robosuite's environments (the values ``env_name`` takes)."""
    robosuite = import_robosuite()
    return {
        "env_id": "gym_remote/Robosuite-v0",
        "suites": {
            "robosuite": [
                {"task_id": index, "name": name, "description": name}
                for index, name in enumerate(sorted(robosuite.ALL_ENVIRONMENTS))
            ]
        },
    }


def _space_for(value: np.ndarray) -> spaces.Box:
    value = np.asarray(value)
    if value.dtype == np.uint8:
        return spaces.Box(0, 255, value.shape, np.uint8)
    return spaces.Box(-np.inf, np.inf, value.shape, value.dtype)


def observe_without_advancing_clocks(env: Any, observe: Callable[[], Any]) -> Any:
    """``observe()`` (a forced observation of robosuite env ``env`` after setting its state),
    with each observable's sampling clock kept as it was: a forced update also advances the
    clocks by one simulator step, which would shift every later sample of a replay."""
    clocks = {
        name: (observable._time_since_last_sample, observable._sampled, observable._current_delay)
        for name, observable in env._observables.items()
    }
    observation = observe()
    for name, clock in clocks.items():
        observable = env._observables[name]
        observable._time_since_last_sample, observable._sampled, observable._current_delay = clock
    return observation


class RobosuiteEnv(gym.Env):
    """A robosuite environment as a Gymnasium env.

    Args:
        env_name: A robosuite environment: Lift, Stack, Door, PickPlace*, NutAssembly*, Wipe, TwoArm*, ...
        robots: Robot name or names, for example ``"Panda"`` or ``["Panda", "Panda"]``.
        controller: A controller name for ``robosuite.load_composite_controller_config``
            (default: the robot's default controller).
        camera_names: Cameras for image observations.
        camera_height: Image height in pixels.
        camera_width: Image width in pixels.
        use_camera_obs: Include camera images in observations.
        use_object_obs: Include object states in observations.
        reward_shaping: Dense (shaped) rewards instead of sparse ones.
        horizon: Steps before robosuite ends the episode (reported as truncation).
        control_freq: Control frequency in Hz.
        terminate_on_success: End the episode (``terminated``) when the task succeeds.
        render_camera: The camera ``render()`` shows.
        render_mode: Only ``rgb_array``.
        **robosuite_kwargs: Any other argument of ``robosuite.make``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env_name: str = "Lift",
        robots: Union[str, Sequence[str]] = "Panda",
        controller: Optional[str] = None,
        camera_names: Union[str, Sequence[str]] = ("agentview",),
        camera_height: int = 128,
        camera_width: int = 128,
        use_camera_obs: bool = True,
        use_object_obs: bool = True,
        reward_shaping: bool = True,
        horizon: int = 500,
        control_freq: int = 20,
        terminate_on_success: bool = True,
        render_camera: str = "agentview",
        render_mode: Optional[str] = "rgb_array",
        **robosuite_kwargs: Any,
    ) -> None:
        robosuite = import_robosuite()
        if env_name not in robosuite.ALL_ENVIRONMENTS:
            raise ValueError(
                f"unknown robosuite env_name {env_name!r}; choose from {sorted(robosuite.ALL_ENVIRONMENTS)}"
            )
        if isinstance(camera_names, str):
            camera_names = [camera_names]
        if controller is not None:
            robosuite_kwargs["controller_configs"] = robosuite.load_composite_controller_config(
                controller=controller
            )
        self.render_mode = render_mode
        self.control_freq = control_freq  # steps per second: a video's rate (render_fps may differ)
        self.env_name = env_name
        self.task = env_name
        self.task_description = env_name
        self.render_camera = render_camera
        self.terminate_on_success = terminate_on_success
        self._max_episode_steps = horizon
        self._env = robosuite.make(
            env_name,
            robots=robots,
            has_renderer=False,
            has_offscreen_renderer=True,
            use_camera_obs=use_camera_obs,
            use_object_obs=use_object_obs,
            camera_names=list(camera_names),
            camera_heights=camera_height,
            camera_widths=camera_width,
            reward_shaping=reward_shaping,
            horizon=horizon,
            control_freq=control_freq,
            **robosuite_kwargs,
        )
        observation = self._env.reset()
        observation_space = spaces.Dict({key: _space_for(value) for key, value in observation.items()})
        self.observation_space = observation_space
        self._observation_dtypes = {key: space.dtype for key, space in observation_space.items()}
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # robosuite's placement samplers hold this generator: reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        observation = self._env.reset()
        return self._format(observation), {"is_success": False}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, dict]:
        observation, reward, done, info = self._env.step(np.asarray(action, dtype=np.float64))
        is_success = bool(self._env._check_success())
        info = dict(info, is_success=is_success)
        terminated = is_success and self.terminate_on_success
        truncated = bool(done) and not terminated
        return self._format(observation), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The render camera's image, flipped upright for viewing."""
        height, width = 256, 256
        frame = self._env.sim.render(camera_name=self.render_camera, height=height, width=width)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self._env.close()

    def check_success(self) -> bool:
        """robosuite's success check for the current simulator state."""
        return bool(self._env._check_success())

    def get_state(self) -> np.ndarray:
        """The simulator's flattened MuJoCo state (time, qpos, qvel), as robomimic stores it."""
        return np.array(self._env.sim.get_state().flatten())

    def set_state(self, state: Sequence[float]) -> Dict[str, Any]:
        """Puts the simulator in a :meth:`get_state` state; returns the observation there."""
        self._env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self._env.sim.forward()
        observation = observe_without_advancing_clocks(
            self._env, lambda: self._env._get_observations(force_update=True)
        )
        return self._format(observation)

    def camera_names(self) -> List[str]:
        """The cameras this model has."""
        return list(self._env.sim.model.camera_names)

    def _format(self, observation: Dict[str, Any]) -> Dict[str, Any]:
        return {
            key: np.asarray(observation[key], dtype=dtype) for key, dtype in self._observation_dtypes.items()
        }
