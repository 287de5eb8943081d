"""The space codec: decode(encode(space)) == space for every built-in space, through the wire."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from gym_remote.errors import UnsupportedValue
from gym_remote.space_walk import build, children, describe_mismatch, leaf_subspaces, value_at
from gym_remote.spaces import decode_space, encode_space
from tests.test_protocol import round_trip


def wire_round_trip(space, allow_pickle=False):
    return decode_space(round_trip(encode_space(space, allow_pickle), allow_pickle), allow_pickle)


def assert_same_space(decoded, original):
    assert type(decoded) is type(original)
    assert decoded == original
    if isinstance(original, spaces.Box):
        assert decoded.dtype == original.dtype
        assert np.array_equal(decoded.low, original.low) and np.array_equal(decoded.high, original.high)
    if isinstance(original, spaces.Text):
        assert decoded.character_list == original.character_list
    children = {
        spaces.Dict: lambda space: list(space.spaces.values()),
        spaces.Tuple: lambda space: list(space.spaces),
        spaces.OneOf: lambda space: list(space.spaces),
        spaces.Sequence: lambda space: [space.feature_space],
    }.get(type(original))
    if children is not None:
        for decoded_child, original_child in zip(children(decoded), children(original)):
            assert_same_space(decoded_child, original_child)
    if isinstance(original, spaces.Dict):
        assert list(decoded.spaces) == list(original.spaces)


EXAMPLES = [
    spaces.Box(-1.0, 1.0, (3,), np.float32),
    spaces.Box(np.array([-np.inf, 0.0]), np.array([np.inf, 1.0]), dtype=np.float64),
    spaces.Box(0, 255, (4, 4, 3), np.uint8),
    spaces.Box(-np.inf, np.inf, (), np.float16),
    spaces.Box(np.array([[0, -5], [2, 3]]), np.array([[1, 5], [9, 3]]), dtype=np.int64),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-7),
    spaces.Discrete(4, start=2, dtype=np.int32),
    spaces.MultiDiscrete([3, 4, 5]),
    spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [10, 20]])),
    spaces.MultiDiscrete([2, 2], dtype=np.int32),
    spaces.MultiBinary(6),
    spaces.MultiBinary((2, 3)),
    spaces.Text(10),
    spaces.Text(5, min_length=2, charset="zyx!"),
    spaces.Dict({"b": spaces.Discrete(2), "a": spaces.Box(0, 1, (2,))}),
    spaces.Tuple((spaces.Discrete(2), spaces.Text(3))),
    spaces.Sequence(spaces.Discrete(3)),
    spaces.Sequence(spaces.Box(0, 1, (2,)), stack=True),
    spaces.Graph(node_space=spaces.Box(0, 1, (3,)), edge_space=spaces.Discrete(4)),
    spaces.Graph(node_space=spaces.Discrete(2), edge_space=None),
    spaces.OneOf([spaces.Discrete(2), spaces.Box(-1, 1, (2,))]),
    spaces.Dict({"nested": spaces.Tuple((spaces.Dict({"deep": spaces.MultiBinary(2)}),))}),
]


@pytest.mark.parametrize("space", EXAMPLES, ids=lambda space: type(space).__name__)
def test_every_builtin_space_round_trips(space):
    assert_same_space(wire_round_trip(space), space)


def test_samples_of_a_decoded_space_match_the_original():
    space = spaces.Text(8, charset="abcdef")
    decoded = wire_round_trip(space)
    space.seed(3)
    decoded.seed(3)
    assert [space.sample() for _ in range(5)] == [decoded.sample() for _ in range(5)]


class CustomSpace(spaces.Space):
    def __eq__(self, other):
        return isinstance(other, CustomSpace)


def test_custom_space_needs_pickle_and_says_so():
    with pytest.raises(UnsupportedValue, match=r"sub-space 'odd'.*CustomSpace.*allow_pickle"):
        encode_space(spaces.Dict({"odd": CustomSpace()}))
    assert wire_round_trip(spaces.Dict({"odd": CustomSpace()}), allow_pickle=True) == spaces.Dict(
        {"odd": CustomSpace()}
    )


DTYPE_NAMES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16"]
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def boxes(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPE_NAMES)))
    shape = draw(shapes)
    if dtype.kind == "f":
        values = st.one_of(st.floats(-1e3, 1e3, width=16), st.just(np.inf))
        low = (
            np.array(
                draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                dtype=dtype,
            ).reshape(shape)
            * -1
        )
        high = np.maximum(low, np.array(0, dtype)) + 1
        high = np.where(draw(st.booleans()), np.inf, high).astype(dtype)
    else:
        info = np.iinfo(dtype)
        low = np.full(shape, draw(st.integers(int(info.min), 0)), dtype=dtype)
        high = np.full(shape, draw(st.integers(0, int(info.max))), dtype=dtype)
    return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)


leaves = st.one_of(
    boxes(),
    st.builds(spaces.Discrete, st.integers(1, 100), start=st.integers(-50, 50)),
    st.builds(
        lambda nvec, start: spaces.MultiDiscrete(nvec, start=start),
        st.lists(st.integers(1, 9), min_size=1, max_size=4).map(np.array),
        st.just(None),
    ),
    st.builds(spaces.MultiBinary, st.integers(1, 8)),
    st.builds(
        lambda low, extra, charset: spaces.Text(low + extra, min_length=low, charset=charset),
        st.integers(0, 5),
        st.integers(0, 5),
        st.text(alphabet="abcxyz0129!", min_size=1, max_size=6).map(lambda t: "".join(dict.fromkeys(t))),
    ),
)
space_trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), children, min_size=1, max_size=3).map(
            spaces.Dict
        ),
        st.lists(children, min_size=1, max_size=3).map(spaces.Tuple),
        st.builds(spaces.Sequence, children, stack=st.just(False)),
        st.lists(children, min_size=1, max_size=3).map(spaces.OneOf),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(space_trees)
def test_generated_spaces_round_trip(space):
    assert_same_space(wire_round_trip(space), space)


def test_leaf_subspaces_follow_gymnasium_order_and_refuse_other_leaves():
    box, binary = spaces.Box(0, 1, (2,)), spaces.MultiBinary(3)
    nested = spaces.Dict({"b": spaces.Tuple((box, binary)), "a": box})
    leaf_types = (spaces.Box, spaces.MultiBinary)
    assert leaf_subspaces(nested, leaf_types) == [(["a"], box), (["b", 0], box), (["b", 1], binary)]
    assert leaf_subspaces(box, leaf_types) == [([], box)]
    assert leaf_subspaces(spaces.Tuple((box, spaces.Text(3))), leaf_types) is None
    assert leaf_subspaces(spaces.Dict({1: box}), leaf_types) is None  # keys must be strings


def test_the_space_walk_builds_values_in_gymnasium_order_and_finds_their_leaves():
    nested = spaces.Dict(
        {"b": spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (2,)))), "a": spaces.Box(0, 1)}
    )
    made = iter(range(10))
    value = build(nested, lambda leaf: next(made))
    # Gymnasium sorts a dict's keys: "a" comes first and gets the first leaf's value.
    assert value == {"a": 0, "b": (1, 2)} and list(value) == list(nested.spaces)
    assert [value_at(value, path) for path, _ in leaf_subspaces(nested)] == [0, 1, 2]
    assert children(spaces.Box(0, 1)) is None and [key for key, _ in children(nested)] == ["a", "b"]
    # The Discrete leaf counts as a fixed-shape array, a Text leaf does not.
    assert leaf_subspaces(spaces.Tuple((spaces.Discrete(3), spaces.Text(2)))) is None


def test_mismatches_name_the_place_of_the_first_wrong_value():
    space = spaces.Dict({"arm": spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2)))})
    assert describe_mismatch(space, {"arm": (2, np.array([0, 1]))}, "action") is None
    assert (
        describe_mismatch(space, {"arm": (3, np.array([0, 1]))}, "action")
        == "action['arm'][0] is 3, out of range"
    )
    assert "action['arm'][1]" in describe_mismatch(space, {"arm": (0, np.array([0, 2]))}, "action")
    assert "expected a dict" in describe_mismatch(space, [1], "action")
    assert describe_mismatch(spaces.Text(3), object(), "action") is None  # no check: the env decides
