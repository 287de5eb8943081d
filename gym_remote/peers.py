"""Who is at the other end of a connection: its address, its user, and whether a given process
holds that end (Linux ``/proc``), so that neither side trusts a peer's word about itself.

A peer that offers shared memory names a process and one of its descriptors; before opening it,
the other side checks that this process really holds the far end of their own connection. The
same check tells a client that the local socket a server named belongs to that very server.

This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import ipaddress
import os
import socket
import struct
from typing import Iterator, Optional, Tuple, Union

__all__ = ["peer_ip", "peer_user", "is_on_this_host", "holds_far_end", "listener_pid"]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_ip(sock: socket.socket) -> IPAddress:
    """A TCP connection's peer address; a dual-stack listener (on ::) sees IPv4 peers as
    ::ffff:a.b.c.d, which this gives as a.b.c.d."""
    return _plain(ipaddress.ip_address(sock.getpeername()[0]))


def _plain(address: IPAddress) -> IPAddress:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _credentials(sock: socket.socket) -> Optional[Tuple[int, int, int]]:
    """A Unix socket peer's (pid, uid, gid) as the kernel recorded them, where it tells."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    return _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _CREDENTIALS.size))


def peer_user(sock: socket.socket) -> Optional[int]:
    """The uid a Unix socket's peer runs as, where the platform tells (Linux)."""
    credentials = _credentials(sock)
    return None if credentials is None else credentials[1]


def listener_pid(sock: socket.socket) -> Optional[int]:
    """For a Unix socket this process connected: the pid of the process that listened there."""
    credentials = _credentials(sock)
    return None if credentials is None else credentials[0]


def is_on_this_host(sock: socket.socket) -> bool:
    """Whether the peer is on this host: a Unix socket, or TCP from a loopback address."""
    return sock.family == socket.AF_UNIX or peer_ip(sock).is_loopback


def holds_far_end(sock: socket.socket, pid: int) -> bool:
    """Whether process ``pid`` (on this host) holds the other end of the connected ``sock``.

    TCP: the far end's socket is found in ``/proc/net/tcp{,6}`` by its address pair, and must
    be among ``pid``'s descriptors. Unix sockets: the kernel's peer credentials name the
    process that connected, or the server that listened (whose workers are its children).
    False wherever it cannot be told (another network namespace, another user, not Linux).
    """
    if type(pid) is not int or pid <= 0:
        return False
    if sock.family == socket.AF_UNIX:
        credentials = _credentials(sock)
        return credentials is not None and credentials[0] in (pid, _parent_of(pid))
    try:
        far = (peer_ip(sock), sock.getpeername()[1])
        near = (_plain(ipaddress.ip_address(sock.getsockname()[0])), sock.getsockname()[1])
    except (OSError, ValueError):
        return False
    inode = next((inode for local, remote, inode in _tcp_sockets() if (local, remote) == (far, near)), None)
    return inode is not None and _holds_socket(pid, inode)


def _parent_of(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it.
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _tcp_sockets() -> Iterator[Tuple[Tuple[IPAddress, int], Tuple[IPAddress, int], int]]:
    """Every TCP socket of this network namespace: (local end, remote end, inode)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)  # the column names
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9:
                        yield _end(fields[1]), _end(fields[2]), int(fields[9])
        except (OSError, ValueError):
            continue


def _end(text: str) -> Tuple[IPAddress, int]:
    """An ``ADDRESS:PORT`` of ``/proc/net/tcp``: the address in 32-bit words of host order."""
    address, port = text.split(":")
    words = [int(address[start : start + 8], 16) for start in range(0, len(address), 8)]
    packed = b"".join(struct.pack("=I", word) for word in words)
    return _plain(ipaddress.ip_address(packed)), int(port, 16)


def _holds_socket(pid: int, inode: int) -> bool:
    target = f"socket:[{inode}]"
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(os.path.join(directory, name)) == target:
                return True
        except OSError:
            continue
    return False
