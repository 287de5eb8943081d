"""The worker: a process that owns one env and serves its one client over a connected socket.

The server accepts a connection, checks it, and starts ``python -m gym_remote.worker`` with the
connected socket (``--client-fd``) and a control socket (``--control-fd``) that carries the
session's settings and whose closing means the server is gone. From then on client and worker
talk directly, with blocking I/O and no proxy hop.

This module runs inside simulator interpreters: it keeps to Python 3.8 and gymnasium 0.29.
"""

import argparse
import ctypes
import gc
import importlib
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import gymnasium as gym
from gymnasium import spaces

from gym_remote import peers, sharedmem
from gym_remote.error_envelope import error_to_wire
from gym_remote.errors import (
    EnvNotFound,
    InvalidCall,
    ProtocolError,
    RemoteTimeout,
    SessionExpired,
    SimulatorUnavailable,
    UnsupportedValue,
    shown,
)
from gym_remote.fixed import MAX_REPLY_BUFFERS, BatchRow, FixedLayout
from gym_remote.protocol import (
    MAGIC_FIXED,
    MAX_SEND_BUFFERS,
    PREFIX,
    WORKER_STARTED,
    IdleTimeout,
    MessageReader,
    PeerClosed,
    byte_view,
    decode_frame,
    encode_frame,
    send_frame,
    send_rest,
    set_send_timeout,
)
from gym_remote.space_walk import describe_mismatch
from gym_remote.spaces import encode_space

__all__ = ["WorkerSession", "main", "ENV_OPS"]


_ENV_NOT_FOUND_ERRORS = tuple(
    getattr(gym.error, name)
    for name in ("NameNotFound", "NamespaceNotFound", "VersionNotFound", "UnregisteredEnv")
    if hasattr(gym.error, name)
)


# Methods of Gymnasium's envs and wrappers that take an attribute name as their first argument.
# How often a worker whose client hung up between calls looks whether a call began after all.
_HANG_UP_CHECK_SECONDS = 0.05
_NAME_TAKING_METHODS = frozenset(["get_wrapper_attr", "set_wrapper_attr", "has_wrapper_attr"])

# The ops that act on one of the session's envs (field ``env``), and so may go in a ``batch``.
ENV_OPS = frozenset(["reset", "step", "step_chunk", "observe", "render", "getattr", "call", "setattr"])


