"""The wire format: framing, and the codec for values (numpy arrays travel as raw buffers).

A frame is a 16-byte prefix, a msgpack header, then a data section::

    prefix  = magic b"GYMR" | header_length: uint32 LE | data_length: uint64 LE
    header  = msgpack value, arrays and other non-msgpack values as extension types
    data    = the raw bytes of every array in the header, each at an 8-byte aligned offset

A frame with the magic b"GYMS" carries no data on the socket: its data section is in the
session's shared memory segment (``gym_remote.sharedmem``, same host only).

See ``docs/protocol.md`` for the full specification. This module runs inside simulator
interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

import contextlib
import math
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import numpy as np
from gymnasium.spaces import GraphInstance

from gym_remote.errors import (
    MessageTooLarge,
    ProtocolError,
    RemoteTimeout,
    UnsupportedValue,
    shown,
)
from gym_remote.sharedmem import MINIMUM_SHARED_BYTES

__all__ = [
    "PROTOCOL_VERSION",
    "WORKER_STARTED",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "PeerClosed",
    "IdleTimeout",
    "encode_frame",
    "decode_frame",
    "encode_bytes",
    "decode_bytes",
    "send_message",
    "send_frame",
    "set_send_timeout",
    "timeval",
    "timeval_seconds",
    "MessageReader",
    "wire_dtype",
    "MAX_NESTING",
    "MAX_DIMENSIONS",
    "shape_problem",
]

PROTOCOL_VERSION = 1
# What a worker sends its server on the control socket once it runs, before it makes the env.
WORKER_STARTED = b"\x01"
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
MAGIC = b"GYMR"
MAGIC_SHARED = b"GYMS"
# Fixed-layout step frames (gym_remote.step.frames): data on the socket, or in shared memory.
MAGIC_FIXED = b"GYMF"
MAGIC_FIXED_SHARED = b"GYMG"
PREFIX = struct.Struct("<4sIQ")
_TIMEVAL = struct.Struct("ll")
DATA_ALIGNMENT = 8
# Bounds on what a peer's header may declare, checked before anything is allocated: how deep
# extension values (tuples, graph instances) nest, and how many dimensions an array has.
MAX_NESTING = 32
MAX_DIMENSIONS = 32
_MAX_DTYPE_TEXT = 32

EXT_NDARRAY = 1
EXT_TUPLE = 2
EXT_NUMPY_SCALAR = 3
EXT_PICKLE = 4
EXT_GRAPH_INSTANCE = 5
EXT_BIG_INT = 6
# MessagePack's own integers cover this range; EXT_BIG_INT carries the rest.
_MSGPACK_INTS = range(-(1 << 63), 1 << 64)

# Linux refuses sendmsg with more buffers than IOV_MAX (1024); past this many, the data is joined.
MAX_SEND_BUFFERS = 512
_RECEIVE_CHUNK = 1 << 16
_POOLED_MINIMUM_BYTES = 1 << 16
_POOL_SIZE = 4
_PAGE_SIZE = 4096
# bytearray travels as bytes (msgpack's bin), as the C packer sends it.
_NATIVE_TYPES = frozenset([type(None), bool, int, float, str, bytes, bytearray])
_ZERO_PADDING = bytes(DATA_ALIGNMENT)
_SOCKET_DATA_MAGICS = (MAGIC, MAGIC_FIXED)
_SHARED_DATA_MAGICS = (MAGIC_SHARED, MAGIC_FIXED_SHARED)
_FIXED_MAGICS = (MAGIC_FIXED, MAGIC_FIXED_SHARED)


class PeerClosed(ProtocolError):
    """The peer closed the connection cleanly between two messages."""

    code = "peer_closed"


class IdleTimeout(RemoteTimeout):
    """No byte of a new message arrived within the wait."""


class _Unsupported(Exception):
    """Raised inside the encoder; carries the path to the bad value out of the recursion."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.path: List[str] = []


_thread_state = threading.local()


def _thread_packers() -> Tuple[msgpack.Packer, msgpack.Packer]:
    """This thread's streaming packer (for headers) and plain packer (for small payloads).

    Reusing packers, and writing into one rather than building a tree of converted values
    first, is several times cheaper than ``msgpack.packb``.
    """
    try:
        return _thread_state.packers
    except AttributeError:
        _thread_state.packers = (
            msgpack.Packer(use_bin_type=True, autoreset=False),
            msgpack.Packer(use_bin_type=True),
        )
        return _thread_state.packers


