"""Configuration: one dataclass per component, filled from arguments, then ``GYM_REMOTE_*``
environment variables, then defaults.

A field's metadata carries its help text; the environment variable is ``GYM_REMOTE_`` plus the
field name in capitals. List fields read comma-separated values from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

__all__ = ["ServerConfig", "ClientConfig", "resolve", "add_arguments", "env_var"]

ConfigT = TypeVar("ConfigT")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _option(default: Any, help: str, secret: bool = False, **extra: Any) -> Any:
    """A field with its help text; a secret one is left out of the dataclass's repr."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, repr=not secret, metadata={"help": help, **extra})


@dataclass
class ServerConfig:
    """How ``gym-remote serve`` runs."""

    address: str = _option("tcp://127.0.0.1:5555", "where to listen: tcp://HOST:PORT or unix:///PATH")
    allow: list[str] = _option(
        ["*"], "env ids this server serves, as glob patterns (repeatable)", flag="--allow"
    )
    imports: list[str] = _option(
        [],
        "module to import at start so its envs register; also allows ids of the form "
        "MODULE:Env-v0 (repeatable)",
        flag="--import",
    )
    python: list[str] = _option(
        [],
        "PATTERN=/path/to/python: run workers for env ids matching PATTERN with that "
        "interpreter, which needs only gym-remote's core (repeatable)",
    )
    home: str = _option(
        "", "where `gym-remote setup` keeps simulator environments (empty: ~/.local/share/gym-remote)"
    )
    max_sessions: int = _option(64, "most sessions (worker processes) at once")
    max_pending_connections: int = _option(
        128,
        "most connections not yet handed to a session's worker (handshakes, list, ping, tasks, "
        "makes under way); more are refused with ServerBusy. One peer (an IP address, or a user "
        "on a Unix socket) may hold at most half of them",
    )
    max_envs_per_session: int = _option(
        32, "most envs one session's worker may host (RemoteVectorEnv's envs_per_worker)"
    )
    idle_timeout: float = _option(
        600.0, "seconds a session may wait for its next call before it is ended (0: never)", at_least=0
    )
    read_timeout: float = _option(30.0, "seconds a started message may take to arrive in full")
    hello_timeout: float = _option(
        10.0, "seconds a new connection has to deliver its whole hello before it is closed"
    )
    max_message_size: int = _option(256 << 20, "largest message accepted, in bytes")
    allow_pickle: bool = _option(False, "accept and send pickled values (clients must opt in too)")
    token: str = _option(
        "", "shared secret clients must present; required to listen beyond loopback", secret=True
    )
    tls_cert: str = _option(
        "", "PEM certificate (chain) to serve TCP connections with TLS; needs --tls-key (`gym-remote certs`)"
    )
    tls_key: str = _option("", "PEM private key of --tls-cert")
    tls_client_ca: str = _option(
        "",
        "PEM CA certificate(s): clients must show a certificate one of them signed (mutual TLS; "
        "then no local socket is offered either)",
    )
    tcp_only: bool = _option(
        False,
        "offer clients on this host no local Unix socket beside a TCP address (they use one, "
        "with the same token, unless told not to: it carries messages with less work)",
    )
    watch_stdin: bool = _option(
        False,
        "stop when standard input closes (used for private servers; a Unix socket's directory is "
        "then removed too, if it is left empty)",
    )
    log_level: str = _option("info", "log level: debug, info, warning or error")


