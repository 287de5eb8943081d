"""The server: accepts connections, checks them, and hands each session to its own worker process.

The server process never touches an env. It reads a connection's ``hello`` (version, token) and
its first request: ``list`` and ``ping`` it answers itself; ``make`` it checks against the
allowlist and session limit, then starts a worker process and passes it the connected socket.
From then on the client talks to that worker directly, so a slow or crashing env affects only
its own session.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fnmatch
import hmac
import importlib
import json
import logging
import os
import secrets
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gymnasium as gym

from gym_remote import __version__, peers
from gym_remote.addresses import Address, listen, parse_address
from gym_remote.config import ServerConfig
from gym_remote.envs import ADAPTER_MODULES
from gym_remote.error_envelope import STDERR_TAIL_LINES, error_to_wire
from gym_remote.errors import (
    AuthenticationFailed,
    EnvNotAllowed,
    InvalidCall,
    ProtocolError,
    RemoteEnvError,
    RemoteTimeout,
    ServerBusy,
    SimulatorUnavailable,
    TlsError,
    VersionMismatch,
    WorkerCrashed,
    shown,
)
from gym_remote.protocol import (
    PROTOCOL_VERSION,
    WORKER_STARTED,
    MessageReader,
    PeerClosed,
    encode_frame,
    send_buffers,
    send_message,
    set_send_timeout,
)
from gym_remote.simulators import recorded_routes

if TYPE_CHECKING:
    from gym_remote.tls import TlsTerminator

__all__ = ["Server"]

logger = logging.getLogger("gym_remote.server")

# A hello takes a few hundred bytes; a peer that has not said hello gets no more than this.
_HANDSHAKE_MAX_MESSAGE_SIZE = 64 << 10
_WORKER_STOP_GRACE_SECONDS = 5.0
# How long telling a client how its worker ended may wait for room in the socket.
_FAREWELL_SEND_SECONDS = 1.0
_TASK_LIST_TIMEOUT_SECONDS = 120
# Starting an interpreter and importing gymnasium and numpy takes a second or two on a busy machine.
_WORKER_START_TIMEOUT_SECONDS = 60
# How long a worker whose client hung up may take to end by itself before its process group is
# killed: a worker between calls closes its envs and exits at once, one whose call timed out is
# ended by its own watcher thread, unless a native call holds it (then only a kill ends it).
_HANG_UP_GRACE_SECONDS = 2.0
# How long the server waits before accepting again when it has no file descriptors left.
_ACCEPT_RETRY_SECONDS = 0.1
REMOTE_NAMESPACE = "remote/"


class _StderrRelay:
    """Passes a worker's stderr on to the server's, keeping its last lines for error messages."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._last_lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def last_lines(self, timeout: float) -> list[str]:
        """The last non-empty lines the worker wrote, oldest first, once its stderr ended (or
        ``timeout`` passed)."""
        self._thread.join(timeout)
        return [line.strip() for line in list(self._last_lines) if line.strip()]

    def _relay(self) -> None:
        with self._pipe:
            for raw in self._pipe:
                if raw.strip():
                    self._last_lines.append(raw.decode(errors="replace"))
                sys.stderr.buffer.write(raw)
                sys.stderr.flush()


@dataclass
class _Worker:
    session_id: int
    env_id: str
    process: subprocess.Popen
    control: socket.socket
    stderr: _StderrRelay
    # The server's copy of the client's socket: a worker that dies cannot tell its client how,
    # the server can (closed once the worker is gone, or when its start failed).
    client: socket.socket


