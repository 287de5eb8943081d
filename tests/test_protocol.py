"""The wire format: values round-trip exactly, bad frames give typed errors."""

from __future__ import annotations

import socket
import struct
import threading
from collections import OrderedDict

import msgpack
import numpy as np
import pytest
from gymnasium.spaces import GraphInstance
from gymnasium.utils.env_checker import data_equivalence

from gym_remote import protocol
from gym_remote.errors import MessageTooLarge, ProtocolError, UnsupportedValue
from gym_remote.protocol import (
    EXT_BIG_INT,
    EXT_NDARRAY,
    PREFIX,
    MessageReader,
    PeerClosed,
    decode_bytes,
    decode_frame,
    encode_bytes,
    encode_frame,
    send_frame,
    send_message,
)
from gym_remote.sharedmem import SharedSegment


def round_trip(value, allow_pickle=False):
    frame = encode_bytes(value, allow_pickle)
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame)
        return MessageReader(right).receive(5.0, allow_pickle=allow_pickle)


DTYPES = [
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    ">f8",
    "<U5",
    "S3",
    "datetime64[ns]",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (1, 0, 2)])
def test_arrays_keep_dtype_shape_and_values(dtype, shape):
    array = np.zeros(shape, dtype=dtype)
    if array.size:
        array.reshape(-1)[:] = np.arange(array.size).astype(dtype)
    decoded = round_trip(array)
    assert type(decoded) is np.ndarray
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert np.array_equal(decoded, array)
    assert decoded.flags.writeable


def test_arrays_are_aligned_and_writable_in_nested_values():
    value = {
        "a": np.arange(3, dtype=np.uint8),
        "b": np.arange(5, dtype=np.float64),
        "c": [np.ones((2, 2), np.int32)],
    }
    decoded = round_trip(value)
    for array in (decoded["a"], decoded["b"], decoded["c"][0]):
        assert array.flags.aligned and array.flags.writeable
    decoded["b"][0] = 42.0
    assert decoded["b"][0] == 42.0


def test_non_contiguous_arrays_round_trip():
    array = np.arange(24, dtype=np.int16).reshape(4, 6)[::2, ::3]
    assert np.array_equal(round_trip(array), array)


def test_nested_containers_keep_their_types():
    value = {
        "tuple": (1, 2.5, "three", b"four", None, True),
        "list": [np.float32(1.5), np.int64(-3), np.bool_(True), np.uint8(7)],
        "nested": {"deeper": ({"x": np.zeros(2)},)},
        7: "int key",
        (1, 2): "tuple key",
        "empty": {},
        "empty_tuple": (),
        "graph": GraphInstance(np.zeros((2, 3)), None, np.zeros((0, 2), np.int64)),
        "big": 2**63 + 5,
        "negative": -(2**63),
        "huge": [2**64, -(2**63) - 1, 3**200, -(3**200), 2**64 - 1],
        2**70: "huge key",
    }
    decoded = round_trip(value)
    assert decoded.keys() == value.keys()
    assert decoded["tuple"] == value["tuple"] and type(decoded["tuple"]) is tuple
    for original, copy in zip(value["list"], decoded["list"]):
        assert type(copy) is type(original) and copy == original
    assert type(decoded["nested"]["deeper"]) is tuple
    assert np.array_equal(decoded["nested"]["deeper"][0]["x"], np.zeros(2))
    assert decoded[7] == "int key" and decoded[(1, 2)] == "tuple key"
    assert type(decoded["graph"]) is GraphInstance and decoded["graph"].edges is None
    assert decoded["big"] == 2**63 + 5 and decoded["negative"] == -(2**63)
    assert decoded["huge"] == value["huge"] and decoded[2**70] == "huge key"


def test_the_fast_encoder_writes_the_same_frames_as_the_complete_one():
    values = [
        {"ok": [np.arange(4, dtype=np.float32), 1.0, False, True, {}]},
        {"ok": [{"ok": [np.zeros((2, 3), np.uint8), np.float64(0.5), np.bool_(False), False, {"k": 1}]}] * 3},
        {"tuple": (1, np.int16(2), (np.ones(3),)), "graph": GraphInstance(np.zeros((2, 3)), None, None)},
        {"ordered": OrderedDict(b=np.arange(3)[::2], a="x"), 7: None, (1, "two"): [b"raw", 2**64 - 1]},
        {"huge": [2**64, -(2**63) - 1, (2**100,)], -(2**90): {2**65: -1}},
        {"times": np.array(["2024-01-01"], dtype="datetime64[ns]"), "empty": np.zeros((0, 5))},
    ]

    def as_bytes(buffers):
        return [bytes(protocol.byte_view(chunk)) for chunk in buffers]

    for value in values:
        protocol._thread_fast_encoder().encode(value)  # takes it: no fallback to the complete encoder
        assert as_bytes(encode_frame(value)) == as_bytes(protocol._encode_frame_completely(value, False))


