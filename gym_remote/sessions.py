"""The worker sessions behind a ``RemoteVectorEnv``: which env lives where, and requests to many
sessions sent at once, their replies gathered per env.

Env ``i`` lives in session ``i // envs_per_worker``. A session whose worker hosts several envs
takes their requests in one ``batch`` message; a one-env session takes steps and resets in
fixed-layout frames where they fit.
"""

from __future__ import annotations

import dataclasses
import selectors
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from gymnasium.envs.registration import EnvSpec

from gym_remote.client import RemoteEnv
from gym_remote.error_envelope import error_from_wire
from gym_remote.errors import ProtocolError, RemoteEnvError
from gym_remote.recovery import RECOVERABLE, LostStep, Recovery, RestartPolicy
from gym_remote.step.layout import IN_REPLY, in_batch_row
from gym_remote.step.sender import StepSender

__all__ = ["Requests", "SessionGroup"]

# Env index -> (op, fields) of the request for that env.
Requests = dict[int, tuple[str, dict[str, Any]]]
# One env's request: (env index, op, fields).
_Request = tuple[int, str, dict[str, Any]]


class SessionGroup:
    """``num_envs`` envs of ``env_id`` in sessions of ``envs_per_worker`` envs, spread round-robin
    over ``addresses``; ``arguments`` and ``env_kwargs`` as for :class:`~gym_remote.RemoteEnv`,
    ``per_env_kwargs`` one dict per env over ``env_kwargs``. With a ``restart`` policy (one env
    per session), a session whose worker fails is made again: a step in flight there comes back
    as a :class:`~gym_remote.recovery.LostStep`, a reset is made again (``revive`` is called
    first: it starts a private server again if it was killed)."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        addresses: Sequence[str],
        envs_per_worker: int,
        per_env_kwargs: Sequence[dict[str, Any]],
        arguments: dict[str, Any],
        env_kwargs: dict[str, Any],
        restart: RestartPolicy | None = None,
        revive: Callable[[], None] | None = None,
    ) -> None:
        if restart is not None and envs_per_worker > 1:
            raise ValueError(
                "restart_failed_envs needs envs_per_worker=1: a crash ends every env of its worker"
            )
        self.env_id = env_id
        self._per_env_kwargs = list(per_env_kwargs)
        # Session number -> the indices of the envs its worker hosts, and env index -> (session, slot).
        hosted = [
            list(range(start, min(start + envs_per_worker, num_envs)))
            for start in range(0, num_envs, envs_per_worker)
        ]
        self.placement = [(number, slot) for number, envs in enumerate(hosted) for slot in range(len(envs))]
        self.sessions: list[RemoteEnv] = [
            _HostingSession(
                env_id,
                [per_env_kwargs[index] for index in envs],
                address=addresses[number % len(addresses)],
                **arguments,
                **env_kwargs,
            )
            if len(envs) > 1
            else RemoteEnv(
                env_id,
                address=addresses[number % len(addresses)],
                **arguments,
                **{**env_kwargs, **per_env_kwargs[envs[0]]},
            )
            for number, envs in enumerate(hosted)
        ]
        # Session number -> the (env index, op) pairs of the request in flight there.
        self.pending: dict[int, list[tuple[int, str]]] = {}
        # Session number -> the step sender its request in flight went through.
        self._senders: dict[int, StepSender] = {}
        # With restarts: each session's, its request in flight, and the replies of requests
        # whose session was made again as they were sent (nothing to receive from the new one).
        self._recoveries = None if restart is None else [Recovery(restart, revive) for _ in self.sessions]
        self._requests: dict[int, _Request] = {}
        self._settled: dict[int, dict[int, Any]] = {}

    def make_all(self) -> None:
        """Makes every session's env, all at once (making one can take seconds: LIBERO's, ten)."""
        with ThreadPoolExecutor(max_workers=min(len(self.sessions), 32)) as pool:
            list(pool.map(lambda session: session.observation_space, self.sessions))

    def spec_of(self, index: int) -> EnvSpec:
        """Env ``index``'s spec, as a :class:`~gym_remote.RemoteEnv` of its own would give it."""
        spec = self.sessions[self.session_of(index)].spec
        return dataclasses.replace(spec, kwargs={**spec.kwargs, **self._per_env_kwargs[index]})

    def in_flight(self) -> list[int]:
        """The envs whose session has a request in flight, sorted."""
        return sorted(index for items in self.pending.values() for index, _ in items)

    def session_of(self, index: int) -> int:
        """The number of the session whose worker hosts env ``index``."""
        return self.placement[index][0]

    def is_busy(self, index: int) -> bool:
        """Whether env ``index``'s session has a request in flight (its own or a worker mate's)."""
        return self.session_of(index) in self.pending

    def round_trip(
        self, requests: Requests, replies: dict[int, Any], batch_buffer: int | None = None
    ) -> None:
        """Sends every request (to sessions with none in flight), then puts their replies into
        ``replies``, per env; the first failure is raised after all replies, noting the others.
        With a ``batch_buffer``, each worker writes env ``i``'s observation into row ``i`` of
        that shared batch buffer (the reply's observation is then None)."""
        first_error: RemoteEnvError | None = None
        sent = []
        try:
            for number, items in self._by_session(requests).items():
                try:
                    self._send(number, items, batch_buffer)
                    sent.append(number)
                except RemoteEnvError as error:
                    first_error = _noting(first_error, error)
            receive_error = self.receive_each(sent, replies)
            if receive_error is not None:
                first_error = _noting(first_error, receive_error)
        except BaseException:  # interrupted (KeyboardInterrupt, say): the next call starts afresh
            self.abandon([number for number in sent if number in self.pending])
            raise
        if first_error is not None:
            raise first_error

    def send(self, requests: Requests, batch_buffer: int | None = None) -> None:
        """Sends every request without waiting (``batch_buffer`` as for :meth:`round_trip`);
        :meth:`wait_ready` and :meth:`receive_each` get the replies. Raises the first failure
        to send (the requests sent before it stay in flight)."""
        for number, items in self._by_session(requests).items():
            self._send(number, items, batch_buffer)

    def receive_each(self, numbers: list[int], replies: dict[int, Any]) -> RemoteEnvError | None:
        """Puts the replies of these sessions' requests in flight into ``replies``, per env;
        returns the first failure, noting the others (after receiving from every session)."""
        first_error = None
        for number in numbers:
            try:
                self._receive(number, replies)
            except RemoteEnvError as error:
                first_error = _noting(first_error, error)
        return first_error

    def wait_ready(self, count: int, timeout: float | None) -> list[int]:
        """The sessions whose replies have arrived, once they cover at least ``count`` envs or
        ``timeout`` seconds have passed (then maybe fewer, or none)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            ready = [number for number in self.pending if number in self._settled]
            for number in self.pending:
                if number not in self._settled:
                    selector.register(self._senders[number].fileno(), selectors.EVENT_READ, number)
            while sum(len(self.pending[number]) for number in ready) < count:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                events = selector.select(left)
                if not events and left == 0.0:
                    break
                for key, _ in events:
                    ready.append(key.data)
                    selector.unregister(key.fileobj)
        return ready

    def abandon(self, numbers: list[int] | None = None) -> None:
        """Leaves the replies in flight to these sessions (default: all) unread: each session
        drops them before its next request."""
        for number in list(self.pending) if numbers is None else numbers:
            sender = self._senders.pop(number, None)
            if sender is not None and not sender.connection.closed:
                sender.abandon()
            del self.pending[number]
            self._requests.pop(number, None)
            self._settled.pop(number, None)

    def close(self) -> None:
        """Closes every session; those with requests in flight close without waiting for them."""
        if self.pending:
            self.abandon()
        for session in self.sessions:
            session.close()

    def _by_session(self, requests: Requests) -> dict[int, list[tuple[int, str, dict[str, Any]]]]:
        """Requests per env, grouped by the session whose worker hosts the env."""
        grouped: dict[int, list[tuple[int, str, dict[str, Any]]]] = {}
        for index, (op, fields) in requests.items():
            grouped.setdefault(self.session_of(index), []).append((index, op, fields))
        return grouped

    def _send(
        self, number: int, items: list[tuple[int, str, dict[str, Any]]], batch_buffer: int | None
    ) -> None:
        """Sends one session its envs' requests: as they are, or as one ``batch`` for a hosting session."""
        session = self.sessions[number]
        try:
            sender = session.gym_remote.steps
            if isinstance(session, _HostingSession):
                batch = [{"op": op, "env": self.placement[index][1], **fields} for index, op, fields in items]
                if batch_buffer is not None:
                    for (index, _, _), request in zip(items, batch):
                        request["into"] = in_batch_row(batch_buffer, index).into_field()
                sender.send("batch", {"requests": batch})
            else:
                ((index, op, fields),) = items
                sender.send(
                    op, fields, IN_REPLY if batch_buffer is None else in_batch_row(batch_buffer, index)
                )
        except RemoteEnvError as error:
            if self._recoveries is None or not isinstance(error, RECOVERABLE):
                raise self.named([index for index, _, _ in items], error) from None
            # Gone between calls: the env is made again now, and this call's result settled.
            self._settled[number] = {items[0][0]: self._recover(number, items[0], error)}
        else:
            self._senders[number] = sender
            if self._recoveries is not None:
                self._requests[number] = items[0]
        self.pending[number] = [(index, op) for index, op, _ in items]

    def _receive(self, number: int, replies: dict[int, Any]) -> None:
        """Puts the replies of a session's request in flight into ``replies``, per env; then
        raises the first env's error, if any, noting the others (a hosting session's other envs'
        replies are in)."""
        items = self.pending.pop(number)
        if number in self._settled:
            replies.update(self._settled.pop(number))
            return
        sender = self._senders.pop(number)
        request = self._requests.pop(number, None)
        try:
            reply = sender.receive()
        except RemoteEnvError as error:
            if request is None or not isinstance(error, RECOVERABLE):
                raise self.named([index for index, _ in items], error) from None
            replies[request[0]] = self._recover(number, request, error)
            return
        if not isinstance(self.sessions[number], _HostingSession):
            if request is not None and request[1] == "reset":
                self._note_reset(number, request)
            replies[items[0][0]] = reply
            return
        if not isinstance(reply, list) or len(reply) != len(items):
            raise self.named([index for index, _ in items], ProtocolError("malformed reply to batch"))
        first_error = None
        for (index, _), outcome in zip(items, reply):
            if isinstance(outcome, dict) and "ok" in outcome:
                replies[index] = outcome["ok"]
            else:
                failure = outcome.get("error") if isinstance(outcome, dict) else outcome
                first_error = _noting(first_error, self.named([index], error_from_wire(failure)))
        if first_error is not None:
            raise first_error

    def _recover(self, number: int, request: _Request, error: RemoteEnvError) -> Any:
        """Makes session ``number`` again after ``error`` ended it during ``request``; returns
        that request's reply: a :class:`LostStep` for a step, the reset made again for a reset.

        Raises:
            RemoteEnvError: the restart failed for good (named), or the request was another call
                (its error, now that the env is made again).
        """
        assert self._recoveries is not None
        index, op, fields = request
        recovery, session = self._recoveries[number], self.sessions[number]
        try:
            if op == "reset":
                return recovery.reset_again(session, error, fields["seed"], fields["options"])
            recovery.restart(session, error)
        except RemoteEnvError as final:
            raise self.named([index], final) from None
        if op == "step":
            return LostStep(error)
        again = error.renamed(f"{error.message} (the env was made again: reset it to go on)")
        raise self.named([index], again) from None

    def _note_reset(self, number: int, request: _Request) -> None:
        """Adds a reset that worked to its session's schedule, replayed after a restart."""
        assert self._recoveries is not None
        fields = request[2]
        self._recoveries[number].schedule.note(fields["seed"], fields["options"])

    def named(self, indices: list[int], error: RemoteEnvError) -> RemoteEnvError:
        """The same error, saying which sub-env(s) and where."""
        which = f"sub-env {indices[0]}" if len(indices) == 1 else f"sub-envs {indices}"
        address = self.sessions[self.session_of(indices[0])].gym_remote.config.address
        return error.renamed(f"{which} ({self.env_id} at {address}): {error.message}")


class _HostingSession(RemoteEnv):
    """A session whose worker hosts several of a vector env's envs (``make`` with ``num_envs``)."""

    def __init__(self, env_id: str, per_env_kwargs: list[dict[str, Any]], **arguments: Any) -> None:
        super().__init__(env_id, **arguments)
        self._per_env_kwargs = per_env_kwargs

    def _make_fields(self) -> dict[str, Any]:
        fields = super()._make_fields()
        return {**fields, "num_envs": len(self._per_env_kwargs), "per_env_kwargs": self._per_env_kwargs}


def _noting(first: RemoteEnvError | None, error: RemoteEnvError) -> RemoteEnvError:
    """``error`` if it is the first failure of a call, else ``first`` with a note of ``error``
    (and of its own notes): a call raises its first failure and names the others."""
    if first is None:
        return error
    if hasattr(first, "add_note"):  # Python 3.11 and later; earlier ones raise the first alone
        for text in [f"also {type(error).__name__}: {error.message}", *getattr(error, "__notes__", [])]:
            first.add_note(text)
    return first
