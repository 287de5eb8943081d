"""The errors gym-remote raises, one hierarchy rooted at :class:`RemoteEnvError`.

Every error has a stable ``code`` that travels on the wire (see ``docs/protocol.md``), and every
error is picklable, so it survives the trip through ``AsyncVectorEnv``'s worker pipes.

This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import copy
import reprlib
from typing import Any, Dict, Optional, Sequence, Tuple, Type

from gymnasium import error as gym_error

__all__ = [
    "RemoteEnvError",
    "ProtocolError",
    "MessageTooLarge",
    "UnsupportedValue",
    "VersionMismatch",
    "AuthenticationFailed",
    "ServerUnavailable",
    "ServerBusy",
    "RemoteTimeout",
    "EnvNotAllowed",
    "EnvNotFound",
    "InvalidCall",
    "CallInFlight",
    "NoCallInFlight",
    "WorkerCrashed",
    "SessionExpired",
    "SessionClosed",
    "SimulatorUnavailable",
    "RemoteError",
    "RemoteAttributeError",
    "error_from_code",
    "shown",
]

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 3
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 80


def shown(value: Any) -> str:
    """A short repr of ``value`` (a peer's, say) for an error message: bounded in length and
    depth, and never raising (a huge integer's repr would exceed Python's digit limit)."""
    try:
        return _SHOWN.repr(value)
    except Exception:
        if isinstance(value, int):
            return f"<an integer of {value.bit_length()} bits>"
        return f"<a {type(value).__name__}>"


class RemoteEnvError(Exception):
    """Base of every gym-remote error.

    Attributes:
        code: The wire code of this error kind, for example ``"env_not_found"``.
        remote_type: Qualified name of the exception raised on the server, when there was one.
        remote_traceback: The server-side traceback text, when there was one.
    """

    code = "remote_env_error"

    def __init__(
        self,
        message: str,
        *,
        remote_type: Optional[str] = None,
        remote_traceback: Optional[str] = None,
    ) -> None:
        if isinstance(message, RemoteEnvError):
            # `type(error)(error)`, which is how AsyncVectorEnv re-raises a worker's error.
            remote_type = remote_type or message.remote_type
            remote_traceback = remote_traceback or message.remote_traceback
            message = message.message
        message = str(message)
        super().__init__(message)
        self.message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        if not self.remote_traceback:
            return self.message
        return f"{self.message}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"

    def renamed(self, message: str) -> "RemoteEnvError":
        """A copy of this error (same type, remote traceback and details) saying ``message``."""
        clone = copy.copy(self)
        clone.message = message
        clone.args = (message,)
        return clone

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exception notes (Python 3.11+, such as a vector env's other failures) travel too.
        notes = getattr(self, "__notes__", None)
        rebuild = (_rebuild_error, (type(self), self.message, self.remote_type, self.remote_traceback))
        return rebuild + ({"__notes__": list(notes)},) if notes else rebuild


def _rebuild_error(
    cls: "Type[RemoteEnvError]",
    message: str,
    remote_type: Optional[str],
    remote_traceback: Optional[str],
) -> "RemoteEnvError":
    return cls(message, remote_type=remote_type, remote_traceback=remote_traceback)


class ProtocolError(RemoteEnvError):
    """A peer sent bytes that are not a valid gym-remote message (garbage, truncated frame)."""

    code = "protocol_error"


class MessageTooLarge(ProtocolError):
    """A message is larger than the configured maximum message size."""

    code = "message_too_large"


class UnsupportedValue(RemoteEnvError, TypeError):
    """A value (in an observation, info, argument or space) cannot travel without pickle."""

    code = "unsupported_value"


class VersionMismatch(RemoteEnvError):
    """Client and server speak different protocol versions."""

    code = "version_mismatch"


class AuthenticationFailed(RemoteEnvError):
    """The server requires a token and the client sent a wrong or no token."""

    code = "authentication_failed"


class ServerUnavailable(RemoteEnvError, ConnectionError):
    """No gym-remote server answers at the address."""

    code = "server_unavailable"


class TlsError(RemoteEnvError):
    """TLS between client and server failed: the server's certificate is not trusted, the
    server wants a client certificate it was not shown, or one side speaks TLS and the other not."""

    code = "tls_error"


class ServerBusy(RemoteEnvError):
    """The server already runs its maximum number of sessions."""

    code = "server_busy"


class RemoteTimeout(RemoteEnvError, TimeoutError):
    """A call did not complete within its deadline; the session is closed."""

    code = "timeout"


class EnvNotAllowed(RemoteEnvError):
    """The server's allowlist does not include the requested env id."""

    code = "env_not_allowed"


class EnvNotFound(RemoteEnvError):
    """The requested env id is not registered on the server."""

    code = "env_not_found"


class InvalidCall(RemoteEnvError, ValueError):
    """A call is malformed or not allowed now (wrong action shape, step before reset, ...)."""

    code = "invalid_call"


class _NamedCallError(InvalidCall):
    """An InvalidCall that names the vector env call it refused (``name``), as Gymnasium's
    ``AlreadyPendingCallError`` and ``NoAsyncCallError`` do."""

    def __init__(
        self,
        message: str,
        name: str = "",
        *,
        remote_type: Optional[str] = None,
        remote_traceback: Optional[str] = None,
    ) -> None:
        InvalidCall.__init__(self, message, remote_type=remote_type, remote_traceback=remote_traceback)
        self.name = name or getattr(message, "name", "")

    def __reduce__(self) -> Tuple[Any, ...]:
        rebuilt = super().__reduce__()
        state = dict(rebuilt[2]) if len(rebuilt) > 2 else {}
        return (rebuilt[0], rebuilt[1], {**state, "name": self.name})


class CallInFlight(_NamedCallError, gym_error.AlreadyPendingCallError):
    """A vector env call while results of ``send()`` or ``send_reset()`` are still out
    (``recv()`` them first): Gymnasium's ``AlreadyPendingCallError`` too."""


class NoCallInFlight(_NamedCallError, gym_error.NoAsyncCallError):
    """``recv()`` with nothing sent: Gymnasium's ``NoAsyncCallError`` too."""


class WorkerCrashed(RemoteEnvError):
    """The worker process that owned this session ended (crash, kill, out of memory).

    Attributes:
        exit_code: The code the worker exited with, or None (killed by a signal, or unknown:
            its server went away too).
        signal: The name of the signal that killed it (``"SIGSEGV"``, ``"SIGKILL"``), or None.
        stderr_tail: The last lines the worker wrote to stderr, oldest first (empty if unknown).
    """

    code = "worker_crashed"

    def __init__(
        self,
        message: str,
        *,
        remote_type: Optional[str] = None,
        remote_traceback: Optional[str] = None,
        exit_code: Optional[int] = None,
        signal: Optional[str] = None,
        stderr_tail: Sequence[str] = (),
    ) -> None:
        super().__init__(message, remote_type=remote_type, remote_traceback=remote_traceback)
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = tuple(stderr_tail)

    def __reduce__(self) -> Tuple[Any, ...]:
        rebuilt = super().__reduce__()
        state = dict(rebuilt[2]) if len(rebuilt) > 2 else {}
        details = {"exit_code": self.exit_code, "signal": self.signal, "stderr_tail": self.stderr_tail}
        return (rebuilt[0], rebuilt[1], {**state, **details})


class SessionExpired(RemoteEnvError):
    """The server ended this session because it was idle for longer than its idle timeout."""

    code = "session_expired"


class SessionClosed(RemoteEnvError):
    """The session was closed (by ``close()`` or after an earlier fatal error)."""

    code = "session_closed"


class SimulatorUnavailable(RemoteEnvError):
    """The simulator an env needs is not installed, or its environment is broken; the message
    names the command that fixes it (for example ``gym-remote setup libero``)."""

    code = "simulator_unavailable"


class RemoteError(RemoteEnvError):
    """The remote environment raised an exception; ``remote_type`` and ``remote_traceback`` say which."""

    code = "remote_error"


class RemoteAttributeError(RemoteError, AttributeError):
    """A vector env's ``call`` or ``get_attr`` met an ``AttributeError`` in a remote env (no such
    attribute, say): a :class:`RemoteError` that is an ``AttributeError`` too, as a local vector
    env raises, so ``except AttributeError`` fallbacks work."""


_ERRORS_BY_CODE: Dict[str, "Type[RemoteEnvError]"] = {
    cls.code: cls
    for cls in (
        RemoteEnvError,
        ProtocolError,
        MessageTooLarge,
        UnsupportedValue,
        VersionMismatch,
        AuthenticationFailed,
        ServerUnavailable,
        ServerBusy,
        TlsError,
        RemoteTimeout,
        EnvNotAllowed,
        EnvNotFound,
        InvalidCall,
        WorkerCrashed,
        SessionExpired,
        SessionClosed,
        SimulatorUnavailable,
        RemoteError,
    )
}


def error_from_code(
    code: str,
    message: str,
    remote_type: Optional[str] = None,
    remote_traceback: Optional[str] = None,
) -> RemoteEnvError:
    """Builds the error for a wire ``code``; an unknown code gives a plain :class:`RemoteEnvError`."""
    cls = _ERRORS_BY_CODE.get(code, RemoteEnvError)
    return cls(message, remote_type=remote_type, remote_traceback=remote_traceback)
