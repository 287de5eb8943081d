"""Faults in envs and calls: crashes, env exceptions and bad calls each get a clear typed error,
and the server keeps serving the others.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import gym_remote
from gym_remote import errors
from tests.fault_helpers import assert_serves, client_connection, fault, remote


@pytest.mark.parametrize("kind", ["exit", "segfault"])
def test_worker_crash_ends_only_its_session(server, kind):
    victim, bystander = remote(server), remote(server, "CartPole-v1")
    try:
        victim.reset()
        bystander.reset(seed=1)
        # The client hears how its worker ended, as the server saw it (issue 24 item 9).
        how = "exited with code 3" if kind == "exit" else "was killed by SIGSEGV"
        with pytest.raises(errors.WorkerCrashed, match=f"Faulty-v0 {how} during the session"):
            victim.step(fault(kind))
        with pytest.raises(errors.SessionClosed, match="ended earlier"):
            victim.step(-1)
        for _ in range(10):
            bystander.step(0)
        assert_serves(server)
    finally:
        victim.close()
        bystander.close()


@pytest.mark.parametrize("action", [2, np.int64(-1), 10**30], ids=["int", "numpy", "huge"])
def test_a_discrete_action_out_of_range_is_an_invalid_call_and_the_session_goes_on(server, action):
    """Not the env's AssertionError wrapped in a RemoteError (issue 24 item 9)."""
    env = remote(server, "CartPole-v1")
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match=r"action is .*out of range.*Discrete\(2\)"):
            env.step(action)
        assert env.step(1)[0].shape == (4,)
    finally:
        env.close()


def test_multi_discrete_and_multi_binary_actions_out_of_range_are_invalid_calls():
    from gym_remote.space_walk import describe_mismatch as describe_action_mismatch

    multi = gym.spaces.MultiDiscrete([3, 2])
    assert describe_action_mismatch(multi, np.array([2, 1]), "action") is None
    assert "out of range" in describe_action_mismatch(multi, np.array([3, 0]), "action")
    assert "out of range" in describe_action_mismatch(multi, np.array([0, -1]), "action")
    binary = gym.spaces.MultiBinary(3)
    assert describe_action_mismatch(binary, np.array([0, 1, 1]), "action") is None
    assert "not all 0 or 1" in describe_action_mismatch(binary, np.array([0, 2, 1]), "action")


def test_env_exception_carries_the_remote_traceback_and_the_session_goes_on(server):
    env = remote(server)
    try:
        env.reset()
        with pytest.raises(errors.RemoteError) as caught:
            env.step(fault("raise"))
        assert caught.value.remote_type == "builtins.RuntimeError"
        assert "the simulator exploded" in caught.value.remote_traceback
        assert "Traceback" in str(caught.value) and "testing.py" in str(caught.value)
        assert env.step(-1)[1] == 0.0
    finally:
        env.close()


def test_unknown_env(server):
    env = remote(server, "NoSuchEnv-v9")
    with pytest.raises(errors.EnvNotFound, match="NoSuchEnv"):
        env.reset()
    env.close()


def test_allowlist_and_module_ids(start_server):
    server = start_server("--allow", "CartPole-*")
    with pytest.raises(errors.EnvNotAllowed, match="allowlist"):
        remote(server, "Pendulum-v1").reset()
    with pytest.raises(errors.EnvNotAllowed, match="--import gym_remote.testing"):
        remote(server, "gym_remote.testing:CartPole-v1").reset()
    with pytest.raises(errors.EnvNotAllowed, match="client-side remote id"):
        remote(server, "remote/Env-v0").reset()
    assert_serves(server)
    connection = client_connection(server)
    assert connection.request("list") == ["CartPole-v0", "CartPole-v1"]
    connection.close()

    importing = start_server("--import", "gym_remote.testing", "--allow", "*ImageEnv*")
    env = remote(importing, "gym_remote.testing:gym_remote_testing/ImageEnv-v0")
    assert env.reset(seed=0)[0]["state"].shape == (9,)
    env.close()


@pytest.mark.parametrize(
    "env_id, action, message",
    [
        ("CartPole-v1", np.array([1, 0]), "expected an integer"),
        ("CartPole-v1", 1.5, "expected an integer"),
        ("CartPole-v1", "left", "expected an integer"),
        ("Pendulum-v1", np.zeros(3), r"action has shape \(3,\), expected \(1,\); the action space is Box"),
        ("Pendulum-v1", np.array(["x"]), "dtype <U1"),
        ("gym_remote_testing/RichSpaces-v0", {"move": 1}, "keys"),
        ("gym_remote_testing/RichSpaces-v0", {"move": 1, "force": np.zeros(5)}, r"action\['force'\]"),
    ],
)
def test_wrong_actions_are_invalid_calls_and_the_session_goes_on(server, env_id, action, message):
    env = remote(server, env_id)
    try:
        env.reset(seed=0)
        with pytest.raises(errors.InvalidCall, match=message):
            env.step(action)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_step_before_reset_is_an_invalid_call(server):
    env = remote(server, "CartPole-v1")
    with pytest.raises(errors.InvalidCall, match="reset"):
        env.step(0)
    env.close()


