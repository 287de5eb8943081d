"""gym-remote: run any Gymnasium environment in another process, virtualenv or machine.

``RemoteEnv`` is a ``gymnasium.Env`` whose env lives behind a gym-remote server; importing this
package registers ``remote/Env-v0`` so ``gym.make("remote/Env-v0", env_id=...)`` works.
"""

__version__ = "0.1.0"

from typing import Any  # noqa: E402

import gym_remote.envs  # noqa: E402,F401  (registers the simulator adapters' ids)
from gym_remote.errors import (  # noqa: E402
    AuthenticationFailed,
    CallInFlight,
    EnvNotAllowed,
    EnvNotFound,
    InvalidCall,
    MessageTooLarge,
    NoCallInFlight,
    ProtocolError,
    RemoteAttributeError,
    RemoteEnvError,
    RemoteError,
    RemoteTimeout,
    ServerBusy,
    ServerUnavailable,
    SessionClosed,
    SessionExpired,
    SimulatorUnavailable,
    TlsError,
    UnsupportedValue,
    VersionMismatch,
    WorkerCrashed,
)
from gym_remote.registration import register_remote  # noqa: E402

register_remote("remote/Env-v0")
register_remote("remote/Libero-v0", "gym_remote/Libero-v0")
register_remote("remote/Robosuite-v0", "gym_remote/Robosuite-v0")


def __getattr__(name: str) -> Any:
    # The client is imported on first use: simulator interpreters (Python 3.8) import this
    # package for the worker and must not load client code.
    if name == "RemoteEnv":
        from gym_remote.client import RemoteEnv

        return RemoteEnv
    if name in ("RemoteVectorEnv", "CallState"):
        from gym_remote import vector

        return getattr(vector, name)
    if name == "RestartPolicy":
        from gym_remote.recovery import RestartPolicy

        return RestartPolicy
    if name in ("list_envs", "list_tasks", "ping"):
        from gym_remote import discovery

        return getattr(discovery, name)
    if name == "evaluate":
        from gym_remote.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'gym_remote' has no attribute {name!r}")


__all__ = [
    "__version__",
    "RemoteEnv",
    "RemoteVectorEnv",
    "CallState",
    "RestartPolicy",
    "evaluate",
    "list_envs",
    "list_tasks",
    "ping",
    "register_remote",
    "RemoteEnvError",
    "AuthenticationFailed",
    "CallInFlight",
    "EnvNotAllowed",
    "EnvNotFound",
    "InvalidCall",
    "MessageTooLarge",
    "NoCallInFlight",
    "ProtocolError",
    "RemoteError",
    "RemoteAttributeError",
    "RemoteTimeout",
    "ServerBusy",
    "ServerUnavailable",
    "SessionClosed",
    "SessionExpired",
    "SimulatorUnavailable",
    "TlsError",
    "UnsupportedValue",
    "VersionMismatch",
    "WorkerCrashed",
]
