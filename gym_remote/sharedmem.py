"""Same-host fast path: a session's large replies travel through a shared memory segment.

The worker makes an anonymous segment (``memfd_create``: it has no name, so nothing is ever left
in ``/dev/shm``), seals it against shrinking and offers it; a client on the same host opens it
through ``/proc/<worker pid>/fd/<fd>`` and checks a random token written at its start. The
kernel frees the segment once neither process holds it, however either of them ends.

Neither side takes an offer on trust: before mapping one, it checks that the offering process
holds the other end of its own connection (``gym_remote.peers``), that the descriptor is a
gym-remote memfd owned by that process's user, and that it cannot shrink under the mapping
(which would make every access past the new end a SIGBUS). Anything else (a log file, a pipe,
another process's memory) is refused before it is opened or written.

A reply whose data section goes there is a frame with the magic ``GYMS`` and no data on the
socket (see ``docs/protocol.md``). The client copies the data section out before it sends its
next request, and the worker writes only in reply to a request, so the two never overlap.

The other way round, a client makes segments that its workers write observations straight
into, so that it copies nothing: a remote env's step observations (:class:`ReplyBuffers`, "reply
buffers") and a remote vector env's whole observation batches ("shared batches", written by
:class:`gym_remote.step.batch_writer.BatchWriter`).
This module runs inside simulator interpreters too: it keeps to Python 3.8.
"""

import fcntl
import math
import mmap
import os
import socket
import stat
import sys
from typing import Any, Callable, Dict, List, Tuple, TypeVar

import numpy as np

from gym_remote import peers
from gym_remote.errors import InvalidCall

_Prepared = TypeVar("_Prepared")

__all__ = [
    "SharedSegment",
    "ReplyBuffers",
    "available",
    "MINIMUM_SHARED_BYTES",
    "DATA_START",
]