class Server:
    """A gym-remote server; :meth:`serve_forever` runs it until :meth:`stop`.

    Args:
        config: The server's settings (see :class:`~gym_remote.config.ServerConfig`).

    Raises:
        ValueError: the settings are inconsistent, for example a non-loopback address
            without a token.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address: Address = parse_address(config.address)
        if not self.address.is_loopback and not config.token:
            raise ValueError(
                f"refusing to listen on {self.address} without a token: anyone who can reach it "
                "could run environments. Set --token (or GYM_REMOTE_TOKEN) on server and clients."
            )
        for module in config.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ValueError(
                    f"--import {module}: {error} (install it in this environment, or put its "
                    "directory on PYTHONPATH)"
                ) from None
        # Explicit --python routes first, then the environments `gym-remote setup` recorded.
        self.python_routes = [_parse_python_route(route) for route in config.python]
        for route in self.python_routes:
            self._announce_route(route)
        for simulator in recorded_routes(Path(config.home) if config.home else None):
            self.python_routes += [
                _PythonRoute(pattern, simulator.python, f"run `gym-remote setup {simulator.name}`")
                for pattern in simulator.env_ids
            ]
        self._tls: TlsTerminator | None = None
        if config.tls_cert or config.tls_key or config.tls_client_ca:
            from gym_remote.tls import TlsTerminator, server_context  # ssl: only for TLS

            context = server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
            if self.address.scheme != "tcp":
                raise ValueError("--tls-cert serves TCP addresses; a Unix socket stays on this host, plain")
            self._tls = TlsTerminator(context, config.read_timeout)
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._next_session_id = 1
        self._pending_connections = 0  # accepted, not yet handed to a worker or closed
        self._pending_by_peer: collections.Counter[str] = collections.Counter()  # of those, per peer
        self._refused_connections = 0  # past the limit, since the last warning about them
        self._next_refusal_log = 0.0
        self._stopping = threading.Event()
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._listener: socket.socket | None = None
        # Beside a TCP listener (on Linux): an abstract Unix socket that clients on this host
        # are told of in their hello reply, and may use instead (see _handshake).
        self.local_address: Address | None = None
        self._local_listener: socket.socket | None = None

    # ----------------------------------------------------------------- lifecycle

    def serve_forever(self, on_ready: Callable[[Address], None] | None = None) -> None:
        """Listens and serves until :meth:`stop`; then ends every worker before returning."""
        self._listener = listen(self.address)
        if self.address.scheme == "tcp" and self.address.port == 0:
            host, port = self._listener.getsockname()[:2]
            self.address = Address("tcp", host=host, port=port)
        listeners = [self._listener]
        # Not with mutual TLS: a local socket would let a client without a certificate in.
        offers_local = not (self.config.tcp_only or self.config.tls_client_ca)
        if self.address.scheme == "tcp" and sys.platform.startswith("linux") and offers_local:
            self.local_address = _local_address()
            self._local_listener = listen(self.local_address)
            listeners.append(self._local_listener)
        if self.config.watch_stdin:
            threading.Thread(target=self._stop_when_stdin_closes, daemon=True).start()
        selector = selectors.DefaultSelector()
        for listener in listeners:
            selector.register(listener, selectors.EVENT_READ)
        selector.register(self._wakeup_reader, selectors.EVENT_READ)
        logger.info(
            "serving on %s%s (allow %s)",
            self.address,
            "" if self._tls is None else " with TLS" + (" (mutual)" if self.config.tls_client_ca else ""),
            ", ".join(self.config.allow),
        )
        if self._tls is None and not self.address.is_loopback:
            logger.warning(
                "TCP beyond loopback without TLS: the token and every observation travel in clear "
                "(--tls-cert and --tls-key encrypt them; `gym-remote certs` makes the files)"
            )
        if self.local_address is not None:
            logger.info("clients on this host are offered %s (--tcp-only: none)", self.local_address)
        if on_ready is not None:
            on_ready(self.address)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj in listeners:
                        self._accept(key.fileobj)
        finally:
            selector.close()
            self._shutdown()

    def stop(self) -> None:
        """Asks :meth:`serve_forever` to stop; safe from signal handlers and other threads."""
        self._stopping.set()
        try:
            self._wakeup_writer.send(b"\0")
        except OSError:
            pass

    def _stop_when_stdin_closes(self) -> None:
        try:
            while sys.stdin.buffer.read1(4096):  # type: ignore[union-attr]
                pass
        except (OSError, ValueError):
            pass
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        try:
            connection, _ = listener.accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: the connection waits in the backlog; do not spin on it.
                logger.warning("cannot accept a connection: %s", error)
                self._stopping.wait(_ACCEPT_RETRY_SECONDS)
            return
        try:
            connection.settimeout(None)
            if connection.family != socket.AF_UNIX:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A peer that sends requests and never reads the replies must not hold its slot forever.
            set_send_timeout(connection, self.config.read_timeout)
            peer = _peer_of(connection)
        except OSError:  # the peer reset the connection before it was accepted: nothing to serve
            connection.close()
            return
        limit = self.config.max_pending_connections
        with self._lock:
            held = self._pending_by_peer[peer]
            if self._pending_connections >= limit:
                refusal = f"the server has {limit} connections waiting"
            elif held >= max(1, limit // 2):
                refusal = f"{held} connections from {peer} wait already (a peer may hold half of {limit})"
            else:
                refusal = ""
                self._pending_connections += 1
                self._pending_by_peer[peer] = held + 1
        if refusal:
            # Peers that connect and say nothing (or trickle) would otherwise hold a thread and a
            # descriptor each until their hello deadline: past the limit, they get none.
            self._refused_connections += 1
            if time.monotonic() >= self._next_refusal_log:  # a flood logs a line a second
                self._log_refusals()
            _try_send_error(
                connection,
                ServerBusy(
                    f"{refusal} to start a session or for a reply (--max-pending-connections); "
                    "try again later"
                ),
            )
            connection.close()
            return
        threading.Thread(target=self._handle_connection, args=(connection, peer), daemon=True).start()

    def _log_refusals(self) -> None:
        """Logs how many connections were refused since the last such line."""
        logger.warning(
            "refused %d connection(s) past --max-pending-connections %d (or half of it from one peer)",
            self._refused_connections,
            self.config.max_pending_connections,
        )
        self._refused_connections = 0
        self._next_refusal_log = time.monotonic() + 1.0

    def _shutdown(self) -> None:
        if self._refused_connections:
            self._log_refusals()
        if self._local_listener is not None:
            self._local_listener.close()
        if self._listener is not None:
            self._listener.close()
            path = self.address.path
            if self.address.scheme == "unix" and not self.address.is_abstract:
                # A private server's owner removes the socket's directory as it lets go: the
                # socket (or the directory) may be gone already.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                if self.config.watch_stdin:  # a private server: its owner made the directory for it
                    with contextlib.suppress(OSError):  # not empty (or gone): left as it is
                        os.rmdir(os.path.dirname(path))
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            try:
                worker.process.wait(_WORKER_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        logger.info("stopped")

    # ----------------------------------------------------------------- connections

    def _handle_connection(self, connection: socket.socket, peer: str) -> None:
        handed_off = False
        try:
            # Known before TLS puts a relay between: TCP peers on this host are offered the
            # local socket (a peer that has reset the connection meanwhile is an OSError here).
            offer_local = (
                self.local_address is not None
                and connection.family != socket.AF_UNIX
                and peers.is_on_this_host(connection)
            )
            if self._tls is not None and connection.family != socket.AF_UNIX:
                try:
                    plain = self._tls.open(connection, self.config.hello_timeout)
                except TlsError as error:
                    logger.info("a connection from %s: %s", peer, error.message)
                    connection.settimeout(None)
                    _try_send_error(connection, error)  # in clear: a plain client reads it
                    return
                connection = plain  # the TLS connection is the relay's now
                set_send_timeout(connection, self.config.read_timeout)
            reader = MessageReader(connection, _HANDSHAKE_MAX_MESSAGE_SIZE)
            allow_pickle = self._handshake(connection, reader, offer_local)
            reader.max_message_size = self.config.max_message_size
            while not handed_off:
                request = reader.receive(self.config.read_timeout, allow_pickle=allow_pickle)
                op = _op_of(request)
                if op == "ping":
                    send_message(connection, {"ok": None})
                elif op == "list":
                    send_message(connection, {"ok": self.list_env_ids()})
                elif op == "tasks":
                    send_message(connection, {"ok": self.list_tasks(request.get("env_id"))})
                elif op == "make":
                    self._start_session(connection, request, allow_pickle)
                    handed_off = True
                else:
                    raise InvalidCall(f"unknown operation {shown(op)}; expected ping, list, tasks or make")
        except PeerClosed:
            pass
        except RemoteEnvError as error:
            logger.info("a connection from %s: %s: %s", peer, error.code, error.message)
            _try_send_error(connection, error)
        except OSError as error:
            _try_send_error(connection, error)
        except Exception as error:  # a request no check above foresaw: a typed reply all the same
            logger.warning("a connection from %s sent a request that failed: %s", peer, shown(error))
            _try_send_error(connection, InvalidCall(f"the request could not be served: {shown(error)}"))
        finally:
            connection.close()
            with self._lock:
                self._pending_connections -= 1
                self._pending_by_peer[peer] -= 1
                if not self._pending_by_peer[peer]:
                    del self._pending_by_peer[peer]

    def _handshake(self, connection: socket.socket, reader: MessageReader, offer_local: bool) -> bool:
        hello = reader.receive(None, whole_within=self.config.hello_timeout)
        if not isinstance(hello, dict) or _op_of(hello) != "hello":
            raise ProtocolError("the first message must be a hello")
        version = hello.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"client speaks protocol version {shown(version)}, this server "
                f"(gym-remote {__version__}) speaks {PROTOCOL_VERSION}: install the same "
                "gym-remote version on both sides"
            )
        token = hello.get("token")
        if token is None:
            token = ""
        if not isinstance(token, str):
            raise AuthenticationFailed(f"the token must be a string, got a {type(token).__name__}")
        if self.config.token and not hmac.compare_digest(token.encode(), self.config.token.encode()):
            raise AuthenticationFailed(
                "wrong or missing token: pass token=... (or set GYM_REMOTE_TOKEN) to match the server's"
            )
        allow_pickle = self.config.allow_pickle and hello.get("allow_pickle") is True
        welcome = {
            "version": PROTOCOL_VERSION,
            "server": f"gym-remote {__version__}",
            "allow_pickle": allow_pickle,
        }
        if offer_local:
            # A Unix socket carries a session's messages with less work per message than TCP.
            welcome["local_address"] = str(self.local_address)
        send_message(connection, {"ok": welcome})
        return allow_pickle

    # ----------------------------------------------------------------- sessions

    def list_env_ids(self) -> list[str]:
        """The ids of the registered envs this server serves, sorted."""
        return sorted(env_id for env_id in gym.registry if self._allowed_reason(env_id) is None)

    def _allowed_reason(self, env_id: str) -> str | None:
        """Why ``env_id`` may not be served, or None when it may."""
        module, separator, name = env_id.rpartition(":")
        if separator and module not in self.config.imports:
            return (
                f"{env_id!r} would make the server import module {module!r}; the operator must "
                f"start the server with --import {module} to allow that"
            )
        if name.startswith(REMOTE_NAMESPACE):
            return f"{env_id!r} is a client-side remote id; ask for the env it points to instead"
        if not any(
            fnmatch.fnmatchcase(candidate, pattern)
            for pattern in self.config.allow
            for candidate in {env_id, name}
        ):
            return (
                f"{env_id!r} is not in this server's allowlist ({', '.join(self.config.allow)}); "
                "the operator can add it with --allow PATTERN"
            )
        return None

    def _start_session(self, connection: socket.socket, request: dict, allow_pickle: bool) -> None:
        env_id = request.get("env_id")
        if not isinstance(env_id, str):
            raise InvalidCall(f"make needs a string env_id, got {shown(env_id)}")
        reason = self._allowed_reason(env_id)
        if reason is not None:
            raise EnvNotAllowed(reason)
        num_envs = request.get("num_envs", 1)
        limit = self.config.max_envs_per_session
        if type(num_envs) is not int or not 1 <= num_envs <= limit:
            raise InvalidCall(
                f"num_envs must be an integer from 1 to {limit} (the server's --max-envs-per-session), "
                f"got {shown(num_envs)}"
            )
        python = self._python_for(env_id)
        # Encoded before a worker exists: a request whose values cannot travel on to a worker is
        # refused without taking a session slot.
        settings = encode_frame(
            {
                "allow_pickle": allow_pickle,
                "idle_timeout": self.config.idle_timeout,
                "read_timeout": self.config.read_timeout,
                "max_message_size": self.config.max_message_size,
                "imports": self.config.imports,
                "request": request,
            },
            allow_pickle=allow_pickle,
        )
        with self._lock:
            if self._stopping.is_set():
                raise ServerBusy("the server is shutting down")
            if len(self._workers) >= self.config.max_sessions:
                raise ServerBusy(
                    f"the server already runs its maximum of {self.config.max_sessions} sessions; "
                    "close other sessions or raise --max-sessions"
                )
            parent_control, child_control = socket.socketpair()
            session_id = self._next_session_id
            self._next_session_id += 1
            fds = (connection.fileno(), child_control.fileno())
            try:
                process = subprocess.Popen(
                    _module_command(
                        python,
                        "gym_remote.worker",
                        "--client-fd",
                        str(fds[0]),
                        "--control-fd",
                        str(fds[1]),
                        "--settings-timeout",
                        str(self.config.read_timeout),
                    ),
                    pass_fds=fds,
                    stderr=subprocess.PIPE,
                    # Its own process group: a wedged worker is killed with whatever it started.
                    start_new_session=True,
                )
            except OSError as error:
                parent_control.close()
                raise WorkerCrashed(f"could not start a worker with {python}: {error}") from None
            finally:
                child_control.close()
            worker = _Worker(
                session_id, env_id, process, parent_control, _StderrRelay(process.stderr), connection.dup()
            )
            self._workers[session_id] = worker
        try:
            send_buffers(parent_control, settings)
        except (OSError, RemoteTimeout):
            pass  # the worker is already gone: _await_worker_start reports how
        try:
            self._await_worker_start(worker, python)
        except BaseException:
            worker.client.close()  # the client hears of it from this thread
            raise
        finally:
            # Only now: the watcher closes the control socket as soon as the worker exits.
            threading.Thread(target=self._watch_worker, args=(worker,), daemon=True).start()
        logger.info("session %d: %s in worker pid %d", session_id, env_id, process.pid)

    def _await_worker_start(self, worker: _Worker, python: str) -> None:
        """Waits for the worker's "started" byte, so a worker that cannot start is reported to its client.

        Raises:
            WorkerCrashed: the worker exited or stayed silent instead; says with what and how.
        """
        worker.control.settimeout(_WORKER_START_TIMEOUT_SECONDS)
        try:
            started = worker.control.recv(1) == WORKER_STARTED
        except OSError:
            started = False
        finally:
            worker.control.settimeout(None)
        if started:
            return
        try:
            code = worker.process.wait(_WORKER_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            code = worker.process.wait()
        lines = worker.stderr.last_lines(_WORKER_STOP_GRACE_SECONDS)
        said = lines[-1] if lines else "it wrote nothing to stderr"
        raise _crash(
            code,
            lines,
            f"the worker for {worker.env_id} could not start with {python} (exit code {code}: {said}). "
            "If it runs in a simulator venv, `gym-remote setup NAME` repairs it.",
        )

    def _watch_worker(self, worker: _Worker) -> None:
        left = _await_exit_or_hang_up(worker.process, worker.client)
        if left:
            self._end_abandoned_worker(worker)
        code = worker.process.wait()
        with self._lock:
            self._workers.pop(worker.session_id, None)
        worker.control.close()
        if code != 0 and not self._stopping.is_set() and not left:
            logger.warning(
                "session %d (%s): worker %s", worker.session_id, worker.env_id, _how_it_ended(code)
            )
            if worker.client.fileno() != -1:
                lines = worker.stderr.last_lines(_WORKER_STOP_GRACE_SECONDS)
                set_send_timeout(worker.client, _FAREWELL_SEND_SECONDS)
                _try_send_error(
                    worker.client,
                    _crash(
                        code,
                        lines,
                        f"the worker serving {worker.env_id} {_how_it_ended(code)} during the session"
                        + (f"; its last words: {' | '.join(lines[-3:])}" if lines else "")
                        + " (see the server's log)",
                    ),
                )
        else:
            logger.info("session %d ended", worker.session_id)
        worker.client.close()

    def _end_abandoned_worker(self, worker: _Worker) -> None:
        """After ``worker``'s client hung up: lets the worker end by itself for a moment, then
        kills its process group (a native call that no timeout interrupts holds it), so that its
        session slot and memory are free again."""
        try:
            worker.process.wait(_HANG_UP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
        logger.warning(
            "session %d (%s): its client left and worker pid %d did not end within %g s (a call that "
            "does not return?): killing its process group",
            worker.session_id,
            worker.env_id,
            worker.process.pid,
            _HANG_UP_GRACE_SECONDS,
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)

    def _announce_route(self, route: _PythonRoute) -> None:
        """Logs which registered ids an explicit ``--python`` route runs, and warns when it
        matches none (patterns match whole ids: ``gym_remote/Libero-*``, not ``Libero-*``)."""
        matched = [env_id for env_id in self.list_env_ids() if fnmatch.fnmatchcase(env_id, route.pattern)]
        if matched:
            logger.info("--python %s: runs %s with %s", route.pattern, ", ".join(matched), route.python)
        else:
            logger.warning(
                "--python %s=%s matches no env id this server serves now (patterns match whole ids, "
                "such as gym_remote/Libero-v0); ids made later that match it still use it",
                route.pattern,
                route.python,
            )

    def _python_for(self, env_id: str) -> str:
        """The interpreter for ``env_id``'s workers.

        Raises:
            SimulatorUnavailable: the routed interpreter does not exist; says what fixes it.
        """
        for route in self.python_routes:
            if fnmatch.fnmatchcase(env_id, route.pattern):
                if not os.path.exists(route.python):
                    raise SimulatorUnavailable(
                        f"{env_id} runs with {route.python}, which does not exist: {route.fix}"
                    )
                return route.python
        return sys.executable

    def list_tasks(self, env_id: Any) -> Any:
        """An adapter's task list, computed in the interpreter its workers use.

        Raises:
            EnvNotAllowed / InvalidCall / SimulatorUnavailable: as for ``make``.
        """
        if not isinstance(env_id, str) or env_id not in ADAPTER_MODULES:
            raise InvalidCall(
                f"{shown(env_id)} has no task list; envs with one: {', '.join(ADAPTER_MODULES)}"
            )
        reason = self._allowed_reason(env_id)
        if reason is not None:
            raise EnvNotAllowed(reason)
        python = self._python_for(env_id)
        try:
            result = subprocess.run(
                _module_command(python, "gym_remote.envs", "tasks", env_id),
                capture_output=True,
                text=True,
                timeout=_TASK_LIST_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise SimulatorUnavailable(
                f"listing the tasks of {env_id} took over {_TASK_LIST_TIMEOUT_SECONDS} s"
            ) from None
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SimulatorUnavailable(f"listing the tasks of {env_id} with {python} failed: {last_line}")
        return json.loads(result.stdout)


@dataclass(frozen=True)
class _PythonRoute:
    pattern: str
    python: str
    fix: str


def _parse_python_route(route: str) -> _PythonRoute:
    pattern, separator, python = route.partition("=")
    if not separator or not pattern or not python:
        raise ValueError(f"--python {route!r}: expected PATTERN=/path/to/python")
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise ValueError(f"--python {route!r}: {python} is not an executable file")
    return _PythonRoute(pattern, python, f"check the server's --python {route}")


# `python -m` would put the server's working directory first on the worker's sys.path, so that
# a file there (a pygame.py, say) would run inside workers; `-c` puts "" there, which this drops.
_RUN_MODULE_WITHOUT_WORKING_DIRECTORY = (
    "import runpy, sys\n"
    "if sys.path[:1] == ['']:\n"
    "    del sys.path[0]\n"
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def _module_command(python: str, module: str, *arguments: str) -> list[str]:
    """The command that runs ``module`` as ``python -m`` does, but with only the interpreter's
    own packages (and ``PYTHONPATH``) importable, not the working directory."""
    return [python, "-c", _RUN_MODULE_WITHOUT_WORKING_DIRECTORY, module, *arguments]


def _local_address() -> Address:
    """A fresh abstract Unix socket address for a server's local listener."""
    return Address("unix", path=f"@gym-remote-{os.getpid()}-{secrets.token_hex(8)}")


