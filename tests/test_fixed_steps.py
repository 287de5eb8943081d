"""Fixed-layout steps (``GYMF`` frames): the layout, exact values, fallbacks and bad frames."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import OrderedDict

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the test envs)
from gym_remote import errors
from gym_remote.addresses import parse_address
from gym_remote.batches import SharedBatches
from gym_remote.connection import Connection
from gym_remote.fixed import ACTION_HEADER, MAX_REPLY_BUFFERS, REPLY_HEADER, FixedLayout
from gym_remote.protocol import (
    PREFIX,
    MessageReader,
    byte_view,
    decode_bytes,
    decode_frame,
    encode_bytes,
    encode_frame,
)

VARYING = "gym_remote_testing/VaryingSteps-v0"
TWO_ACTIONS = spaces.Discrete(2)


class SpacesOnly(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space


def layout_for(observation_space: gym.Space, action_space: gym.Space = TWO_ACTIONS) -> FixedLayout | None:
    return FixedLayout.for_env(SpacesOnly(observation_space, action_space))


def through_the_wire(layout: FixedLayout) -> FixedLayout:
    return FixedLayout.from_wire(decode_bytes(encode_bytes(layout.to_wire())))


def _split(frame: bytes) -> tuple[bytes, bytearray]:
    _, header_length, _ = PREFIX.unpack_from(frame)
    return frame[PREFIX.size : PREFIX.size + header_length], bytearray(frame[PREFIX.size + header_length :])


def _header_and_data(buffers: list) -> tuple[bytes, bytearray]:
    frame = b"".join(bytes(byte_view(chunk)) for chunk in buffers)
    magic, header_length, data_length = PREFIX.unpack_from(frame)
    assert magic == b"GYMF" and len(frame) == PREFIX.size + header_length + data_length
    return _split(frame)


NESTED = spaces.Dict(
    {
        "camera": spaces.Box(0, 255, (5, 3), np.uint8),
        "arm": spaces.Tuple((spaces.Box(-1, 1, (3,), np.float64), spaces.MultiBinary(3))),
        "levels": spaces.MultiDiscrete([2, 3]),
    }
)


def nested_observation(value: int = 7) -> dict:
    """An observation of NESTED, its keys in the space's (sorted) order."""
    return {
        "arm": (np.array([0.5, -0.5, value], np.float64), np.array([1, 0, 1], np.int8)),
        "camera": np.full((5, 3), value, np.uint8),
        "levels": np.array([1, 2], np.int64),
    }


@pytest.mark.parametrize(
    "observation_space, action_space, fixed",
    [
        (spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), True),
        (NESTED, spaces.Box(-1, 1, (7,), np.float32), True),
        (spaces.Box(0, 1, (), np.float32), spaces.MultiDiscrete([3, 3]), True),
        (spaces.Discrete(4), spaces.Discrete(2), False),  # observations are Python ints
        (spaces.Tuple((spaces.Discrete(4), spaces.Discrete(2))), spaces.Discrete(2), False),
        (spaces.Dict({"text": spaces.Text(4)}), spaces.Discrete(2), False),
        (spaces.Box(-1, 1, (4,), np.float32), spaces.Dict({"a": spaces.Discrete(2)}), False),
    ],
)
def test_only_fixed_shape_array_spaces_get_a_layout(observation_space, action_space, fixed):
    assert (layout_for(observation_space, action_space) is not None) is fixed


def test_leaves_lie_in_gymnasium_order_at_aligned_offsets_and_survive_the_wire():
    layout = through_the_wire(layout_for(NESTED))
    assert [leaf.path for leaf in layout.leaves] == [["arm", 0], ["arm", 1], ["camera"], ["levels"]]
    assert [leaf.offset for leaf in layout.leaves] == [0, 24, 32, 48]
    assert layout.observation_nbytes == 64


@pytest.mark.parametrize("reward", [1.5, -3, np.float64(0.25), np.float32(-0.125), -(2**63), 2**63 - 1])
@pytest.mark.parametrize("flags", [(False, True), (np.True_, np.False_)])
def test_a_fixed_reply_gives_back_exactly_what_the_env_returned(reward, flags):
    worker_side = layout_for(NESTED)
    client_side = through_the_wire(worker_side)
    info = {"is_success": np.True_, "pair": (1, "a")} if isinstance(reward, float) else {}
    step = (nested_observation(), reward, *flags, info)
    buffers = worker_side.encode_reply(step)
    assert buffers is not None
    decoded = client_side.decode_reply(*_header_and_data(buffers))
    assert data_equivalence(decoded, step, exact=True)
    assert [type(value) for value in decoded[1:4]] == [type(value) for value in step[1:4]]
    observation = decoded[0]
    assert observation["camera"].flags.writeable and observation["arm"][0].ctypes.data % 8 == 0


