"""Server-side adapters that make simulators into Gymnasium envs; importing this registers them.

- ``gym_remote/Libero-v0``: a LIBERO task (``gym_remote.envs.libero``), run in the venv that
  ``gym-remote setup libero`` makes;
- ``gym_remote/Robosuite-v0``: any robosuite environment (``gym_remote.envs.robosuite``), run in
  the venv that ``gym-remote setup robosuite`` makes.

Registration is cheap and imports no simulator: that happens when an env is made. Every adapter
module offers ``list_tasks()``; ``python -m gym_remote.envs tasks ENV_ID`` prints it as JSON.
This package runs inside simulator interpreters: it keeps to Python 3.8.
"""

import os
from typing import Any, Dict

import gymnasium as gym

__all__ = ["ADAPTER_MODULES", "list_tasks", "configure_mujoco_gl"]

# Env id -> the module that implements it (and its list_tasks()).
ADAPTER_MODULES: Dict[str, str] = {
    "gym_remote/Libero-v0": "gym_remote.envs.libero",
    "gym_remote/Robosuite-v0": "gym_remote.envs.robosuite",
}
_ENTRY_POINTS = {
    "gym_remote/Libero-v0": "gym_remote.envs.libero:LiberoEnv",
    "gym_remote/Robosuite-v0": "gym_remote.envs.robosuite:RobosuiteEnv",
}

for _env_id, _entry_point in _ENTRY_POINTS.items():
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=_entry_point)


def list_tasks(env_id: str) -> Dict[str, Any]:
    """The tasks an adapter offers, for example every LIBERO suite's tasks and instructions."""
    import importlib

    module = ADAPTER_MODULES.get(env_id)
    if module is None:
        raise KeyError(
            "{} has no task list; adapters with one: {}".format(env_id, ", ".join(ADAPTER_MODULES))
        )
    return importlib.import_module(module).list_tasks()


def configure_mujoco_gl() -> str:
    """Picks MuJoCo's rendering backend unless ``MUJOCO_GL`` is already set; returns it.

    EGL when a GPU device is present, else OSMesa (software; Debian's ``libosmesa6``).
    """
    if "MUJOCO_GL" not in os.environ:
        has_gpu = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/dri/renderD128")
        os.environ["MUJOCO_GL"] = "egl" if has_gpu else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]
