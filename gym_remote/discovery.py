"""Asking a server what it serves (env ids, a simulator adapter's tasks) and how fast it answers."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, NamedTuple

from gym_remote.addresses import parse_address
from gym_remote.config import ClientConfig, resolve
from gym_remote.connection import Connection, tls_context
from gym_remote.embedded import EmbeddedServer
from gym_remote.envs import ADAPTER_MODULES

__all__ = ["Pings", "adapter_id", "list_envs", "list_tasks", "ping"]


class Pings(NamedTuple):
    """What :func:`ping` measured."""

    server: str  # the server's name and version: "gym-remote X.Y.Z"
    address: str
    round_trips: list[float]  # seconds, one per ping


def list_envs(
    *,
    address: str | None = None,
    timeout: float | None = None,
    token: str | None = None,
    max_message_size: int | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> list[str]:
    """The env ids a server serves: its Gymnasium registry filtered by its ``--allow`` patterns, sorted.

    Args:
        address: The server to ask; None: ``GYM_REMOTE_ADDRESS`` or a private local server
            (what a ``RemoteEnv`` given no address meets).
        timeout: Seconds to wait (default ``GYM_REMOTE_TIMEOUT`` or 60).
        token: The server's token, when it has one.
        max_message_size: The largest reply accepted, in bytes (default ``GYM_REMOTE_MAX_MESSAGE_SIZE``
            or 256 MiB).
        tls_ca, tls_cert, tls_key: TLS, as for :class:`~gym_remote.RemoteEnv`.

    Raises:
        ServerUnavailable: nothing answers at ``address`` (named in the message).
        AuthenticationFailed, VersionMismatch, RemoteTimeout, TlsError: as for a ``RemoteEnv``.

    Example:
        >>> list_envs(address="tcp://127.0.0.1:5555")  # doctest: +SKIP
        ['CartPole-v0', 'CartPole-v1', 'Pendulum-v1']
    """
    with _server_connection(
        address, timeout, token, max_message_size, tls_ca, tls_cert, tls_key
    ) as connection:
        return list(connection.request("list"))


def ping(
    count: int = 1,
    *,
    address: str | None = None,
    timeout: float | None = None,
    token: str | None = None,
    max_message_size: int | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Pings:
    """Times ``count`` request/reply round trips to a server (after connecting).

    Args and errors as for :func:`list_envs`; ``count`` must be at least 1.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    with _server_connection(
        address, timeout, token, max_message_size, tls_ca, tls_cert, tls_key
    ) as connection:
        round_trips = []
        for _ in range(count):
            start = time.perf_counter()
            connection.request("ping")
            round_trips.append(time.perf_counter() - start)
        return Pings(str(connection.server_version), str(connection.address), round_trips)


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
    env_id: str,
    *,
    address: str | None = None,
    timeout: float | None = None,
    token: str | None = None,
    max_message_size: int | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> dict[str, Any]:
    """An adapter's tasks: ``{"env_id": ..., "suites": {suite: [{"task_id", "name", "description", ...}]}}``.

    Args:
        env_id: ``Libero-v0``, ``Robosuite-v0`` or their ``remote/`` or ``gym_remote/`` ids.
        address, timeout, token, max_message_size, tls_ca, tls_cert, tls_key: As for :func:`list_envs`.

    Example:
        >>> suites = list_tasks("Libero-v0")["suites"]  # doctest: +SKIP
        >>> suites["libero_spatial"][0]["description"]  # doctest: +SKIP
        'pick up the black bowl between the plate and the ramekin and place it on the plate'
    """
    adapter = adapter_id(env_id)
    with _server_connection(
        address, timeout, token, max_message_size, tls_ca, tls_cert, tls_key
    ) as connection:
        return connection.request("tasks", env_id=adapter)


@contextlib.contextmanager
def _server_connection(
    address: str | None,
    timeout: float | None,
    token: str | None,
    max_message_size: int | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> Iterator[Connection]:
    """A connection to the server at ``address`` (or to a private local server, stopped after)."""
    config = resolve(
        ClientConfig,
        address=address,
        timeout=timeout,
        token=token,
        max_message_size=max_message_size,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    embedded = None if config.address else EmbeddedServer.start(config.timeout)
    try:
        connection = Connection(
            parse_address(config.address or embedded.address),  # type: ignore[union-attr]
            timeout=config.timeout,
            token=config.token,
            max_message_size=config.max_message_size,
            tls=tls_context(config),
        )
        try:
            yield connection
        finally:
            connection.close()
    finally:
        if embedded is not None:
            embedded.stop()