DEEP = spaces.Tuple(
    (
        spaces.Dict(
            {
                "a": spaces.Tuple((spaces.Box(0, 1, (0,), np.float32), spaces.MultiBinary((2, 2)))),
                "b": spaces.Box(0, 1, (0, 3), np.float32),
            }
        ),
        spaces.Tuple((spaces.Tuple((spaces.MultiDiscrete([4, 4]),)), spaces.Box(0, 1, (), np.float16))),
        spaces.Box(-1, 1, (3,), np.float64),
    )
)


def test_deeply_nested_observations_with_empty_arrays_come_back_exactly_and_writable():
    worker_side = layout_for(DEEP)
    observation = DEEP.sample()
    step = (observation, 0.5, False, False, {})
    buffers = worker_side.encode_reply(step)
    assert buffers is not None
    decoded = through_the_wire(worker_side).decode_reply(*_header_and_data(buffers))
    assert data_equivalence(decoded, step, exact=True)
    arrays = [decoded[0][0]["a"][0], decoded[0][0]["a"][1], decoded[0][0]["b"], decoded[0][1][0][0]]
    assert all(array.flags.writeable for array in [*arrays, decoded[0][1][1], decoded[0][2]])
    for changed in [(observation[0], observation[1][0], observation[2]), (observation[0], observation[1])]:
        assert worker_side.encode_reply((changed, 0.5, False, False, {})) is None


@pytest.mark.parametrize(
    "change",
    [
        lambda step: {**step, 1: np.int32(1)},  # a reward kind without a code
        lambda step: {**step, 1: True},
        lambda step: {**step, 1: 2**63},  # beyond int64
        lambda step: {**step, 2: 1},  # a flag that is not a bool
        lambda step: {**step, 3: np.array(False)},
        lambda step: {**step, 4: {"array": np.zeros(2)}},  # an info with a data section
        lambda step: {**step, 4: OrderedDict()},
        lambda step: {**step, 0: {**step[0], "camera": step[0]["camera"].astype(np.int16)}},
        lambda step: {**step, 0: {**step[0], "levels": np.array([1, 2, 3])}},
        lambda step: {**step, 0: {**step[0], "arm": list(step[0]["arm"])}},
        lambda step: {**step, 0: {key: step[0][key] for key in ("camera", "arm", "levels")}},
        lambda step: {**step, 0: OrderedDict(step[0])},
        lambda step: {**step, 0: {**step[0], "extra": np.zeros(1)}},
        lambda step: {key: value for key, value in step.items() if key != 3},  # gym's old 4 values
    ],
    ids=[
        "int32-reward",
        "bool-reward",
        "huge-reward",
        "int-flag",
        "array-flag",
        "array-info",
        "ordered-info",
        "dtype",
        "shape",
        "list-for-tuple",
        "key-order",
        "ordered-dict",
        "extra-key",
        "four-values",
    ],
)
def test_a_step_that_does_not_fit_the_layout_gets_no_fixed_reply(change):
    layout = layout_for(NESTED)
    step = dict(enumerate((nested_observation(), 1.0, False, False, {})))
    assert layout.encode_reply(tuple(step.values())) is not None
    assert layout.encode_reply(tuple(change(step).values())) is None


@pytest.mark.parametrize(
    "action_space, action, kind",
    [
        (spaces.Box(-1, 1, (2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3), 0),
        (spaces.Box(-1, 1, (2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(3, 2).T, 0),
        (spaces.Discrete(5), np.int64(3), 1),
        (spaces.Discrete(5), 4, 2),
        (spaces.Discrete(5), -(2**63), 2),
    ],
)
def test_actions_that_fit_travel_fixed_and_arrive_as_they_were_sent(action_space, action, kind):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), action_space)
    request = through_the_wire(layout).encode_action(action)
    assert request is not None
    header, data = _header_and_data([request])
    assert header[0] == kind
    received, reply_buffer, into = layout.decode_action(header, data)
    assert reply_buffer == 0 and into is None
    assert type(received) is type(action) and data_equivalence(received, action, exact=True)
    if isinstance(received, np.ndarray):
        assert received.flags.writeable


@pytest.mark.parametrize(
    "action_space, action",
    [
        (spaces.Box(-1, 1, (2,), np.float32), np.zeros(2, np.float64)),
        (spaces.Box(-1, 1, (2,), np.float32), np.zeros(3, np.float32)),
        (spaces.Box(-1, 1, (2,), np.float32), [0.0, 0.0]),
        (spaces.Box(-1, 1, (2,), np.float32), 1),
        (spaces.Discrete(5), np.int32(1)),
        (spaces.Discrete(5), 2**63),
        (spaces.Discrete(5), True),
        (spaces.Discrete(5), 1.0),
    ],
)
def test_other_actions_take_the_ordinary_request(action_space, action):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), action_space)
    assert layout.encode_action(action) is None


