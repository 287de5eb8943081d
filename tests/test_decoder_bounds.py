"""The decoder's bounds: what a peer's header may declare is checked before anything is allocated,
and the decoder refuses exactly what docs/protocol.md refuses."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from gym_remote.errors import ProtocolError
from gym_remote.protocol import (
    EXT_NDARRAY,
    EXT_NUMPY_SCALAR,
    EXT_TUPLE,
    MAX_DIMENSIONS,
    MAX_NESTING,
    decode_frame,
    encode_frame,
)


def nested_tuples(depth: int) -> bytes:
    """A header holding ``depth`` tuples, each inside the one before (ExtType inside ExtType)."""
    payload = msgpack.packb([None])
    for _ in range(depth - 1):
        payload = msgpack.packb([msgpack.ExtType(EXT_TUPLE, payload)])
    return msgpack.packb({"op": "hello", "version": msgpack.ExtType(EXT_TUPLE, payload)})


def array_header(dtype, shape, offset=0, nbytes=0) -> bytes:
    descriptor = msgpack.packb([dtype, shape, offset, nbytes])
    return msgpack.packb({"op": "call", "value": msgpack.ExtType(EXT_NDARRAY, descriptor)})


def test_tuples_nest_up_to_the_bound_and_no_deeper():
    value = decode_frame(nested_tuples(MAX_NESTING), b"")
    depth = 0
    tuple_value = value["version"]
    while isinstance(tuple_value, tuple):
        depth += 1
        tuple_value = tuple_value[0]
    assert depth == MAX_NESTING
    with pytest.raises(ProtocolError, match=f"nested more than {MAX_NESTING} deep"):
        decode_frame(nested_tuples(MAX_NESTING + 1), b"")


def test_the_964_byte_hello_that_overflowed_the_c_stack_is_a_protocol_error():
    header = nested_tuples(200)
    assert len(header) < 1000
    with pytest.raises(ProtocolError, match="nested"):
        decode_frame(header, b"")


def test_a_legitimately_nested_value_still_round_trips():
    value = {"a": (1, (2.0, (np.int64(3), (np.zeros(2, np.float32),)))), "b": [[{"c": (None,)}]]}
    buffers = encode_frame(value)
    data = bytearray(b"".join(memoryview(chunk).cast("B") for chunk in buffers[2:]))
    decoded = decode_frame(buffers[1], data)
    assert decoded["a"][1][1][1][0].dtype == np.float32 and decoded["b"] == [[{"c": (None,)}]]


@pytest.mark.parametrize(
    "dtype, shape, nbytes, problem",
    [
        ("<U0", [1 << 27], 0, "has no size"),  # 128 MiB allocated before auth, once
        ("|V0", [1 << 20], 0, "has no size"),
        ("S", [1 << 20], 0, "has no size"),
        ("|u1", [1] * (MAX_DIMENSIONS + 1), 1, f"at most {MAX_DIMENSIONS} dimensions"),
        ("|u1", [1 << 30] * 60_000, 0, f"at most {MAX_DIMENSIONS} dimensions"),  # stalled 10 s
        ("|u1", [-1, -4], 4, "non-negative"),
        ("|u1", [1.5], 1, "non-negative integer"),
        ("[('a', '<f4')]", [1], 4, "a dtype must be a short string|invalid dtype|structured"),
        ("<f4,<f4", [1], 8, "structured"),
        ("(2,)<f4", [1], 8, "structured"),
        ("|O", [1], 8, "object dtype"),
        ("<f8", [2], 8, "nbytes does not match"),
        ("<f8", [1 << 20], 8 << 20, "past the end of the data section"),
        ("<f8", [0, 1 << 62, 1 << 62], 0, "too big|dimension"),
    ],
)
def test_array_descriptors_the_spec_refuses_are_refused_before_allocating(dtype, shape, nbytes, problem):
    header = array_header(dtype, shape, 0, nbytes)
    with pytest.raises(ProtocolError, match=problem):
        decode_frame(header, bytearray(16))


def test_a_dtype_that_is_not_a_string_is_refused():
    descriptor = msgpack.packb([[["a", "<f4"]], [1], 0, 4])
    header = msgpack.packb({"value": msgpack.ExtType(EXT_NDARRAY, descriptor)})
    with pytest.raises(ProtocolError, match="a dtype must be a short string"):
        decode_frame(header, bytearray(8))


@pytest.mark.parametrize(
    "payload",
    [
        ["<U0", b""],  # numpy would read it as <U1
        ["<f4", b"\x00\x00"],
        ["<f4", "four"],
        ["<f4"],
        "not an array",
    ],
)
def test_malformed_numpy_scalars_are_refused(payload):
    header = msgpack.packb({"value": msgpack.ExtType(EXT_NUMPY_SCALAR, msgpack.packb(payload))})
    with pytest.raises(ProtocolError):
        decode_frame(header, b"")


def test_a_tuple_extension_must_hold_an_array():
    header = msgpack.packb({"value": msgpack.ExtType(EXT_TUPLE, msgpack.packb({"a": 1}))})
    with pytest.raises(ProtocolError, match="tuple extension"):
        decode_frame(header, b"")
