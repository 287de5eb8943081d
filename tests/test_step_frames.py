"""Fixed-layout frames (gym_remote.step.frames): which spaces get a layout, exact values both ways,
what falls back to ordinary frames, and malformed layouts and frames.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import data_equivalence

import gym_remote
import gym_remote.testing  # noqa: F401  (registers the test envs)
from gym_remote import errors
from gym_remote.protocol import (
    PREFIX,
    byte_view,
)
from gym_remote.step.frames import ACTION_HEADER, REPLY_HEADER, FixedLayout
from gym_remote.step.layout import IN_REPLY
from tests.step_helpers import NESTED, layout_for, nested_observation, split_frame, through_the_wire


def header_and_data(buffers: list) -> tuple[bytes, bytearray]:
    frame = b"".join(bytes(byte_view(chunk)) for chunk in buffers)
    magic, header_length, data_length = PREFIX.unpack_from(frame)
    assert magic == b"GYMF" and len(frame) == PREFIX.size + header_length + data_length
    return split_frame(frame)


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
    leaves = layout.observation_layout.leaves
    assert [leaf.path for leaf in leaves] == [["arm", 0], ["arm", 1], ["camera"], ["levels"]]
    assert [leaf.offset for leaf in leaves] == [0, 24, 32, 48]
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
    decoded = client_side.decode_reply(*header_and_data(buffers))
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
    decoded = through_the_wire(worker_side).decode_reply(*header_and_data(buffers))
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
    request = through_the_wire(layout).encode_step(action)
    assert request is not None
    header, data = header_and_data([request])
    assert header[0] == kind
    op, received, placement = layout.decode_request(header, data)
    assert op == "step" and placement == IN_REPLY
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
    assert layout.encode_step(action) is None


@pytest.mark.parametrize("seed", [None, 0, 5, 2**63 - 1, -(2**63)])
def test_reset_seeds_that_fit_travel_fixed_and_arrive_as_they_were_sent(seed):
    layout = layout_for(spaces.Box(0, 1, (1,), np.float32))
    request = through_the_wire(layout).encode_reset(seed)
    assert request is not None
    header, data = header_and_data([request])
    op, received, placement = layout.decode_request(header, data)
    assert op == "reset" and len(data) == (0 if seed is None else 8)
    assert type(received) is type(seed) and received == seed and placement == IN_REPLY
    assert layout.whole_step_request(request) is None  # resets never take the steps' short way


def test_other_resets_take_the_ordinary_request():
    space = spaces.Box(0, 1, (1,), np.float32)
    offer = layout_for(space).to_wire()
    layout = FixedLayout.from_wire(offer, space)
    for seed in [2**63, -(2**63) - 1, True, np.int64(3), 1.0]:
        assert layout.encode_reset(seed) is None
    del offer["resets"]  # a worker that takes fixed-layout steps only
    assert FixedLayout.from_wire(offer, space).encode_reset(0) is None
    assert layout.decode_request(ACTION_HEADER.pack(0, 0, 0, 0), bytearray(8))[0] == "step"
    with pytest.raises(errors.InvalidCall, match="header has 8 bytes, got 1"):
        layout.decode_request(bytes([3]), b"")


def test_a_reset_reply_is_a_step_reply_with_zero_reward_and_no_flags():
    worker_side = layout_for(NESTED)
    client_side = through_the_wire(worker_side)
    info = {"is_success": False}
    buffers = worker_side.encode_reset_reply(nested_observation(), info)
    decoded = client_side.decode_reply(*header_and_data(buffers))
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
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [{"path": [], "dtype": "<f8", "shape": [1], "offset": 0}],
        },
        {
            "action": {"dtype": "<i8", "shape": []},
            "observation": [{"path": [], "dtype": "<f4", "shape": [2], "offset": 0}],
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
        "another-dtype",
        "another-shape",
    ],
)
def test_a_malformed_layout_is_a_protocol_error(payload):
    with pytest.raises(errors.ProtocolError, match="malformed fixed_steps layout"):
        FixedLayout.from_wire(payload, spaces.Box(0, 1, (1,), np.float32))


def test_malformed_fixed_frames_are_refused_with_what_is_wrong():
    layout = layout_for(spaces.Box(0, 1, (2,), np.float32), spaces.Box(-1, 1, (3,), np.float32))
    with pytest.raises(errors.InvalidCall, match="header has 8 bytes, got 1"):
        layout.decode_request(b"\x00", bytearray(12))
    with pytest.raises(errors.InvalidCall, match="action kind 9"):
        layout.decode_request(ACTION_HEADER.pack(9, 0, 0, 0), bytearray(12))
    with pytest.raises(errors.InvalidCall, match="has 12 bytes, got 4"):
        layout.decode_request(ACTION_HEADER.pack(0, 0, 0, 0), bytearray(4))
    with pytest.raises(errors.InvalidCall, match="does not fit the action layout"):
        layout.decode_request(ACTION_HEADER.pack(2, 0, 0, 0), bytearray(8))
    with pytest.raises(errors.InvalidCall, match="both reply buffer 1 and a batch row"):
        layout.decode_request(ACTION_HEADER.pack(0, 1, 1, 0), bytearray(12))
    for malformed in [
        ACTION_HEADER.pack(0, 0, 0, 3),
        ACTION_HEADER.pack(0, 0, 1, 0)[:3] + b"\x01" + bytes(4),
    ]:
        with pytest.raises(errors.InvalidCall, match="batch row is malformed"):
            layout.decode_request(malformed, bytearray(12))
        with pytest.raises(errors.InvalidCall, match="batch row is malformed"):
            layout.decode_request(bytes([3]) + malformed[1:], b"")
    with pytest.raises(errors.InvalidCall, match="0 or 8 bytes of seed, got 4"):
        layout.decode_request(ACTION_HEADER.pack(3, 0, 0, 0), bytearray(4))
    with pytest.raises(errors.InvalidCall, match="names reply buffer 2: only steps"):
        layout.decode_request(ACTION_HEADER.pack(3, 2, 0, 0), b"")
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
