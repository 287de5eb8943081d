"""The ``gym-remote`` command: ``serve``, ``list``, ``ping``, ``tasks``, ``eval``, ``record``,
``policy-serve``, ``ray-serve``, ``certs`` and ``setup``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import statistics
import sys
import threading
from typing import Any, Sequence

from gym_remote import __version__
from gym_remote.config import ClientConfig, ServerConfig, add_arguments, env_var, resolve
from gym_remote.discovery import list_envs, list_tasks, ping
from gym_remote.errors import RemoteEnvError
from gym_remote.simulators import RECIPES

__all__ = ["main"]

_DEFAULT_CLIENT_ADDRESS = "tcp://127.0.0.1:5555"
_TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key")
# Seconds for Ray to place servers and for them to listen; with `gym-remote setup` on the nodes
# first, for that too (a first LIBERO install takes several minutes).
_RAY_START_SECONDS = 120.0
_RAY_SETUP_SECONDS = 1800.0
_QUERY_OPTIONS = ("address", "timeout", "token", "max_message_size", *_TLS_OPTIONS)


def main(argv: list[str] | None = None) -> None:
    """Runs the ``gym-remote`` command line."""
    parser = argparse.ArgumentParser(
        prog="gym-remote",
        description="Serve Gymnasium environments to remote clients, query servers, evaluate policies.",
        epilog="Every option can also be set with the GYM_REMOTE_* variable shown beside it.",
    )
    parser.add_argument("--version", action="version", version=f"gym-remote {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve environments (one worker process per session)")
    add_arguments(serve, ServerConfig)
    serve.set_defaults(run=_serve)

    for name, run, help_text in (
        ("list", _list, "list the env ids a server serves"),
        ("ping", _ping, "measure the round-trip time to a server"),
        ("tasks", _tasks, "list a simulator's tasks, e.g. `gym-remote tasks Libero-v0`"),
    ):
        command = commands.add_parser(name, help=help_text)
        # The options of a query: sessions' own (shared memory, the local socket) do not apply.
        address_help = (
            "server address; empty starts a private local server"
            if name == "tasks"
            else f"server address; default {_DEFAULT_CLIENT_ADDRESS}"
        )
        add_arguments(command, ClientConfig, _QUERY_OPTIONS, helps={"address": address_help})
        if name == "ping":
            command.add_argument("--count", type=int, default=100, help="round trips to time (default 100)")
        if name == "tasks":
            command.add_argument(
                "env_id", help="Libero-v0, Robosuite-v0 (or their gym_remote/ or remote/ ids)"
            )
        command.set_defaults(run=run)

    _add_eval_command(commands)
    _add_ray_serve_command(commands)

    setup = commands.add_parser("setup", help="make the environment of a simulator: libero or robosuite")
    setup.add_argument("simulator", nargs="?", choices=sorted(RECIPES), help="the simulator to set up")
    setup.add_argument(
        "--home", help="where environments live [env GYM_REMOTE_HOME; default ~/.local/share/gym-remote]"
    )
    setup.add_argument(
        "--assets", help="libero: use LIBERO's assets from this folder instead of installing them"
    )
    setup.add_argument("--force", action="store_true", help="rebuild even if the environment looks fine")
    setup.add_argument("--list", action="store_true", help="show the environments set up so far")
    setup.set_defaults(run=_setup)

    certs = commands.add_parser(
        "certs", help="make a CA and server and client certificates for TLS (needs the tls extra)"
    )
    certs.add_argument("directory", help="where the PEM files go; a CA already there signs the new ones")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        help="a DNS name or IP address clients reach the server by (repeatable)",
    )
    certs.add_argument(
        "--days", type=int, default=365, help="how long the certificates are valid (default 365)"
    )
    certs.set_defaults(run=_certs)

    arguments = parser.parse_args(argv)
    config_type = ServerConfig if arguments.command == "serve" else ClientConfig
    options = {
        option.name: getattr(arguments, option.name, None) for option in dataclasses.fields(config_type)
    }
    try:
        arguments.run(arguments, options)
        sys.stdout.flush()  # here, where a reader that left is noticed, not at exit
    except BrokenPipeError:  # the reader of our output left (`gym-remote list | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush there
        sys.exit(1)
    except (RemoteEnvError, ValueError, OSError, KeyError, RuntimeError, ImportError) as error:
        print(f"gym-remote {arguments.command}: {error}", file=sys.stderr)
        sys.exit(1)


def _serve(arguments: argparse.Namespace, options: dict) -> None:
    from gym_remote.server import run_server

    config = resolve(ServerConfig, **options)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s gym-remote %(levelname)s %(message)s"
    )
    run_server(config, on_ready=lambda address: print(f"gym-remote serving on {address}", flush=True))


def _list(arguments: argparse.Namespace, options: dict) -> None:
    for env_id in list_envs(**_server_options(options)):
        print(env_id)


def _ping(arguments: argparse.Namespace, options: dict) -> None:
    pings = ping(max(arguments.count, 1), **_server_options(options))
    times = pings.round_trips
    print(
        f"{pings.server} at {pings.address}: {len(times)} round trips, "
        f"median {statistics.median(times) * 1e6:.1f} us, min {min(times) * 1e6:.1f} us"
    )


def _tasks(arguments: argparse.Namespace, options: dict) -> None:
    listing = list_tasks(arguments.env_id, **_server_options(options, default_address=None))
    for suite, tasks in listing["suites"].items():
        for task in tasks:
            length = f"  ({task['episode_length']} steps)" if "episode_length" in task else ""
            print(f"{suite:16s} {task['task_id']:3d}  {task['description']}{length}")


def _server_options(options: dict, default_address: str | None = _DEFAULT_CLIENT_ADDRESS) -> dict:
    """The address, timeout, token and largest message the options set.

    With no address given: ``default_address``, where None asks a private local server.
    """
    config = resolve(ClientConfig, **options)
    return {
        "address": config.address or default_address,
        "timeout": config.timeout,
        "token": config.token,
        "max_message_size": config.max_message_size,
        **{name: getattr(config, name) for name in _TLS_OPTIONS},
    }


def _add_eval_command(commands: Any) -> None:
    command = commands.add_parser(
        "eval",
        help="evaluate a policy: success rates per task (`gym-remote eval --suite libero_goal --tasks 0-4`)",
    )
    _add_episode_arguments(command)
    command.add_argument("--record", metavar="DIR", help="record every episode into a dataset in DIR")
    _add_dataset_arguments(command)
    command = commands.add_parser(
        "record",
        help="record a policy's episodes as a dataset (`gym-remote record DIR --env-name Lift`)",
    )
    command.add_argument("dataset", help="the dataset's directory (with --resume, one to append to)")
    _add_episode_arguments(command)
    _add_dataset_arguments(command)
    _add_policy_serve_command(commands)


def _add_dataset_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--format",
        choices=("lerobot", "hdf5"),
        default="lerobot",
        help="lerobot (LeRobotDataset v3.0) or hdf5 (robomimic, with simulator states); default lerobot",
    )
    command.add_argument("--only-success", action="store_true", help="keep only the episodes that succeed")


def _add_episode_arguments(command: argparse.ArgumentParser) -> None:
    """What ``eval`` and ``record`` share: the envs, the policy, the plan and the results."""
    command.add_argument(
        "env_id", nargs="?", help="any env id the server serves (or use --suite / --env-name)"
    )
    command.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments of every remote gym.make")
    command.add_argument("--suite", help="a LIBERO suite: libero_spatial, libero_object, libero_goal, ...")
    command.add_argument("--tasks", default="0", help="LIBERO task ids of the suite, e.g. 0-4,7 (default 0)")
    command.add_argument("--env-name", help="a robosuite task: Lift, Stack, Door, ...")
    command.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    command.add_argument("--num-envs", type=int, default=1, help="sessions stepped at once (default 1)")
    command.add_argument(
        "--address", action="append", help="a server (repeatable: sessions spread over them; none: private)"
    )
    command.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="start servers on a Ray cluster and spread sessions over them: ADDRESS (auto, "
        "ray://HOST:PORT), else RAY_ADDRESS, else a cluster of this machine on 127.0.0.1 "
        "(needs the ray extra)",
    )
    command.add_argument(
        "--ray-servers", type=int, help="with --ray: how many servers, placed by Ray (default one per node)"
    )
    command.add_argument(
        "--ray-resources",
        default="{}",
        help="with --ray: JSON resources one session needs, e.g. '{\"CPU\": 1}'; with --ray-servers, each "
        "server holds them for its share of --num-envs",
    )
    command.add_argument(
        "--ray-setup",
        action="append",
        choices=sorted(RECIPES),
        help="with --ray: a simulator every server's node must have (`gym-remote setup` runs there)",
    )
    command.add_argument(
        "--policy",
        default="random",
        help="random, zeros, lift (scripted robosuite Lift), ws://HOST:PORT (a policy server) or "
        "package.module:factory",
    )
    command.add_argument(
        "--observation-keys",
        default="flat",
        help="how a ws:// policy server is sent observations: flat or openpi_libero (default flat)",
    )
    command.add_argument("--replan-steps", type=int, help="actions of each chunk run before asking again")
    command.add_argument(
        "--prefetch-steps",
        type=int,
        default=0,
        help="ask for an env's next chunk when it has this many actions left, to hide inference (default 0)",
    )
    command.add_argument("--max-steps", type=int, help="end episodes after this many steps too")
    command.add_argument("--seed", type=int, default=0, help="seed of episode 0; episode k uses seed + k")
    command.add_argument(
        "--output-dir", help="where episodes.csv and results.json go (record: DATASET/results)"
    )
    command.add_argument("--resume", action="store_true", help="skip the episodes --output-dir already holds")
    command.add_argument(
        "--videos", type=int, default=0, help="write mp4s of each task's first K episodes (needs PyAV)"
    )
    command.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="end an episode whose simulator worker crashed as a failure, and stop that env, instead "
        "of making the env again and running the episode again (lost episodes count in no rate)",
    )
    add_arguments(command, ClientConfig, ("timeout", "token"))
    command.set_defaults(run=_eval)


def _add_policy_serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "policy-serve",
        help="serve a Python policy over openpi's websocket protocol, for `eval --policy ws://...`",
    )
    serve.add_argument(
        "factory", help="package.module:factory; what it makes has infer(obs) or act(obs, ids)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="where to listen (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    serve.set_defaults(run=_policy_serve)


def _policy_serve(arguments: argparse.Namespace, options: dict) -> None:
    from gym_remote.evaluation.policies import factory_named
    from gym_remote.evaluation.policy_server import serve_policy

    logging.basicConfig(level="INFO", format="%(asctime)s gym-remote %(levelname)s %(message)s")
    serve_policy(
        factory_named(arguments.factory)(),
        arguments.host,
        arguments.port,
        on_ready=lambda url: print(f"gym-remote policy serving on {url}", flush=True),
    )


def _eval(arguments: argparse.Namespace, options: dict) -> None:
    from gym_remote.evaluation import Task, libero_tasks, parse_task_ids, robosuite_task

    env_kwargs = json.loads(arguments.env_kwargs)
    if not isinstance(env_kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {arguments.env_kwargs!r}")
    chosen = [name for name in ("env_id", "suite", "env_name") if getattr(arguments, name)]
    if len(chosen) != 1:
        raise ValueError("name what to evaluate: an env id, or --suite (LIBERO), or --env-name (robosuite)")
    if arguments.suite:
        tasks = libero_tasks(arguments.suite, parse_task_ids(arguments.tasks), **env_kwargs)
    elif arguments.env_name:
        tasks = [robosuite_task(arguments.env_name, **env_kwargs)]
    else:
        tasks = [Task(arguments.env_id, arguments.env_id, env_kwargs)]
    config = resolve(ClientConfig, timeout=options.get("timeout"), token=options.get("token"))
    # `record DATASET` keeps its results beside the dataset, so that --resume knows what is done.
    dataset = getattr(arguments, "dataset", None) or getattr(arguments, "record", None)
    output_dir = arguments.output_dir
    if output_dir is None and getattr(arguments, "dataset", None):
        output_dir = os.path.join(arguments.dataset, "results")

    if arguments.ray is not None and arguments.address:
        raise ValueError("give --address or --ray, not both")
    servers = (
        _ray_servers(
            arguments.ray,
            arguments.ray_servers,
            arguments.ray_resources,
            # Each server's share of the sessions, so that their resources are all held.
            -(-arguments.num_envs // arguments.ray_servers) if arguments.ray_servers else None,
            arguments.ray_setup,
        )
        if arguments.ray is not None
        else None
    )
    try:
        evaluation = _run_evaluation(arguments, tasks, config, output_dir, dataset, servers)
    finally:
        if servers is not None:
            servers.close()
    print(evaluation.table())


def _ray_servers(
    cluster: str,
    count: int | None,
    resources_json: str,
    sessions_per_server: int | None,
    setup: Sequence[str] | None,
    serve_arguments: Sequence[str] = (),
    token: str = "",
) -> Any:
    """Servers started on the Ray cluster at ``cluster`` (empty: ``RAY_ADDRESS``, else a cluster
    of this machine alone, on 127.0.0.1), ``count`` of them (None: one per node), each holding
    what one session needs (``resources_json``) for ``sessions_per_server`` sessions, each node
    with the simulators in ``setup``."""
    resources = json.loads(resources_json)
    if not isinstance(resources, dict):
        raise ValueError(f"the resources must be a JSON object, got {resources_json!r}")
    try:
        import ray

        from gym_remote.ray import start_servers
    except ImportError:
        raise ImportError("Ray is needed: pip install '/path/to/gym-remote[ray]' (the ray extra)") from None
    if not ray.is_initialized():
        if cluster or os.environ.get("RAY_ADDRESS"):
            ray.init(address=cluster or None, log_to_driver=False)
        else:  # nothing of it listens beyond loopback
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return start_servers(
        count,
        resources=resources or None,
        sessions_per_server=sessions_per_server,
        serve_arguments=serve_arguments,
        token=token or None,
        setup=setup or (),
        timeout=_RAY_SETUP_SECONDS if setup else _RAY_START_SECONDS,
    )


def _add_ray_serve_command(commands: Any) -> None:
    command = commands.add_parser(
        "ray-serve",
        help="start servers on a Ray cluster and keep them until interrupted (for lerobot-eval, say)",
    )
    command.add_argument(
        "--ray", default="", metavar="ADDRESS", help="the cluster (default RAY_ADDRESS, else this machine)"
    )
    command.add_argument("--servers", type=int, help="how many, placed by Ray (default one per node)")
    command.add_argument(
        "--resources", default="{}", help="JSON resources one session needs, e.g. '{\"CPU\": 1}'"
    )
    command.add_argument(
        "--sessions-per-server", type=int, help="sessions each server runs at most, their resources held"
    )
    command.add_argument(
        "--setup",
        action="append",
        choices=sorted(RECIPES),
        help="a simulator every server's node must have: `gym-remote setup` runs there first (repeatable)",
    )
    command.add_argument(
        "serve_arguments",
        nargs=argparse.REMAINDER,
        help="after --: options of every `gym-remote serve`, e.g. -- --allow 'gym_remote/*'",
    )
    command.set_defaults(run=_ray_serve)


def _ray_serve(arguments: argparse.Namespace, options: dict) -> None:
    token = os.environ.get(env_var("token"), "")
    serve_arguments = [item for item in arguments.serve_arguments if item != "--"]
    servers = _ray_servers(
        arguments.ray,
        arguments.servers,
        arguments.resources,
        arguments.sessions_per_server,
        arguments.setup,
        serve_arguments,
        token,
    )
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    try:
        print(f"export GYM_REMOTE_ADDRESS={','.join(servers.addresses)}", flush=True)
        if not token:
            print(f"export GYM_REMOTE_TOKEN={servers.token}", flush=True)
        stop.wait()
    finally:
        servers.close()


def _run_evaluation(
    arguments: argparse.Namespace,
    tasks: list[Any],
    config: ClientConfig,
    output_dir: str | None,
    dataset: str | None,
    servers: Any,
) -> Any:
    from gym_remote.evaluation import evaluate

    def show_progress(ended: int, planned: int, successes: int) -> None:
        print(
            f"\r{ended}/{planned} episodes, success rate {successes / ended:.3f}",
            end="\n" if ended == planned else "",
            file=sys.stderr,
            flush=True,
        )

    return evaluate(
        tasks,
        arguments.policy,
        observation_keys=arguments.observation_keys,
        episodes=arguments.episodes,
        num_envs=arguments.num_envs,
        address=arguments.address if servers is None else servers.addresses,
        replan_steps=arguments.replan_steps,
        prefetch_steps=arguments.prefetch_steps,
        max_steps=arguments.max_steps,
        seed=arguments.seed,
        output_dir=output_dir,
        resume=arguments.resume,
        videos_per_task=arguments.videos,
        record=dataset,
        record_format=arguments.format,
        only_success=arguments.only_success,
        progress=show_progress,
        timeout=config.timeout,
        token=(config.token or None) if servers is None else servers.token,
        restart_failed_envs=arguments.restart,
        locate=None if servers is None else servers.locate,
    )


def _certs(arguments: argparse.Namespace, options: dict) -> None:
    from gym_remote.certs import make_certificates

    files = make_certificates(arguments.directory, arguments.host, arguments.days)
    print(
        f"CA: {files.ca}\n"
        f"server: gym-remote serve --tls-cert {files.server_cert} --tls-key {files.server_key} "
        f"[--tls-client-ca {files.ca}]\n"
        f"client: GYM_REMOTE_TLS_CA={files.ca} "
        f"[GYM_REMOTE_TLS_CERT={files.client_cert} GYM_REMOTE_TLS_KEY={files.client_key}]"
    )


def _setup(arguments: argparse.Namespace, options: dict) -> None:
    from pathlib import Path

    from gym_remote.simulators import describe, setup

    home = Path(arguments.home).expanduser() if arguments.home else None
    if arguments.list or arguments.simulator is None:
        print(describe(home))
        return
    setup(
        arguments.simulator,
        home=home,
        assets=arguments.assets,
        force=arguments.force,
        log=lambda line: print(line, flush=True),
    )
