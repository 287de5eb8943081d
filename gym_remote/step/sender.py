"""The client's end of a session's calls: steps and resets in fixed-layout frames where they
fit, every other call (and what does not fit) in ordinary requests.

One :class:`StepSender` per session serves both a :class:`~gym_remote.RemoteEnv`'s own calls
and a remote vector env's, which sends to many sessions first and receives after.
"""

from __future__ import annotations

from typing import Any, Callable

from gym_remote.connection import Connection
from gym_remote.errors import InvalidCall, ProtocolError, RemoteEnvError
from gym_remote.sharedmem import MINIMUM_SHARED_BYTES, ReplyBuffers
from gym_remote.step.frames import FixedLayout
from gym_remote.step.layout import IN_REPLY, Placement, in_reply_buffer

__all__ = ["StepSender"]


class StepSender:
    """Sends a session's calls over ``connection`` and hands back their results.

    Args:
        on_failure: Called with every error a call raises, before it is raised (the env's
            session notes the ones that ended it).
    """

    def __init__(self, connection: Connection, on_failure: Callable[[RemoteEnvError], None]) -> None:
        self.connection = connection
        self._on_failure = on_failure
        # The layout of fixed-layout steps, once the worker offered one.
        self.layout: FixedLayout | None = None
        # Whether steps ask for their observation in reply buffers (see use_layout).
        self._wants_reply_buffers = False
        self._reply_buffers: ReplyBuffers | None = None
        # The call in flight: its op, whether it went fixed-layout, and where its observation goes.
        self._in_flight: tuple[str, bool, Placement] = ("", False, IN_REPLY)

    def use_layout(self, layout: FixedLayout) -> None:
        """Sends steps and resets in fixed-layout frames from now on (the worker offered
        ``layout``). Where large replies come through shared memory, the first step also gives
        the worker reply buffers: it then writes observations into memory this client hands
        out, and no copy is made on this side."""
        self.layout = layout
        self._wants_reply_buffers = (
            self.connection.uses_shared_memory and layout.observation_nbytes >= MINIMUM_SHARED_BYTES
        )

    # ------------------------------------------------------------------ one call at a time

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Steps the session's env, its observation in a free reply buffer where there is one."""
        placement = self._free_reply_buffer() if self._wants_reply_buffers else IN_REPLY
        layout = self.layout
        request = None if layout is None else layout.encode_step(action, placement)
        if request is None:  # it does not fit the layout: an ordinary request
            self._send("step", {"action": action}, placement, None)
            return self.receive()
        # The usual step, without the general send's and receive's bookkeeping.
        assert layout is not None
        try:
            self.connection.send_bytes("step", request)
            return self._fixed_result(layout, "step", placement)
        except RemoteEnvError as error:
            self._on_failure(error)
            raise

    def reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """Resets the session's env."""
        self.send("reset", {"seed": seed, "options": options})
        return self.receive()

    def request(self, op: str, **fields: Any) -> Any:
        """Sends ``op`` with ``fields`` in an ordinary request (whatever its op) and returns its
        result as the reply carries it."""
        try:
            return self.connection.request(op, **fields)
        except RemoteEnvError as error:
            self._on_failure(error)
            raise

    # ------------------------------------------------------------------ send first, receive later

    def send(self, op: str, fields: dict[str, Any], placement: Placement = IN_REPLY) -> None:
        """Sends a call without waiting for its reply (:meth:`receive` gets it), asking for its
        observation (a ``step``'s, ``reset``'s or ``observe``'s) where ``placement`` says."""
        request = None if self.layout is None else self._fixed_request(self.layout, op, fields, placement)
        self._send(op, fields, placement, request)

    def _send(self, op: str, fields: dict[str, Any], placement: Placement, request: bytes | None) -> None:
        """Sends the fixed-layout ``request`` made for the call, or (None) an ordinary one."""
        try:
            if request is not None:
                self.connection.send_bytes(op, request)
            else:
                into = placement.into_field()
                self.connection.send(op, **fields, **({} if into is None else {"into": into}))
        except RemoteEnvError as error:
            self._on_failure(error)
            raise
        self._in_flight = (op, request is not None, placement)

    def receive(self) -> Any:
        """The result of the call sent last, or its error raised: a ``step``'s five values, a
        ``reset``'s two; the observation None where the worker wrote it into a batch row."""
        op, fixed, placement = self._in_flight
        try:
            if not fixed:
                result = self.connection.receive(op)
                return tuple(result) if op in ("step", "reset") else result
            assert self.layout is not None
            return self._fixed_result(self.layout, op, placement)
        except RemoteEnvError as error:
            self._on_failure(error)
            raise

    def abandon(self) -> None:
        """Leaves the reply to the call in flight unread: it is dropped before the next call."""
        self.connection.abandon_reply()

    def fileno(self) -> int:
        """The connection's socket, for waiting on several sessions with ``selectors``."""
        return self.connection.fileno()

    def close(self) -> None:
        """Closes the connection (the worker ends the session) and the reply buffers;
        observations the caller still holds stay valid."""
        self.connection.close()
        self._wants_reply_buffers = False
        if self._reply_buffers is not None:
            self._reply_buffers.close()
            self._reply_buffers = None

    # ------------------------------------------------------------------ the fixed-layout way

    @staticmethod
    def _fixed_request(
        layout: FixedLayout, op: str, fields: dict[str, Any], placement: Placement
    ) -> bytes | None:
        """The fixed-layout frame of a ``step`` or ``reset`` whose values fit ``layout``; else None."""
        if op == "step":
            return layout.encode_step(fields["action"], placement)
        if op == "reset" and fields["options"] is None:
            return layout.encode_reset(fields["seed"], placement)
        return None

    def _fixed_result(self, layout: FixedLayout, op: str, placement: Placement) -> Any:
        """The result of the fixed-layout request in flight, from a fixed-layout reply (taken
        whole where it can be) or an ordinary one."""
        result, frame = self.connection.receive_frame(op, layout.decode_whole_reply)
        if frame is not None:
            header, data, fixed = frame
            if not fixed:
                return tuple(self.connection.result_of(op, frame))
            elsewhere = not placement.in_reply and not len(data)
            try:
                result = layout.decode_reply(header, data, self.connection.allow_pickle, elsewhere)
            except ProtocolError:
                self.connection.close()
                raise
            if elsewhere and placement.reply_buffer:
                assert self._reply_buffers is not None
                observation = layout.observation_layout.observation(
                    self._reply_buffers.data(placement.reply_buffer)
                )
                result = (observation,) + result[1:]
        return (result[0], result[4]) if op == "reset" else result

    def _free_reply_buffer(self) -> Placement:
        """A reply buffer for this step's observation, or the reply. The first call gives the
        worker the buffers."""
        if self._reply_buffers is None:
            assert self.layout is not None
            try:
                buffers = ReplyBuffers(self.layout.observation_nbytes)
            except OSError:
                self._wants_reply_buffers = False
                return IN_REPLY
            try:
                self.request("use_reply_buffers", **buffers.offer())
            except InvalidCall:  # a worker that cannot open them (or predates them)
                buffers.close()
                self._wants_reply_buffers = False
                return IN_REPLY
            except BaseException:
                buffers.close()
                raise
            self._reply_buffers = buffers
        number = self._reply_buffers.take()
        return in_reply_buffer(number) if number else IN_REPLY
