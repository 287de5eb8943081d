"""The envelope errors travel in: ``{"error": {code, message, type, traceback}}`` replies, and
for a crashed worker ``details`` (its exit code or signal and its last lines on stderr).

Workers and servers wrap what went wrong with :func:`error_to_wire`; clients unwrap it with
:func:`error_from_wire` into the typed error of the same code (see ``docs/protocol.md``).

This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import traceback
from typing import Any, Dict

from gym_remote.errors import ProtocolError, RemoteEnvError, RemoteError, WorkerCrashed, error_from_code

__all__ = ["error_to_wire", "error_from_wire", "STDERR_TAIL_LINES"]

# How many of a crashed worker's last stderr lines travel, and how long each may be.
STDERR_TAIL_LINES = 10
_STDERR_LINE_CHARS = 500
_SIGNAL_NAME_CHARS = 16


def error_to_wire(error: BaseException) -> Dict[str, Any]:
    """The wire form of an error: gym-remote errors keep their code, others become remote_error."""
    if isinstance(error, RemoteEnvError):
        payload: Dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "type": error.remote_type,
            "traceback": error.remote_traceback,
        }
        if isinstance(error, WorkerCrashed):
            payload["details"] = {
                "exit_code": error.exit_code,
                "signal": error.signal,
                "stderr_tail": list(error.stderr_tail),
            }
        return payload
    remote_type = f"{type(error).__module__}.{type(error).__qualname__}"
    return {
        "code": RemoteError.code,
        "message": f"the remote env raised {type(error).__name__}: {error}",
        "type": remote_type,
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def error_from_wire(payload: Any) -> RemoteEnvError:
    """The typed error an ``{"error": ...}`` reply carries."""
    if not isinstance(payload, dict):
        return ProtocolError(f"malformed error reply {payload!r}")
    error = error_from_code(
        str(payload.get("code")),
        str(payload.get("message")),
        payload.get("type"),
        payload.get("traceback"),
    )
    if isinstance(error, WorkerCrashed):
        _take_details(error, payload.get("details"))
    return error


def _take_details(error: WorkerCrashed, details: Any) -> None:
    """Puts a peer's details of a crash on ``error``, keeping only values of the right kind and
    size (a hostile peer's others are dropped)."""
    if not isinstance(details, dict):
        return
    exit_code = details.get("exit_code")
    if type(exit_code) is int and -(2**31) <= exit_code < 2**31:
        error.exit_code = exit_code
    signal = details.get("signal")
    if isinstance(signal, str) and 0 < len(signal) <= _SIGNAL_NAME_CHARS:
        error.signal = signal
    lines = details.get("stderr_tail")
    if isinstance(lines, list):
        error.stderr_tail = tuple(
            line[:_STDERR_LINE_CHARS] for line in lines[-STDERR_TAIL_LINES:] if isinstance(line, str)
        )
