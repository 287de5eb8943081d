"""LeRobot env plugin for gym-remote: ``--env.type=remote_libero`` and ``--env.type=remote``.

LeRobot imports this package by itself (its distribution name starts with ``lerobot_env_``);
importing it registers both env types with ``lerobot.envs.configs.EnvConfig``.
"""

from lerobot_env_gym_remote.configs import RemoteEnv, RemoteLiberoEnv

__all__ = ["RemoteEnv", "RemoteLiberoEnv"]
