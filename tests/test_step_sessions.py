"""Fixed-layout steps in real sessions: the StepSender and StepResponder against local envs, bad
frames from a client, and a server that stops reading or answers out of turn.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

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
from gym_remote.protocol import (
    PREFIX,
    MessageReader,
    decode_frame,
    encode_frame,
)
from gym_remote.spaces import decode_space
from gym_remote.step.frames import FixedLayout
from gym_remote.step.layout import in_batch_row
from gym_remote.step.sender import StepSender
from tests.step_helpers import joined_frame, layout_for

VARYING = "gym_remote_testing/VaryingSteps-v0"


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
    hello = joined_frame(encode_frame({"ok": {"allow_pickle": False, "server": "test"}}))
    with _one_reply_server(hello) as address:
        connection = Connection(address, timeout=0.5, max_message_size=1 << 26)
        big = spaces.Box(-1, 1, (1 << 23,), np.float32)  # 32 MB: more than the socket buffers hold
        sender = StepSender(connection, lambda error: None)
        sender.use_layout(layout_for(spaces.Box(0, 1, (1,), np.float32), big))
        with pytest.raises(errors.RemoteTimeout, match="within 0.5 s"):
            sender.step(np.zeros(big.shape, np.float32))
        assert connection.closed


def test_a_fixed_layout_frame_in_reply_to_another_request_is_a_protocol_error():
    layout = layout_for(spaces.Box(-1, 1, (2,), np.float32))
    reply = joined_frame(layout.encode_reply((np.zeros(2, np.float32), 1.0, False, False, {})))
    with _one_reply_server(reply) as address:
        with pytest.raises(errors.ProtocolError, match="a fixed-layout frame in reply to hello"):
            Connection(address, timeout=5.0, max_message_size=1 << 26)


def test_steps_of_varying_types_equal_the_local_env_and_both_frames_are_used(server, monkeypatch):
    local, remote = gym.make(VARYING), gym_remote.RemoteEnv(VARYING, address=server.address)
    try:
        remote.reset(seed=0)
        layout = remote._steps.layout
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
        send, receive_frame = connection.connection.send, connection.connection.receive_frame
        monkeypatch.setattr(
            connection.connection,
            "send",
            lambda op, **fields: ordinary_requests.append(op) or send(op, **fields),
        )

        def recorded_receive(op, whole=None):
            taken, frame = receive_frame(op, whole)
            if op == "reset" and whole is not None:  # the reply to a fixed-layout reset
                fixed_reset_replies.append(taken is not None or frame[2])
            return taken, frame

        monkeypatch.setattr(connection.connection, "receive_frame", recorded_receive)
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
        assert remote.gym_remote.uses_shared_memory is shared_memory and remote._steps.layout is not None
        for step in range(5):
            action = np.full(7, step / 10, np.float32)
            assert data_equivalence(local.step(action), remote.step(action), exact=True)
    finally:
        local.close()
        remote.close()


def _session(server, **make_fields):
    """A step sender in a CartPole session made with ``make_fields`` (sending fixed-layout
    frames where the worker offered a layout), and its make reply."""
    connection = Connection(parse_address(server.address), timeout=10.0, max_message_size=1 << 26)
    connection.in_session = True
    description = connection.request("make", env_id="CartPole-v1", kwargs={}, render_mode=None, **make_fields)
    sender = StepSender(connection, lambda error: None)
    if "fixed_steps" in description:
        observation_space = decode_space(description["observation_space"])
        sender.use_layout(FixedLayout.from_wire(description["fixed_steps"], observation_space))
    return sender, description


def test_a_closed_connection_refuses_steps_that_fit_its_layout(server):
    connection, _ = _session(server, fixed_steps=True)
    assert connection.layout is not None
    connection.request("reset", seed=0)
    assert connection.step(1)[0].shape == (4,)
    connection.close()
    with pytest.raises(errors.ServerUnavailable, match="is closed"):
        connection.step(1)


def _exchange(connection, frame: bytes) -> tuple[bytes, bytes, bytes]:
    """Sends raw bytes; returns the reply frame's magic, header and data section."""
    connection.connection._sock.sendall(frame)
    header, data, fixed = MessageReader(connection.connection._sock).receive_frame(10.0)
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
        assert connection.layout is not None

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
    connection, _ = _session(server, fixed_steps=True)
    local = gym.make("CartPole-v1")
    batches = SharedBatches.for_space(local.observation_space, 4)
    try:
        connection.request("use_shared_batches", **batches.offer())
        layout = connection.layout
        magic, header, data = _exchange(connection, layout.encode_reset(5, in_batch_row(1, 2)))
        assert (magic, data) == (b"GYMF", b"")
        np.testing.assert_array_equal(batches.batch(1)[2], local.reset(seed=5)[0])
        # Built as docs/protocol.md says: kind 2 (an int), no reply buffer, batch buffer 0 + 1, a
        # zero byte, row 3; the action as 8 bytes.
        by_hand = (
            PREFIX.pack(b"GYMF", 8, 8) + bytes([2, 0, 1, 0]) + struct.pack("<I", 3) + struct.pack("<q", 1)
        )
        assert layout.encode_step(1, in_batch_row(0, 3)) == by_hand
        magic, header, data = _exchange(connection, by_hand)
        expected = local.step(1)
        assert (magic, data) == (b"GYMF", b"") and struct.unpack("<dBBBxI", header)[0] == expected[1]
        np.testing.assert_array_equal(batches.batch(0)[3], expected[0])
        # A buffer the session does not have: refused before the env steps; the session goes on.
        magic, header, data = _exchange(
            connection, layout.encode_step(1, in_batch_row(len(batches.segments), 0))
        )
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