class _DataSection:
    """The arrays of one frame, placed at aligned offsets of its data section."""

    def __init__(self, payload_packer: msgpack.Packer) -> None:
        self.chunks: List[Any] = []
        self.size = 0
        self.pack_payload = payload_packer.pack

    def place(self, array: np.ndarray) -> bytes:
        """Adds ``array``'s bytes; returns its packed ``[dtype, shape, offset, nbytes]`` descriptor."""
        padding = -self.size % DATA_ALIGNMENT
        if padding:
            self.chunks.append(_ZERO_PADDING[:padding])
            self.size += padding
        offset = self.size
        nbytes = array.nbytes
        dtype = array.dtype
        if nbytes:
            # sendmsg reads a C-contiguous array in place: no copy. numpy cannot export
            # datetime buffers, so those travel as a byte view.
            chunk = array if array.flags.c_contiguous else np.ascontiguousarray(array)
            self.chunks.append(chunk.reshape(-1).view(np.uint8) if dtype.kind in "mM" else chunk)
            self.size += nbytes
        return self.pack_payload([_dtype_text(dtype), list(array.shape), offset, nbytes])

    def scalar_payload(self, value: np.generic) -> bytes:
        """The packed ``[dtype, bytes]`` payload of a numpy scalar."""
        return self.pack_payload([_dtype_text(value.dtype), value.tobytes()])


class _FastEncoder(_DataSection):
    """Encodes the usual values with msgpack's C packer, hooking in only for numpy and tuples.

    Anything it does not take (values that need pickle or an error naming their place) makes it
    raise, and :class:`_Encoder` encodes the value instead, to the same bytes where both can.
    """

    def __init__(self) -> None:
        super().__init__(msgpack.Packer(use_bin_type=True))
        self.packer = self._new_packer()

    def _new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(use_bin_type=True, strict_types=True, default=self._extension)

    def encode(self, value: Any) -> bytes:
        self.chunks = []
        self.size = 0
        return self.packer.pack(value)

    def _extension(self, value: Any) -> Any:
        kind = type(value)
        if kind is np.ndarray and not value.dtype.hasobject and value.dtype.fields is None:
            return _ext_type(EXT_NDARRAY, self.place(value))
        if kind is tuple or kind is GraphInstance:
            # A packer of its own: the one that called this hook is in the middle of a message.
            code = EXT_TUPLE if kind is tuple else EXT_GRAPH_INSTANCE
            return _ext_type(code, self._new_packer().pack(list(value)))
        if isinstance(value, np.generic) and not value.dtype.hasobject:
            return _ext_type(EXT_NUMPY_SCALAR, self.scalar_payload(value))
        if isinstance(value, dict):
            return dict(value)
        if kind is int:  # beyond MessagePack's 64 bits
            return _ext_type(EXT_BIG_INT, _big_int_bytes(value))
        raise TypeError(kind)


def _ext_type(code: int, data: bytes) -> msgpack.ExtType:
    """``msgpack.ExtType(code, data)`` without its argument checks (a Python-level ``__new__``
    that costs more than the rest of encoding a small array): our codes and payloads are valid."""
    return tuple.__new__(msgpack.ExtType, (code, data))


