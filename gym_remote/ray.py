"""gym-remote servers placed and supervised by Ray: one per node, or as many as asked for with
the resources each needs (the ``ray`` extra; ``import gym_remote`` never imports Ray).

Ray places and supervises; it never carries steps. A Ray actor call costs about 0.5-1 ms where a
gym-remote step costs about 50 us, so each actor only starts a ``gym-remote serve`` on its node
and reports its address; clients step over gym-remote's own sockets::

    import ray
    import gym_remote
    from gym_remote.ray import start_servers

    ray.init()
    with start_servers() as servers:  # one server per node
        envs = gym_remote.RemoteVectorEnv("CartPole-v1", 8, address=servers.addresses, token=servers.token)

A server listens on its node's address, on a port the OS chooses, and requires a token (made
here unless given, and passed to the server through its environment, never its command line).
It watches its standard input, a pipe from its actor: when the actor ends (``close()``, the
driver exiting, the node going away), the server stops and ends its workers.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from gym_remote import simulators
from gym_remote.embedded import wait_until_serving
from gym_remote.errors import ServerUnavailable

__all__ = ["RayServers", "start_servers"]

_START_SECONDS = 120.0
_STOP_SECONDS = 30.0


class _ServerActor:
    """Runs one ``gym-remote serve`` on its node for as long as the actor lives."""

    def __init__(self, arguments: Sequence[str], token: str, timeout: float, setup: Sequence[str]) -> None:
        for name in setup:  # kept where already set up; made once on a node that lacks it
            simulators.setup(
                name, log=lambda line: print(f"gym-remote setup: {line}", file=sys.stderr, flush=True)
            )
        host = ray.util.get_node_ip_address()
        command = [sys.executable, "-m", "gym_remote", "serve", "--address", f"tcp://{host}:0"]
        command += ["--watch-stdin", "--log-level", "warning", *arguments]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(os.environ, GYM_REMOTE_TOKEN=token),
            start_new_session=True,
        )
        try:
            self._address = wait_until_serving(self._process, timeout)
        except RuntimeError:
            self._process.kill()
            raise

    def describe(self) -> dict[str, Any]:
        """Where the server listens, its process id, the Ray node it runs on and the actor's
        own process id."""
        node = ray.get_runtime_context().get_node_id()
        return {"address": self._address, "pid": self._process.pid, "node_id": node, "actor_pid": os.getpid()}

    def stop(self) -> int:
        """Stops the server (it ends its workers) and returns its exit code."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            return self._process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()


