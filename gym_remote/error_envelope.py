"""The envelope errors travel in: ``{"error": {code, message, type, traceback}}`` replies.

Workers and servers wrap what went wrong with :func:`error_to_wire`; clients unwrap it with
:func:`error_from_wire` into the typed error of the same code (see ``docs/protocol.md``).

This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import traceback
from typing import Any, Dict

from gym_remote.errors import ProtocolError, RemoteEnvError, RemoteError, error_from_code

__all__ = ["error_to_wire", "error_from_wire"]


def error_to_wire(error: BaseException) -> Dict[str, Any]:
    """The wire form of an error: gym-remote errors keep their code, others become remote_error."""
    if isinstance(error, RemoteEnvError):
        return {
            "code": error.code,
            "message": error.message,
            "type": error.remote_type,
            "traceback": error.remote_traceback,
        }
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
    return error_from_code(
        str(payload.get("code")),
        str(payload.get("message")),
        payload.get("type"),
        payload.get("traceback"),
    )