@dataclass
class ClientConfig:
    """How a :class:`~gym_remote.RemoteEnv` reaches its server."""

    address: str = _option("", "server address; empty starts a private local server")
    timeout: float = _option(60.0, "seconds every call may take before RemoteTimeout")
    token: str = _option("", "shared secret the server expects", secret=True)
    allow_pickle: bool = _option(False, "accept and send pickled values (the server must opt in too)")
    max_message_size: int = _option(256 << 20, "largest message accepted, in bytes")
    shared_memory: bool = _option(True, "on one host, take large replies through shared memory")
    local_socket: bool = _option(
        True, "on one host, reach a loopback TCP server through the Unix socket it offers there"
    )
    tls_ca: str = _option(
        "", "PEM CA certificate(s) to check a TLS server's certificate with; set, TCP connections use TLS"
    )
    tls_cert: str = _option("", "PEM client certificate, for servers that ask for one (mutual TLS)")
    tls_key: str = _option("", "PEM private key of tls_cert")
    restart_failed_envs: bool = _option(
        False,
        "make an env again when its worker crashes, is killed or misses its deadline (its "
        "episode ends as lost), and reconnect when its server restarts",
    )


def env_var(name: str) -> str:
    """The environment variable that sets field ``name``."""
    return "GYM_REMOTE_" + name.upper()


def resolve(config_type: type[ConfigT], **arguments: Any) -> ConfigT:
    """Builds ``config_type`` from ``arguments`` (None means unset), then the environment, then defaults.

    Raises:
        ValueError: an environment variable holds a value of the wrong type, or a number (a
            timeout, a size, a count) is not above zero; names the option and its variable.
    """
    values = {}
    for option in dataclasses.fields(config_type):  # type: ignore[arg-type]
        value = arguments.get(option.name)
        if value is None:
            text = os.environ.get(env_var(option.name))
            if text is not None:
                value = _parse(option, text)
        if value is not None:
            if _kind(option) in ("int", "float"):
                _check_range(option, value)
            values[option.name] = value
    return config_type(**values)


def _check_range(option: dataclasses.Field, value: float) -> None:
    """Numbers (timeouts, sizes, counts) must be above 0, or at least the option's ``at_least``."""
    at_least = option.metadata.get("at_least")
    if (value < at_least) if at_least is not None else (value <= 0):
        bound = f"at least {at_least}" if at_least is not None else "above 0"
        raise ValueError(f"{option.name} (or {env_var(option.name)}) must be {bound}, got {value!r}")


def _kind(option: dataclasses.Field) -> str:
    """The option's type as written: ``"int"``, ``"list[str]"``, ..."""
    return option.type if isinstance(option.type, str) else option.type.__name__


def _parse(option: dataclasses.Field, text: str) -> Any:
    kind = _kind(option)
    try:
        if kind.startswith("list"):
            return [item.strip() for item in text.split(",") if item.strip()]
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(text)
            return lowered in _TRUE
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"{env_var(option.name)}={text!r} is not a valid {kind}") from None


def add_arguments(
    parser: argparse.ArgumentParser,
    config_type: type,
    names: Iterable[str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Adds one command-line option per field of ``config_type`` (or of those in ``names``),
    documenting its variable; ``helps`` replaces a field's help text and default. A boolean
    field gets ``--NAME`` and ``--no-NAME``."""
    for option in dataclasses.fields(config_type):
        if names is not None and option.name not in names:
            continue
        flag = option.metadata.get("flag", "--" + option.name.replace("_", "-"))
        default = option.default if option.default is not dataclasses.MISSING else option.default_factory()  # type: ignore[operator]
        help_text = (helps or {}).get(option.name) or f"{option.metadata['help']}; default {default!r}"
        help_text = f"{help_text} [env {env_var(option.name)}]"
        kind = _kind(option)
        if kind.startswith("list"):
            parser.add_argument(flag, dest=option.name, action="append", default=None, help=help_text)
        elif kind == "bool":
            parser.add_argument(
                flag, dest=option.name, action="store_const", const=True, default=None, help=help_text
            )
            parser.add_argument(
                "--no-" + flag[2:],
                dest=option.name,
                action="store_const",
                const=False,
                help=f"the opposite of {flag}",
            )
        else:
            parser.add_argument(
                flag,
                dest=option.name,
                type=int if kind == "int" else float if kind == "float" else str,
                default=None,
                help=help_text,
            )
