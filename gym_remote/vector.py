"""``RemoteVectorEnv``: N remote sessions driven from one process, in Gymnasium's vector layout.

Every call is sent to all the sessions first and gathered after, so N workers (on one server
or several) run at the same time with no process or thread per env in the client.
"""

from __future__ import annotations

import copy as copying
import enum
import functools
import itertools
import logging
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from gym_remote.addresses import server_list
from gym_remote.batches import PooledBatches, SharedBatches
from gym_remote.client import ChunkResult, without_secrets
from gym_remote.config import ClientConfig, resolve
from gym_remote.embedded import EmbeddedServer
from gym_remote.errors import (
    CallInFlight,
    InvalidCall,
    NoCallInFlight,
    RemoteAttributeError,
    RemoteEnvError,
    RemoteError,
)
from gym_remote.recovery import LostStep, RestartPolicy, restart_policy
from gym_remote.sessions import Requests, SessionGroup

__all__ = ["RemoteVectorEnv", "CallState"]


class CallState(enum.Enum):
    """Where a :class:`RemoteVectorEnv`'s call cycle is, as Gymnasium's ``AsyncState`` says
    where an ``AsyncVectorEnv``'s is.

    ``step()``, ``reset()`` and the other whole-batch calls run only from ``DEFAULT`` (else
    :class:`~gym_remote.CallInFlight`, Gymnasium's ``AlreadyPendingCallError``); ``recv()``
    only from ``WAITING_RECV`` (else :class:`~gym_remote.NoCallInFlight`, Gymnasium's
    ``NoAsyncCallError``).
    """

    DEFAULT = "default"  # nothing sent is out
    WAITING_RECV = "waiting_recv"  # send() or send_reset() results not yet returned by recv()


logger = logging.getLogger(__name__)

# Attributes every env has that this side knows of each sub-env and answers itself, as a
# RemoteEnv does (spaces and specs are no values the wire carries).
_DESCRIBED_ATTRIBUTES = frozenset({"observation_space", "action_space", "spec", "metadata", "render_mode"})