def _big_int_bytes(value: int) -> bytes:
    """``value`` in two's complement, big-endian, with a byte to spare at most (for the sign)."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _thread_fast_encoder() -> "_FastEncoder":
    try:
        return _thread_state.fast_encoder
    except AttributeError:
        _thread_state.fast_encoder = _FastEncoder()
        return _thread_state.fast_encoder


class _Encoder(_DataSection):
    """Writes a value into a msgpack packer, moving array bytes into a data section.

    The complete encoder: it also pickles (when allowed) and names the place of a value that
    cannot travel. :class:`_FastEncoder` does the common case.
    """

    def __init__(self, allow_pickle: bool, payload_packer: msgpack.Packer) -> None:
        super().__init__(payload_packer)
        self.allow_pickle = allow_pickle

    def write(self, packer: msgpack.Packer, value: Any) -> None:
        kind = type(value)
        if kind in _NATIVE_TYPES:
            if kind is int and value not in _MSGPACK_INTS:
                packer.pack_ext_type(EXT_BIG_INT, _big_int_bytes(value))
            else:
                packer.pack(value)
        elif kind is np.ndarray:
            self._write_array(packer, value)
        elif kind is dict:
            packer.pack_map_header(len(value))
            for key, item in value.items():
                try:
                    if type(key) in _NATIVE_TYPES or type(key) is tuple:
                        self.write(packer, key)
                    else:
                        self._write_fallback(packer, key)
                    self.write(packer, item)
                except _Unsupported as unsupported:
                    unsupported.path.append(f"[{key!r}]")
                    raise
        elif kind is list:
            packer.pack_array_header(len(value))
            self._write_items(packer, value)
        elif kind is tuple:
            packer.pack_ext_type(EXT_TUPLE, self._nested(value))
        elif kind is GraphInstance:
            packer.pack_ext_type(EXT_GRAPH_INSTANCE, self._nested(value))
        elif isinstance(value, dict):
            # OrderedDict (gymnasium 0.29's Dict samples) and other dict subclasses travel as
            # plain dicts, which keep insertion order.
            self.write(packer, dict(value))
        elif isinstance(value, np.generic) and not value.dtype.hasobject:
            packer.pack_ext_type(EXT_NUMPY_SCALAR, self.scalar_payload(value))
        else:
            self._write_fallback(packer, value)

    def _write_items(self, packer: msgpack.Packer, items: Any) -> None:
        for index, item in enumerate(items):
            try:
                self.write(packer, item)
            except _Unsupported as unsupported:
                unsupported.path.append(f"[{index}]")
                raise

    def _nested(self, items: Any) -> bytes:
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        packer.pack_array_header(len(items))
        self._write_items(packer, items)
        return packer.bytes()

    def _write_array(self, packer: msgpack.Packer, array: np.ndarray) -> None:
        if array.dtype.hasobject or array.dtype.fields is not None:
            self._write_fallback(packer, array)
            return
        packer.pack_ext_type(EXT_NDARRAY, self.place(array))

    def _write_fallback(self, packer: msgpack.Packer, value: Any) -> None:
        if not self.allow_pickle:
            raise _Unsupported(value)
        import cloudpickle

        packer.pack_ext_type(EXT_PICKLE, cloudpickle.dumps(value))


def encode_frame(value: Any, allow_pickle: bool = False) -> List[Any]:
    """Encodes ``value`` as one frame, returned as a list of buffers to send in order.

    Raises:
        UnsupportedValue: ``value`` holds something the format cannot express and
            ``allow_pickle`` is false; the message names where it is.
    """
    fast = _thread_fast_encoder()
    try:
        header = fast.encode(value)
    except Exception:  # not the usual kind of value: the complete encoder takes it
        return _encode_frame_completely(value, allow_pickle)
    return [PREFIX.pack(MAGIC, len(header), fast.size), header] + fast.chunks


def _encode_frame_completely(value: Any, allow_pickle: bool) -> List[Any]:
    """:func:`encode_frame` with the complete encoder, which pickles or names what cannot travel."""
    header_packer, payload_packer = _thread_packers()
    encoder = _Encoder(allow_pickle, payload_packer)
    try:
        encoder.write(header_packer, value)
        header = header_packer.bytes()
    except _Unsupported as unsupported:
        where = "".join(reversed(unsupported.path)) or "the value itself"
        raise UnsupportedValue(
            f"cannot send {_kind_of(unsupported.value)} at {where} without pickle: "
            "gym-remote sends numpy arrays, numpy scalars, Python scalars, str, bytes, None "
            "and dicts, lists and tuples of them. "
            "Convert it, or enable allow_pickle=True on both client and server."
        ) from None
    except RecursionError:
        raise UnsupportedValue("cannot send a value nested this deeply: flatten it") from None
    finally:
        header_packer.reset()
    prefix = PREFIX.pack(MAGIC, len(header), encoder.size)
    return [prefix, header] + encoder.chunks


def _kind_of(value: Any) -> str:
    """What ``value`` is, for an error: its type, and an array's dtype (object, structured)."""
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype}"
    return type(value).__name__


def encode_bytes(value: Any, allow_pickle: bool = False) -> bytes:
    """Encodes ``value`` as one frame in a single bytes object (for pipes and files, not sockets)."""
    return b"".join(byte_view(chunk) for chunk in encode_frame(value, allow_pickle))


def decode_bytes(data: bytes, allow_pickle: bool = False) -> Any:
    """Decodes one frame held whole in ``data`` (the inverse of :func:`encode_bytes`).

    Raises:
        ProtocolError: ``data`` is not exactly one valid frame.
    """
    if len(data) < PREFIX.size:
        raise ProtocolError("a frame is at least 16 bytes")
    magic, header_length, data_length = PREFIX.unpack_from(data)
    if magic != MAGIC or len(data) != PREFIX.size + header_length + data_length:
        raise ProtocolError("not exactly one gym-remote frame")
    header_end = PREFIX.size + header_length
    return decode_frame(data[PREFIX.size : header_end], bytearray(data[header_end:]), allow_pickle)


