"""Task listings of simulator adapters, asked of a server (which runs the simulator's Python)."""

from __future__ import annotations

from typing import Any

from gym_remote.addresses import parse_address
from gym_remote.config import ClientConfig, resolve
from gym_remote.connection import Connection
from gym_remote.embedded import EmbeddedServer
from gym_remote.envs import ADAPTER_MODULES

__all__ = ["list_tasks", "adapter_id"]


def adapter_id(env_id: str) -> str:
    """``Libero-v0``, ``remote/Libero-v0`` and ``gym_remote/Libero-v0`` all name the LIBERO adapter.

    Raises:
        ValueError: no adapter has that name.
    """
    name = env_id.split("/", 1)[-1]
    candidate = f"gym_remote/{name}"
    if candidate not in ADAPTER_MODULES:
        raise ValueError(f"no simulator adapter called {env_id!r}; choose from {', '.join(ADAPTER_MODULES)}")
    return candidate


def list_tasks(
    env_id: str, *, address: str | None = None, timeout: float | None = None, token: str | None = None
) -> dict[str, Any]:
    """An adapter's tasks: ``{"env_id": ..., "suites": {suite: [{"task_id", "name", "description", ...}]}}``.

    Args:
        env_id: ``Libero-v0``, ``Robosuite-v0`` or their ``remote/`` or ``gym_remote/`` ids.
        address: The server to ask; None: ``GYM_REMOTE_ADDRESS`` or a private local server.
        timeout: Seconds to wait (default ``GYM_REMOTE_TIMEOUT`` or 60).
        token: The server's token, when it has one.

    Example:
        >>> suites = list_tasks("Libero-v0")["suites"]  # doctest: +SKIP
        >>> suites["libero_spatial"][0]["description"]  # doctest: +SKIP
        'pick up the black bowl between the plate and the ramekin and place it on the plate'
    """
    config = resolve(ClientConfig, address=address, timeout=timeout, token=token)
    embedded = None if config.address else EmbeddedServer.start(config.timeout)
    try:
        connection = Connection(
            parse_address(config.address or embedded.address),  # type: ignore[union-attr]
            timeout=config.timeout,
            token=config.token,
            max_message_size=config.max_message_size,
        )
        try:
            return connection.request("tasks", env_id=adapter_id(env_id))
        finally:
            connection.close()
    finally:
        if embedded is not None:
            embedded.stop()