@pytest.mark.parametrize("seed", [None, 0, 5, 2**63 - 1, -(2**63)])
def test_reset_seeds_that_fit_travel_fixed_and_arrive_as_they_were_sent(seed):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32))
    request = through_the_wire(layout).encode_reset(seed)
    assert request is not None
    header, data = _header_and_data([request])
    assert FixedLayout.is_reset(header) and len(data) == (0 if seed is None else 8)
    received, into = FixedLayout.decode_reset(header, data)
    assert type(received) is type(seed) and received == seed and into is None
    assert layout.action_of_whole_request(request) is None  # resets never take the steps' short way


def test_other_resets_take_the_ordinary_request():
    offer = layout_for(spaces.Box(0, 1, (1,), np.float32)).to_wire()
    layout = FixedLayout.from_wire(offer)
    for seed in [2**63, -(2**63) - 1, True, np.int64(3), 1.0]:
        assert layout.encode_reset(seed) is None
    del offer["resets"]  # a worker that takes fixed-layout steps only
    assert FixedLayout.from_wire(offer).encode_reset(0) is None
    assert not FixedLayout.is_reset(ACTION_HEADER.pack(0, 0, 0, 0)) and not FixedLayout.is_reset(bytes([3]))


def test_a_reset_reply_is_a_step_reply_with_zero_reward_and_no_flags():
    worker_side = layout_for(NESTED)
    client_side = through_the_wire(worker_side)
    info = {"is_success": False}
    buffers = worker_side.encode_reset_reply(nested_observation(), info)
    decoded = client_side.decode_reply(*_header_and_data(buffers))
    assert data_equivalence(decoded, (nested_observation(), 0.0, False, False, info), exact=True)
    assert worker_side.encode_reset_reply(nested_observation(), {"array": np.zeros(2)}) is None
    assert worker_side.encode_reset_reply(list(nested_observation().values()), {}) is None


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"action": {"dtype": "<i8", "shape": []}, "observation": []},
        {
            "action": {"dtype": "|O", "shape": []},
            "observation": [{"path": [], "dtype": "<f4", "shape": [1], "offset": 0}],
        },
        {
            "action": {"dtype": "<i8", "shape": [-1]},
            "observation": [{"path": [], "dtype": "<f4", "shape": [1], "offset": 0}],
        },
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [{"path": [], "dtype": "<f4", "shape": [1], "offset": 3}],
        },
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [
                {"path": ["a"], "dtype": "<f4", "shape": [1], "offset": 0},
                {"path": ["a", "b"], "dtype": "<f4", "shape": [1], "offset": 8},
            ],
        },
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [
                {"path": [1], "dtype": "<f4", "shape": [1], "offset": 0},
                {"path": [0], "dtype": "<f4", "shape": [1], "offset": 8},
            ],
        },
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [{"path": [], "dtype": "<f4", "shape": [1], "offset": 0}],
            "resets": 1,
        },
    ],
    ids=[
        "none",
        "no-leaves",
        "object-dtype",
        "negative-size",
        "unaligned",
        "leaf-and-branch",
        "tuple-order",
        "resets-not-bool",
    ],
)
def test_a_malformed_layout_is_a_protocol_error(payload):
    with pytest.raises(errors.ProtocolError, match="malformed fixed_steps layout"):
        FixedLayout.from_wire(payload)