def decode_frame(header: Any, data: Any, allow_pickle: bool = False) -> Any:
    """Decodes a frame's header and data section (a writable buffer) back into a value.

    Raises:
        ProtocolError: the header is not valid msgpack or points outside the data section.
        UnsupportedValue: the frame holds a pickled value and ``allow_pickle`` is false.
    """
    decoder = _Decoder(data, allow_pickle) if len(data) else _DATALESS_DECODERS[bool(allow_pickle)]
    return decoder.decode(header)


class _Decoder:
    """Turns extension types back into values; arrays become views of the data section.

    A class rather than a closure: a nested hook that refers to itself would make a reference
    cycle, and the data section would then live until the garbage collector runs. Each nested
    extension (a tuple in a tuple) decodes with a decoder one level deeper, so the depth is
    bounded without state shared between threads.
    """

    def __init__(self, data: Any, allow_pickle: bool, depth: int = 0) -> None:
        self.data = memoryview(data)
        self.allow_pickle = allow_pickle
        self.depth = depth

    def decode(self, payload: Any) -> Any:
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=self.ext_hook)
        except (UnsupportedValue, ProtocolError):
            raise
        except Exception as error:
            raise ProtocolError(f"malformed message header: {type(error).__name__}: {error}") from None

    def _nested(self, payload: bytes) -> Any:
        """A MessagePack payload inside an extension, decoded one level deeper."""
        if self.depth >= MAX_NESTING:
            raise ProtocolError(f"extension values nested more than {MAX_NESTING} deep")
        return _Decoder(self.data, self.allow_pickle, self.depth + 1).decode(payload)

    def ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_NDARRAY:
            return _decode_array(_descriptor(payload, 4, "array"), self.data)
        if code == EXT_TUPLE:
            items = self._nested(payload)
            if type(items) is not list:
                raise ProtocolError("a tuple extension must hold an array of its items")
            return tuple(items)
        if code == EXT_GRAPH_INSTANCE:
            parts = self._nested(payload)
            if type(parts) is not list or len(parts) != 3:
                raise ProtocolError("malformed graph instance")
            return GraphInstance(*parts)
        if code == EXT_NUMPY_SCALAR:
            dtype_text, raw = _descriptor(payload, 2, "numpy scalar")
            dtype = wire_dtype(dtype_text)
            if type(raw) is not bytes or len(raw) != dtype.itemsize:
                raise ProtocolError(f"a numpy scalar of {dtype} needs {dtype.itemsize} bytes")
            return np.frombuffer(raw, dtype)[0]
        if code == EXT_BIG_INT:
            if not payload:
                raise ProtocolError("an integer extension with no bytes")
            return int.from_bytes(payload, "big", signed=True)
        if code == EXT_PICKLE:
            if not self.allow_pickle:
                raise UnsupportedValue(
                    "the peer sent a pickled value, but pickle is not enabled here: pass "
                    "allow_pickle=True on both client and server to accept it"
                )
            import cloudpickle

            return cloudpickle.loads(payload)
        raise ProtocolError(f"unknown extension type {code}")


def _descriptor(payload: bytes, length: int, what: str) -> List[Any]:
    """An extension's MessagePack payload that must be a flat array of ``length`` plain values."""
    try:
        items = msgpack.unpackb(payload, raw=False)
    except Exception:
        items = None
    if type(items) is not list or len(items) != length:
        raise ProtocolError(f"malformed {what} descriptor: expected an array of {length} values")
    return items


# Decoders for frames with an empty data section (small messages and infos): one fewer object
# to make per message.
_DATALESS_DECODERS = (_Decoder(b"", False), _Decoder(b"", True))

_DTYPE_CACHE: Dict[Any, np.dtype] = {}
_DTYPE_CACHE_LIMIT = 1024


def wire_dtype(text: Any) -> np.dtype:
    """The dtype a peer named, refusing anything but a plain, sized dtype (ProtocolError):
    object, structured and subarray dtypes, and those of no size (``<U0``, ``|V0``, ``S``)."""
    dtype = _DTYPE_CACHE.get(text) if type(text) is str else None
    if dtype is not None:
        return dtype
    if type(text) is not str or len(text) > _MAX_DTYPE_TEXT:
        raise ProtocolError(f"a dtype must be a short string, got {shown(text)}")
    try:
        dtype = np.dtype(text)
    except Exception:
        raise ProtocolError(f"invalid dtype {shown(text)}") from None
    if dtype.hasobject:
        raise ProtocolError(f"object dtype {text!r} is not allowed on the wire")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"structured dtype {text!r} is not allowed on the wire")
    if dtype.itemsize == 0:
        raise ProtocolError(f"dtype {text!r} has no size")
    if len(_DTYPE_CACHE) < _DTYPE_CACHE_LIMIT:
        _DTYPE_CACHE[text] = dtype
    return dtype


