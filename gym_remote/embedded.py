"""The embedded default: a private local server that a client starts and owns.

It listens on a Unix socket in a fresh private directory, runs in its own process group (so a
Ctrl-C meant for the training script does not reach it), and watches its standard input: when
its owner closes the pipe, or dies, the server stops and ends its workers. No process is left.
"""

from __future__ import annotations

import atexit
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any

from gym_remote.errors import ServerUnavailable

__all__ = ["EmbeddedServer"]

_STOP_GRACE_SECONDS = 10.0
_READY_PREFIX = b"gym-remote serving on "
_running: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()


class EmbeddedServer:
    """A private gym-remote server process owned by this process.

    Use :meth:`start`; the server stops on :meth:`stop`, when this object is garbage-collected
    unstopped, at interpreter exit, or when this process dies.
    """

    def __init__(self, directory: str, address: str, allow_pickle: bool) -> None:
        self.directory = directory
        self.address = address
        self.allow_pickle = allow_pickle
        self._owner_pid = os.getpid()
        self.process = _launch(address, allow_pickle)
        _running.add(self)
        # Dropped without stop() (its env was never closed): the server stops all the same.
        self._finalizer = weakref.finalize(self, _let_go, self._owner_pid, self.process.stdin, directory)

    @classmethod
    def start(cls, timeout: float, allow_pickle: bool = False) -> EmbeddedServer:
        """Starts a private server and waits (at most ``timeout`` seconds) until it listens.

        Raises:
            ServerUnavailable: the server did not start in time; its error output says why.
        """
        directory = tempfile.mkdtemp(prefix="gym-remote-")
        server = cls(directory, f"unix://{os.path.join(directory, 'server.sock')}", allow_pickle)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def revive(self, timeout: float) -> None:
        """Starts the server again on the same address if its process has died (killed, say),
        so that sessions that used it can be made again there.

        Raises:
            ServerUnavailable: the new server did not start in time.
        """
        if self.running or os.getpid() != self._owner_pid:
            return
        self._finalizer.detach()  # the old pipe closes; the directory stays for the new server
        if self.process.stdin is not None:
            self.process.stdin.close()
        os.makedirs(self.directory, exist_ok=True)
        self.process = _launch(self.address, self.allow_pickle)
        self._finalizer = weakref.finalize(self, _let_go, self._owner_pid, self.process.stdin, self.directory)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        try:
            wait_until_serving(self.process, timeout)
        except RuntimeError as error:
            raise ServerUnavailable(f"the private gym-remote server failed: {error}") from None

    @property
    def running(self) -> bool:
        """Whether the server process is still there (it may have been killed)."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stops the server and its workers; idempotent. A forked child only lets go of it."""
        _running.discard(self)
        self._finalizer()  # once: closes the server's stdin and removes its directory (not in a child)
        if os.getpid() != self._owner_pid:
            return
        try:
            self.process.wait(_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _launch(address: str, allow_pickle: bool) -> subprocess.Popen:
    """A private server process listening on ``address``, in its own process group (a Ctrl-C
    meant for the owner does not reach it), stopping when its stdin closes."""
    command = [sys.executable, "-m", "gym_remote", "serve", "--address", address, "--allow", "*"]
    command += ["--idle-timeout", "0", "--watch-stdin", "--log-level", "warning"]
    if allow_pickle:
        command.append("--allow-pickle")
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)


def _let_go(owner_pid: int, stdin: Any, directory: str) -> None:
    """Tells a private server to stop, without waiting: it ends when its standard input closes
    (:meth:`EmbeddedServer.stop` then waits; for one dropped unstopped, ``subprocess`` reaps it
    later). Nothing in a forked child."""
    if os.getpid() != owner_pid:
        return
    if stdin is not None:
        stdin.close()
    shutil.rmtree(directory, ignore_errors=True)


def wait_until_serving(process: subprocess.Popen, timeout: float, prefix: bytes = _READY_PREFIX) -> str:
    """Waits for a ``gym-remote serve`` process (or another that prints ``prefix`` and its
    address, as ``policy-serve`` does) to print its address; returns the address.

    The process must have been started with ``stdout=subprocess.PIPE``; its stdout is closed
    afterwards (the server prints nothing else there).

    Raises:
        RuntimeError: the server exited, or said nothing within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            chunk = os.read(descriptor, 4096)
            if not chunk:
                raise RuntimeError(
                    f"the server exited with code {process.wait()} before it was ready; "
                    "its error output says why"
                )
            line += chunk
    process.stdout.close()
    if not line.startswith(prefix):
        raise RuntimeError(f"the server said {line!r} instead of its address")
    return line[len(prefix) :].decode().strip()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