def test_bytearray_travels_as_bytes():
    assert round_trip({"raw": bytearray(b"\x00\x01")}) == {"raw": b"\x00\x01"}


def test_python_scalars_keep_their_types():
    for value in (0, -1, 1.5, float("inf"), True, False, None, "", "text", b"", b"\x00\xff"):
        decoded = round_trip(value)
        assert type(decoded) is type(value) and decoded == value


def test_unsupported_value_names_its_key():
    with pytest.raises(UnsupportedValue, match=r"set at \['info'\]\['custom'\]\[1\]"):
        encode_frame({"info": {"custom": [1, {3}]}})


def test_integers_beyond_64_bits_travel_as_their_own_extension():
    header = bytes(encode_frame(2**64)[1])
    assert msgpack.unpackb(header) == msgpack.ExtType(EXT_BIG_INT, b"\x01" + bytes(8))
    header = bytes(encode_frame(-(2**63) - 1)[1])
    assert msgpack.unpackb(header) == msgpack.ExtType(EXT_BIG_INT, b"\xff\x7f" + b"\xff" * 7)
    # A reader takes any length that has a byte, also for integers MessagePack would carry.
    for payload, number in [(b"\xfe", -2), (b"\x00\x00\x05", 5)]:
        assert _receive_raw(_frame(msgpack.packb(msgpack.ExtType(EXT_BIG_INT, payload)))) == number


def test_pickle_only_when_allowed():
    value = {"set": {1, 2}, "array": np.arange(3)}
    decoded = round_trip(value, allow_pickle=True)
    assert decoded["set"] == {1, 2} and np.array_equal(decoded["array"], np.arange(3))
    buffers = encode_frame(value, allow_pickle=True)
    header, data = bytes(buffers[1]), bytearray(b"".join(bytes(chunk) for chunk in buffers[2:]))
    with pytest.raises(UnsupportedValue, match="pickle"):
        decode_frame(header, data, allow_pickle=False)


@pytest.mark.parametrize(
    "array, dtype",
    [
        (np.array([object()], dtype=object), "object"),
        (np.zeros(2, dtype=[("a", "<f4")]), r"\[\('a', '<f4'\)\]"),
    ],
    ids=["object", "structured"],
)
def test_object_and_structured_arrays_never_travel_raw_and_the_error_names_their_dtype(array, dtype):
    with pytest.raises(UnsupportedValue, match=rf"ndarray of dtype {dtype} at \['obs'\]"):
        encode_frame({"obs": array})
    assert round_trip({"obs": array}, allow_pickle=True)["obs"].dtype == array.dtype


def _frame(header: bytes, data: bytes = b"") -> bytes:
    return PREFIX.pack(b"GYMR", len(header), len(data)) + header + data


def _receive_raw(frame: bytes, max_message_size: int = 1 << 20, close: bool = True):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame)
        if close:
            left.shutdown(socket.SHUT_WR)
        return MessageReader(right, max_message_size).receive(2.0)


@pytest.mark.parametrize(
    "frame",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 64,
        _frame(b"\xc1"),  # msgpack's never-used byte
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [4], 0, 32])))),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["|O", [1], 0, 8]))), bytes(8)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [-1], 0, 8]))), bytes(8)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [-1, -1], 0, 8]))), bytes(8)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [1], -8, 8]))), bytes(16)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [1], 16, 8]))), bytes(16)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [2], 0, 8]))), bytes(16)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [1.0], 0, 8]))), bytes(8)),
        _frame(msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb("nonsense")))),
        _frame(msgpack.packb(msgpack.ExtType(99, b""))),
        _frame(msgpack.packb(msgpack.ExtType(EXT_BIG_INT, b""))),
        PREFIX.pack(b"GYMS", 1, 1 << 20) + b"\xc0",  # shared memory data, but no segment here
    ],
    ids=[
        "http",
        "zeros",
        "bad-msgpack",
        "array-outside-data",
        "object-dtype",
        "negative-shape",
        "two-negative-dimensions",
        "negative-offset",
        "array-past-the-end",
        "nbytes-mismatch",
        "float-dimension",
        "bad-descriptor",
        "unknown-extension",
        "integer-without-bytes",
        "shared-without-segment",
    ],
)
def test_garbage_gives_protocol_error(frame):
    with pytest.raises(ProtocolError):
        _receive_raw(frame)