_DTYPE_TEXTS: Dict[np.dtype, str] = {}


def _dtype_text(dtype: np.dtype) -> str:
    """``dtype.str`` (numpy formats it anew on every access), remembered per dtype."""
    text = _DTYPE_TEXTS.get(dtype)
    if text is None:
        text = dtype.str
        if len(_DTYPE_TEXTS) < _DTYPE_CACHE_LIMIT:
            _DTYPE_TEXTS[dtype] = text
    return text


def shape_problem(shape: Any) -> Optional[str]:
    """What is wrong with a shape a peer declared, or None where it is a list of at most
    ``MAX_DIMENSIONS`` non-negative integers (checked before anything multiplies them)."""
    if type(shape) is not list or len(shape) > MAX_DIMENSIONS:
        return f"the shape must be a list of at most {MAX_DIMENSIONS} dimensions"
    if not all(type(size) is int and size >= 0 for size in shape):
        return "every dimension must be a non-negative integer"
    return None


def _decode_array(payload: List[Any], data: memoryview) -> np.ndarray:
    """The array an ``[dtype, shape, offset, nbytes]`` descriptor places in ``data``, as a view.

    Everything is checked before anything is allocated: the dtype, at most ``MAX_DIMENSIONS``
    non-negative dimensions, and ``nbytes`` both equal to the shape's size and within ``data``.
    """
    dtype_text, shape, offset, nbytes = payload
    dtype = wire_dtype(dtype_text)
    problem = shape_problem(shape) or _placement_problem(dtype, shape, offset, nbytes, len(data))
    if problem is None:
        try:
            if nbytes == 0:
                return np.empty(shape, dtype)
            return np.ndarray(shape, dtype, data, offset)
        except ValueError as error:  # a dimension numpy cannot index (beside a zero one)
            problem = str(error)
    raise ProtocolError(
        f"malformed array descriptor {shown(payload)} for a {len(data)}-byte data section: {problem}"
    )


def _placement_problem(
    dtype: np.dtype, shape: List[int], offset: Any, nbytes: Any, room: int
) -> Optional[str]:
    """What is wrong with where a descriptor puts an array of ``shape`` (a valid one) in a data
    section of ``room`` bytes, or None."""
    if type(offset) is not int or type(nbytes) is not int or offset < 0:
        return "offset and nbytes must be non-negative integers"
    if math.prod(shape) * dtype.itemsize != nbytes:
        return "nbytes does not match dtype and shape"
    if offset + nbytes > room:
        return "its bytes lie past the end of the data section"
    return None


def send_message(sock: socket.socket, value: Any, allow_pickle: bool = False) -> None:
    """Encodes ``value`` and sends it as one frame with as few system calls as possible."""
    send_buffers(sock, encode_frame(value, allow_pickle))


def send_frame(sock: socket.socket, buffers: List[Any], segment: Any = None) -> None:
    """Sends a frame from :func:`encode_frame`, its data section through ``segment`` when it is large.

    Args:
        segment: A :class:`~gym_remote.sharedmem.SharedSegment` the peer has attached, or None.
    """
    magic, header_length, data_length = PREFIX.unpack_from(buffers[0])
    if (
        segment is not None
        and data_length >= MINIMUM_SHARED_BYTES
        and segment.write([byte_view(chunk) for chunk in buffers[2:]], data_length)
    ):
        shared_magic = MAGIC_FIXED_SHARED if magic == MAGIC_FIXED else MAGIC_SHARED
        shared_frame = [PREFIX.pack(shared_magic, header_length, data_length), buffers[1]]
        _send_all(sock, shared_frame, PREFIX.size + header_length)
    else:  # an encode_frame magic: the data section follows on the socket
        _send_all(sock, buffers, PREFIX.size + header_length + data_length)


def send_buffers(sock: socket.socket, buffers: List[Any]) -> None:
    """Sends a frame's ``buffers`` in order, handling partial sends without joining them.

    The data section is what the prefix says follows the header on the socket (none for the
    shared memory magics ``GYMS`` and ``GYMG``).

    Raises:
        RemoteTimeout: the peer did not take the bytes within the socket's send timeout.
    """
    _send_all(sock, buffers, _length_on_socket(*PREFIX.unpack_from(buffers[0])))


