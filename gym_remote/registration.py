"""Registering remote ids with Gymnasium, so ``gym.make("remote/...")`` gives a RemoteEnv.

Importing this module must stay cheap and Python 3.8-compatible: simulator interpreters import
the ``gym_remote`` package too.
"""

from typing import Any, Optional

import gymnasium as gym

__all__ = ["register_remote", "REMOTE_ENTRY_POINT", "REMOTE_VECTOR_ENTRY_POINT"]

REMOTE_ENTRY_POINT = "gym_remote.client:RemoteEnv"
REMOTE_VECTOR_ENTRY_POINT = "gym_remote.vector:RemoteVectorEnv"


def register_remote(id: str, env_id: Optional[str] = None, **defaults: Any) -> None:
    """Registers ``id`` so that ``gym.make(id, ...)`` makes a :class:`~gym_remote.RemoteEnv` and
    ``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point")`` a
    :class:`~gym_remote.RemoteVectorEnv`.

    Args:
        id: The id to register, for example ``"remote/CartPole-v1"``.
        env_id: The env id the server makes; when None, callers pass ``env_id=`` to ``gym.make``.
        **defaults: Default arguments of ``RemoteEnv`` (``address``, ``timeout``, env kwargs),
            overridable in each ``gym.make`` call.

    Example:
        >>> register_remote("remote/CartPole-v1", "CartPole-v1", address="tcp://127.0.0.1:5555")
        >>> env = gym.make("remote/CartPole-v1")  # doctest: +SKIP
    """
    kwargs = dict(defaults)
    if env_id is not None:
        kwargs["env_id"] = env_id
    gym.register(
        id, entry_point=REMOTE_ENTRY_POINT, vector_entry_point=REMOTE_VECTOR_ENTRY_POINT, kwargs=kwargs
    )