def test_malformed_fixed_frames_are_refused_with_what_is_wrong():
    layout = layout_for(spaces.Box(0, 1, (2,), np.float32), spaces.Box(-1, 1, (3,), np.float32))
    with pytest.raises(errors.InvalidCall, match="header has 8 bytes, got 1"):
        layout.decode_action(b"\x00", bytearray(12))
    with pytest.raises(errors.InvalidCall, match="action kind 9"):
        layout.decode_action(ACTION_HEADER.pack(9, 0, 0, 0), bytearray(12))
    with pytest.raises(errors.InvalidCall, match="has 12 bytes, got 4"):
        layout.decode_action(ACTION_HEADER.pack(0, 0, 0, 0), bytearray(4))
    with pytest.raises(errors.InvalidCall, match="does not fit the action layout"):
        layout.decode_action(ACTION_HEADER.pack(2, 0, 0, 0), bytearray(8))
    with pytest.raises(errors.InvalidCall, match="both reply buffer 1 and a batch row"):
        layout.decode_action(ACTION_HEADER.pack(0, 1, 1, 0), bytearray(12))
    for malformed in [
        ACTION_HEADER.pack(0, 0, 0, 3),
        ACTION_HEADER.pack(0, 0, 1, 0)[:3] + b"\x01" + bytes(4),
    ]:
        with pytest.raises(errors.InvalidCall, match="batch row is malformed"):
            layout.decode_action(malformed, bytearray(12))
        with pytest.raises(errors.InvalidCall, match="batch row is malformed"):
            FixedLayout.decode_reset(bytes([3]) + malformed[1:], b"")
    with pytest.raises(errors.InvalidCall, match="0 or 8 bytes of seed, got 4"):
        FixedLayout.decode_reset(ACTION_HEADER.pack(3, 0, 0, 0), bytearray(4))
    with pytest.raises(errors.InvalidCall, match="names reply buffer 2: only steps"):
        FixedLayout.decode_reset(ACTION_HEADER.pack(3, 2, 0, 0), b"")
    good = REPLY_HEADER.pack(struct.pack("<d", 1.0), 0, 0, 0, 0)
    with pytest.raises(errors.ProtocolError, match="malformed fixed-layout reply header"):
        layout.decode_reply(good[:5], bytearray(8))
    with pytest.raises(errors.ProtocolError, match="malformed fixed-layout reply header"):
        layout.decode_reply(REPLY_HEADER.pack(b"\x00" * 8, 7, 0, 0, 0), bytearray(8))
    with pytest.raises(errors.ProtocolError, match="info length says 20"):
        layout.decode_reply(REPLY_HEADER.pack(b"\x00" * 8, 0, 0, 0, 4), bytearray(8))
    with pytest.raises(errors.ProtocolError, match="has 7 bytes of observation, expected 8"):
        layout.decode_reply(good, bytearray(7))
    with pytest.raises(errors.ProtocolError, match="not a map"):
        layout.decode_reply(REPLY_HEADER.pack(b"\x00" * 8, 0, 0, 0, 1) + b"\x01", bytearray(8))


# ---------------------------------------------------------------------- over a real server


def _frame(buffers: list) -> bytes:
    return b"".join(bytes(byte_view(chunk)) for chunk in buffers)


def _patched(frame: bytes, offset: int, value: bytes) -> bytes:
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
    received = bytearray(_frame(worker_side.encode_reply(step)))
    whole = client_side.decode_whole_reply(memoryview(received))
    assert data_equivalence(whole, step, exact=True)
    assert [type(value) for value in whole[1:4]] == [type(value) for value in step[1:4]]
    assert data_equivalence(whole, client_side.decode_reply(*_split(bytes(received))), exact=True)
    received[32:] = bytes(len(received) - 32)  # the next receive reuses the chunk's memory
    assert data_equivalence(whole[0], observation, exact=True)


def test_only_a_whole_reply_without_info_takes_the_short_way():
    layout = layout_for(spaces.Box(-1, 1, (2,), np.float32))
    observation = np.zeros(2, np.float32)
    frame = _frame(layout.encode_reply((observation, 1.0, False, False, {})))
    assert layout.decode_whole_reply(frame) is not None
    others = [
        frame[:-1],
        frame + frame[:4],  # the start of the next frame came with it
        _frame(layout.encode_reply((observation, 1.0, False, False, {"is_success": True}))),
        _patched(frame, 0, b"GYMR"),
        _patched(frame, 4, struct.pack("<I", 8)),  # another header length
        _patched(frame, 24, bytes([7])),  # no such reward kind
        _patched(frame, 25, bytes([9])),  # no such flag
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
    received = bytearray(through_the_wire(layout).encode_action(action, reply_buffer))
    whole, whole_reply_buffer, into = layout.action_of_whole_request(memoryview(received))
    assert type(whole) is type(action) and data_equivalence(whole, action, exact=True)
    assert whole_reply_buffer == reply_buffer and into is None
    decoded = layout.decode_action(*_split(bytes(received)))
    assert data_equivalence((whole, reply_buffer, None), decoded, exact=True)
    received[24:] = bytes(len(received) - 24)  # the next receive reuses the chunk's memory
    assert data_equivalence(whole, action, exact=True)
    if isinstance(whole, np.ndarray):
        assert whole.flags.writeable


def test_only_a_whole_well_formed_request_takes_the_short_way():
    scalar = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Discrete(5))
    array = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2,), np.float32))
    request = scalar.encode_action(3)
    others = [
        (scalar, request[:-1]),
        (scalar, request + request[:4]),
        (scalar, _patched(request, 0, b"GYMR")),
        (scalar, _patched(request, 16, bytes([9]))),  # no such action kind
        (scalar, _patched(request, 17, bytes([MAX_REPLY_BUFFERS + 1]))),  # no such reply buffer
        (scalar, _patched(request, 8, struct.pack("<Q", 9))),  # a data length that is not the frame's
        (array, request),  # an int for an array layout
        (scalar, _patched(request, 17, bytes([1, 1]))),  # a reply buffer and a batch row
        (scalar, _patched(request, 19, bytes([1]))),  # the zero byte after the batch buffer
        (scalar, _patched(request, 20, bytes([1]))),  # a batch row without a batch buffer
    ]
    for layout, other in others:
        assert layout.action_of_whole_request(other) is None


