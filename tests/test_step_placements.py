"""The short way for whole frames and where observations are placed: a whole request or reply taken
from one receive, and the reply buffer or shared batch row a request names.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the test envs)
from gym_remote.protocol import (
    MessageReader,
)
from gym_remote.step.frames import MAX_REPLY_BUFFERS, FixedLayout
from gym_remote.step.layout import in_batch_row, in_reply_buffer
from tests.step_helpers import (
    NESTED,
    joined_frame,
    layout_for,
    nested_observation,
    split_frame,
    through_the_wire,
)


def patched(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value) :]


@pytest.mark.parametrize("reward", [1.5, -3, np.float64(0.25), np.float32(-0.125)])
@pytest.mark.parametrize(
    "space, observation",
    [(NESTED, nested_observation()), (spaces.Box(-9, 9, (4,), np.float32), np.arange(4, dtype=np.float32))],
    ids=["nested", "one-array"],
)
def test_a_whole_reply_in_one_chunk_decodes_as_its_frame_does(reward, space, observation):
    worker_side = layout_for(space)
    client_side = through_the_wire(worker_side)
    step = (observation, reward, np.True_, False, {})
    received = bytearray(joined_frame(worker_side.encode_reply(step)))
    whole = client_side.decode_whole_reply(memoryview(received))
    assert data_equivalence(whole, step, exact=True)
    assert [type(value) for value in whole[1:4]] == [type(value) for value in step[1:4]]
    assert data_equivalence(whole, client_side.decode_reply(*split_frame(bytes(received))), exact=True)
    received[32:] = bytes(len(received) - 32)  # the next receive reuses the chunk's memory
    assert data_equivalence(whole[0], observation, exact=True)


def test_only_a_whole_reply_without_info_takes_the_short_way():
    layout = layout_for(spaces.Box(-1, 1, (2,), np.float32))
    observation = np.zeros(2, np.float32)
    frame = joined_frame(layout.encode_reply((observation, 1.0, False, False, {})))
    assert layout.decode_whole_reply(frame) is not None
    others = [
        frame[:-1],
        frame + frame[:4],  # the start of the next frame came with it
        joined_frame(layout.encode_reply((observation, 1.0, False, False, {"is_success": True}))),
        patched(frame, 0, b"GYMR"),
        patched(frame, 4, struct.pack("<I", 8)),  # another header length
        patched(frame, 24, bytes([7])),  # no such reward kind
        patched(frame, 25, bytes([9])),  # no such flag
    ]
    for other in others:
        assert layout.decode_whole_reply(other) is None


@pytest.mark.parametrize(
    "action_space, action",
    [
        (spaces.Box(-1, 1, (2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)),
        (spaces.Discrete(5), np.int64(3)),
        (spaces.Discrete(5), 4),
    ],
)
@pytest.mark.parametrize("reply_buffer", range(MAX_REPLY_BUFFERS + 1))
def test_a_whole_request_in_one_chunk_gives_the_action_its_frame_does(action_space, action, reply_buffer):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), action_space)
    received = bytearray(through_the_wire(layout).encode_step(action, in_reply_buffer(reply_buffer)))
    whole, placement = layout.whole_step_request(memoryview(received))
    assert type(whole) is type(action) and data_equivalence(whole, action, exact=True)
    assert placement == in_reply_buffer(reply_buffer)
    decoded = layout.decode_request(*split_frame(bytes(received)))
    assert data_equivalence(("step", whole, placement), decoded, exact=True)
    received[24:] = bytes(len(received) - 24)  # the next receive reuses the chunk's memory
    assert data_equivalence(whole, action, exact=True)
    if isinstance(whole, np.ndarray):
        assert whole.flags.writeable


def test_only_a_whole_well_formed_request_takes_the_short_way():
    scalar = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Discrete(5))
    array = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2,), np.float32))
    request = scalar.encode_step(3)
    others = [
        (scalar, request[:-1]),
        (scalar, request + request[:4]),
        (scalar, patched(request, 0, b"GYMR")),
        (scalar, patched(request, 16, bytes([9]))),  # no such action kind
        (scalar, patched(request, 17, bytes([MAX_REPLY_BUFFERS + 1]))),  # no such reply buffer
        (scalar, patched(request, 8, struct.pack("<Q", 9))),  # a data length that is not the frame's
        (array, request),  # an int for an array layout
        (scalar, patched(request, 17, bytes([1, 1]))),  # a reply buffer and a batch row
        (scalar, patched(request, 19, bytes([1]))),  # the zero byte after the batch buffer
        (scalar, patched(request, 20, bytes([1]))),  # a batch row without a batch buffer
    ]
    for layout, other in others:
        assert layout.whole_step_request(other) is None


@pytest.mark.parametrize("into", [(0, 0), (2, 7), (254, 2**32 - 1)])
def test_steps_and_resets_naming_a_shared_batch_row_carry_it_both_ways(into):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2,), np.float32))
    client_side = through_the_wire(layout)
    action = np.array([0.5, -0.25], np.float32)
    placement = in_batch_row(*into)
    request = client_side.encode_step(action, placement)
    whole = layout.whole_step_request(memoryview(request))
    assert data_equivalence(whole, (action, placement), exact=True)
    assert data_equivalence(
        layout.decode_request(*split_frame(request)), ("step", action, placement), exact=True
    )
    for seed in [None, 3]:
        header, data = split_frame(client_side.encode_reset(seed, placement))
        assert layout.decode_request(header, data) == ("reset", seed, placement)


def test_batch_rows_are_named_only_to_a_worker_that_takes_them_and_only_where_they_fit():
    space = spaces.Box(0, 1, (1,), np.float32)
    offer = layout_for(space, spaces.Discrete(3)).to_wire()
    assert offer["batch_rows"] is True
    layout = FixedLayout.from_wire(offer, space)
    for into in [(255, 0), (-1, 0), (0, 2**32), (0, -1)]:
        row = in_batch_row(*into)
        assert layout.encode_step(1, row) is None and layout.encode_reset(0, row) is None
    assert layout.encode_step(1.5, in_batch_row(0, 0)) is None  # an action that does not fit
    assert layout.encode_reset(0, in_reply_buffer(1)) is None  # only steps take reply buffers
    del offer["batch_rows"]  # a worker that predates them
    older = FixedLayout.from_wire(offer, space)
    first_row = in_batch_row(0, 0)
    assert older.encode_step(1, first_row) is None and older.encode_reset(0, first_row) is None
    assert older.encode_step(1) is not None and older.encode_reset(0) is not None


def test_a_frame_in_parts_or_with_the_next_one_takes_the_ordinary_way():
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2, 3), np.float32))
    action = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = layout.encode_step(action)
    left, right = socket.socketpair()
    with left, right:
        reader = MessageReader(right)
        left.sendall(request[:20])
        chunk = reader.receive_chunk(5.0)
        assert bytes(chunk) == request[:20] and layout.whole_step_request(chunk) is None
        left.sendall(request[20:])
        header, data, fixed = reader.receive_frame(5.0, chunk=chunk)
        assert fixed and np.array_equal(layout.decode_request(header, data)[1], action)
        left.sendall(request + request)
        chunk = reader.receive_chunk(5.0)
        assert len(chunk) == 2 * len(request) and layout.whole_step_request(chunk) is None
        header, data, fixed = reader.receive_frame(5.0, chunk=chunk)
        assert fixed and np.array_equal(layout.decode_request(header, data)[1], action)
        left.close()
        chunk = reader.receive_chunk(5.0)  # the second frame, kept from the last receive
        assert np.array_equal(layout.whole_step_request(chunk)[0], action)