def _op_of(request: Any) -> str | None:
    """A request's ``op``, or None where it has no string one."""
    op = request.get("op") if isinstance(request, dict) else None
    return op if isinstance(op, str) else None


def _peer_of(connection: socket.socket) -> str:
    """Who a connection comes from, for the per-peer share of pending connections: its IP
    address, or on a Unix socket the user it runs as."""
    if connection.family != socket.AF_UNIX:
        return str(peers.peer_ip(connection))
    user = peers.peer_user(connection)
    return "a local user" if user is None else f"uid {user}"


def _how_it_ended(code: int) -> str:
    """How a process that ended with ``code`` (``Popen.returncode``) ended, in words."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


def _crash(code: int, stderr_tail: list[str], message: str) -> WorkerCrashed:
    """The WorkerCrashed of a worker that ended with ``code`` (``Popen.returncode``)."""
    signal_name = None
    if code < 0:
        try:
            signal_name = signal.Signals(-code).name
        except ValueError:
            signal_name = f"signal {-code}"
    return WorkerCrashed(
        message,
        exit_code=code if code >= 0 else None,
        signal=signal_name,
        stderr_tail=stderr_tail,
    )


def _await_exit_or_hang_up(process: subprocess.Popen, client: socket.socket) -> bool:
    """Waits until ``process`` exits (False) or the client's end of ``client`` hangs up while it
    runs (True). Where Linux's pidfd or POLLRDHUP is missing, waits for the exit alone."""
    hang_up = getattr(select, "POLLRDHUP", 0)
    pidfd_open = getattr(os, "pidfd_open", None)
    if not hang_up or pidfd_open is None:
        process.wait()
        return False
    try:
        pidfd = pidfd_open(process.pid)
    except OSError:  # gone already, or a kernel before 5.3
        process.wait()
        return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(client.fileno(), hang_up)
        descriptors = {descriptor for descriptor, _ in poller.poll()}
        return pidfd not in descriptors and process.poll() is None
    finally:
        os.close(pidfd)


def _try_send_error(connection: socket.socket, error: BaseException) -> None:
    try:
        send_message(connection, {"error": error_to_wire(error)})
    except (OSError, RemoteEnvError):
        pass


def run_server(config: ServerConfig, on_ready: Callable[[Address], None] | None = None) -> Any:
    """Runs a server in this process until SIGINT or SIGTERM."""
    server = Server(config)
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: server.stop())
    server.serve_forever(on_ready)
    return server
