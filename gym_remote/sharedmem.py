"""Same-host fast path: a session's large replies travel through a shared memory segment.

The worker makes an anonymous segment (``memfd_create``: it has no name, so nothing is ever left
in ``/dev/shm``) and offers it; a client on the same host opens it through
``/proc/<worker pid>/fd/<fd>`` and checks a random token written at its start. The kernel frees
the segment once neither process holds it, however either of them ends.

A reply whose data section goes there is a frame with the magic ``GYMS`` and no data on the
socket (see ``docs/protocol.md``). The client copies the data section out before it sends its
next request, and the worker writes only in reply to a request, so the two never overlap.
This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import mmap
import os
import sys
from typing import Any, Dict, List

import numpy as np

__all__ = ["SharedSegment", "available", "MINIMUM_SHARED_BYTES"]

# Data sections smaller than this go on the socket: a copy through memory saves nothing there.
MINIMUM_SHARED_BYTES = 1 << 16
_INITIAL_BYTES = 1 << 20
_TOKEN_BYTES = 16
_DATA_START = 64  # the token, then the data section, 8-byte aligned


def available() -> bool:
    """Whether this interpreter can make and open segments (Linux, Python >= 3.8)."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


class SharedSegment:
    """One session's segment: the worker writes data sections, the client reads them.

    Make one with :meth:`create` (worker) or :meth:`attach` (client); :meth:`close` unmaps it.
    """

    def __init__(self, fd: int, size: int, writable: bool, token: bytes, limit: int) -> None:
        self.fd = fd
        self.writable = writable
        self.token = token
        self.limit = limit
        self._map: Any = None
        self._bytes: Any = None
        self._map_size(size)

    @classmethod
    def create(cls, limit: int) -> "SharedSegment":
        """A new segment of the worker's; data sections above ``limit`` bytes stay on the socket."""
        fd = os.memfd_create("gym-remote", getattr(os, "MFD_CLOEXEC", 1))
        try:
            os.ftruncate(fd, _INITIAL_BYTES)
            segment = cls(fd, _INITIAL_BYTES, True, os.urandom(_TOKEN_BYTES), limit)
        except BaseException:
            os.close(fd)
            raise
        segment._bytes[:_TOKEN_BYTES] = np.frombuffer(segment.token, dtype=np.uint8)
        return segment

    @classmethod
    def attach(cls, offer: Dict[str, Any]) -> "SharedSegment":
        """Opens the segment a worker offered (see :meth:`offer`).

        Raises:
            OSError: it cannot be opened from here (another host, container or user).
            ValueError: what was opened is not that segment.
        """
        path = "/proc/{}/fd/{}".format(int(offer["pid"]), int(offer["fd"]))
        token = bytes.fromhex(str(offer["token"]))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            segment = cls(fd, os.fstat(fd).st_size, False, token, 0)
        except BaseException:
            os.close(fd)
            raise
        if bytes(segment._bytes[:_TOKEN_BYTES]) != token:
            segment.close()
            raise ValueError(f"{path} is not the offered segment")
        return segment

    def offer(self) -> Dict[str, Any]:
        """What a client needs to attach: this process's pid, the descriptor and the token."""
        return {"pid": os.getpid(), "fd": self.fd, "token": self.token.hex()}

    def write(self, chunks: List[Any], nbytes: int) -> bool:
        """Lays a data section's chunks (1-D byte buffers) out as on the wire; False when it cannot."""
        if nbytes > self.limit:
            return False
        if _DATA_START + nbytes > len(self._map):
            size = max(2 * len(self._map), _DATA_START + nbytes)
            try:
                os.ftruncate(self.fd, size)
                self._map_size(size)
            except OSError:  # no memory for a larger segment: this reply takes the socket
                return False
        position = _DATA_START
        for chunk in chunks:
            self._bytes[position : position + chunk.nbytes] = chunk
            position += chunk.nbytes
        return True

    def read_into(self, destination: memoryview) -> None:
        """Copies the data section of the last reply (``len(destination)`` bytes) out."""
        end = _DATA_START + destination.nbytes
        if end > len(self._map):
            self._map_size(os.fstat(self.fd).st_size)
            if end > len(self._map):
                raise ValueError(f"a {destination.nbytes}-byte data section does not fit the segment")
        np.frombuffer(destination, dtype=np.uint8)[:] = self._bytes[_DATA_START:end]

    def close(self) -> None:
        """Unmaps and closes the segment (idempotent)."""
        if self._map is not None:
            self._bytes = None
            self._map.close()
            self._map = None
            os.close(self.fd)

    def _map_size(self, size: int) -> None:
        """Maps ``size`` bytes; the old mapping stays in use if the new one cannot be made."""
        mapping = mmap.mmap(self.fd, size, access=mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ)
        if self._map is not None:
            self._bytes = None
            self._map.close()
        self._map = mapping
        self._bytes = np.frombuffer(mapping, dtype=np.uint8)
