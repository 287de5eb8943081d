"""``gym-remote policy-serve``: a Python policy behind a websocket, speaking openpi's protocol
(see :mod:`gym_remote.evaluation.websocket`), so that a policy in its own venv (torch, JAX) and
simulators in theirs are both remote to the evaluation."""

from __future__ import annotations

import http
import logging
import traceback
from typing import Any, Callable

import numpy as np

from gym_remote.evaluation.websocket import MAX_FRAME_BYTES, pack, unpack

__all__ = ["serve_policy", "inference_of"]

logger = logging.getLogger("gym_remote.policy_server")


def inference_of(policy: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One observation dict in, ``{"actions": ...}`` out: openpi's ``infer``, or for a policy
    with gym-remote's ``act``, that called on a batch of one (each array gains a leading axis).

    Raises:
        ValueError: the policy has neither ``infer`` nor ``act``.
    """
    if hasattr(policy, "infer"):
        return policy.infer
    if hasattr(policy, "act"):

        def infer(observation: dict[str, Any]) -> dict[str, Any]:
            batch = {
                key: value[np.newaxis] if isinstance(value, np.ndarray) else [value]
                for key, value in observation.items()
            }
            return {"actions": np.asarray(policy.act(batch, [0]))[0]}

        return infer
    raise ValueError(f"{policy!r} has neither infer(observation) nor act(observations, env_indices)")


def serve_policy(
    policy: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    metadata: dict[str, Any] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serves ``policy`` until interrupted: one connection per client, requests answered in order.

    A request whose inference raises gets the traceback as a text frame, and the connection is
    closed (as openpi's server does); a frame that does not decode ends only its connection.
    """
    from websockets.sync.server import serve

    infer = inference_of(policy)
    hello = pack(metadata or {})

    def health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    def handle(connection: Any) -> None:
        connection.send(hello)
        for frame in connection:
            try:
                if not isinstance(frame, bytes):
                    raise ValueError("observations come as binary frames")
                reply = pack(infer(unpack(frame)))
            except Exception:
                logger.warning("a request failed:\n%s", traceback.format_exc())
                connection.send(traceback.format_exc())
                connection.close(1011, "the policy raised")
                return
            connection.send(reply)

    with serve(
        handle, host, port, process_request=health, max_size=MAX_FRAME_BYTES, compression=None
    ) as server:
        bound_host, bound_port = server.socket.getsockname()[:2]
        if on_ready is not None:
            on_ready(f"ws://{bound_host}:{bound_port}")
        server.serve_forever()
