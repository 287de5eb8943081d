"""``RemoteEnv``: a ``gymnasium.Env`` whose environment runs behind a gym-remote server."""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, SupportsFloat

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from gym_remote import sharedmem
from gym_remote.addresses import Address, parse_address
from gym_remote.config import ClientConfig, resolve
from gym_remote.connection import Connection, tls_context
from gym_remote.embedded import EmbeddedServer
from gym_remote.errors import RemoteEnvError, SessionClosed, VersionMismatch
from gym_remote.recovery import RECOVERABLE, Recovery, RestartPolicy, lost_info, restart_policy
from gym_remote.registration import REMOTE_ENTRY_POINT
from gym_remote.spaces import decode_space
from gym_remote.step.frames import FixedLayout
from gym_remote.step.sender import StepSender

__all__ = ["RemoteEnv", "SessionState", "SessionView", "ChunkResult", "without_secrets"]

logger = logging.getLogger(__name__)

# Attributes RemoteEnv keeps itself; a lookup of any other public name goes to the remote env.
# Its own state is private, or behind `gym_remote`, a name no env uses: `state`, `config` or
# `env_id` are the remote env's (CartPole's `state` is its physics).
_LOCAL_ATTRIBUTES = frozenset(
    {
        "gym_remote",
        "render_mode",
        "_env_id",
        "_per_env_kwargs",
        "_env_kwargs",
        "_config",
        "_arguments",
        "_state",
        "_steps",
        "_embedded",
        "_remote",
        "_local_spec",
        "_end_reason",
        "_recovery",
        "_last_observation",
        "_tls",
        "_locate",
    }
)


class SessionState(enum.Enum):
    """Where a RemoteEnv's session is: not yet connected, active, ended by an error, or closed."""

    NOT_CONNECTED = "not_connected"
    ACTIVE = "active"
    BROKEN = "broken"
    CLOSED = "closed"


class ChunkResult(NamedTuple):
    """What :meth:`RemoteEnv.step_chunk` returns: one entry per step actually taken.

    Attributes:
        observation: The observation after the last step taken.
        rewards: Each step's reward.
        terminated: Each step's ``terminated``.
        truncated: Each step's ``truncated``.
        infos: Each step's info.
        observations: Each step's observation, when asked for (``all_observations=True``).
    """

    observation: Any
    rewards: list
    terminated: list
    truncated: list
    infos: list
    observations: list | None

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> ChunkResult:
        return cls(
            reply["observation"],
            reply["rewards"],
            reply["terminated"],
            reply["truncated"],
            reply["infos"],
            reply["observations"],
        )


@dataclass(frozen=True)
class _RemoteDescription:
    observation_space: gym.Space
    action_space: gym.Space
    metadata: dict
    render_mode: str | None
    spec: dict | None


