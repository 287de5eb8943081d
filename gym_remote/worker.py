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
from typing import Any, Callable, Dict, List, Mapping, Optional

import gymnasium as gym

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
from gym_remote.protocol import (
    WORKER_STARTED,
    IdleTimeout,
    MessageReader,
    PeerClosed,
    decode_frame,
    encode_frame,
    send_frame,
    set_send_timeout,
)
from gym_remote.spaces import encode_space
from gym_remote.step.responder import FixedCall, StepResponder, check_action

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
        # True while the worker runs a call rather than waits for the next: a client that hangs
        # up then has given up on it (see _end_when_client_gives_up).
        self.in_call = True  # making the envs is the first call
        self.steps = StepResponder(self.allow_pickle)  # the envs, their steps and resets
        self.max_message_size = int(settings["max_message_size"])
        self.reader = MessageReader(sock, self.max_message_size)
        # A client that leaves its replies unread for the idle timeout is as gone as one that
        # sends nothing: a send blocked that long ends the session.
        set_send_timeout(sock, self.idle_timeout)
        # The same-host fast path: offered when the client asks, used once it has attached.
        self.offered_segment: Optional[sharedmem.SharedSegment] = None
        self.segment: Optional[sharedmem.SharedSegment] = None
        self._handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "reset": self.steps.reset,
            "step": self.steps.step,
            "step_chunk": self._step_chunk,
            "render": self._render,
            "getattr": self._getattr,
            "call": self._call,
            "setattr": self._setattr,
            "observe": self.steps.observe,
            "batch": self._batch,
            "ping": lambda request: None,
            "use_shared_memory": self._use_shared_memory,
            "use_shared_batches": lambda request: self.steps.use_shared_batches(request, self.sock),
            "use_reply_buffers": lambda request: self.steps.use_reply_buffers(request, self.sock),
            "close": self._close,
        }

    @property
    def closed(self) -> bool:
        """Whether the session's envs are closed (the session is over)."""
        return self.steps.closed

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
        layout = self.steps.offer_layout() if self.request.get("fixed_steps") else None
        if layout is not None:
            description["fixed_steps"] = layout
        self._reply(description)
        self._serve()
        self._close_envs()
        if self.offered_segment is not None:
            self.offered_segment.close()
        self.steps.release_memory()

    def _serve(self) -> None:
        """Answers calls until close, EOF or idleness. A whole fixed-layout step request takes
        the short way: one receive, one lookup, the env's step and one send."""
        steps = self.steps
        while not steps.closed:
            try:
                self.in_call = False
                chunk = self.reader.receive_chunk(self.idle_timeout)
                self.in_call = True
                step = steps.whole_step(chunk)
                if step is None:
                    call = self._call_in(chunk)
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
                if step is not None:
                    buffers, result = steps.answer_step(*step)
                elif type(call) is FixedCall:
                    buffers, result = steps.answer(call)
                else:
                    buffers, result = None, self._dispatch(call)
            except Exception as error:
                self._reply_error(error)
                continue
            if buffers is None:
                self._reply(result)
            else:
                self._send(buffers)

    def _call_in(self, chunk: Any) -> Any:
        """The call of the frame that begins with ``chunk``: a :class:`FixedCall`, or an ordinary
        request (a decoded map, checked by :meth:`_dispatch`)."""
        header, data, fixed = self.reader.receive_frame(self.idle_timeout, self.read_timeout, chunk)
        if fixed:
            return self.steps.fixed_call(header, data)
        return decode_frame(header, data, self.allow_pickle)

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
                self.steps.add_env(gym.make(env_id, **{**kwargs, **own_kwargs}))
            except _ENV_NOT_FOUND_ERRORS as error:
                raise EnvNotFound(f"{error} (env id {env_id!r})") from None
            except ImportError as error:
                raise SimulatorUnavailable(
                    f"{env_id} cannot be made with {sys.executable}: {error}"
                ) from None
        description = describe_env(self.steps.envs[0], self.allow_pickle)
        description["num_envs"] = len(self.steps.envs)
        # A simulator's object graph is large and lives as long as the session: keep the cyclic
        # garbage collector from walking it again and again between steps.
        gc.collect()
        gc.freeze()
        return description

    def _step_chunk(self, request: Dict[str, Any]) -> Any:
        env_index, env = self.steps.running_env(request, "step_chunk")
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
            check_action(env.action_space, action, f"actions[{index}]")
            observation, reward, terminated, truncated, info = env.step(action)
            result["observation"] = observation
            self.steps.last_observations[env_index] = observation
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
        return self.steps.env(request)[1].render()

    def _getattr(self, request: Dict[str, Any]) -> Any:
        name = _attribute_name(request)
        try:
            value = _get_attribute(self.steps.env(request)[1], name)
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
        value = _get_attribute(self.steps.env(request)[1], name)
        if not callable(value):
            return value
        return value(*args, **kwargs)

    def _setattr(self, request: Dict[str, Any]) -> Any:
        name = _attribute_name(request)
        env = self.steps.env(request)[1]
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

    def _close(self, request: Dict[str, Any]) -> Any:
        self.in_call = False  # a client that hangs up now has nothing left to wait for: close in peace
        self._close_envs()
        return None

    def _close_envs(self) -> None:
        self.steps.close()

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
