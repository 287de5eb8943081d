"""Restarting an env whose worker failed: the restart budget, the reconnection to a server that
went away, and the resets replayed so that a re-made env goes on with the schedule it had.

An env made with ``restart_failed_envs`` survives its worker crashing, being killed, or missing
its deadline: the session is made again with the same arguments, and the episode that was
running ends as truncated with ``info["episode_lost"] = True`` and ``info["lost_cause"]``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from gym_remote.config import ClientConfig, resolve
from gym_remote.errors import (
    RemoteEnvError,
    RemoteTimeout,
    ServerBusy,
    ServerUnavailable,
    SessionExpired,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from gym_remote.client import RemoteEnv

__all__ = [
    "RestartPolicy",
    "Recovery",
    "ResetSchedule",
    "LostStep",
    "RECOVERABLE",
    "lost_info",
    "restart_policy",
]

# The failures that end a session but not the env's usefulness: a restart makes it again.
RECOVERABLE = (WorkerCrashed, RemoteTimeout, SessionExpired)
# Waits between tries to reach a server that is down or has no free slot: doubling, capped.
_FIRST_RETRY_SECONDS = 0.1
_LONGEST_RETRY_SECONDS = 2.0
# How many restarts an env's history keeps to name in its final error.
_HISTORY_KEPT = 20


@dataclass(frozen=True)
class RestartPolicy:
    """How an env whose worker failed is restarted (``restart_failed_envs=RestartPolicy(...)``;
    ``True`` takes these defaults, in the spirit of ML-Agents' restart limits).

    Attributes:
        max_restarts: The most restarts of one env within ``window_seconds``; the failure after
            them is raised, naming every restart and its cause.
        window_seconds: The window ``max_restarts`` counts in.
        reconnect_seconds: How long one restart keeps trying to reach a server that is down,
            restarting or busy (waits doubling from 0.1 s up to 2 s), before it raises.
    """

    max_restarts: int = 10
    window_seconds: float = 600.0
    reconnect_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_restarts < 1 or self.window_seconds <= 0 or self.reconnect_seconds <= 0:
            raise ValueError(f"{self}: max_restarts must be at least 1 and the seconds above 0")


def restart_policy(value: bool | RestartPolicy | None) -> RestartPolicy | None:
    """The policy ``restart_failed_envs=value`` asks for: None (unset) reads
    ``GYM_REMOTE_RESTART_FAILED_ENVS``; False gives none, True the defaults."""
    if isinstance(value, RestartPolicy):
        return value
    if value is None:
        value = resolve(ClientConfig).restart_failed_envs
    return RestartPolicy() if value else None


class LostStep:
    """The result of a step whose worker failed: the vector env makes it a truncated step of
    the env's last observation, with ``info`` saying that the episode was lost and why."""

    __slots__ = ("info",)

    def __init__(self, error: RemoteEnvError) -> None:
        self.info = lost_info(error)


def lost_info(error: RemoteEnvError) -> dict[str, Any]:
    """The info of a lost episode's last step: ``episode_lost``, ``lost_cause`` (the error's
    type and message) and, where the worker crashed, how it ended (``lost_exit_code``,
    ``lost_signal``, each None where it does not apply) and its last stderr lines
    (``lost_stderr``, one string)."""
    info: dict[str, Any] = {"episode_lost": True, "lost_cause": _cause(error)}
    if isinstance(error, WorkerCrashed):
        info["lost_exit_code"] = error.exit_code
        info["lost_signal"] = error.signal
        info["lost_stderr"] = "\n".join(error.stderr_tail)
    return info


class ResetSchedule:
    """The resets an env had since its last seeded one, to replay on the env made again: then
    it goes on with the seeds and initial states (LIBERO's, which move on at each reset) it
    would have had. Runs of unseeded resets without options are kept as a count."""

    def __init__(self) -> None:
        self._seeded: tuple[int, Any] | None = None
        self._since: list[list[Any]] = []  # [options, how many resets in a row had them]

    def note(self, seed: int | None, options: Any) -> None:
        """Notes a reset that succeeded."""
        if seed is not None:
            self._seeded = (seed, options)
            self._since = []
        elif self._seeded is not None:  # an env never seeded drew from fresh entropy: nothing to replay
            if options is None and self._since and self._since[-1][0] is None:
                self._since[-1][1] += 1
            else:
                self._since.append([options, 1])

    def replay(self) -> Iterator[tuple[int | None, Any]]:
        """The ``(seed, options)`` of each reset to replay, in order."""
        if self._seeded is None:
            return
        yield self._seeded
        for options, count in self._since:
            for _ in range(count):
                yield None, options


class Recovery:
    """The restarts of one session (one env): its budget, its history and its reset schedule.

    Args:
        revive: Called before each try to make the session again: a vector env's private
            server, if it was killed, starts again there.
    """

    def __init__(self, policy: RestartPolicy, revive: Callable[[], None] | None = None) -> None:
        self.policy = policy
        self._revive = revive
        self.schedule = ResetSchedule()
        self._recent: deque[float] = deque()  # when the restarts in the window happened
        self._history: deque[str] = deque(maxlen=_HISTORY_KEPT)
        self._restarts = 0

    def restart(self, session: RemoteEnv, error: RemoteEnvError) -> None:
        """Makes ``session`` again after ``error`` ended it, and replays its resets. While the
        server cannot be reached (or has no free slot) it tries again, for up to
        ``reconnect_seconds``; each new worker that fails counts as one more restart.

        Raises:
            RemoteEnvError: the failure past the budget (of ``error``'s type, naming every
                restart and its cause), or the server still unreachable at the deadline.
        """
        self._count(error)
        deadline = time.monotonic() + self.policy.reconnect_seconds
        delay = _FIRST_RETRY_SECONDS
        while True:
            try:
                if self._revive is not None:
                    self._revive()
                steps = session.gym_remote.reopen()
                for seed, options in self.schedule.replay():
                    steps.reset(seed, options)
                return
            except (ServerUnavailable, ServerBusy) as unreachable:
                if time.monotonic() + delay > deadline:
                    raise unreachable.renamed(
                        f"{unreachable.message}; gave up restarting the env after "
                        f"{self.policy.reconnect_seconds:g} s (it had ended with {_cause(error)})"
                    ) from None
                time.sleep(delay)
                delay = min(2 * delay, _LONGEST_RETRY_SECONDS)
            except RECOVERABLE as failure:
                self._count(failure)
                error = failure

    def reset_again(
        self, session: RemoteEnv, error: RemoteEnvError, seed: int | None, options: Any
    ) -> tuple[Any, dict[str, Any]]:
        """After ``error`` ended ``session`` during a reset: makes it again (as :meth:`restart`)
        and resets it with ``seed`` and ``options``, again after each recoverable failure
        while the budget lasts; notes the reset in the schedule and returns its result."""
        while True:
            self.restart(session, error)
            try:
                result = session.gym_remote.steps.reset(seed, options)
            except RECOVERABLE as failure:
                error = failure
                continue
            self.schedule.note(seed, options)
            return result

    def _count(self, error: RemoteEnvError) -> None:
        """Counts a restart for ``error``, or raises it (renamed) when the budget is spent."""
        now = time.monotonic()
        while self._recent and now - self._recent[0] >= self.policy.window_seconds:
            self._recent.popleft()
        if len(self._recent) >= self.policy.max_restarts:
            restarts = "; ".join(self._history)
            raise error.renamed(
                f"{error.message}; not restarted again: {len(self._recent)} restarts within "
                f"{self.policy.window_seconds:g} s already, the most restart_failed_envs allows "
                f"(restarts: {restarts})"
            )
        self._recent.append(now)
        self._restarts += 1
        stamp = time.strftime("%H:%M:%S")
        self._history.append(f"#{self._restarts} at {stamp} after {_cause(error)}")


def _cause(error: RemoteEnvError) -> str:
    return f"{type(error).__name__}: {error.message}"