class RemoteEnv(gym.Env):
    """A Gymnasium env that runs on a gym-remote server, in its own worker process.

    It connects lazily, on first use, so it can be pickled and sent to vector-env workers
    before that. Without an address (argument or ``GYM_REMOTE_ADDRESS``) it starts a private
    local server that it owns and stops on :meth:`close`, when it is garbage-collected
    unclosed, or at interpreter exit.

    Args:
        env_id: The id the server makes, for example ``"CartPole-v1"``.
        address: ``tcp://host:port`` or ``unix:///path``; None: ``GYM_REMOTE_ADDRESS`` or a
            private local server.
        render_mode: Passed to the remote ``gym.make``.
        timeout: Seconds any call may take before :class:`~gym_remote.RemoteTimeout`
            (default ``GYM_REMOTE_TIMEOUT`` or 60).
        token: The server's shared secret, when it has one (default ``GYM_REMOTE_TOKEN``).
        allow_pickle: Let values the wire format cannot express travel pickled; the server must
            opt in too (default ``GYM_REMOTE_ALLOW_PICKLE`` or False).
        restart_failed_envs: Make the env again when its worker crashes, is killed or misses its
            deadline, reconnecting if its server restarts (True, or a
            :class:`~gym_remote.RestartPolicy` for another budget; default
            ``GYM_REMOTE_RESTART_FAILED_ENVS`` or False). The episode that was running ends as a
            truncated step of the last observation, ``info["episode_lost"]`` True and
            ``info["lost_cause"]`` saying why; a failed reset is made again. Without it, a
            failure ends the session (later calls raise SessionClosed).
        tls_ca: A PEM file of the CA certificate(s) that signed the server's certificate: set, a
            TCP connection uses TLS and checks the server's certificate and host name (default
            ``GYM_REMOTE_TLS_CA``; a Unix socket stays plain).
        tls_cert, tls_key: The client's own certificate and key, for a server that asks for one
            (mutual TLS; default ``GYM_REMOTE_TLS_CERT``, ``GYM_REMOTE_TLS_KEY``).
        locate: Called with ``address`` each time a session opens: returns where that server
            listens now (``RayServers.locate``: a server Ray restarted listens on a new port),
            so that a restart follows its server. Raises ``ServerUnavailable`` when it is gone.
        **env_kwargs: Keyword arguments of the remote ``gym.make``.

    Raises:
        ValueError: ``address`` (or ``GYM_REMOTE_ADDRESS``) is malformed, ``timeout`` is not
            above 0, or a TLS file is missing or not PEM. Nothing connects before the first call.

    Example:
        >>> env = RemoteEnv("CartPole-v1")  # a private local server
        >>> observation, info = env.reset(seed=0)
        >>> env.close()
    """

    def __init__(
        self,
        env_id: str,
        *,
        address: str | None = None,
        render_mode: str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        allow_pickle: bool | None = None,
        restart_failed_envs: bool | RestartPolicy | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        locate: Callable[[str], str] | None = None,
        **env_kwargs: Any,
    ) -> None:
        self._env_id = env_id
        self._env_kwargs = env_kwargs
        self.render_mode = render_mode
        self._arguments: dict[str, Any] = {
            "address": address,
            "timeout": timeout,
            "token": token,
            "allow_pickle": allow_pickle,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
        }
        self._config = resolve(ClientConfig, **self._arguments)
        self._tls = tls_context(self._config)
        self._locate = locate
        if locate is not None:
            self._arguments["locate"] = locate
        policy = restart_policy(restart_failed_envs)
        if restart_failed_envs is not None:
            self._arguments["restart_failed_envs"] = restart_failed_envs
        self._recovery = None if policy is None else Recovery(policy)
        self._last_observation: Any = None  # kept with restarts: a lost step's observation
        if self._config.address:
            parse_address(self._config.address)  # a malformed one is a ValueError here, not at connect
        self._state = SessionState.NOT_CONNECTED
        self._steps: StepSender | None = None  # set exactly while the session is active
        self._embedded: EmbeddedServer | None = None
        self._remote: _RemoteDescription | None = None
        self._local_spec: EnvSpec | None = None
        self._end_reason: RemoteEnvError | None = None

    # ----------------------------------------------------------------- the Env API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Resets the remote env; ``seed`` also seeds this env's ``np_random``, as locally."""
        self._seed_locally(seed)
        if self._recovery is None:
            return (self._steps or self._connect()).reset(seed, options)  # set while the session is active
        try:
            result = (self._steps or self._connect()).reset(seed, options)
        except RECOVERABLE as error:
            result = self._recovery_for(error).reset_again(self, error, seed, options)
        else:
            self._recovery.schedule.note(seed, options)
        self._last_observation = result[0]
        return result

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Steps the remote env with ``action``."""
        try:
            result = (self._steps or self._connect()).step(action)  # set while the session is active
        except RECOVERABLE as error:
            self._restart(error)  # raises the error where there is no restart
            return self._last_observation, 0.0, False, True, lost_info(error)
        if self._recovery is not None:
            self._last_observation = result[0]
        return result

    def step_chunk(self, actions: Any, all_observations: bool = False) -> ChunkResult:
        """Runs a chunk of actions in one round trip, stopping where the episode ends.

        The same as calling :meth:`step` once per action until ``terminated`` or ``truncated``,
        without a round trip per step: chunked policies (ACT, diffusion, VLAs) send their 10-50
        actions at once.

        Args:
            actions: A sequence of actions (for Box action spaces, an array of shape ``(K, ...)``).
            all_observations: Also return every step's observation (by default only the last).
        """
        try:
            reply = self._connect().request("step_chunk", actions=actions, all_observations=all_observations)
        except RECOVERABLE as error:
            self._restart(error)
            last = self._last_observation
            return ChunkResult(
                last, [0.0], [False], [True], [lost_info(error)], [last] if all_observations else None
            )
        if self._recovery is not None:
            self._last_observation = reply["observation"]
        return ChunkResult.from_reply(reply)

    def render(self) -> Any:
        """Renders the remote env (an ``rgb_array`` travels as an array)."""
        return self._request("render")

    def close(self) -> None:
        """Ends the session (and the private server, if this env owns one). Idempotent; the
        spaces, metadata and spec stay readable, later calls raise SessionClosed."""
        # A connection left owing the reply of an interrupted call just closes (the worker then
        # ends the session) rather than wait for that reply first.
        if self._state is SessionState.ACTIVE and self._steps is not None and self._steps.connection.settled:
            try:
                self._steps.request("close")
            except RemoteEnvError:
                pass  # the session is gone either way
        self._release()
        self._state = SessionState.CLOSED

    @property
    def observation_space(self) -> gym.Space:  # type: ignore[override]
        return self._described().observation_space

    @property
    def action_space(self) -> gym.Space:  # type: ignore[override]
        return self._described().action_space

    @property
    def metadata(self) -> dict[str, Any]:  # type: ignore[override]
        return self._described().metadata

    @property
    def spec(self) -> EnvSpec:
        """The spec this env was made from, with the remote env's episode limit and flags (and
        without a token: specs are logged and saved)."""
        base = self._local_spec or EnvSpec(
            id="remote/Env-v0",
            entry_point=REMOTE_ENTRY_POINT,
            kwargs={"env_id": self._env_id, **self._constructor_kwargs()},
        )
        remote_spec = self._described().spec
        if remote_spec is None:
            return base
        return dataclasses.replace(
            base,
            max_episode_steps=remote_spec["max_episode_steps"],
            reward_threshold=remote_spec["reward_threshold"],
            nondeterministic=remote_spec["nondeterministic"],
        )

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        self._local_spec = None if value is None else without_secrets(value)

    def __getattr__(self, name: str) -> Any:
        """Public attributes and methods of the remote env (``task_description``, ...)."""
        if name.startswith("__") or name in _LOCAL_ATTRIBUTES:
            raise AttributeError(name)
        reply = self._request("getattr", name=name)
        if not reply["found"]:
            raise AttributeError(f"the remote env {self._env_id} has no attribute {name!r}")
        if reply["callable"]:
            return RemoteMethod(self, name)
        return reply["value"]

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        """Sets ``name`` on the remote env (or on this object, for its own attributes)."""
        if name in _LOCAL_ATTRIBUTES or name.startswith("__") or hasattr(type(self), name):
            setattr(self, name, value)
        else:
            self._request("setattr", name=name, value=value)
        return True

    @property
    def gym_remote(self) -> SessionView:
        """gym-remote's own view of this env's session: its id, kwargs, config and state."""
        return SessionView(self)

    def __repr__(self) -> str:
        where = self._config.address or "a private local server"
        return f"<RemoteEnv {self._env_id} at {where} ({self._state.value})>"

    __str__ = __repr__

    def __getstate__(self) -> dict[str, Any]:
        # A copy gets its own session: it carries the arguments, never the connection.
        return {
            "env_id": self._env_id,
            "render_mode": self.render_mode,
            "arguments": self._arguments,
            "env_kwargs": self._env_kwargs,
            "local_spec": self._local_spec,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["env_id"],
            render_mode=state["render_mode"],
            **state["arguments"],
            **state["env_kwargs"],
        )
        self._local_spec = state["local_spec"]

    # ----------------------------------------------------------------- the session

    def _constructor_kwargs(self) -> dict[str, Any]:
        """What makes this env again, less its secret: specs are logged and saved as JSON (a
        spec made without the token reads ``GYM_REMOTE_TOKEN``)."""
        arguments = {
            key: value
            for key, value in self._arguments.items()
            if value is not None and key not in ("token", "locate")
        }
        return {**arguments, **self._env_kwargs}

    def _request(self, op: str, **fields: Any) -> Any:
        try:
            return self._connect().request(op, **fields)
        except RECOVERABLE as error:
            self._restart(error)
            raise error.renamed(f"{error.message} (the env was made again: reset it to go on)") from None

    def _restart(self, error: RemoteEnvError) -> None:
        """Makes the env again after ``error`` ended its session (see :meth:`_recovery_for`)."""
        self._recovery_for(error).restart(self, error)

    def _recovery_for(self, error: RemoteEnvError) -> Recovery:
        """What makes the env again after ``error``; raises ``error`` where the env has no
        restarts or never had a session (a first make that fails is no crash to survive)."""
        if self._recovery is None or self._remote is None or self._state is SessionState.CLOSED:
            raise error
        return self._recovery

    def _reopen(self) -> StepSender:
        """Ends the session (if it is still open) and makes the env again with its arguments,
        keeping a private server that still runs."""
        if self._state is SessionState.CLOSED:
            raise SessionClosed(f"{self!r} is closed; make a new env")
        self._release(server_too=False)
        self._state = SessionState.NOT_CONNECTED
        self._end_reason = None
        return self._connect()

    def _note_failure(self, error: RemoteEnvError) -> None:
        """Records a failed call: an error that closed the connection ends the session."""
        if self._steps is not None and self._steps.connection.closed:
            self._end_reason = error
            self._state = SessionState.BROKEN
            self._release(server_too=self._recovery is None)  # a restart may use it again

    def _seed_locally(self, seed: int | None) -> None:
        """Seeds this env's own ``np_random`` as :meth:`reset` does (for vector envs)."""
        gym.Env.reset(self, seed=seed)

    def _described(self) -> _RemoteDescription:
        """What the session said of the remote env (spaces, metadata, spec): connects first if no
        session has yet; kept after the session ends, as a local env keeps its spaces after close."""
        if self._remote is None:
            self._connect()
        assert self._remote is not None
        return self._remote

    def _connect(self) -> StepSender:
        """The session's step sender: connects first if no session has yet."""
        if self._state is SessionState.ACTIVE:
            assert self._steps is not None
            return self._steps
        if self._state is SessionState.CLOSED:
            raise SessionClosed(f"{self!r} is closed; make a new env")
        if self._state is SessionState.BROKEN:
            raise SessionClosed(f"the session of {self._env_id} ended earlier: {self._end_reason}")
        try:
            self._open_session()
        except BaseException:
            self._release(server_too=self._recovery is None)
            raise
        self._state = SessionState.ACTIVE
        assert self._steps is not None
        return self._steps

    def _open_session(self) -> None:
        config = self._config
        address = config.address
        if not address:
            if self._embedded is None:
                self._embedded = EmbeddedServer.start(config.timeout, config.allow_pickle)
            else:  # a restart: the server again, if it was killed
                self._embedded.revive(config.timeout)
            address = self._embedded.address
        elif self._locate is not None:
            address = self._locate(address)
        parsed = parse_address(address)
        connection = self._connected(parsed)
        self._steps = StepSender(connection, self._note_failure)
        connection.in_session = True
        fields = self._make_fields()
        description = connection.request(
            "make",
            **fields,
            shared_memory=(
                config.shared_memory
                and parsed.is_loopback
                and not connection.uses_tls
                and sharedmem.available()
            ),
            fixed_steps=True,
        )
        asked, made = fields.get("num_envs", 1), description.get("num_envs", 1)
        if made != asked:
            raise VersionMismatch(
                f"the server at {address} made {made} env(s) where {asked} were asked for: its "
                "gym-remote is older than envs_per_worker; upgrade it there, or use envs_per_worker=1"
            )
        if "shared_memory" in description:
            connection.use_shared_memory(description["shared_memory"])
        allow_pickle = connection.allow_pickle
        self._remote = _RemoteDescription(
            observation_space=decode_space(description["observation_space"], allow_pickle),
            action_space=decode_space(description["action_space"], allow_pickle),
            metadata=dict(description["metadata"]),
            render_mode=description["render_mode"],
            spec=description["spec"],
        )
        if "fixed_steps" in description:
            self._steps.use_layout(
                FixedLayout.from_wire(description["fixed_steps"], self._remote.observation_space)
            )
        self.render_mode = self._remote.render_mode

    def _connected(self, address: Address) -> Connection:
        """A connection to the server at ``address``: on this host, through the Unix socket the
        server offers beside loopback TCP (less work per message), unless ``local_socket`` is
        off or it cannot be reached from here."""
        config = self._config

        def connect_to(
            where: Address, name: str | None = None, named_by: Connection | None = None
        ) -> Connection:
            return Connection(
                where,
                timeout=config.timeout,
                token=config.token,
                allow_pickle=config.allow_pickle,
                max_message_size=config.max_message_size,
                name=name,
                same_server_as=named_by,
                tls=self._tls,
            )

        connection = connect_to(address)
        if not (config.local_socket and connection.local_address):
            return connection
        try:
            local = connect_to(
                parse_address(connection.local_address),
                f"{address} (through {connection.local_address})",
                named_by=connection,
            )
        except (RemoteEnvError, ValueError) as error:
            logger.debug("staying on %s: its local socket is out of reach (%s)", address, error)
            return connection
        connection.close()
        return local

    def _make_fields(self) -> dict[str, Any]:
        """The fields of the ``make`` request that say what to make."""
        return {"env_id": self._env_id, "kwargs": self._env_kwargs, "render_mode": self.render_mode}

    def _release(self, server_too: bool = True) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        if server_too and self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