def _length_on_socket(magic: bytes, header_length: int, data_length: int) -> int:
    return PREFIX.size + header_length + (data_length if magic in _SOCKET_DATA_MAGICS else 0)


def _send_all(sock: socket.socket, buffers: List[Any], length: int) -> None:
    """Sends the ``length`` bytes of ``buffers`` (see :func:`send_buffers`)."""
    if len(buffers) > MAX_SEND_BUFFERS:
        buffers = buffers[:2] + [b"".join(byte_view(chunk) for chunk in buffers[2:])]
    started = time.monotonic()
    try:
        sent = sock.sendmsg(buffers)
    except (BlockingIOError, socket.timeout):
        raise RemoteTimeout("sending a message timed out") from None
    if sent != length:
        _send_remaining(sock, buffers, sent, length, started)


def _send_remaining(sock: socket.socket, buffers: List[Any], sent: int, length: int, started: float) -> None:
    """Sends the bytes of ``buffers`` after the first ``sent`` of their ``length``, all of them
    within the socket's send timeout of ``started``: the kernel's timeout counts one send, and a
    peer that reads a little now and then would otherwise stretch a reply without end."""
    remaining = length - sent
    if not remaining:
        return
    views = [byte_view(chunk) for chunk in buffers]
    first = 0
    timeout = _send_timeout(sock)
    try:
        while remaining:
            while sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            views[first] = views[first][sent:]
            if timeout is not None:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    raise RemoteTimeout("sending a message timed out")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(left))
            sent = sock.sendmsg(views[first:])
            remaining -= sent
    except (BlockingIOError, socket.timeout):
        raise RemoteTimeout("sending a message timed out") from None
    finally:
        if timeout is not None:
            with contextlib.suppress(OSError):  # a closed socket keeps no timeout to restore
                set_send_timeout(sock, timeout)


def _send_timeout(sock: socket.socket) -> Optional[float]:
    """The socket's send timeout (``SO_SNDTIMEO``); None where it has none."""
    return timeval_seconds(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.size))