def test_frames_that_arrive_together_or_split_are_each_received_whole():
    small = {"op": "step", "action": np.arange(3, dtype=np.float32)}
    large = {"image": np.arange(200_000, dtype=np.uint8)}
    frames = [b"".join(bytes(chunk) for chunk in encode_frame(value)) for value in (small, large, small)]
    stream = b"".join(frames)
    left, right = socket.socketpair()
    with left, right:
        reader = MessageReader(right)
        # Everything in one send, so one receive holds the first frame and the start of the next.
        left.sendall(stream[: len(frames[0]) + 10])
        first = reader.receive(2.0)
        left.sendall(stream[len(frames[0]) + 10 :])
        second, third = reader.receive(2.0), reader.receive(2.0)
        # Two whole small frames in one receive: the second waits in hand for the next call.
        left.sendall(frames[0] + frames[2])
        fourth, fifth = reader.receive(2.0), reader.receive(2.0)
    for received in (first, third, fourth, fifth):
        assert received["op"] == "step" and np.array_equal(received["action"], small["action"])
    assert np.array_equal(second["image"], large["image"]) and second["image"].flags.writeable


def test_truncated_frame_gives_protocol_error():
    frame = b"".join(bytes(chunk) for chunk in encode_frame({"x": np.zeros(1000)}))
    for cut in (3, 20, len(frame) - 1):
        with pytest.raises(ProtocolError, match="middle of a frame"):
            _receive_raw(frame[:cut])


def test_clean_close_between_messages_is_peer_closed():
    with pytest.raises(PeerClosed):
        _receive_raw(b"")


def test_oversized_message_is_refused_before_it_is_read():
    header = struct.pack("<4sIQ", b"GYMR", 10, 1 << 40)
    with pytest.raises(MessageTooLarge, match="exceeds the maximum"):
        _receive_raw(header, max_message_size=1 << 20, close=False)


def test_a_dribbling_peer_hits_the_read_deadline():
    from gym_remote.errors import RemoteTimeout

    left, right = socket.socketpair()
    with left, right:
        left.sendall(PREFIX.pack(b"GYMR", 100, 0))
        with pytest.raises(RemoteTimeout):
            MessageReader(right).receive(wait=2.0, read_timeout=0.2)


def test_large_message_arrives_whole_through_a_socket():
    images = {
        "image": np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8),
        "image2": np.zeros((256, 256, 3), np.uint8),
    }
    left, right = socket.socketpair()
    with left, right:
        import threading

        sender = threading.Thread(target=send_message, args=(left, images))
        sender.start()
        decoded = MessageReader(right).receive(5.0)
        sender.join(5)
    assert np.array_equal(decoded["image"], images["image"])