@dataclass
class RayServers:
    """Servers started by :func:`start_servers`; a context manager that stops them.

    A server whose actor dies (its process killed, say) is started again by Ray, up to
    ``max_restarts`` times, on a new port (on another node, unless it was pinned to its node):
    :meth:`locate` says where; sessions given ``locate=servers.locate`` and
    ``restart_failed_envs`` follow it there.

    Attributes:
        addresses: Each server's ``tcp://host:port`` when it started, for
            ``RemoteVectorEnv(address=...)``; also the names :meth:`locate` takes.
        token: The token every server requires.
        node_ids: The Ray node each server started on.
        pids: Each server's process id on its node, when it started.
    """

    addresses: list[str]
    token: str
    node_ids: list[str]
    pids: list[int]
    _actors: list[Any]
    _timeout: float = _START_SECONDS

    def locate(self, address: str) -> str:
        """Where the server that started at ``address`` listens now (waiting while Ray restarts it).

        Raises:
            ServerUnavailable: its actor is gone for good (restarts used up, node lost), or did
                not answer in time.
        """
        if address not in self.addresses:
            raise ValueError(f"{address} is not one of these servers' addresses: {self.addresses}")
        if not self._actors:
            raise ServerUnavailable(f"the servers started at {', '.join(self.addresses)} were closed")
        actor = self._actors[self.addresses.index(address)]
        return str(self._describe(actor, address)["address"])

    def describe(self) -> list[dict[str, Any]]:
        """Each server as it is now: ``address``, ``pid``, ``node_id`` and ``actor_pid``.

        Raises:
            ServerUnavailable: as :meth:`locate`.
        """
        return [self._describe(actor, address) for actor, address in zip(self._actors, self.addresses)]

    def _describe(self, actor: Any, address: str) -> dict[str, Any]:
        try:
            return dict(ray.get(actor.describe.remote(), timeout=self._timeout))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            raise ServerUnavailable(
                f"the Ray actor of the server started at {address} is gone ({error})"
            ) from None

    def close(self) -> None:
        """Stops every server and its actor; idempotent."""
        actors, self._actors = self._actors, []
        try:
            ray.get([actor.stop.remote() for actor in actors], timeout=_STOP_SECONDS + 10)
        except ray.exceptions.RayActorError:
            pass  # an actor gone for good took its server with it (the server watches its pipe)
        finally:
            for actor in actors:
                ray.kill(actor)  # and no restart

    def __enter__(self) -> RayServers:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def start_servers(
    count: int | None = None,
    *,
    resources: dict[str, float] | None = None,
    sessions_per_server: int | None = None,
    placement_group: Any = None,
    serve_arguments: Sequence[str] = (),
    token: str | None = None,
    timeout: float = _START_SECONDS,
    max_restarts: int = 5,
    setup: Sequence[str] = (),
) -> RayServers:
    """Starts gym-remote servers as Ray actors, once ``ray.init()`` connected this process.

    Args:
        count: How many servers, placed by Ray where their resources are free; None: one on
            each alive node (or each bundle of ``placement_group``).
        resources: What one session needs, for Ray's placement: for example ``{"CPU": 1}`` or
            ``{"GPU": 0.5}``. Each server's actor holds it ``sessions_per_server`` times while it
            runs. None: nothing (the server itself is light).
        sessions_per_server: How many sessions each server may run at once (its
            ``--max-sessions``), the resources held for them; None: the server's own limit,
            ``resources`` held once.
        placement_group: A Ray placement group made beforehand (``ray.util.placement_group``):
            one server in each of its bundles, holding that bundle's resources (``resources``
            must then be None).
        serve_arguments: More ``gym-remote serve`` options, for example ``["--allow", "gym_remote/*"]``.
        token: The token the servers require (None: a fresh random one, in ``RayServers.token``).
        timeout: Seconds for every server to be placed and to listen (and, later, for a
            restarted one: see :meth:`RayServers.locate`).
        max_restarts: How many times Ray starts each server's actor again after it died
            (-1: without end).
        setup: Simulators (``libero``, ``robosuite``) each server's node must have: ``gym-remote
            setup NAME`` runs there first, making the environment where it is missing and
            keeping one that is fine (the first install takes minutes: raise ``timeout``).

    Raises:
        RuntimeError: Ray is not initialized, or a server failed to start.
        TimeoutError: the servers were not placed and serving within ``timeout`` (no node had
            their resources free, say).
    """
    if not ray.is_initialized():
        raise RuntimeError("start_servers needs Ray: call ray.init() (or ray.init(address=...)) first")
    token = token or secrets.token_urlsafe(32)
    if sessions_per_server is not None:
        if sessions_per_server < 1:
            raise ValueError(f"sessions_per_server must be at least 1, got {sessions_per_server}")
        serve_arguments = [*serve_arguments, "--max-sessions", str(sessions_per_server)]
    held = {name: amount * (sessions_per_server or 1) for name, amount in (resources or {}).items()}
    # Per server: the resources its actor holds, and where Ray may put it (None: anywhere).
    placements: list[tuple[dict[str, float], Any]]
    if placement_group is not None:
        if resources is not None or count is not None:
            raise ValueError(
                "a placement group's bundles say where servers go and what they hold: "
                "give no count or resources with it"
            )
        placements = [
            (bundle, PlacementGroupSchedulingStrategy(placement_group, index))
            for index, bundle in enumerate(placement_group.bundle_specs)
        ]
    elif count is None:
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        placements = [(held, NodeAffinitySchedulingStrategy(node, soft=False)) for node in nodes]
    elif count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    else:
        placements = [(held, None)] * count
    actor_class: Any = ray.remote(_ServerActor)
    placed = [
        actor_class.options(
            max_restarts=max_restarts,
            **_resource_options(held_here),
            **({} if strategy is None else {"scheduling_strategy": strategy}),
        )
        for held_here, strategy in placements
    ]
    unknown = [name for name in setup if name not in simulators.RECIPES]
    if unknown:
        raise ValueError(
            f"setup: no simulator called {', '.join(unknown)}; choose from {', '.join(simulators.RECIPES)}"
        )
    actors: list[Any] = [actor.remote(list(serve_arguments), token, timeout, list(setup)) for actor in placed]
    try:
        described = ray.get([actor.describe.remote() for actor in actors], timeout=timeout)
    except BaseException as error:
        for actor in actors:
            ray.kill(actor)
        if isinstance(error, ray.exceptions.GetTimeoutError):
            raise TimeoutError(
                f"{len(actors)} server(s) were not placed and serving within {timeout:g} s: does the "
                f"cluster have what each holds ({held or 'nothing'}) free, and do they start there?"
            ) from None
        raise
    return RayServers(
        addresses=[item["address"] for item in described],
        token=token,
        node_ids=[item["node_id"] for item in described],
        pids=[item["pid"] for item in described],
        _actors=actors,
        _timeout=timeout,
    )


def _resource_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray's actor options for holding ``resources`` (CPU and GPU have options of their own)."""
    others = dict(resources)
    return {"num_cpus": others.pop("CPU", 0), "num_gpus": others.pop("GPU", 0), "resources": others}
