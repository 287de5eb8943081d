"""Shared helpers for the benchmark scripts: start a real server, record results in the docs."""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import platform
import socket
from typing import Any, Iterator

import numpy as np

from gym_remote.config import env_var

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
CPUIDLE_DRIVER = pathlib.Path("/sys/devices/system/cpu/cpuidle/current_driver")
GUEST_HALT_POLL_NS = pathlib.Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def guest_halt_poll_ns() -> int | None:
    """How long an idle vCPU of this KVM guest polls for work before it halts, or None where
    the machine does not idle through the ``haltpoll`` driver. A halted vCPU is woken through
    the hypervisor, which is what most of a cross-core round trip costs on such machines."""
    try:
        if CPUIDLE_DRIVER.read_text().strip() != "haltpoll":
            return None
        return int(GUEST_HALT_POLL_NS.read_text())
    except (OSError, ValueError):
        return None


def machine_line() -> str:
    """Today's date and what this machine is, for the results table."""
    line = (
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    )
    poll_ns = guest_halt_poll_ns()
    if poll_ns == 0:
        return line + ", a KVM guest whose idle vCPUs halt at once (guest halt polling off)"
    if poll_ns is not None:
        return line + f", a KVM guest whose idle vCPUs poll up to {poll_ns / 1000:g} us before halting"
    return line


def record(section: str, markdown: str) -> None:
    """Replaces the block of ``section`` in docs/benchmarks.md (made if missing) with ``markdown``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)
    print(f"results written to {DOCS}")


def loopback_listener(unix_path: str | None = None) -> socket.socket:
    """A listening socket on 127.0.0.1 at a free port, or at the Unix socket path ``unix_path``."""
    if unix_path is None:
        return socket.create_server(("127.0.0.1", 0))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(unix_path)
    listener.listen()
    return listener


def loopback_connection(address: str | tuple[str, int]) -> socket.socket:
    """A connection to a :func:`loopback_listener`'s ``getsockname()``: a Unix socket's path, or
    a TCP address (then with TCP_NODELAY)."""
    if isinstance(address, str):
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(address)
        return connection
    return _no_delay(socket.create_connection(address))


def accepted(listener: socket.socket) -> socket.socket:
    """The next connection to a :func:`loopback_listener` (over TCP: with TCP_NODELAY)."""
    connection, _ = listener.accept()
    return connection if listener.family == socket.AF_UNIX else _no_delay(connection)


def _no_delay(connection: socket.socket) -> socket.socket:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def observation_leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, np.ndarray]]:
    """The arrays of an observation (nested dicts of arrays), each with its path of keys."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in observation_leaves(item, (*path, key))]
    return [(path, np.asarray(value))]


@contextlib.contextmanager
def client_settings(**enabled: bool) -> Iterator[None]:
    """Sets ``GYM_REMOTE_<NAME>`` for each of the client's on/off options given (for example
    ``shared_memory=False``) for the remote envs made inside (their configs read them when they
    are made), then leaves the caller's own settings as they were."""
    settings = {env_var(name): str(int(value)) for name, value in enabled.items()}
    previous = {variable: os.environ.get(variable) for variable in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for variable, value in previous.items():
            if value is None:
                del os.environ[variable]
            else:
                os.environ[variable] = value