def test_unsupported_info_value_names_the_key_and_pickle_is_opt_in(server, start_server):
    env = remote(server)
    try:
        env.reset()
        with pytest.raises(errors.UnsupportedValue, match=r"\['custom'\]"):
            env.step(fault("custom_info"))
        env.step(-1)
    finally:
        env.close()
    pickling = start_server("--import", "gym_remote.testing", "--allow-pickle")
    refusing = remote(pickling)  # the client has not opted in
    refusing.reset()
    with pytest.raises(errors.UnsupportedValue):
        refusing.step(fault("custom_info"))
    refusing.close()
    accepting = remote(pickling, allow_pickle=True)
    accepting.reset()
    info = accepting.step(fault("custom_info"))[4]
    assert type(info["custom"]).__name__ == "_NotWireSafe"
    accepting.close()


@pytest.mark.parametrize(
    "error_type",
    [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)],
)
def test_every_error_is_picklable(error_type):
    error = error_type("what went wrong", remote_type="builtins.ValueError", remote_traceback="Traceback...")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_type and isinstance(copy, errors.RemoteEnvError)
    assert (copy.message, copy.remote_type, copy.remote_traceback) == (
        "what went wrong",
        "builtins.ValueError",
        "Traceback...",
    )
    assert str(copy) == str(error)
    error.add_note("also RemoteError: sub-env 3 (...): it broke too")
    assert pickle.loads(pickle.dumps(error)).__notes__ == ["also RemoteError: sub-env 3 (...): it broke too"]


def test_each_request_of_a_batch_gets_its_own_answer_and_bad_ones_harm_nothing(server):
    envs = gym_remote.RemoteVectorEnv("CartPole-v1", 2, address=server.address, envs_per_worker=2)
    try:
        connection = envs.sessions[0]._connect()
        outcomes = connection.request(
            "batch",
            requests=[
                {"op": "reset", "env": 1, "seed": 3},
                {"op": "step", "env": 0, "action": 1},
                {"op": "close"},
                {"op": "batch", "requests": []},
                "garbage",
                {"op": "step", "env": 2, "action": 0},
                {"op": "step", "env": 1, "action": 0},
            ],
        )
        errors_by_item = [outcome.get("error", {}).get("message") for outcome in outcomes]
        assert errors_by_item[0] is None and errors_by_item[6] is None
        assert "call reset() before step()" in errors_by_item[1]
        assert all("must be a map whose op is one of" in message for message in errors_by_item[2:5])
        assert "env 2 is not one of this session's 2 envs" in errors_by_item[5]
        expected, _ = gym.make("CartPole-v1").reset(seed=3)
        assert np.array_equal(outcomes[0]["ok"][0], expected)
        with pytest.raises(errors.InvalidCall, match="batch needs a list of requests"):
            connection.request("batch", requests=None)
        with pytest.raises(errors.InvalidCall, match="env -1 is not one of"):
            connection.request("step", env=-1, action=0)
        assert envs.reset(seed=0)[0].shape == (2, 4)  # the session goes on
    finally:
        envs.close()


def test_bad_shared_batches_are_invalid_calls_and_the_session_goes_on(server):
    from gym_remote.sharedmem import SharedSegment

    env = remote(server, "CartPole-v1")
    segment = SharedSegment.create(0, size=4096)
    try:
        env.reset(seed=0)
        connection = env._connect()
        before = connection.request("observe")
        with pytest.raises(errors.InvalidCall, match=r"buffer 0; this session has 0 \(use_shared_batches\)"):
            connection.request("step", action=0, into=[0, 0])
        leaf = {"path": [], "offset": 64, "dtype": "<f4", "shape": [1, 4]}
        bad_requests = [
            ({"buffers": None, "layout": []}, "lists of buffers and of leaves"),
            ({"buffers": [{"pid": 1, "fd": 999, "token": "00"}], "layout": [leaf]}, "use_shared_batches"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "shape": [-1, 4]}]}, "a batch of -1 envs"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "shape": [1, 5]}]}, r"is not \[\] of shape"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "dtype": "|O"}]}, "object dtype"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "dtype": "<f8"}]}, "expected float32"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "offset": 4090}]}, "not aligned"),
            ({"buffers": [segment.offer()], "layout": [{**leaf, "offset": 4088}]}, "does not fit"),
            ({"buffers": [segment.offer()], "layout": [leaf, leaf]}, "a list of 1 leaves"),
        ]
        for fields, message in bad_requests:
            with pytest.raises(errors.InvalidCall, match=message):
                connection.request("use_shared_batches", **fields)
        connection.request("use_shared_batches", buffers=[segment.offer()], layout=[leaf])
        for into, message in [
            ([0], r"into must be \[buffer, row\]"),
            ([1, 0], "row 0 of shared batch buffer 1; this session has 1"),
            ([0, -1], "row -1 of shared batch buffer 0"),
        ]:
            with pytest.raises(errors.InvalidCall, match=message):
                connection.request("step", action=0, into=into)
        for op, fields in [("reset", {"seed": 3}), ("observe", {})]:
            with pytest.raises(errors.InvalidCall, match="buffer 2; this session has 1"):
                connection.request(op, into=[2, 0], **fields)
        # Each refused before its env ran: not one step or reset was lost.
        assert np.array_equal(connection.request("observe"), before)
        observation, *_ = connection.request("step", action=0, into=[0, 0])
        assert observation is None, "written into the batch, not sent"
        assert np.array_equal(segment.array(np.float32, (1, 4), 64)[0], connection.request("observe"))
        assert env.step(1)[0].shape == (4,)  # plain requests go on as before
    finally:
        env.close()
        segment.close()