@pytest.mark.parametrize("into", [(0, 0), (2, 7), (254, 2**32 - 1)])
def test_steps_and_resets_naming_a_shared_batch_row_carry_it_both_ways(into):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2,), np.float32))
    client_side = through_the_wire(layout)
    action = np.array([0.5, -0.25], np.float32)
    request = client_side.encode_action_into(action, into)
    whole = layout.action_of_whole_request(memoryview(request))
    assert data_equivalence(whole, (action, 0, into), exact=True)
    assert data_equivalence(layout.decode_action(*_split(request)), (action, 0, into), exact=True)
    for seed in [None, 3]:
        header, data = _split(client_side.encode_reset(seed, into))
        assert FixedLayout.is_reset(header) and FixedLayout.decode_reset(header, data) == (seed, into)


def test_batch_rows_are_named_only_to_a_worker_that_takes_them_and_only_where_they_fit():
    offer = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Discrete(3)).to_wire()
    assert offer["batch_rows"] is True
    layout = FixedLayout.from_wire(offer)
    for into in [(255, 0), (-1, 0), (0, 2**32), (0, -1)]:
        assert layout.encode_action_into(1, into) is None and layout.encode_reset(0, into) is None
    assert layout.encode_action_into(1.5, (0, 0)) is None  # an action that does not fit
    del offer["batch_rows"]  # a worker that predates them
    older = FixedLayout.from_wire(offer)
    assert older.encode_action_into(1, (0, 0)) is None and older.encode_reset(0, (0, 0)) is None
    assert older.encode_action(1) is not None and older.encode_reset(0) is not None


def test_a_frame_in_parts_or_with_the_next_one_takes_the_ordinary_way():
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32), spaces.Box(-1, 1, (2, 3), np.float32))
    action = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = layout.encode_action(action)
    left, right = socket.socketpair()
    with left, right:
        reader = MessageReader(right)
        left.sendall(request[:20])
        chunk = reader.receive_chunk(5.0)
        assert bytes(chunk) == request[:20] and layout.action_of_whole_request(chunk) is None
        left.sendall(request[20:])
        header, data, fixed = reader.receive_frame(5.0, chunk=chunk)
        assert fixed and np.array_equal(layout.decode_action(header, data)[0], action)
        left.sendall(request + request)
        chunk = reader.receive_chunk(5.0)
        assert len(chunk) == 2 * len(request) and layout.action_of_whole_request(chunk) is None
        header, data, fixed = reader.receive_frame(5.0, chunk=chunk)
        assert fixed and np.array_equal(layout.decode_action(header, data)[0], action)
        left.close()
        chunk = reader.receive_chunk(5.0)  # the second frame, kept from the last receive
        assert np.array_equal(layout.action_of_whole_request(chunk)[0], action)