def set_send_timeout(sock: socket.socket, seconds: Optional[float]) -> None:
    """Makes each send on ``sock`` wait up to ``seconds`` (None: forever) for room in the
    socket's buffer; past it the send raises ``BlockingIOError``. Timeouts stay the kernel's
    (``SO_SNDTIMEO``), so the socket stays in blocking mode."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(seconds))


def timeval(seconds: Optional[float]) -> bytes:
    """A ``struct timeval`` for ``SO_RCVTIMEO`` / ``SO_SNDTIMEO``: zero means "no timeout", so the
    smallest real one is a microsecond."""
    seconds_value = 0.0 if seconds is None else max(seconds, 1e-6)
    whole = int(seconds_value)
    return _TIMEVAL.pack(whole, int((seconds_value - whole) * 1e6))


def timeval_seconds(value: bytes) -> Optional[float]:
    """The seconds a ``struct timeval`` from :func:`timeval` holds; None for zero (no timeout)."""
    whole, micro = _TIMEVAL.unpack(value)
    return whole + micro / 1e6 if whole or micro else None


def byte_view(chunk: Any) -> Any:
    """A 1-D byte view of a chunk (numpy views work for every dtype, memoryview casts do not)."""
    if isinstance(chunk, np.ndarray):
        return chunk.reshape(-1).view(np.uint8)
    return memoryview(chunk)


class MessageReader:
    """Reads frames from a blocking socket, with a size limit and deadlines.

    The first wait (for the first byte of a message) and the rest of the message have separate
    time limits, so a peer can be idle for long between messages but never dribble a frame.
    Timeouts are the kernel's (``SO_RCVTIMEO``): no extra ``poll`` per read.

    Attributes:
        segment: The shared memory segment ``GYMS`` frames take their data section from
            (a client's, once attached); None refuses such frames.
    """

    def __init__(self, sock: socket.socket, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        self.sock = sock
        self.max_message_size = max_message_size
        self.segment: Any = None
        self._pending = b""
        # Unknown (NaN equals nothing) until the first receive sets it: the socket may carry a
        # timeout its previous owner set, as a server's for a handshake before a worker takes it.
        self._receive_timeout: Optional[float] = math.nan
        self._scratch = bytearray(_RECEIVE_CHUNK)
        self._scratch_view = memoryview(self._scratch)
        self._bodies = _BodyBufferPool()

    def receive(
        self,
        wait: Optional[float],
        read_timeout: Optional[float] = None,
        allow_pickle: bool = False,
        whole_within: Optional[float] = None,
    ) -> Any:
        """Receives and decodes one message.

        Args:
            wait: Seconds to wait for the message to start (None: forever).
            read_timeout: Seconds for the rest of the message once it started (default ``wait``).
            allow_pickle: Accept pickled values in the message.
            whole_within: Seconds for the whole message, its wait included (instead of ``wait``
                and ``read_timeout``).

        Raises:
            PeerClosed: the peer closed the connection before a new message started.
            IdleTimeout: no message started within ``wait``.
            RemoteTimeout: a started message did not complete in time.
            ProtocolError / MessageTooLarge: the bytes are not a valid frame.
        """
        if whole_within is None:
            header, data, fixed = self.receive_frame(wait, read_timeout)
        else:
            deadline = time.monotonic() + whole_within
            chunk = self.receive_chunk(whole_within)
            left = max(deadline - time.monotonic(), 1e-6)
            header, data, fixed = self.receive_frame(left, left, chunk)
        if fixed:
            raise ProtocolError("a fixed-layout step frame where a MessagePack frame was expected")
        return decode_frame(header, data, allow_pickle)

    def receive_chunk(self, wait: Optional[float]) -> Any:
        """The next bytes of the stream: what the last frame left over, or else what arrives
        next (up to 64 KiB, waiting up to ``wait`` seconds for it), without parsing them.

        The result is valid until the next receive. A caller that looks at it (for a whole
        fixed-layout step, see ``gym_remote.step.frames``) hands it on to :meth:`receive_frame`
        unless it used it up.

        Raises:
            PeerClosed / IdleTimeout: as :meth:`receive`.
        """
        if self._pending:
            pending, self._pending = self._pending, b""
            return pending
        if wait != self._receive_timeout:
            self._set_timeout(wait)
        # Every frame starts with a nonzero byte: one here after an interrupted receive says
        # that the stream's bytes were taken (see nothing_taken).
        self._scratch[0] = 0
        try:
            received = self.sock.recv_into(self._scratch)
        except (BlockingIOError, socket.timeout):
            raise IdleTimeout("no message arrived in time") from None
        if not received:
            raise PeerClosed("the peer closed the connection")
        return self._scratch_view[:received]

    def nothing_taken(self) -> bool:
        """After a :meth:`receive_chunk` that reads the socket was interrupted (by
        KeyboardInterrupt, say): whether it took nothing from the stream, so that the frame it
        waited for is still to come. An interruption can land just after the kernel handed over
        bytes, before any Python code of this class noted them: the first byte tells."""
        return self._scratch[0] == 0

    def receive_frame(
        self, wait: Optional[float], read_timeout: Optional[float] = None, chunk: Any = None
    ) -> Tuple[memoryview, Any, bool]:
        """Receives one frame without decoding it: returns its header, its data section and
        whether it is a fixed-layout step frame (``GYMF``/``GYMG``, see ``gym_remote.step.frames``).

        Args:
            chunk: What :meth:`receive_chunk` returned, where the caller looked first: the
                frame starts there.
        """
        if read_timeout is None:
            read_timeout = wait
        buffer = self.receive_chunk(wait) if chunk is None else chunk
        deadline = None
        if len(buffer) < PREFIX.size:  # the rest of the prefix, and no more yet
            deadline = _deadline(read_timeout)
            prefix = bytearray(PREFIX.size)
            prefix[: len(buffer)] = buffer
            self._receive_into(memoryview(prefix)[len(buffer) :], read_timeout, deadline)
            buffer = prefix
        magic, header_length, data_length = PREFIX.unpack_from(buffer)
        body_length = header_length + data_length
        end = PREFIX.size + body_length
        if magic in _SOCKET_DATA_MAGICS and end <= len(buffer) and body_length <= self.max_message_size:
            # The usual small message, whole in hand: one copy of its data section (an
            # allocation of its own, so aligned and writable) and no other work.
            if len(buffer) > end:
                self._pending = bytes(buffer[end:])
            header_end = PREFIX.size + header_length
            return buffer[PREFIX.size : header_end], bytearray(buffer[header_end:end]), magic == MAGIC_FIXED
        shared = magic in _SHARED_DATA_MAGICS and self.segment is not None
        if magic not in _SOCKET_DATA_MAGICS and not shared:
            raise ProtocolError(f"not a gym-remote frame (bad magic {bytes(magic)!r})")
        if body_length > self.max_message_size:
            raise MessageTooLarge(
                f"a {body_length}-byte message exceeds the maximum message size "
                f"of {self.max_message_size} bytes"
            )
        on_socket = header_length if shared else body_length
        end = PREFIX.size + on_socket
        have = min(len(buffer), end) - PREFIX.size
        view = self._bodies.take(body_length, header_length, have).data
        view[:have] = buffer[PREFIX.size : PREFIX.size + have]
        if len(buffer) > end:
            self._pending = bytes(buffer[end:])
        if have < on_socket:
            if deadline is None:
                deadline = _deadline(read_timeout)
            self._receive_into(view[have:on_socket], read_timeout, deadline)
        if shared:
            try:
                self.segment.read_into(view[header_length:])
            except ValueError as error:
                raise ProtocolError(f"shared memory frame: {error}") from None
        return view[:header_length], view[header_length:], magic in _FIXED_MAGICS

    def _set_timeout(self, seconds: Optional[float]) -> None:
        """Makes each receive wait up to ``seconds`` (None: forever); callers skip it when that
        is already so (one system call)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(seconds))
        self._receive_timeout = seconds

    def _receive_into(self, view: memoryview, timeout: Optional[float], deadline: Optional[float]) -> None:
        """Fills ``view`` from the socket, each receive waiting up to ``timeout`` seconds and
        all of them ending by ``deadline`` (``time.monotonic()``; None: no deadline)."""
        if timeout != self._receive_timeout:
            self._set_timeout(timeout)
        while view.nbytes:
            try:
                received = self.sock.recv_into(view)
            except (BlockingIOError, socket.timeout):
                raise RemoteTimeout("the rest of a message did not arrive in time") from None
            if not received:
                raise ProtocolError("connection closed in the middle of a frame")
            view = view[received:]
            if view.nbytes:
                _check_deadline(deadline)