class _FirstSendmsgWaits(socket.socket):
    """A socket that records what each ``sendmsg`` took and sets ``first_sent`` after the first."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.taken: list[int] = []
        self.first_sent = threading.Event()

    def sendmsg(self, *args):
        taken = super().sendmsg(*args)
        self.taken.append(taken)
        self.first_sent.set()
        return taken


def test_a_frame_whose_first_sendmsg_is_cut_short_is_sent_whole():
    value = {"image": np.arange(1 << 20, dtype=np.uint32).reshape(1024, 1024), "state": np.arange(9.0)}
    left, right = socket.socketpair()
    sender = _FirstSendmsgWaits(left.detach())
    with sender, right:
        sender.settimeout(5.0)  # Python's deadline mode: a sendmsg takes what fits and returns
        received = []

        def receive_once_the_first_sendmsg_returned() -> None:
            sender.first_sent.wait(10)
            received.append(MessageReader(right).receive(5.0))

        receiver = threading.Thread(target=receive_once_the_first_sendmsg_returned)
        receiver.start()
        send_frame(sender, encode_frame(value))
        receiver.join(10)
    assert 0 < sender.taken[0] < 4 << 20 and len(sender.taken) > 1
    assert data_equivalence(received, [value], exact=True)


def test_a_frame_its_first_sendmsg_takes_whole_is_sent_once():
    left, right = socket.socketpair()
    sender = _FirstSendmsgWaits(left.detach())
    with sender, right:
        send_frame(sender, encode_frame({"state": np.arange(9.0)}))
        sender.sendall(encode_bytes("next"))
        reader = MessageReader(right)
        assert data_equivalence(reader.receive(5.0), {"state": np.arange(9.0)}, exact=True)
        assert reader.receive(5.0) == "next"
    assert len(sender.taken) == 1


def _receive_all(reader, sender_socket, values):
    import threading

    received = []
    for value in values:
        sender = threading.Thread(target=send_message, args=(sender_socket, value))
        sender.start()
        received.append(reader.receive(5.0))
        sender.join(5)
    return received


def test_large_arrays_a_user_keeps_are_never_overwritten():
    left, right = socket.socketpair()
    with left, right:
        reader = MessageReader(right)
        values = [{"image": np.full((256, 256, 3), index, np.uint8)} for index in range(8)]
        kept = _receive_all(reader, left, values)
    for index, value in enumerate(kept):
        assert (value["image"] == index).all()


def test_large_receive_buffers_are_reused_once_released():
    left, right = socket.socketpair()
    with left, right:
        reader = MessageReader(right)
        image = {"image": np.ones((256, 256, 3), np.uint8)}
        (first,) = _receive_all(reader, left, [image])
        address = first["image"].__array_interface__["data"][0]
        del first
        (second,) = _receive_all(reader, left, [image])
        assert second["image"].__array_interface__["data"][0] == address
        assert second["image"].flags.writeable and (second["image"] == 1).all()


@pytest.mark.parametrize("header_length", [1, 5, 8, 131])
@pytest.mark.parametrize("socket_start", [0, 1, 65520, 65531])
def test_receive_buffers_align_the_data_and_put_the_socket_copy_mid_page(header_length, socket_start):
    from gym_remote.protocol import _BodyBufferPool

    pool = _BodyBufferPool()
    for body_length in (header_length + 100, header_length + 400_000):
        body = pool.take(body_length, header_length, socket_start)
        address = body.__array_interface__["data"][0]
        assert body.nbytes == body_length and body.flags.writeable
        assert (address + header_length) % 8 == 0  # every array in the data section is aligned
        # The kernel's copy lands mid-page, away from the page starts socket data tends to have.
        assert 2048 <= (address + socket_start) % 4096 < 2048 + 8


def test_decoded_frames_free_their_buffers_without_the_garbage_collector():
    import gc
    import weakref

    frame = b"".join(bytes(chunk) for chunk in encode_frame({"x": np.arange(10)}))
    body = bytearray(frame[PREFIX.size :])
    header_length = PREFIX.unpack_from(frame)[1]

    class Buffer(bytearray):
        pass

    data = Buffer(body[header_length:])
    watch = weakref.ref(data)
    gc.disable()
    try:
        value = decode_frame(bytes(body[:header_length]), data)
        assert np.array_equal(value["x"], np.arange(10))
        del value, data
        assert watch() is None, "a reference cycle keeps the data section alive"
    finally:
        gc.enable()


def test_whole_frames_as_bytes_round_trip_and_refuse_anything_else():
    value = {"a": np.arange(3), "b": (1, "two")}
    data = encode_bytes(value)
    decoded = decode_bytes(data)
    assert np.array_equal(decoded["a"], value["a"]) and decoded["b"] == value["b"]
    for broken in (data[:10], data[:-1], data + b"\0", b"XXXX" + data[4:]):
        with pytest.raises(ProtocolError):
            decode_bytes(broken)


def test_a_frame_through_a_shared_segment_equals_one_on_the_socket():
    value = {"image": np.arange(3 * 1 << 18, dtype=np.uint16).reshape(3, -1), "small": np.ones(3)}
    writer = SharedSegment.create(limit=1 << 30)  # starts at 1 MiB: this 1.5 MB frame grows it
    left, right = socket.socketpair()
    reader_segment = SharedSegment.attach(writer.offer(), right)  # this process holds both ends
    try:
        reader = MessageReader(right)
        reader.segment = reader_segment
        for _ in range(2):
            send_frame(left, encode_frame(value), writer)
            received = reader.receive(5.0)
            assert data_equivalence(received, value, exact=True)
            assert received["image"].flags.writeable
    finally:
        left.close()
        right.close()
        reader_segment.close()
        writer.close()


def test_a_segment_opened_at_the_wrong_place_is_refused():
    writer = SharedSegment.create(limit=1 << 30)
    left, right = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="not the offered segment"):
            SharedSegment.attach(dict(writer.offer(), token="00" * 16), right)
        with pytest.raises(OSError):
            SharedSegment.attach(dict(writer.offer(), fd=9999), right)
    finally:
        writer.close()
        left.close()
        right.close()


def test_a_segment_that_cannot_grow_sends_the_reply_on_the_socket(monkeypatch):
    writer = SharedSegment.create(limit=1 << 30)
    try:
        large = np.ones(1 << 21, dtype=np.uint8)  # 2 MiB: more than the first 1 MiB

        def no_memory(fd, size):
            raise OSError(12, "Cannot allocate memory")

        with monkeypatch.context() as patch:
            patch.setattr("gym_remote.sharedmem.os.ftruncate", no_memory)
            assert writer.write([large], large.nbytes) is False
        small = np.full(1 << 16, 7, dtype=np.uint8)
        assert writer.write([small], small.nbytes) is True  # the segment still works
    finally:
        writer.close()