def without_secrets(spec: EnvSpec) -> EnvSpec:
    """``spec`` without a ``token`` among its kwargs (``gym.make`` puts every argument there)."""
    if "token" not in spec.kwargs:
        return spec
    return dataclasses.replace(
        spec, kwargs={key: value for key, value in spec.kwargs.items() if key != "token"}
    )


class SessionView:
    """gym-remote's own view of a :class:`RemoteEnv`'s session (``env.unwrapped.gym_remote``),
    kept under one name so that every other attribute is the remote env's."""

    def __init__(self, env: RemoteEnv) -> None:
        self._env = env

    @property
    def env_id(self) -> str:
        """The id the server makes."""
        return self._env._env_id

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the remote ``gym.make``."""
        return dict(self._env._env_kwargs)

    @property
    def config(self) -> ClientConfig:
        """How the env reaches its server (the token is left out of its repr)."""
        return self._env._config

    @property
    def state(self) -> SessionState:
        """The session's state."""
        return self._env._state

    @property
    def uses_shared_memory(self) -> bool:
        """Whether large replies come through shared memory (same host; connects if need be)."""
        return self._env._connect().connection.uses_shared_memory

    def reopen(self) -> StepSender:
        """Makes the env again in a new session (a new worker), with the same arguments: the
        restart of a failed env. Its step sender is returned."""
        return self._env._reopen()

    @property
    def steps(self) -> StepSender:
        """The session's step sender (connects if need be): a remote vector env sends through
        it to many sessions first and receives after."""
        return self._env._connect()

    def __repr__(self) -> str:
        return f"<session of {self._env!r}>"


class RemoteMethod:
    """A method of the remote env; calling it runs it remotely and returns its result."""

    def __init__(self, env: RemoteEnv, name: str) -> None:
        self.env = env
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.env._request("call", name=self.name, args=list(args), kwargs=kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self.name} of {self.env!r}>"