class _BodyBufferPool:
    """Receive buffers for message bodies; large ones are reused once no array decoded from them
    is alive.

    Receiving into memory that was just in use keeps it in the CPU caches: a fresh 400 KB
    buffer per message costs about 30 us more on the benchmark machine. A buffer is free when
    only this pool refers to it, so arrays a user keeps are never overwritten.
    """

    def __init__(self) -> None:
        # Each buffer with its address (numpy builds a whole dict to tell it).
        self._buffers: List[Tuple[np.ndarray, int]] = []

    def take(self, nbytes: int, data_start: int, socket_start: int) -> np.ndarray:
        """A writable uint8 array of ``nbytes`` bytes, whose old contents do not matter, for a
        body whose data section starts at ``data_start`` and whose bytes from ``socket_start`` on
        the kernel copies out of the socket.

        The data section (and so every array in it) is 8-byte aligned. The socket's part starts
        mid-page: the kernel's copy into memory just past a page boundary, where malloc puts
        large blocks, measured 3-4x slower on the benchmark machine (AMD; most likely the 4 KiB
        aliasing of ``rep movsb``, as socket data starts near page boundaries too): 270 instead
        of 185 us per 393 KB step on one core.
        """
        buffer, address = self._buffer(nbytes + _PAGE_SIZE + DATA_ALIGNMENT)
        start = (_PAGE_SIZE // 2 - address - socket_start) % _PAGE_SIZE
        start += -(address + start + data_start) % DATA_ALIGNMENT
        return buffer[start : start + nbytes]

    def _buffer(self, nbytes: int) -> Tuple[np.ndarray, int]:
        if nbytes < _POOLED_MINIMUM_BYTES:
            return _addressed(np.empty(nbytes, dtype=np.uint8))
        free = None
        for index, entry in enumerate(self._buffers):
            # References: the entry, and getrefcount's argument.
            if sys.getrefcount(entry[0]) == 2:
                if entry[0].nbytes >= nbytes:
                    return entry
                free = index
        entry = _addressed(np.empty(nbytes, dtype=np.uint8))
        if len(self._buffers) < _POOL_SIZE:
            self._buffers.append(entry)
        elif free is not None:
            self._buffers[free] = entry
        return entry


def _addressed(buffer: np.ndarray) -> Tuple[np.ndarray, int]:
    """``buffer`` with the address of its memory (np.empty: unlike bytearray, it does not zero
    memory that is overwritten right away)."""
    return buffer, buffer.__array_interface__["data"][0]


def _deadline(seconds: Optional[float]) -> Optional[float]:
    """The ``time.monotonic()`` reading ``seconds`` from now (None: no deadline)."""
    return None if seconds is None else time.monotonic() + seconds


def _check_deadline(deadline: Optional[float]) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise RemoteTimeout("the rest of a message did not arrive in time")
