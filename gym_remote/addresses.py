"""Server addresses: ``tcp://host:port``, ``host:port``, ``unix:///path/to/socket`` or, on Linux,
``unix://@name`` (an abstract socket: no file; reachable from this host's network namespace)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from gym_remote.errors import ServerUnavailable

__all__ = ["Address", "parse_address", "server_list", "connect", "listen"]

DEFAULT_PORT = 5555


@dataclass(frozen=True)
class Address:
    """A parsed server address: a TCP host and port, or a Unix socket path (``@name``: abstract)."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def is_abstract(self) -> bool:
        """True for a Linux abstract Unix socket, which has a name but no file."""
        return self.scheme == "unix" and self.path.startswith("@")

    @property
    def socket_path(self) -> str:
        """What ``bind`` and ``connect`` take: the file's path, or NUL and the abstract name."""
        return "\0" + self.path[1:] if self.is_abstract else self.path

    @property
    def is_loopback(self) -> bool:
        """True for Unix sockets and loopback TCP hosts: nothing leaves this machine."""
        if self.scheme == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str) -> Address:
    """Parses an address string.

    Raises:
        ValueError: the text is not a valid address; the message shows the accepted forms.
    """
    original = text
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path or path == "@":
            raise ValueError(f"address {original!r} has no socket path")
        return Address("unix", path=path if path.startswith("@") else os.path.abspath(path))
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    invalid = ValueError(f"invalid address {original!r}: use tcp://HOST:PORT, HOST:PORT or unix:///PATH")
    if "/" in text:  # another scheme (http://...), or a path
        raise invalid
    host, separator, port_text = text.rpartition(":")
    if not separator:
        host, port_text = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise invalid
    return Address("tcp", host=host, port=port)


def server_list(text: str) -> list[str]:
    """The addresses in ``text``: one, or several separated by commas (``GYM_REMOTE_ADDRESS`` can
    name all the servers a vector env spreads over, as ``gym-remote ray-serve`` prints them).

    Raises:
        ValueError: an entry is empty or not a valid address.
    """
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise ValueError(f"address list {text!r} has an empty entry")
    for entry in entries:
        parse_address(entry)
    return entries


def connect(address: Address, timeout: float) -> socket.socket:
    """Opens a blocking connection to ``address`` within ``timeout`` seconds.

    Raises:
        ServerUnavailable: nothing accepted the connection in time.
    """
    try:
        if address.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address.socket_path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as error:
        raise ServerUnavailable(
            f"no gym-remote server at {address} ({error.strerror or error}); start one with "
            f"`gym-remote serve --address {address}` or pass address=None for a private local server"
        ) from None
    sock.settimeout(None)
    return sock


def listen(address: Address, backlog: int = 128) -> socket.socket:
    """Binds and listens on ``address``; a stale Unix socket file is replaced."""
    if address.scheme == "unix":
        if not address.is_abstract and os.path.exists(address.path):
            _remove_stale_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.socket_path)
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
    sock.listen(backlog)
    return sock


def _remove_stale_socket(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens there: a leftover from a server that died
        return
    finally:
        probe.close()
    raise OSError(f"a server is already listening on unix://{path}")