class WorkerSession:
    """Serves one client: makes its env(s), then answers its calls until close, EOF or idleness.

    A session usually hosts one env; a ``make`` with ``num_envs`` makes several (a remote vector
    env's share), each addressed by the ``env`` field of a request and stepped together in a
    ``batch``.
    """

    def __init__(self, sock: socket.socket, settings: Mapping[str, Any]) -> None:
        self.sock = sock
        self.allow_pickle = bool(settings["allow_pickle"])
        # An idle timeout of zero or less means "never" (private servers owned by their client).
        idle_timeout = float(settings["idle_timeout"])
        self.idle_timeout = idle_timeout if idle_timeout > 0 else None
        self.read_timeout = float(settings["read_timeout"])
        self.request = settings["request"]
        self.imports = list(settings.get("imports", []))
        self.closed = False
        # True while the worker runs a call rather than waits for the next: a client that hangs
        # up then has given up on it (see _end_when_client_gives_up).
        self.in_call = True  # making the envs is the first call
        self.envs: List[gym.Env] = []
        self.reset_once: List[bool] = []  # per env: reset at least once, so it may step
        self.last_observations: List[Any] = []  # per env: what its last reset or step returned
        self.max_message_size = int(settings["max_message_size"])
        self.reader = MessageReader(sock, self.max_message_size)
        # A client that leaves its replies unread for the idle timeout is as gone as one that
        # sends nothing: a send blocked that long ends the session.
        set_send_timeout(sock, self.idle_timeout)
        # The same-host fast path: offered when the client asks, used once it has attached.
        self.offered_segment: Optional[sharedmem.SharedSegment] = None
        self.segment: Optional[sharedmem.SharedSegment] = None
        self.batches: Optional[sharedmem.BatchWriter] = None  # a remote vector env's shared batches
        # Shared memory the client made for fixed-layout step replies' observations.
        self.reply_buffers: List[sharedmem.SharedSegment] = []
        self.fixed_layout: Optional[FixedLayout] = None  # offered when the client asks
        self._handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "reset": self._reset,
            "step": self._step,
            "step_chunk": self._step_chunk,
            "render": self._render,
            "getattr": self._getattr,
            "call": self._call,
            "setattr": self._setattr,
            "observe": self._observe,
            "batch": self._batch,
            "ping": lambda request: None,
            "use_shared_memory": self._use_shared_memory,
            "use_shared_batches": self._use_shared_batches,
            "use_reply_buffers": self._use_reply_buffers,
            "close": self._close,
        }

    def run(self) -> None:
        """Makes the env(s) and serves calls; returns when the session is over."""
        try:
            description = self._make()
        except Exception as error:
            self._reply_error(error)
            self._close_envs()
            return
        # Only a client on this host can open the segment: no other is told this worker's pid.
        if self.request.get("shared_memory") and sharedmem.available() and peers.is_on_this_host(self.sock):
            try:
                self.offered_segment = sharedmem.SharedSegment.create(self.max_message_size)
                description["shared_memory"] = self.offered_segment.offer()
            except OSError as error:  # a sandbox without memfd: the socket carries everything
                print(f"gym-remote worker: no shared memory segment ({error})", file=sys.stderr)
        if self.request.get("fixed_steps") and len(self.envs) == 1:
            self.fixed_layout = FixedLayout.for_env(self.envs[0])
            if self.fixed_layout is not None:
                description["fixed_steps"] = self.fixed_layout.to_wire()
        self._reply(description)
        self._serve()
        self._close_envs()
        if self.offered_segment is not None:
            self.offered_segment.close()
        if self.batches is not None:
            self.batches.close()
        for segment in self.reply_buffers:
            segment.close()

    def _serve(self) -> None:
        """Answers calls until close, EOF or idleness. Fixed-layout resets and steps need no
        MessagePack (:meth:`_fixed_reset`), and whole step requests take the short way
        (:meth:`_fixed_steps`)."""
        layout = self.fixed_layout
        pending = None  # what a run of fixed-layout steps received and left to this loop
        while not self.closed:
            try:
                self.in_call = False
                chunk = self.reader.receive_chunk(self.idle_timeout) if pending is None else pending
                self.in_call = True
                pending = None
                step_request = None if layout is None else layout.action_of_whole_request(chunk)
                if step_request is None:
                    header, data, fixed = self.reader.receive_frame(
                        self.idle_timeout, self.read_timeout, chunk
                    )
                    if not fixed:
                        request = decode_frame(header, data, self.allow_pickle)
                    elif layout is None:
                        raise InvalidCall("a fixed-layout request, but this session offered no fixed layout")
                    elif layout.is_reset(header):
                        self._fixed_reset(layout, *layout.decode_reset(header, data))
                        continue
                    else:
                        step_request = layout.decode_action(header, data)
                if step_request is not None:
                    pending = self._fixed_steps(layout, *step_request)  # type: ignore[arg-type]
                    continue
            except PeerClosed:
                break
            except IdleTimeout:
                self._reply_error(
                    SessionExpired(
                        f"session ended after {self.idle_timeout or 0:g} s without a call (the server's idle "
                        "timeout)"
                    )
                )
                break
            except (UnsupportedValue, InvalidCall) as error:  # a bad request: the next may be fine
                self._reply_error(error)
                continue
            except (ProtocolError, RemoteTimeout, OSError) as error:
                self._reply_error(error)
                break
            try:
                result = self._dispatch(request)
            except Exception as error:
                self._reply_error(error)
                continue
            self._reply(result)

    def _dispatch(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise InvalidCall(f"a request must be a map, got {type(request).__name__}")
        op = request.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            raise InvalidCall(
                "unknown operation {}; expected one of {}".format(
                    shown(op), ", ".join(sorted(self._handlers))
                )
            )
        return handler(request)

    def _make(self) -> Dict[str, Any]:
        for module in self.imports:
            importlib.import_module(module)
        env_id = self.request["env_id"]
        kwargs = dict(self.request.get("kwargs") or {})
        if self.request.get("render_mode") is not None:
            kwargs["render_mode"] = self.request["render_mode"]
        for own_kwargs in _per_env_kwargs(self.request):
            try:
                self.envs.append(gym.make(env_id, **{**kwargs, **own_kwargs}))
            except _ENV_NOT_FOUND_ERRORS as error:
                raise EnvNotFound(f"{error} (env id {env_id!r})") from None
            except ImportError as error:
                raise SimulatorUnavailable(
                    f"{env_id} cannot be made with {sys.executable}: {error}"
                ) from None
            self.reset_once.append(False)
            self.last_observations.append(None)
        description = describe_env(self.envs[0], self.allow_pickle)
        description["num_envs"] = len(self.envs)
        # A simulator's object graph is large and lives as long as the session: keep the cyclic
        # garbage collector from walking it again and again between steps.
        gc.collect()
        gc.freeze()
        return description

    def _reset(self, request: Dict[str, Any]) -> Any:
        index, env = self._env(request)
        into = self._batch_row(request)
        observation, info = env.reset(seed=request.get("seed"), options=request.get("options"))
        self.reset_once[index] = True
        self.last_observations[index] = observation
        return [self._placed(observation, into), info]

    def _step(self, request: Dict[str, Any]) -> Any:
        index, env = self._running_env(request, "step")
        action = request.get("action")
        _check_action(env, action, "action")
        into = self._batch_row(request)
        result = list(env.step(action))
        self.last_observations[index] = result[0]
        result[0] = self._placed(result[0], into)
        return result

    def _fixed_reset(self, layout: FixedLayout, seed: Optional[int], into: Optional[BatchRow]) -> None:
        """Resets the first env with ``seed`` for a fixed-layout request; replies in a
        fixed-layout frame where the observation and info fit ``layout`` exactly (with the
        observation in the shared batch row ``into``, if given and it fits), otherwise in an
        ordinary one."""
        try:
            self._check_batch_row(into)
            observation, info = self._reset({"seed": seed})
            buffers = layout.encode_reset_reply(observation, info, self.allow_pickle)
            if into is not None and buffers is not None:
                buffers = self._in_batch_row(buffers, observation, into)
        except Exception as error:
            self._reply_error(error)
            return
        if buffers is None:
            self._reply([observation, info])
        else:
            self._send(buffers)

    def _fixed_steps(
        self, layout: FixedLayout, action: Any, reply_buffer: int, into: Optional[BatchRow]
    ) -> Any:
        """Steps the first env with ``action`` from a fixed-layout request, then with each next
        request while it comes whole (the short way: one receive, one lookup, the env's step
        and one send each); returns the first bytes that are anything else (None once it
        replied with an error). Replies in a fixed-layout frame where the step's values fit
        ``layout`` exactly (with the observation in the reply buffer or shared batch row the
        request names, if any, where it fits), otherwise in an ordinary one.

        Raises:
            InvalidCall: the env was never reset.
            PeerClosed, IdleTimeout, ...: as receiving in :meth:`_serve`, which handles them.
        """
        if not self.reset_once[0]:
            raise _not_reset("step")
        env = self.envs[0]
        step = env.step
        # A fixed layout gives an action its shape and dtype; a discrete one's range is checked.
        checks_range = not isinstance(env.action_space, spaces.Box)
        sock = self.sock
        # Replies that shared memory never carries leave with one sendmsg of this loop's own.
        one_sendmsg = layout.most_reply_buffers <= MAX_SEND_BUFFERS and (
            self.segment is None or layout.observation_nbytes < sharedmem.MINIMUM_SHARED_BYTES
        )
        while not self.closed:
            try:
                if reply_buffer > len(self.reply_buffers):  # checked before the env steps
                    raise InvalidCall(
                        f"the step asks for reply buffer {reply_buffer}; this session has "
                        f"{len(self.reply_buffers)} (use_reply_buffers)"
                    )
                if into is not None:
                    self._check_batch_row(into)
                if checks_range:
                    _check_action(env, action, "action")
                result = step(action)
                self.last_observations[0] = result[0]
                buffers = layout.encode_reply(result, self.allow_pickle)
                if buffers is not None:
                    if reply_buffer:
                        buffers = self._placed_reply(buffers, reply_buffer)
                    elif into is not None:
                        buffers = self._in_batch_row(buffers, result[0], into)
            except Exception as error:
                self._reply_error(error)
                return None
            if buffers is None:
                self._reply(list(result))
            elif not one_sendmsg:
                self._send(buffers)
            else:
                try:
                    started = time.monotonic()
                    sent = sock.sendmsg(buffers)
                    if sent != layout.whole_reply_length:  # a reply with an info, or cut short
                        send_rest(sock, buffers, sent, started)
                except (OSError, RemoteTimeout):
                    self._close_envs()  # as in _send: the client is gone
            self.in_call = False
            chunk = self.reader.receive_chunk(self.idle_timeout)
            self.in_call = True
            step_request = layout.action_of_whole_request(chunk)
            if step_request is None:
                return chunk
            action, reply_buffer, into = step_request
        return None

    def _placed_reply(self, buffers: List[Any], reply_buffer: int) -> List[Any]:
        """The fixed-layout reply ``buffers`` with its data section written into reply buffer
        ``reply_buffer`` (1, 2, ...; one the session has) instead, so that the frame carries none."""
        data_length = PREFIX.unpack_from(buffers[0])[2]
        segment = self.reply_buffers[reply_buffer - 1]
        if not segment.write([byte_view(chunk) for chunk in buffers[2:]], data_length):
            return buffers  # it does not fit there: the observation travels in the reply
        return _without_data(buffers)

    def _check_batch_row(self, into: Optional[BatchRow]) -> None:
        """Raises InvalidCall, before the env runs, unless this session has the shared batch
        buffer ``into`` names and the row is not negative (or it names none)."""
        if into is not None and (
            self.batches is None or not 0 <= into[0] < len(self.batches.segments) or into[1] < 0
        ):
            raise InvalidCall(
                f"the request asks for row {into[1]} of shared batch buffer {into[0]}; this session has "
                f"{0 if self.batches is None else len(self.batches.segments)} (use_shared_batches)"
            )

    def _batch_row(self, request: Dict[str, Any]) -> Optional[BatchRow]:
        """The shared batch row an ordinary request's ``into`` names, checked before the env runs."""
        into = request.get("into")
        if into is None:
            return None
        if not isinstance(into, list) or len(into) != 2 or not all(type(item) is int for item in into):
            raise InvalidCall(f"into must be [buffer, row], got {shown(into)}")
        row = (into[0], into[1])
        self._check_batch_row(row)
        return row

    def _in_batch_row(self, buffers: List[Any], observation: Any, into: BatchRow) -> List[Any]:
        """The fixed-layout reply ``buffers`` with the observation written into shared batch row
        ``into`` instead, so that the frame carries none (as they are where it does not fit)."""
        return _without_data(buffers) if self._placed(observation, into) is None else buffers

    def _observe(self, request: Dict[str, Any]) -> Any:
        index, _ = self._running_env(request, "observe")
        return self._placed(self.last_observations[index], self._batch_row(request))

    def _placed(self, observation: Any, into: Optional[BatchRow]) -> Any:
        """None when ``into`` (checked) names a shared batch row the observation now fills;
        otherwise the observation, to travel in the reply."""
        if into is None:
            return observation
        assert self.batches is not None  # checked by _check_batch_row
        return None if self.batches.write(observation, into) else observation

    def _step_chunk(self, request: Dict[str, Any]) -> Any:
        env_index, env = self._running_env(request, "step_chunk")
        keep_observations = bool(request.get("all_observations"))
        result: Dict[str, Any] = {
            "observation": None,
            "rewards": [],
            "terminated": [],
            "truncated": [],
            "infos": [],
            "observations": [] if keep_observations else None,
        }
        actions = request.get("actions")
        for index, action in enumerate(() if actions is None else actions):
            _check_action(env, action, f"actions[{index}]")
            observation, reward, terminated, truncated, info = env.step(action)
            result["observation"] = observation
            self.last_observations[env_index] = observation
            result["rewards"].append(reward)
            result["terminated"].append(terminated)
            result["truncated"].append(truncated)
            result["infos"].append(info)
            if keep_observations:
                result["observations"].append(observation)
            if terminated or truncated:
                break
        return result

    def _render(self, request: Dict[str, Any]) -> Any:
        return self._env(request)[1].render()

    def _getattr(self, request: Dict[str, Any]) -> Any:
        name = _attribute_name(request)
        try:
            value = _get_attribute(self._env(request)[1], name)
        except AttributeError:
            return {"found": False}
        if callable(value):
            return {"found": True, "callable": True}
        return {"found": True, "callable": False, "value": value}

    def _call(self, request: Dict[str, Any]) -> Any:
        name = _attribute_name(request)
        args = request.get("args", [])
        kwargs = request.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise InvalidCall("call needs a list of args and a map of kwargs")
        if not all(isinstance(key, str) for key in kwargs):
            raise InvalidCall("call's kwargs must have string keys")
        if name in _NAME_TAKING_METHODS:  # the name it reaches is held to the same rule
            _checked_name(args[0] if args else kwargs.get("name"))
        value = _get_attribute(self._env(request)[1], name)
        if not callable(value):
            return value
        return value(*args, **kwargs)

    def _setattr(self, request: Dict[str, Any]) -> Any:
        name = _attribute_name(request)
        env = self._env(request)[1]
        if hasattr(env, "set_wrapper_attr"):
            env.set_wrapper_attr(name, request.get("value"))
        else:
            setattr(env.unwrapped, name, request.get("value"))
        return None

    def _batch(self, request: Dict[str, Any]) -> Any:
        """Runs several env requests in order; each gets its own ``{"ok": ...}`` or ``{"error": ...}``."""
        requests = request.get("requests")
        if not isinstance(requests, list):
            raise InvalidCall(f"batch needs a list of requests, got {type(requests).__name__}")
        outcomes = []
        for position, item in enumerate(requests):
            try:
                if not isinstance(item, dict) or item.get("op") not in ENV_OPS:
                    raise InvalidCall(
                        f"batch request {position} must be a map whose op is one of "
                        + ", ".join(sorted(ENV_OPS))
                    )
                outcomes.append({"ok": self._dispatch(item)})
            except Exception as error:
                outcomes.append({"error": error_to_wire(error)})
        return outcomes

    def _use_shared_memory(self, request: Dict[str, Any]) -> Any:
        if self.offered_segment is None:
            raise InvalidCall("use_shared_memory: this session offered no shared memory segment")
        self.segment = self.offered_segment

    def _use_shared_batches(self, request: Dict[str, Any]) -> Any:
        if self.batches is not None:
            raise InvalidCall("use_shared_batches: this session already has shared batches")
        self.batches = sharedmem.BatchWriter.attach(request.get("buffers"), request.get("layout"), self.sock)

    def _use_reply_buffers(self, request: Dict[str, Any]) -> Any:
        layout = self.fixed_layout
        if layout is None:
            raise InvalidCall("use_reply_buffers: this session offered no fixed layout")
        if self.reply_buffers:
            raise InvalidCall("use_reply_buffers: this session already has reply buffers")
        offers = request.get("buffers")
        if not isinstance(offers, list) or not 0 < len(offers) <= MAX_REPLY_BUFFERS:
            raise InvalidCall(f"use_reply_buffers needs a list of 1 to {MAX_REPLY_BUFFERS} buffers")

        def check_room(segment: sharedmem.SharedSegment) -> None:
            if segment.limit < layout.observation_nbytes:
                raise ValueError(
                    f"a buffer holds {segment.limit} bytes, the observation has {layout.observation_nbytes}"
                )

        self.reply_buffers, _ = sharedmem.SharedSegment.attach_offered(
            "use_reply_buffers", offers, check_room, self.sock
        )

    def _close(self, request: Dict[str, Any]) -> Any:
        self.in_call = False  # a client that hangs up now has nothing left to wait for: close in peace
        self._close_envs()
        return None

    def _running_env(self, request: Dict[str, Any], op: str) -> Tuple[int, gym.Env]:
        index, env = self._env(request)
        if not self.reset_once[index]:
            raise _not_reset(op)
        return index, env

    def _env(self, request: Dict[str, Any]) -> Tuple[int, gym.Env]:
        """The env a request addresses (field ``env``, default 0) and its index."""
        if self.closed:
            raise InvalidCall("the env of this session is closed")
        index = request.get("env", 0)
        if type(index) is not int or not 0 <= index < len(self.envs):
            raise InvalidCall(f"env {shown(index)} is not one of this session's {len(self.envs)} envs")
        return index, self.envs[index]

    def _close_envs(self) -> None:
        if not self.closed:
            self.closed = True
            for env in self.envs:
                try:
                    env.close()
                except Exception:
                    traceback.print_exc()

    def _reply(self, result: Any) -> None:
        try:
            buffers = encode_frame({"ok": result}, self.allow_pickle)
        except UnsupportedValue as error:
            self._reply_error(error)
            return
        self._send(buffers)

    def _reply_error(self, error: BaseException) -> None:
        self._send(encode_frame({"error": error_to_wire(error)}))

    def _send(self, buffers: Any) -> None:
        try:
            send_frame(self.sock, buffers, self.segment)
        except (OSError, RemoteTimeout):
            # The client is gone: nobody is left to serve.
            self._close_envs()


def _without_data(buffers: List[Any]) -> List[Any]:
    """A fixed-layout reply's ``buffers`` without their data section (written elsewhere)."""
    header_length = PREFIX.unpack_from(buffers[0])[1]
    return [PREFIX.pack(MAGIC_FIXED, header_length, 0), buffers[1]]


def _not_reset(op: str) -> InvalidCall:
    return InvalidCall(f"call reset() before {op}()")


def describe_env(env: gym.Env, allow_pickle: bool) -> Dict[str, Any]:
    """What a client needs to mirror ``env``: spaces, metadata, render mode and spec."""
    spec = env.spec
    return {
        "observation_space": encode_space(env.observation_space, allow_pickle),
        "action_space": encode_space(env.action_space, allow_pickle),
        "metadata": _wire_safe_items(env.metadata, allow_pickle),
        "render_mode": env.render_mode,
        "spec": None
        if spec is None
        else {
            "id": spec.id,
            "max_episode_steps": spec.max_episode_steps,
            "reward_threshold": spec.reward_threshold,
            "nondeterministic": spec.nondeterministic,
        },
    }


def _wire_safe_items(mapping: Mapping[str, Any], allow_pickle: bool) -> Dict[str, Any]:
    """The entries of ``mapping`` that can travel; metadata is informative, so others are dropped."""
    safe = {}
    for key, value in mapping.items():
        try:
            encode_frame(value, allow_pickle)
        except UnsupportedValue:
            continue
        safe[key] = value
    return safe


def _check_action(env: gym.Env, action: Any, where: str) -> None:
    mismatch = describe_mismatch(env.action_space, action, where)
    if mismatch is not None:
        raise InvalidCall(f"{mismatch}; the action space is {env.action_space}")


def _per_env_kwargs(request: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One dict of own keyword arguments per env a ``make`` asks for (``num_envs``, ``per_env_kwargs``)."""
    count = request.get("num_envs", 1)
    if type(count) is not int or count < 1:
        raise InvalidCall(f"num_envs must be a positive integer, got {shown(count)}")
    own = request.get("per_env_kwargs")
    if own is None:
        return [{}] * count
    if not isinstance(own, list) or len(own) != count or not all(isinstance(item, dict) for item in own):
        raise InvalidCall(f"per_env_kwargs must be a list of {count} maps")
    return own


def _attribute_name(request: Dict[str, Any]) -> str:
    """The attribute a ``getattr``, ``call`` or ``setattr`` request names (see :func:`_checked_name`)."""
    return _checked_name(request.get("name"))


def _checked_name(name: Any) -> str:
    """``name``, if a client may reach it: a string not starting with ``__`` (dunders lead to a
    process's internals: ``__class__``, ``__globals__``, ``__dict__``)."""
    if not isinstance(name, str) or not name or name.startswith("__"):
        raise InvalidCall(f"attribute name {shown(name)} is not allowed")
    return name


def _get_attribute(env: gym.Env, name: str) -> Any:
    if hasattr(env, "get_wrapper_attr"):
        return env.get_wrapper_attr(name)
    return getattr(env.unwrapped, name)


def _end_when_client_gives_up(session: WorkerSession) -> None:
    """Ends this process when the client hangs up while a call runs: a client whose call timed
    out has closed the session, and the session's slot and memory must not wait for the env.
    A hang-up between calls is left to the serving loop, which closes the envs."""
    hang_up = getattr(select, "POLLRDHUP", 0)  # Linux; elsewhere the call's end notices
    if not hang_up:
        return
    poller = select.poll()
    poller.register(session.sock.fileno(), hang_up)
    poller.poll()
    while not session.in_call:  # the loop sees the end of the stream and stops, or a call begins
        time.sleep(_HANG_UP_CHECK_SECONDS)
    print(
        "gym-remote worker: the client hung up during a call; the session ends without waiting for it",
        file=sys.stderr,
        flush=True,
    )
    os._exit(0)


def _exit_when_server_goes(control: socket.socket) -> None:
    """Ends this process as soon as the server's end of the control socket closes."""
    # Reading the settings left a receive timeout on this socket: waiting here must not end.
    control.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
    while True:
        try:
            if not control.recv(4096):
                break
        except (BlockingIOError, socket.timeout, InterruptedError):
            continue
        except OSError:
            break
    os._exit(0)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory_for_reuse() -> bool:
    """Has glibc keep freed memory in the worker for the next step, rather than unmap it.

    Envs make fresh observation arrays every step. With glibc's defaults, a worker holding
    several of them at once (several envs, large images) hands the memory back to the kernel
    after each reply and faults it in again for the next step: measured here, a third of the
    image env's step time with 4 envs per worker. Skipped when glibc's own ``MALLOC_*``
    variables are set (the user's choice), and where there is no ``mallopt``.

    Returns:
        Whether glibc took the settings.
    """
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # 32 MiB is glibc's largest mmap threshold: smaller blocks come from the heap.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 128 << 20))


def main(argv: Optional[list] = None) -> None:
    """Entry point of ``python -m gym_remote.worker --client-fd N --control-fd M``."""
    parser = argparse.ArgumentParser(description="gym-remote worker (started by the server)")
    parser.add_argument("--client-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--settings-timeout", type=float, default=30.0)
    arguments = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the server decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory_for_reuse()
    control = socket.socket(fileno=arguments.control_fd)
    settings = MessageReader(control).receive(wait=arguments.settings_timeout)
    control.sendall(WORKER_STARTED)
    threading.Thread(target=_exit_when_server_goes, args=(control,), daemon=True).start()
    client = socket.socket(fileno=arguments.client_fd)
    session = WorkerSession(client, settings)
    threading.Thread(target=_end_when_client_gives_up, args=(session,), daemon=True).start()
    try:
        session.run()
    finally:
        client.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