class RemoteVectorEnv(VectorEnv):
    """``num_envs`` sessions of one env id, spread over one or several servers, as a ``VectorEnv``.

    Args:
        env_id: The id the servers make, for example ``"CartPole-v1"``.
        num_envs: How many sessions.
        address: A server address, a list of them or a string of them separated by commas
            (sessions are spread round-robin), or None (``GYM_REMOTE_ADDRESS``, which may list
            several too, or one private local server for all sessions).
        autoreset_mode: ``NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``, as in Gymnasium.
        copy: Return copies of the batched observations (as ``SyncVectorEnv`` does).
        render_mode: Passed to every remote ``gym.make``.
        timeout, token, allow_pickle, tls_ca, tls_cert, tls_key: As for :class:`~gym_remote.RemoteEnv`.
        locate: Where a server listens now, given its address in ``address``, as for
            :class:`~gym_remote.RemoteEnv`: with ``restart_failed_envs``, sessions follow a
            server that was restarted elsewhere (``RayServers.locate``).
        per_env_kwargs: One dict per env of keyword arguments for its ``gym.make`` (over
            ``env_kwargs``), for example a different LIBERO ``init_state_id`` each.
        envs_per_worker: How many envs each session's worker process hosts (default 1). Light
            envs run much faster several to a worker: one message steps them all, and fewer
            processes share the cores. A crash ends every env of its worker.
        restart_failed_envs: Make a sub-env again when its worker crashes, is killed or misses
            its deadline (True, or a :class:`~gym_remote.RestartPolicy`; default
            ``GYM_REMOTE_RESTART_FAILED_ENVS`` or False), as :class:`~gym_remote.RemoteEnv` does:
            its episode ends as truncated with ``info["episode_lost"]`` (in ``final_info`` in
            SAME_STEP mode) and ``info["lost_cause"]``, the other sub-envs' episodes go on
            untouched. Needs ``envs_per_worker=1``.
        **env_kwargs: Keyword arguments of every remote ``gym.make``.

    Attributes:
        sessions: One :class:`~gym_remote.RemoteEnv` per worker session, in env order (env i is
            in session ``i // envs_per_worker``).

    Example:
        >>> envs = RemoteVectorEnv("CartPole-v1", num_envs=4)
        >>> observations, infos = envs.reset(seed=0)
        >>> envs.close()
    """

    _spec: EnvSpec | None = None

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        address: str | Sequence[str] | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        render_mode: str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        allow_pickle: bool | None = None,
        per_env_kwargs: Sequence[dict[str, Any]] | None = None,
        envs_per_worker: int = 1,
        restart_failed_envs: bool | RestartPolicy | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        locate: Callable[[str], str] | None = None,
        **env_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be at least 1, got {envs_per_worker}")
        per_env_kwargs = list(per_env_kwargs) if per_env_kwargs is not None else [{}] * num_envs
        if len(per_env_kwargs) != num_envs:
            raise ValueError(f"per_env_kwargs has {len(per_env_kwargs)} dicts for {num_envs} envs")
        self.env_id = env_id
        self.num_envs = num_envs
        self.copy = copy
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        config = resolve(
            ClientConfig,
            address=address if isinstance(address, str) else None,
            timeout=timeout,
            token=token,
            allow_pickle=allow_pickle,
        )
        self._embedded: EmbeddedServer | None = None
        if isinstance(address, (list, tuple)):
            addresses = list(address)
            if not addresses:
                raise ValueError("address is an empty list: give at least one server address (or None)")
        elif config.address:
            addresses = server_list(config.address)
        else:
            self._embedded = EmbeddedServer.start(config.timeout, config.allow_pickle)
            addresses = [self._embedded.address]
        self.addresses = addresses
        self.envs_per_worker = envs_per_worker
        arguments: dict[str, Any] = {
            "render_mode": render_mode,
            "timeout": timeout,
            "token": token,
            "allow_pickle": allow_pickle,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "locate": locate,
        }
        self._group = SessionGroup(
            env_id,
            num_envs,
            addresses,
            envs_per_worker,
            per_env_kwargs,
            arguments,
            env_kwargs,
            restart_policy(restart_failed_envs),
            # A restart first starts a killed private server again on its address.
            None if self._embedded is None else functools.partial(self._embedded.revive, config.timeout),
        )
        self.sessions = self._group.sessions
        try:
            self._group.make_all()
        except BaseException:
            self.close()
            raise
        first = self.sessions[0]
        self.metadata = dict(first.metadata, autoreset_mode=self.autoreset_mode)
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._observations = create_empty_array(self.single_observation_space, n=num_envs, fn=np.zeros)
        self._batches = PooledBatches(self.single_observation_space, num_envs)
        self._shared: SharedBatches | None = None
        # This call's observation of each env; None where its worker wrote it into a shared batch.
        self._env_observations: list[Any] = [None] * num_envs
        self._rewards = np.zeros((num_envs,), dtype=np.float64)
        self._terminations = np.zeros((num_envs,), dtype=np.bool_)
        self._truncations = np.zeros((num_envs,), dtype=np.bool_)
        self._autoreset_envs = np.zeros((num_envs,), dtype=np.bool_)
        # Replies received by a recv() that raised (another session failed, or the caller was
        # interrupted), per env with its op: the next recv() returns them.
        self._undelivered: dict[int, tuple[str, Any]] = {}
        # SAME_STEP: resets of envs whose results are undelivered, done by a recv() that raised.
        self._undelivered_resets: dict[int, tuple[Any, dict[str, Any]]] = {}
        # Env index -> the shared batch buffer whose row the last send() asked its worker to
        # write the observation into.
        self._sent_rows: dict[int, int] = {}
        # Env index -> (batch, row) of its observation that recv() returned last (newer than
        # the last whole batch): where a lost step's observation is copied from.
        self._received_rows: dict[int, tuple[Any, int]] = {}
        try:
            self._shared = self._share_batches()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- the VectorEnv API

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Resets every session (or those in ``options["reset_mask"]``), all at once."""
        seeds = _seeds(seed, self.num_envs)
        options = dict(options) if options is not None else None
        mask = np.ones((self.num_envs,), dtype=np.bool_)
        if options is not None and "reset_mask" in options:
            mask = _checked_mask(options.pop("reset_mask"), self.num_envs)
        else:
            self._rewards[:] = 0.0
        self._terminations[mask] = False
        self._truncations[mask] = False
        self._autoreset_envs[mask] = False
        buffer = self._take_shared_buffer()
        # Envs left out of a partial reset keep their observation: their workers send it again.
        requests = {
            index: ("reset", {"seed": seeds[index], "options": options}) if mask[index] else ("observe", {})
            for index in range(self.num_envs)
        }
        replies = self._exchange(requests, buffer)
        infos: dict[str, Any] = {}
        for index in range(self.num_envs):
            if mask[index]:
                self._env_observations[index], env_info = replies[index]
                infos = self._add_info(infos, env_info, index)
            else:
                self._env_observations[index] = replies[index]
        return self._batch(buffer), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every session at once (sessions awaiting an autoreset are reset instead).

        Raises:
            InvalidCall: there is not one action per env (nothing is sent), or an action does
                not fit the action space (that env's error; the others step).
        """
        actions = list(iterate(self.action_space, actions))
        if len(actions) != self.num_envs:
            raise InvalidCall(f"{len(actions)} actions for {self.num_envs} sub-envs: give one each")
        requests = {}
        for index, action in enumerate(actions):
            if self.autoreset_mode == AutoresetMode.NEXT_STEP and self._autoreset_envs[index]:
                requests[index] = ("reset", {"seed": None, "options": None})
            else:
                if self.autoreset_mode == AutoresetMode.DISABLED and self._autoreset_envs[index]:
                    raise InvalidCall(f"sub-env {index} ended its episode: reset it (autoreset is disabled)")
                requests[index] = ("step", {"action": action})
        buffer = self._take_shared_buffer()
        replies = self._exchange(requests, buffer)
        env_infos: list[dict[str, Any]] = []
        finals: dict[int, dict[str, Any]] = {}  # SAME_STEP: the episodes that ended, by env
        for index in range(self.num_envs):
            (
                self._env_observations[index],
                self._rewards[index],
                self._terminations[index],
                self._truncations[index],
                env_info,
            ) = _as_step_result(requests[index][0], replies[index])
            env_infos.append(env_info)
            # An autoreset's result never ends an episode, so only steps can reach this.
            if self.autoreset_mode == AutoresetMode.SAME_STEP and (
                self._terminations[index] or self._truncations[index]
            ):
                final_observation = self._observation_of(self._env_observations[index], buffer, index)
                finals[index] = {"final_obs": final_observation, "final_info": env_info}
        if finals:
            resets = self._exchange(
                {index: ("reset", {"seed": None, "options": None}) for index in finals}, buffer
            )
            for index in finals:
                self._env_observations[index], env_infos[index] = resets[index]
        # In env order, as SyncVectorEnv adds them: the first value of a key sets its array's dtype.
        infos: dict[str, Any] = {}
        for index, env_info in enumerate(env_infos):
            if index in finals:
                infos = self._add_info(infos, finals[index], index)
            infos = self._add_info(infos, env_info, index)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (
            self._batch(buffer),
            np.copy(self._rewards),
            np.copy(self._terminations),
            np.copy(self._truncations),
            infos,
        )

    def render(self) -> tuple[Any, ...]:
        """Every session's frame."""
        replies = self._exchange({index: ("render", {}) for index in range(self.num_envs)})
        return tuple(replies[index] for index in range(self.num_envs))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Calls method ``name`` of every remote env (or reads attribute ``name``).

        Each env's ``observation_space``, ``action_space``, ``spec``, ``metadata`` and
        ``render_mode`` are answered here, as a :class:`~gym_remote.RemoteEnv` answers them.

        Raises:
            RemoteAttributeError: a remote env has no attribute ``name`` (an ``AttributeError``,
                as a local vector env raises).
        """
        if name in _DESCRIBED_ATTRIBUTES and not args and not kwargs:
            return tuple(self._described(name, index) for index in range(self.num_envs))
        requests = {
            index: ("call", {"name": name, "args": list(args), "kwargs": kwargs})
            for index in range(self.num_envs)
        }
        try:
            replies = self._exchange(requests)
        except RemoteError as error:
            if error.remote_type != "builtins.AttributeError":
                raise
            raise RemoteAttributeError(
                error.message, remote_type=error.remote_type, remote_traceback=error.remote_traceback
            ) from None
        return tuple(replies[index] for index in range(self.num_envs))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every remote env (methods are called, as in ``SyncVectorEnv``)."""
        return self.call(name)

    def _described(self, name: str, index: int) -> Any:
        """Env ``index``'s attribute ``name``, one of ``_DESCRIBED_ATTRIBUTES``."""
        if name == "observation_space":
            return self.single_observation_space
        if name == "action_space":
            return self.single_action_space
        if name == "spec":
            return self._group.spec_of(index)
        return getattr(self.sessions[self._group.session_of(index)], name)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Sets attribute ``name``: one value for all, or a list with one per env."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} values for {self.num_envs} envs, got {len(values)}")
        self._exchange(
            {index: ("setattr", {"name": name, "value": values[index]}) for index in range(self.num_envs)}
        )

    def close_extras(self, **kwargs: Any) -> None:
        """Closes every session, then the private server if this vector env started one."""
        group = getattr(self, "_group", None)
        if group is not None:
            group.close()
        shared = getattr(self, "_shared", None)
        if shared is not None:
            shared.close()
            self._shared = None
        self._observations = None  # batches the caller still holds stay valid
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    # ----------------------------------------------------------------- action chunks

    def step_chunk(self, actions: Sequence[Any], all_observations: bool = False) -> tuple[ChunkResult, ...]:
        """Runs a chunk of actions in every session at once (``actions[i]`` is env i's chunk).

        Each chunk stops early where its episode ends; such envs must be reset (for example
        ``reset(options={"reset_mask": ...})``) before their next chunk. See
        :meth:`RemoteEnv.step_chunk <gym_remote.RemoteEnv.step_chunk>`.

        Raises:
            InvalidCall: there is not one chunk per env, or an env's episode ended and it was not
                reset since.
        """
        if len(actions) != self.num_envs:
            raise InvalidCall(f"{len(actions)} chunks of actions for {self.num_envs} sub-envs: give one each")
        ended = [index for index in range(self.num_envs) if self._autoreset_envs[index]]
        if ended:
            raise InvalidCall(f"sub-envs {ended} ended their episodes: reset them before their next chunk")
        replies = self._exchange(
            {
                index: ("step_chunk", {"actions": actions[index], "all_observations": all_observations})
                for index in range(self.num_envs)
            }
        )
        results = tuple(ChunkResult.from_reply(replies[index]) for index in range(self.num_envs))
        for index, result in enumerate(results):
            self._autoreset_envs[index] = (
                bool(result.terminated[-1] or result.truncated[-1]) if result.rewards else False
            )
        return results

    # ----------------------------------------------------------------- asynchronous stepping

    def send(self, actions: Any, env_ids: Iterable[int] | None = None) -> None:
        """Starts steps without waiting (envpool style): ``actions[k]`` goes to ``env_ids[k]``.

        ``actions`` is a batch of ``len(env_ids)`` actions, as :meth:`step` takes (for Dict and
        Tuple action spaces, a list with one action each also works).

        Envs awaiting an autoreset (in NEXT_STEP mode) are reset instead of stepped. Collect
        results with :meth:`recv`.

        Raises:
            InvalidCall: ``env_ids`` repeats an env or names one that does not exist, there is not
                one action per env, an env already has a call in flight, or (autoreset disabled)
                one ended its episode and was not reset.
        """
        env_ids = self._checked_env_ids(env_ids)
        if isinstance(actions, list) and isinstance(self.single_action_space, (spaces.Dict, spaces.Tuple)):
            actions = list(actions)  # one action each, not a batch
        else:
            actions = list(iterate(self.action_space, actions))  # a batch of len(env_ids), as step()'s
        if len(actions) != len(env_ids):
            raise InvalidCall(f"{len(actions)} actions for {len(env_ids)} sub-envs {env_ids}: give one each")
        if self.autoreset_mode == AutoresetMode.DISABLED:
            ended = [index for index in env_ids if self._autoreset_envs[index]]
            if ended:
                raise InvalidCall(
                    f"sub-envs {ended} ended their episodes: reset them (autoreset is disabled)"
                )
        requests = {
            index: ("reset", {"seed": None, "options": None})
            if self._autoreset_envs[index]
            else ("step", {"action": action})
            for action, index in zip(actions, env_ids)
        }
        self._send_requests(requests)

    def send_reset(
        self,
        env_ids: Iterable[int],
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Starts resets of ``env_ids`` without waiting, each with its own seed and options (an
        evaluation's episode plan); :meth:`recv` returns their observations, as steps with no
        reward and no episode end, and their infos.

        Raises:
            InvalidCall: as :meth:`send`, or not one seed (or options) per env.
        """
        env_ids = self._checked_env_ids(env_ids)
        seeds = list(seeds) if seeds is not None else [None] * len(env_ids)
        options = list(options) if options is not None else [None] * len(env_ids)
        if len(seeds) != len(env_ids) or len(options) != len(env_ids):
            raise InvalidCall(f"{len(seeds)} seeds and {len(options)} options for sub-envs {env_ids}")
        self._autoreset_envs[env_ids] = False
        self._send_requests(
            {
                index: ("reset", {"seed": seed, "options": option})
                for index, seed, option in zip(env_ids, seeds, options)
            }
        )

    @property
    def call_state(self) -> CallState:
        """Whether steps or resets sent with :meth:`send` or :meth:`send_reset` are out (in
        flight, or received but not yet returned by :meth:`recv`)."""
        return CallState.WAITING_RECV if self._group.pending or self._undelivered else CallState.DEFAULT

    def awaiting(self) -> set[int]:
        """The envs sent a step or reset whose result :meth:`recv` has not returned yet. After a
        ``recv`` raised a sub-env's error, the envs it left out of this set are those that failed."""
        return set(self._group.in_flight()) | set(self._undelivered)

    def _checked_env_ids(self, env_ids: Iterable[int] | None) -> list[int]:
        """``env_ids`` as a list (None: every env), each a distinct sub-env."""
        env_ids = list(range(self.num_envs)) if env_ids is None else [int(index) for index in env_ids]
        if len(set(env_ids)) != len(env_ids) or not all(0 <= index < self.num_envs for index in env_ids):
            raise InvalidCall(
                f"env_ids must be distinct sub-envs from 0 to {self.num_envs - 1}, got {env_ids}"
            )
        return env_ids

    def _send_requests(self, requests: Requests) -> None:
        """Sends one request per env, unless one of them (or a worker mate) is still busy."""
        # A worker mate's result not yet returned counts too: the session's next request must wait.
        undelivered = {self._group.session_of(index) for index in self._undelivered}
        busy = [
            index
            for index in requests
            if self._group.is_busy(index) or self._group.session_of(index) in undelivered
        ]
        if busy:
            raise CallInFlight(
                f"sub-envs {busy} already have a step in flight (theirs or their worker's) or a result "
                "not yet returned: recv() it first",
                "send",
            )
        # Rows of a buffer the caller holds nothing of; recv() copies them out, so the caller
        # never gets the buffer itself (and step() and reset() refuse to run while results are out).
        buffer = None if self._shared is None else self._shared.take()
        self._sent_rows.update((index, buffer) for index in requests if buffer is not None)
        self._group.send(requests, buffer)

    def recv(self, min_envs: int = 1, timeout: float | None = None) -> tuple[Any, ...]:
        """Returns the results of the sessions that are ready, waiting for at least ``min_envs``
        (or ``timeout`` seconds, when given: then the results ready by then, maybe none;
        ``timeout=0`` polls).

        Where a ready session failed, its error is raised once the other ready sessions' results
        are received; the next call returns those. In SAME_STEP mode, envs whose episode ended
        are reset before returning, as :meth:`step` does (``final_obs`` and ``final_info`` in
        the infos).

        Returns:
            ``(observations, rewards, terminations, truncations, infos, env_ids)``, batched over
            the returned envs in the order of ``env_ids``.
        """
        if self.call_state is CallState.DEFAULT:
            raise NoCallInFlight("recv() without a step in flight: send() first", "recv")
        pending = self._group.pending
        in_flight = sum(len(items) for items in pending.values())
        waiting_for = min(min_envs, in_flight + len(self._undelivered)) - len(self._undelivered)
        ready_sessions = self._group.wait_ready(waiting_for, timeout) if waiting_for > 0 else []
        # Every ready session's replies are kept before any failure is raised, so that a crash
        # of one session (or an interruption) loses none of the others' results.
        ops = {index: op for number in ready_sessions for index, op in pending[number]}
        replies: dict[int, Any] = {}
        try:
            first_error = self._group.receive_each(ready_sessions, replies)
        finally:
            self._settle_lost_steps(replies)
            self._undelivered.update((index, (ops[index], reply)) for index, reply in replies.items())
        if first_error is not None:
            raise first_error
        resets = self._same_step_resets()
        delivered, self._undelivered = self._undelivered, {}
        ready = sorted(delivered)
        observations, rewards, terminations, truncations = [], [], [], []
        infos: dict[str, Any] = {}
        for position, index in enumerate(ready):
            observation, reward, terminated, truncated, info = _as_step_result(*delivered[index])
            self._autoreset_envs[index] = terminated or truncated
            if index in resets:
                final_observation = self._observation_of(observation, self._sent_rows.get(index), index)
                final = {"final_obs": final_observation, "final_info": info}
                infos = _add_info_for(self, infos, final, position, len(ready))
                observation, info = resets[index]
                self._autoreset_envs[index] = False
            observations.append(observation)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            infos = _add_info_for(self, infos, info, position, len(ready))
        batch = self._gathered(ready, observations)
        self._received_rows.update((index, (batch, position)) for position, index in enumerate(ready))
        return (
            batch,
            np.array(rewards, dtype=np.float64),
            np.array(terminations, dtype=np.bool_),
            np.array(truncations, dtype=np.bool_),
            infos,
            np.array(ready, dtype=np.int64),
        )

    # ----------------------------------------------------------------- helpers

    @property
    def spec(self) -> EnvSpec | None:
        """The spec ``gym.make_vec`` made this from, without a token (specs are logged and saved)."""
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        self._spec = None if value is None else without_secrets(value)

    @property
    def uses_shared_batches(self) -> bool:
        """Whether the workers write observations straight into this vector env's batches
        (every session on this host, observations made of arrays)."""
        return self._shared is not None

    def _share_batches(self) -> SharedBatches | None:
        """Batches in shared memory for the workers to fill, when every session can take them."""
        if not all(session.gym_remote.uses_shared_memory for session in self.sessions):
            return None
        shared = SharedBatches.for_space(self.single_observation_space, self.num_envs)
        if shared is None:
            return None
        try:
            for session in self.sessions:
                session.gym_remote.steps.request("use_shared_batches", **shared.offer())
        except InvalidCall as error:  # a worker that cannot open them (or predates them)
            logger.debug("no shared batches (%s): observations come in the replies", error)
            shared.close()
            return None
        return shared

    def _take_shared_buffer(self) -> int | None:
        """The shared batch buffer this call's observations go into, or None (they come in replies)."""
        if self._shared is None:
            return None
        return self._shared.take() if self.copy else 0

    def _batch(self, buffer: int | None) -> Any:
        """This call's batch: the shared ``buffer`` (rows of observations that came in replies
        written in), or the observations gathered into new memory."""
        if self._received_rows:
            self._received_rows.clear()  # this batch is newer than any recv() returned
        if buffer is None:
            return self._batched_observations()
        assert self._shared is not None
        arrays = self._shared.arrays(buffer)
        for index, observation in enumerate(self._env_observations):
            if observation is not None:
                self._write_row(arrays, index, index, observation)
        self._observations = self._shared.batch(buffer)
        return self._observations

    def _batched_observations(self) -> Any:
        # With copy, each batch is memory the caller does not hold, which the observations go
        # straight into (one copy, where concatenating into a kept batch and deep-copying it
        # would be two).
        batch: Any = self._batches.take() if self.copy else self._observations
        self._observations = concatenate(self.single_observation_space, self._env_observations, batch)
        return self._observations

    def _same_step_resets(self) -> dict[int, tuple[Any, dict[str, Any]]]:
        """In SAME_STEP mode, the reset ``(observation, info)`` of each received env whose step
        ended its episode (its observation comes in the reply, leaving its row as it is).

        Where a reset fails, its error is raised and that env's result dropped, the env left to
        be reset by its next send(); the resets that worked wait for the next call with the
        other results.
        """
        if self.autoreset_mode != AutoresetMode.SAME_STEP:
            return {}
        ended = sorted(
            index
            for index, (op, reply) in self._undelivered.items()
            if op == "step" and (reply[2] or reply[3]) and index not in self._undelivered_resets
        )
        try:
            self._group.round_trip(
                {index: ("reset", {"seed": None, "options": None}) for index in ended},
                self._undelivered_resets,
            )
        except RemoteEnvError:
            for index in ended:
                if index not in self._undelivered_resets:
                    del self._undelivered[index]
                    self._autoreset_envs[index] = True
            raise
        resets, self._undelivered_resets = self._undelivered_resets, {}
        return resets

    def _observation_of(self, observation: Any, buffer: int | None, index: int) -> Any:
        """Sub-env ``index``'s observation as it came, or, where that is None (its worker wrote it
        into row ``index`` of shared batch ``buffer``), a copy of that row."""
        if observation is not None:
            return observation
        assert self._shared is not None and buffer is not None
        return self._shared.row_copy(buffer, index)

    def _gathered(self, env_ids: list[int], observations: list[Any]) -> Any:
        """A new batch of these envs' observations; one that is None was written into the
        shared batch row its send() named."""
        batch: Any = create_empty_array(self.single_observation_space, n=len(env_ids), fn=np.empty)
        if not env_ids:  # a recv() whose timeout passed before any result came
            return batch
        if self._shared is None:
            return concatenate(self.single_observation_space, observations, batch)
        arrays = self._shared.arrays_of(batch)
        for position, (index, observation) in enumerate(zip(env_ids, observations)):
            if observation is None:
                self._shared.copy_row(self._sent_rows[index], index, arrays, position)
            else:
                self._write_row(arrays, position, index, observation)
        return batch

    def _write_row(self, arrays: list[np.ndarray], row: int, index: int, observation: Any) -> None:
        """Writes sub-env ``index``'s observation (from a reply) into row ``row`` of a shared
        batch's ``arrays`` (one per leaf)."""
        assert self._shared is not None
        if not self._shared.layout.write_row(arrays, row, observation, exact=False):
            raise ValueError(
                f"the observation of sub-env {index} does not fit {self.single_observation_space}"
            )

    def _exchange(self, requests: Requests, batch_buffer: int | None = None) -> dict[int, Any]:
        """Sends every request, then gathers every reply (observations into rows of
        ``batch_buffer``, if given); the first failure is raised after all replies."""
        if self.call_state is CallState.WAITING_RECV:
            pending = sorted(self._group.in_flight() + [*self._undelivered])
            call = next(iter(requests.values()))[0] if requests else ""
            raise CallInFlight(
                f"sub-envs {pending} have steps in flight or results not yet returned: recv() them first",
                call,
            )
        replies: dict[int, Any] = {}
        try:
            self._group.round_trip(requests, replies, batch_buffer)
        finally:
            self._settle_lost_steps(replies)
        return replies

    def _settle_lost_steps(self, replies: dict[int, Any]) -> None:
        """Makes each lost step (its env's worker failed, the env was made again) a step that
        truncates the episode at the env's last observation, saying why in its info."""
        for index, reply in replies.items():
            if type(reply) is LostStep:
                replies[index] = (self._last_observation(index), 0.0, False, True, reply.info)

    def _last_observation(self, index: int) -> Any:
        """A copy of the last observation of sub-env ``index`` returned to the caller."""
        batch, row = self._received_rows.get(index, (self._observations, index))
        return copying.deepcopy(
            next(itertools.islice(iterate(self.single_observation_space, batch), row, None))
        )


def _as_step_result(op: str, reply: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
    """A step's reply as is; a reset's (an autoreset) as a step with no reward and no episode end."""
    if op == "reset":
        observation, info = reply
        return observation, 0.0, False, False, info
    return tuple(reply)


def _seeds(seed: int | Sequence[int | None] | None, count: int) -> list[int | None]:
    if seed is None:
        return [None] * count
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + index for index in range(count)]
    seeds = list(seed)
    if len(seeds) != count:
        raise ValueError(f"expected {count} seeds, got {len(seeds)}")
    return seeds


def _checked_mask(mask: Any, count: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (count,):
        raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({count},)")
    if not mask.any():
        raise ValueError("options['reset_mask'] must select at least one env")
    return mask


def _add_info_for(
    vector_env: VectorEnv, infos: dict[str, Any], info: dict[str, Any], position: int, size: int
) -> dict[str, Any]:
    """``VectorEnv._add_info`` for a batch of ``size`` envs rather than all of them."""
    num_envs = vector_env.num_envs
    vector_env.num_envs = size
    try:
        return vector_env._add_info(infos, info, position)
    finally:
        vector_env.num_envs = num_envs