# Data sections smaller than this go on the socket: a copy through memory saves nothing there.
MINIMUM_SHARED_BYTES = 1 << 16
_INITIAL_BYTES = 1 << 20
_TOKEN_BYTES = 16
DATA_START = 64  # the token, then the data section, 8-byte aligned
_MEMFD_NAME = "gym-remote"
_MAX_DIMENSIONS = 32  # as the wire's (gym_remote.protocol.MAX_DIMENSIONS)
# Linux's memfd sealing (fcntl.h), where Python does not name them.
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_F_SEAL_SEAL = getattr(fcntl, "F_SEAL_SEAL", 1)
_F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 2)
_F_SEAL_GROW = getattr(fcntl, "F_SEAL_GROW", 4)


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
    def create(cls, limit: int, size: int = _INITIAL_BYTES, fixed_size: bool = False) -> "SharedSegment":
        """A new segment of ``size`` bytes (data starts at :data:`DATA_START`); data sections above
        ``limit`` bytes stay on the socket. It is sealed so that it never shrinks (and with
        ``fixed_size``, never grows either)."""
        flags = getattr(os, "MFD_CLOEXEC", 1) | getattr(os, "MFD_ALLOW_SEALING", 2)
        fd = os.memfd_create(_MEMFD_NAME, flags)
        try:
            os.ftruncate(fd, size)
            seals = _F_SEAL_SHRINK | (_F_SEAL_GROW | _F_SEAL_SEAL if fixed_size else 0)
            fcntl.fcntl(fd, _F_ADD_SEALS, seals)
            segment = cls(fd, size, True, os.urandom(_TOKEN_BYTES), limit)
        except BaseException:
            os.close(fd)
            raise
        segment._bytes[:_TOKEN_BYTES] = np.frombuffer(segment.token, dtype=np.uint8)
        return segment

    @classmethod
    def create_many(cls, count: int, size: int) -> List["SharedSegment"]:
        """``count`` new segments of ``size`` bytes for a client's own buffers (which it never
        writes data sections into); none is left open if one cannot be made."""
        segments: List[SharedSegment] = []
        try:
            for _ in range(count):
                segments.append(cls.create(0, size=size, fixed_size=True))
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        return segments

    @classmethod
    def attach_offered(
        cls,
        what: str,
        offers: List[Any],
        prepare: Callable[["SharedSegment"], _Prepared],
        peer: socket.socket,
    ) -> Tuple[List["SharedSegment"], List[_Prepared]]:
        """Opens every segment the client at the other end of ``peer`` offered for this process
        to write (for the request ``what``) and ``prepare``s each (checks it, maps arrays in
        it); returns the segments and what ``prepare`` returned. None is left open if one fails.

        Raises:
            InvalidCall: a segment cannot be opened from here, or ``prepare`` raised ValueError,
                KeyError or TypeError (a malformed layout); names ``what``.
        """
        segments: List[SharedSegment] = []
        prepared = []
        try:
            for offer in offers:
                segments.append(cls.attach(offer, peer, writable=True))
                prepared.append(prepare(segments[-1]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            for segment in segments:
                segment.close()
            raise InvalidCall(f"{what}: {type(error).__name__}: {error}") from None
        return segments, prepared

    @classmethod
    def attach(cls, offer: Any, peer: socket.socket, writable: bool = False) -> "SharedSegment":
        """Opens the segment the process at the other end of ``peer`` offered (see
        :meth:`offer`); a writable one takes :meth:`write` of data sections that fit it (it
        never grows).

        Raises:
            OSError: it cannot be opened from here (another host, container or user).
            ValueError: the offer is malformed, or names what is not such a segment of that
                process (checked before the file is opened, and again once it is).
        """
        if not isinstance(offer, dict):
            raise ValueError("a segment offer must be a map")
        pid, number, token_text = offer.get("pid"), offer.get("fd"), offer.get("token")
        if type(pid) is not int or type(number) is not int or number < 0 or not isinstance(token_text, str):
            raise ValueError("a segment offer needs an integer pid and fd and a token")
        if not peers.holds_far_end(peer, pid):
            raise ValueError(f"process {pid} is not at the other end of this connection")
        path = f"/proc/{pid}/fd/{number}"
        token = bytes.fromhex(token_text)
        _check_is_memfd(os.readlink(path), path)  # before opening: opening some files does things
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            _check_is_memfd(os.readlink(f"/proc/self/fd/{fd}"), path)
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_uid != os.stat(f"/proc/{pid}").st_uid:
                raise ValueError(f"{path} is not a segment of process {pid}'s user")
            if not fcntl.fcntl(fd, _F_GET_SEALS) & _F_SEAL_SHRINK:
                raise ValueError(f"{path} may shrink under its mapping (it is not sealed)")
            size = status.st_size
            # A writable attachment writes data sections up to the size the maker gave it.
            segment = cls(fd, size, writable, token, max(size - DATA_START, 0) if writable else 0)
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
        if DATA_START + nbytes > len(self._map):
            size = max(2 * len(self._map), DATA_START + nbytes)
            try:
                os.ftruncate(self.fd, size)
                self._map_size(size)
            except OSError:  # no memory for a larger segment: this reply takes the socket
                return False
        position = DATA_START
        for chunk in chunks:
            self._bytes[position : position + chunk.nbytes] = chunk
            position += chunk.nbytes
        return True

    def read_into(self, destination: memoryview) -> None:
        """Copies the data section of the last reply (``len(destination)`` bytes) out."""
        end = DATA_START + destination.nbytes
        if end > len(self._map):
            self._map_size(os.fstat(self.fd).st_size)
            if end > len(self._map):
                raise ValueError(f"a {destination.nbytes}-byte data section does not fit the segment")
        np.frombuffer(destination, dtype=np.uint8)[:] = self._bytes[DATA_START:end]

    def array(self, dtype: Any, shape: Tuple[int, ...], offset: int) -> np.ndarray:
        """An array over the segment's bytes from ``offset`` (views of it keep the mapping alive)."""
        dtype = np.dtype(dtype)
        if dtype.hasobject or dtype.fields is not None or dtype.itemsize == 0:
            raise ValueError(f"an array of {dtype} cannot be shared (objects, fields or no size)")
        if len(shape) > _MAX_DIMENSIONS or not all(type(size) is int and size >= 0 for size in shape):
            raise ValueError(f"shape {shape} is not a tuple of at most {_MAX_DIMENSIONS} sizes")
        count = math.prod(shape)
        if type(offset) is not int or offset < DATA_START or offset + count * dtype.itemsize > len(self._map):
            raise ValueError(f"an array of {dtype} {shape} at {offset} does not fit the segment")
        return self.bytes_at(offset, count * dtype.itemsize).view(dtype).reshape(shape)

    def bytes_at(self, offset: int, nbytes: int) -> np.ndarray:
        """The segment's ``nbytes`` bytes from ``offset`` as a uint8 array that keeps the mapping
        while any array over it lives. Every array made from it (a view, a reshape, or
        ``np.ndarray(buffer=...)``) refers to this very array: numpy ties views to the first array
        up their chain of bases that has no array base, and this one's base is a memoryview."""
        return np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=offset)

    def close(self) -> None:
        """Closes the segment (idempotent); the mapping goes when no array over it is left."""
        if self._map is not None:
            self._bytes = None
            try:
                self._map.close()
            except BufferError:  # arrays made by array() still use it: they unmap it when they go
                pass
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


class ReplyBuffers:
    """Segments a client makes for one session's fixed-layout step replies: the worker writes
    a step's observation (its data section) into the buffer the request names, and the client
    hands out arrays over that memory instead of copying it out. A buffer is named again only
    once no array over it is left, so an observation the caller keeps is never overwritten.
    """

    COUNT = 3

    def __init__(self, nbytes: int) -> None:
        self.segments = SharedSegment.create_many(self.COUNT, DATA_START + nbytes)
        self._data = [segment.bytes_at(DATA_START, nbytes) for segment in self.segments]

    def offer(self) -> Dict[str, Any]:
        """The fields of ``use_reply_buffers``."""
        return {"buffers": [segment.offer() for segment in self.segments]}

    def take(self) -> int:
        """The number (1, 2, ...) of a buffer no array handed out uses, or 0 when the caller
        still holds observations in all of them."""
        for index in range(len(self._data)):
            # References: the list and getrefcount's argument.
            if sys.getrefcount(self._data[index]) == 2:
                return index + 1
        return 0

    def data(self, number: int) -> np.ndarray:
        """Buffer ``number``'s data section (writable bytes; arrays made over it keep it in use)."""
        return self._data[number - 1]

    def close(self) -> None:
        """Closes the segments; observations the caller still holds stay valid (and keep theirs
        mapped)."""
        self._data = []
        for segment in self.segments:
            segment.close()


def _check_is_memfd(target: str, path: str) -> None:
    """Refuses a descriptor whose ``/proc`` link ``target`` is not a gym-remote memfd."""
    if not target.startswith(f"/memfd:{_MEMFD_NAME} "):
        raise ValueError(f"{path} is {target}, not a gym-remote shared memory segment")