@contextlib.contextmanager
def _one_reply_server(reply: bytes):
    """A loopback server that answers the first request with ``reply``, then reads nothing more."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer_then_stop_reading() -> None:
        peer, _ = listener.accept()
        with peer:
            MessageReader(peer).receive(5.0)
            peer.sendall(reply)
            stop.wait(10)

    thread = threading.Thread(target=answer_then_stop_reading)
    thread.start()
    try:
        yield parse_address(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def test_a_peer_that_stops_reading_fails_a_fixed_step_with_remote_timeout():
    hello = _frame(encode_frame({"ok": {"allow_pickle": False, "server": "test"}}))
    with _one_reply_server(hello) as address:
        connection = Connection(address, timeout=0.5, max_message_size=1 << 26)
        big = spaces.Box(-1, 1, (1 << 23,), np.float32)  # 32 MB: more than the socket buffers hold
        connection.fixed_layout = layout_for(spaces.Box(0, 1, (1,), np.float32), big)
        with pytest.raises(errors.RemoteTimeout, match="within 0.5 s"):
            connection.step(np.zeros(big.shape, np.float32))
        assert connection.closed


def test_a_fixed_layout_frame_in_reply_to_another_request_is_a_protocol_error():
    layout = layout_for(spaces.Box(-1, 1, (2,), np.float32))
    reply = _frame(layout.encode_reply((np.zeros(2, np.float32), 1.0, False, False, {})))
    with _one_reply_server(reply) as address:
        with pytest.raises(errors.ProtocolError, match="a fixed-layout frame in reply to hello"):
            Connection(address, timeout=5.0, max_message_size=1 << 26)


def test_steps_of_varying_types_equal_the_local_env_and_both_frames_are_used(server, monkeypatch):
    local, remote = gym.make(VARYING), gym_remote.RemoteEnv(VARYING, address=server.address)
    try:
        remote.reset(seed=0)
        layout = remote._connection.fixed_layout
        assert layout is not None
        whole_replies, other_fixed_replies = [], []
        decode_whole_reply, decode_reply = layout.decode_whole_reply, layout.decode_reply

        def counted_whole_reply(chunk):
            result = decode_whole_reply(chunk)
            whole_replies.append(result is not None)
            return result

        monkeypatch.setattr(layout, "decode_whole_reply", counted_whole_reply)
        monkeypatch.setattr(
            layout, "decode_reply", lambda *args: other_fixed_replies.append(1) or decode_reply(*args)
        )
        local.reset(seed=0)
        actions = [np.array([step % 3 / 4, 0.5], np.float32) for step in range(60)]
        actions[5] = actions[5].astype(np.float64)  # does not fit the layout: an ordinary request
        for step, action in enumerate(actions):
            local_result, remote_result = local.step(action), remote.step(action)
            assert data_equivalence(local_result, remote_result, exact=True), f"step {step}"
            assert [type(value) for value in remote_result] == [type(value) for value in local_result]
            if local_result[2] or local_result[3]:
                assert data_equivalence(local.reset(), remote.reset(), exact=True)
        # Whole replies, fixed replies with an info, and ordinary replies all occurred.
        assert 0 < sum(whole_replies) and 0 < len(other_fixed_replies)
        assert sum(whole_replies) + len(other_fixed_replies) < len(actions)
    finally:
        local.close()
        remote.close()


def test_resets_equal_the_local_env_and_travel_fixed_where_they_fit(server, monkeypatch):
    local, remote = gym.make(VARYING), gym_remote.RemoteEnv(VARYING, address=server.address)
    try:
        connection = remote._connect()
        ordinary_requests, fixed_reset_replies = [], []
        request, receive_fixed = connection.request, connection.receive_fixed
        monkeypatch.setattr(
            connection, "request", lambda op, **fields: ordinary_requests.append(op) or request(op, **fields)
        )

        def recorded_receive(op, *arguments):
            fixed, result = receive_fixed(op, *arguments)
            if op == "reset":
                fixed_reset_replies.append(fixed)
            return fixed, result

        monkeypatch.setattr(connection, "receive_fixed", recorded_receive)
        resets = (
            [(None, None)]
            + [(seed, None) for seed in range(13)]
            + [(2**63 - 1, None), (2**63 + 5, None), (2**64 + 3, None)]
        )
        resets.append((3, {"level": 2}))
        for seed, options in resets:
            local_result = local.reset(seed=seed, options=options)
            remote_result = remote.reset(seed=seed, options=options)
            assert data_equivalence(local_result, remote_result, exact=True), (seed, options)
            assert type(remote_result) is tuple
            action = np.array([0.25, 0.5], np.float32)
            assert data_equivalence(local.step(action), remote.step(action), exact=True), (seed, options)
        # Seeds beyond int64 and options go the ordinary way; the rest go fixed, and are
        # answered in fixed frames where the observation and info fit, in ordinary ones elsewhere.
        assert ordinary_requests == ["reset"] * 3
        assert len(fixed_reset_replies) == len(resets) - 3
        assert True in fixed_reset_replies and False in fixed_reset_replies
        with pytest.raises(errors.RemoteError, match="Seed must be"):
            connection.reset(-1, None)  # the env refuses it (RemoteEnv refuses it before sending)
        assert data_equivalence(local.reset(seed=1), remote.reset(seed=1), exact=True)
    finally:
        local.close()
        remote.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_large_fixed_replies_travel_through_shared_memory_or_the_socket(server, monkeypatch, shared_memory):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "1" if shared_memory else "0")
    env_id = "gym_remote_testing/ImageEnv-v0"
    local, remote = gym.make(env_id), gym_remote.RemoteEnv(env_id, address=server.address)
    try:
        assert data_equivalence(local.reset(seed=3), remote.reset(seed=3), exact=True)
        assert (
            remote.gym_remote.uses_shared_memory is shared_memory
            and remote._connection.fixed_layout is not None
        )
        for step in range(5):
            action = np.full(7, step / 10, np.float32)
            assert data_equivalence(local.step(action), remote.step(action), exact=True)
    finally:
        local.close()
        remote.close()


def _session(server, **make_fields):
    """A connection in a CartPole session made with ``make_fields``, and its make reply."""
    connection = Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 26)
    connection.in_session = True
    description = connection.request("make", env_id="CartPole-v1", kwargs={}, render_mode=None, **make_fields)
    return connection, description


def test_a_closed_connection_refuses_steps_that_fit_its_layout(server):
    connection, description = _session(server, fixed_steps=True)
    connection.fixed_layout = FixedLayout.from_wire(description["fixed_steps"])
    connection.request("reset", seed=0)
    assert connection.step(1)[0].shape == (4,)
    connection.close()
    with pytest.raises(errors.ServerUnavailable, match="is closed"):
        connection.step(1)


def _exchange(connection, frame: bytes) -> tuple[bytes, bytes, bytes]:
    """Sends raw bytes; returns the reply frame's magic, header and data section."""
    connection._sock.sendall(frame)
    header, data, fixed = MessageReader(connection._sock).receive_frame(10.0)
    return (b"GYMF" if fixed else b"GYMR"), bytes(header), bytes(data)


