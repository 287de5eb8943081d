"""The space codec: every built-in Gymnasium space to a plain value and back.

``decode_space(encode_space(space)) == space`` for Box, Discrete, MultiDiscrete, MultiBinary,
Text, Dict, Tuple, Sequence, Graph and OneOf. The encoded form is a dict with a ``"type"`` key,
made of values the wire format carries (arrays travel as raw buffers, so infinities survive).
Any other space needs pickle on both ends (``allow_pickle=True``).

This module runs inside simulator interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

from typing import Any, Callable, Dict, Type

import numpy as np
from gymnasium import spaces

from gym_remote.errors import ProtocolError, UnsupportedValue, shown

__all__ = ["encode_space", "decode_space"]

_Encoder = Callable[[Any, bool], Dict[str, Any]]
_Decoder = Callable[[Dict[str, Any], bool], spaces.Space]
_ENCODERS: Dict[type, _Encoder] = {}
_DECODERS: Dict[str, _Decoder] = {}


def _codec(space_type: Type[spaces.Space]) -> Callable[[_Encoder], _Encoder]:
    """Registers the encoder of exactly ``space_type`` (a subclass is not assumed to match)."""

    def register(encoder: _Encoder) -> _Encoder:
        _ENCODERS[space_type] = encoder
        return encoder

    return register


def _decoder(name: str) -> Callable[[_Decoder], _Decoder]:
    """Registers the decoder of the encoded ``"type"`` called ``name``."""

    def register(decoder: _Decoder) -> _Decoder:
        _DECODERS[name] = decoder
        return decoder

    return register


def encode_space(space: Any, allow_pickle: bool = False) -> Dict[str, Any]:
    """Encodes a Gymnasium space as a plain value for the wire.

    Raises:
        UnsupportedValue: the space (or a space inside it) is not a built-in Gymnasium space
            and ``allow_pickle`` is false.
    """
    encoder = _ENCODERS.get(type(space))
    if encoder is not None:
        return encoder(space, allow_pickle)
    if allow_pickle:
        return {"type": "pickle", "space": space}
    raise UnsupportedValue(
        f"cannot send the space {space!r} ({type(space).__name__}) without pickle: only "
        "Gymnasium's built-in spaces travel by default. Enable allow_pickle=True on both client and server."
    )


def decode_space(encoded: Any, allow_pickle: bool = False) -> spaces.Space:
    """Rebuilds a space from :func:`encode_space`'s output.

    Raises:
        ProtocolError: the encoded value is not a space this codec knows.
    """
    if not isinstance(encoded, dict) or "type" not in encoded:
        raise ProtocolError(f"malformed space {shown(encoded)}")
    kind = encoded["type"]
    if kind == "pickle":
        space = encoded.get("space")
        if not isinstance(space, spaces.Space):
            raise ProtocolError(f"pickled space is a {type(space).__name__}")
        return space
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown space type {shown(kind)}")
    try:
        return decoder(encoded, allow_pickle)
    except (ProtocolError, UnsupportedValue):
        raise
    except Exception as error:
        raise ProtocolError(f"malformed {kind} space: {error}") from None


@_codec(spaces.Box)
def _encode_box(space: spaces.Box, allow_pickle: bool) -> Dict[str, Any]:
    return {
        "type": "Box",
        "dtype": space.dtype.str,
        "shape": list(space.shape),
        "low": space.low,
        "high": space.high,
    }


@_decoder("Box")
def _decode_box(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Box:
    shape = tuple(encoded["shape"])
    # Bounds of the box's own shape, as encode_space sends them: a peer's shape alone must not
    # make this process allocate (Box broadcasts scalar bounds to its shape).
    for name in ("low", "high"):
        bound = encoded[name]
        if type(bound) is not np.ndarray or bound.shape != shape:
            raise ProtocolError(f"a Box's {name} must be an array of its shape {shown(shape)}")
    return spaces.Box(low=encoded["low"], high=encoded["high"], shape=shape, dtype=np.dtype(encoded["dtype"]))


@_codec(spaces.Discrete)
def _encode_discrete(space: spaces.Discrete, allow_pickle: bool) -> Dict[str, Any]:
    return {
        "type": "Discrete",
        "n": int(space.n),
        "start": int(space.start),
        "dtype": np.dtype(space.dtype).str,
    }


@_decoder("Discrete")
def _decode_discrete(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Discrete:
    dtype = np.dtype(encoded["dtype"])
    if dtype == np.int64:
        return spaces.Discrete(encoded["n"], start=encoded["start"])
    # Discrete's dtype argument is newer than gymnasium 0.29.
    return spaces.Discrete(encoded["n"], start=encoded["start"], dtype=dtype)


@_codec(spaces.MultiDiscrete)
def _encode_multi_discrete(space: spaces.MultiDiscrete, allow_pickle: bool) -> Dict[str, Any]:
    return {
        "type": "MultiDiscrete",
        "nvec": space.nvec,
        "start": space.start,
        "dtype": space.dtype.str,
    }


@_decoder("MultiDiscrete")
def _decode_multi_discrete(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.MultiDiscrete:
    return spaces.MultiDiscrete(encoded["nvec"], dtype=np.dtype(encoded["dtype"]), start=encoded["start"])


@_codec(spaces.MultiBinary)
def _encode_multi_binary(space: spaces.MultiBinary, allow_pickle: bool) -> Dict[str, Any]:
    n: Any = space.n  # an int, or a shape (a sequence or an array)
    return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(x) for x in n]}


@_decoder("MultiBinary")
def _decode_multi_binary(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.MultiBinary:
    n = encoded["n"]
    return spaces.MultiBinary(n if isinstance(n, int) else np.asarray(n, dtype=np.int64))


@_codec(spaces.Text)
def _encode_text(space: spaces.Text, allow_pickle: bool) -> Dict[str, Any]:
    return {
        "type": "Text",
        "max_length": int(space.max_length),
        "min_length": int(space.min_length),
        # The character order decides what `sample()` draws, so keep it, not just the set.
        "charset": "".join(getattr(space, "character_list", None) or sorted(space.character_set)),
    }


@_decoder("Text")
def _decode_text(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Text:
    return spaces.Text(encoded["max_length"], min_length=encoded["min_length"], charset=encoded["charset"])


@_codec(spaces.Dict)
def _encode_dict(space: spaces.Dict, allow_pickle: bool) -> Dict[str, Any]:
    items = [[key, _encode_child(sub, allow_pickle, key)] for key, sub in space.spaces.items()]
    return {"type": "Dict", "spaces": items}


@_decoder("Dict")
def _decode_dict(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Dict:
    return spaces.Dict([(key, decode_space(sub, allow_pickle)) for key, sub in encoded["spaces"]])


@_codec(spaces.Tuple)
def _encode_tuple(space: spaces.Tuple, allow_pickle: bool) -> Dict[str, Any]:
    items = [_encode_child(sub, allow_pickle, index) for index, sub in enumerate(space.spaces)]
    return {"type": "Tuple", "spaces": items}


@_decoder("Tuple")
def _decode_tuple(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Tuple:
    return spaces.Tuple([decode_space(sub, allow_pickle) for sub in encoded["spaces"]])


@_codec(spaces.Sequence)
def _encode_sequence(space: spaces.Sequence, allow_pickle: bool) -> Dict[str, Any]:
    return {
        "type": "Sequence",
        "feature_space": _encode_child(space.feature_space, allow_pickle, "feature_space"),
        "stack": bool(getattr(space, "stack", False)),
    }


@_decoder("Sequence")
def _decode_sequence(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Sequence:
    feature_space = decode_space(encoded["feature_space"], allow_pickle)
    if encoded["stack"]:
        return spaces.Sequence(feature_space, stack=True)
    return spaces.Sequence(feature_space)


@_codec(spaces.Graph)
def _encode_graph(space: spaces.Graph, allow_pickle: bool) -> Dict[str, Any]:
    edge_space = space.edge_space
    return {
        "type": "Graph",
        "node_space": _encode_child(space.node_space, allow_pickle, "node_space"),
        "edge_space": None if edge_space is None else _encode_child(edge_space, allow_pickle, "edge_space"),
    }


@_decoder("Graph")
def _decode_graph(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Graph:
    edge_space = encoded["edge_space"]
    return spaces.Graph(
        node_space=decode_space(encoded["node_space"], allow_pickle),
        edge_space=None if edge_space is None else decode_space(edge_space, allow_pickle),
    )


_ONE_OF: Any = getattr(spaces, "OneOf", None)  # new in gymnasium 1.0
if _ONE_OF is not None:

    @_codec(_ONE_OF)
    def _encode_one_of(space: Any, allow_pickle: bool) -> Dict[str, Any]:
        items = [_encode_child(sub, allow_pickle, index) for index, sub in enumerate(space.spaces)]
        return {"type": "OneOf", "spaces": items}

    @_decoder("OneOf")
    def _decode_one_of(encoded: Dict[str, Any], allow_pickle: bool) -> spaces.Space:
        return _ONE_OF([decode_space(sub, allow_pickle) for sub in encoded["spaces"]])


def _encode_child(space: Any, allow_pickle: bool, where: Any) -> Dict[str, Any]:
    try:
        return encode_space(space, allow_pickle)
    except UnsupportedValue as error:
        raise UnsupportedValue(f"in sub-space {where!r}: {error.message}") from None