def test_a_client_built_from_the_spec_steps_with_fixed_frames(server):
    connection, description = _session(server, fixed_steps=True)
    try:
        assert description["fixed_steps"] == {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [{"path": [], "dtype": "<f4", "shape": [4], "offset": 0}],
            "resets": True,
            "batch_rows": True,
        }
        local = gym.make("CartPole-v1")
        reset = PREFIX.pack(b"GYMF", 8, 8) + bytes([3]) + bytes(7) + (5).to_bytes(8, "little", signed=True)
        magic, header, data = _exchange(connection, reset)
        assert (magic, header) == (b"GYMF", struct.pack("<dBBBxI", 0.0, 0, 0, 0, 0))
        np.testing.assert_array_equal(np.frombuffer(data, np.float32), local.reset(seed=5)[0])
        request = PREFIX.pack(b"GYMF", 8, 8) + bytes([2]) + bytes(7) + (1).to_bytes(8, "little", signed=True)
        magic, header, data = _exchange(connection, request)
        reward, kind, terminated, truncated, info_length = struct.unpack("<dBBBxI", header)
        expected = local.step(1)
        assert (magic, kind, terminated, truncated, info_length) == (b"GYMF", 0, 0, 0, 0)
        assert reward == expected[1]
        np.testing.assert_array_equal(np.frombuffer(data, np.float32), expected[0])
    finally:
        connection.close()


@pytest.mark.parametrize(
    "frame, message",
    [
        (PREFIX.pack(b"GYMF", 8, 8) + bytes([9]) + bytes(15), "action kind 9"),
        (PREFIX.pack(b"GYMF", 8, 4) + bytes([2]) + bytes(11), "has 8 bytes, got 4"),
        (PREFIX.pack(b"GYMF", 2, 8) + bytes(10), "header has 8 bytes, got 2"),
        (PREFIX.pack(b"GYMF", 8, 4) + bytes([3]) + bytes(11), "0 or 8 bytes of seed, got 4"),
        (PREFIX.pack(b"GYMF", 8, 0) + bytes([3, 1]) + bytes(6), "names reply buffer 1: only steps"),
        (PREFIX.pack(b"GYMF", 8, 8) + bytes([2, 0, 1]) + bytes(13), "has 0 (use_shared_batches)"),
    ],
    ids=["unknown-kind", "short-data", "short-header", "short-seed", "reset-reply-buffer", "no-batches"],
)
def test_bad_fixed_frames_are_invalid_calls_and_the_session_goes_on(server, frame, message):
    connection, _ = _session(server, fixed_steps=True)
    try:
        connection.request("reset", seed=0)
        magic, header, data = _exchange(connection, frame)
        reply = decode_frame(header, bytearray(data))
        assert magic == b"GYMR" and reply["error"]["code"] == "invalid_call"
        assert message in reply["error"]["message"]
        assert connection.step(0)[0].shape == (4,)
    finally:
        connection.close()


def test_fixed_frames_need_an_offered_layout_and_a_reset(server):
    step = PREFIX.pack(b"GYMF", 8, 8) + bytes([2]) + bytes(15)
    without, description = _session(server)
    with_layout, _ = _session(server, fixed_steps=True)
    try:
        assert "fixed_steps" not in description
        magic, header, data = _exchange(without, PREFIX.pack(b"GYMF", 8, 0) + bytes([3]) + bytes(7))
        assert (
            magic == b"GYMR"
            and "offered no fixed layout" in decode_frame(header, bytearray(data))["error"]["message"]
        )
        for connection, message in [
            (without, "offered no fixed layout"),
            (with_layout, "call reset() before step()"),
        ]:
            magic, header, data = _exchange(connection, step)
            assert magic == b"GYMR" and message in decode_frame(header, bytearray(data))["error"]["message"]
            connection.request("reset", seed=0)
            assert len(connection.step(1)) == 5
    finally:
        without.close()
        with_layout.close()


def test_a_run_of_fixed_steps_gives_way_to_errors_and_other_calls_and_resumes(server):
    """The worker serves whole step requests in a loop of their own; an env error, a reply that
    does not fit, an ordinary call or a malformed frame each leave it, and steps resume after."""
    fault = {name: index for index, name in enumerate(gym_remote.testing.FAULTS)}
    env = gym_remote.RemoteEnv("gym_remote_testing/Faulty-v0", address=server.address, allocate_bytes=16)
    try:
        env.reset(seed=0)
        connection = env._connect()
        assert connection.fixed_layout is not None

        def steps(count: int) -> None:
            for _ in range(count):
                observation, reward, terminated, truncated, info = env.step(-1)
                assert observation.shape == (16,) and (reward, terminated, truncated, info) == (
                    0.0,
                    False,
                    False,
                    {},
                )

        steps(3)
        with pytest.raises(errors.RemoteError, match="the simulator exploded"):
            env.step(fault["raise"])
        steps(2)
        with pytest.raises(errors.UnsupportedValue, match=r"\['custom'\]"):
            env.step(fault["custom_info"])
        steps(2)
        assert env.describe("x") == "x:FaultyEnv"
        steps(2)
        magic, header, data = _exchange(connection, PREFIX.pack(b"GYMF", 8, 8) + bytes([9]) + bytes(15))
        assert (
            magic == b"GYMR" and "action kind 9" in decode_frame(header, bytearray(data))["error"]["message"]
        )
        steps(2)
    finally:
        env.close()


def test_fixed_steps_and_resets_write_their_observation_into_the_shared_batch_row_they_name(
    server, monkeypatch
):
    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # CartPole's 16 bytes too
    connection, description = _session(server, fixed_steps=True)
    local = gym.make("CartPole-v1")
    batches = SharedBatches.for_space(local.observation_space, 4)
    try:
        connection.request("use_shared_batches", **batches.offer())
        layout = FixedLayout.from_wire(description["fixed_steps"])
        magic, header, data = _exchange(connection, layout.encode_reset(5, (1, 2)))
        assert (magic, data) == (b"GYMF", b"")
        np.testing.assert_array_equal(batches.batch(1)[2], local.reset(seed=5)[0])
        # Built as docs/protocol.md says: kind 2 (an int), no reply buffer, batch buffer 0 + 1, a
        # zero byte, row 3; the action as 8 bytes.
        by_hand = (
            PREFIX.pack(b"GYMF", 8, 8) + bytes([2, 0, 1, 0]) + struct.pack("<I", 3) + struct.pack("<q", 1)
        )
        assert layout.encode_action_into(1, (0, 3)) == by_hand
        magic, header, data = _exchange(connection, by_hand)
        expected = local.step(1)
        assert (magic, data) == (b"GYMF", b"") and struct.unpack("<dBBBxI", header)[0] == expected[1]
        np.testing.assert_array_equal(batches.batch(0)[3], expected[0])
        # A buffer the session does not have: refused before the env steps; the session goes on.
        magic, header, data = _exchange(connection, layout.encode_action_into(1, (len(batches.segments), 0)))
        assert (
            magic == b"GYMR"
            and f"this session has {len(batches.segments)}"
            in decode_frame(header, bytearray(data))["error"]["message"]
        )
        assert data_equivalence(connection.step(0), local.step(0), exact=True)
    finally:
        connection.close()
        batches.close()
        local.close()
