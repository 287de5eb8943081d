"""RemoteVectorEnv as Gymnasium's vector envs: batches, autoreset modes, spaces, specs, attributes
and per-env kwargs equal a local vector env's.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import gym_remote
from gym_remote import RemoteVectorEnv
from gym_remote.batches import SharedBatches
from gym_remote.connection import Connection
from tests.helpers import descendants
from tests.vector_helpers import NUM_ENVS, run_both


@pytest.mark.parametrize("envs_per_worker", [1, 2], ids=lambda count: f"{count}-per-worker")
@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize(
    "env_id",
    [
        "CartPole-v1",  # observations written straight into shared batches by the workers
        "gym_remote_testing/ImageEnv-v0",  # the same, for a dict of arrays
        "FrozenLake-v1",  # integer observations: they come in the replies, into shared batches
        "gym_remote_testing/RichSpaces-v0",  # spaces that are not arrays: no shared batches
        # Fixed-layout steps whose values now and then fit no fixed reply or no batch row.
        "gym_remote_testing/VaryingSteps-v0",
    ],
)
def test_batches_equal_sync_vector_env(server, monkeypatch, mode, env_id, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # small observations too

    local = SyncVectorEnv([lambda: gym.make(env_id)] * NUM_ENVS, autoreset_mode=mode)
    # With 2 per worker, 3 envs make one worker hosting two (batched requests) and one plain session.
    remote = RemoteVectorEnv(
        env_id, NUM_ENVS, address=server.address, autoreset_mode=mode, envs_per_worker=envs_per_worker
    )
    try:
        assert remote.uses_shared_batches == ("RichSpaces" not in env_id)
        assert remote.metadata["autoreset_mode"] == mode
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert run_both(local, remote, steps=120) >= 2, "the run must cross episode boundaries"
    finally:
        local.close()
        remote.close()


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-batches", "socket"])
@pytest.mark.parametrize(
    "mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda mode: mode.value
)
def test_steps_and_resets_of_one_env_sessions_travel_in_fixed_frames(
    server, monkeypatch, shared_memory, mode
):
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "1" if shared_memory else "0")
    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # CartPole's too
    ordinary, fixed_replies = [], []
    send, receive_frame = Connection.send, Connection.receive_frame
    monkeypatch.setattr(
        Connection, "send", lambda self, op, **fields: ordinary.append(op) or send(self, op, **fields)
    )

    def recorded_receive(self, op, whole=None):
        taken, frame = receive_frame(self, op, whole)
        if whole is not None:  # the reply to a fixed-layout request
            fixed = taken is not None or frame[2]
            fixed_replies.append((op, fixed, taken is None and fixed and not len(frame[1])))
        return taken, frame

    monkeypatch.setattr(Connection, "receive_frame", recorded_receive)
    local = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS, autoreset_mode=mode)
    remote = RemoteVectorEnv("CartPole-v1", NUM_ENVS, address=server.address, autoreset_mode=mode)
    try:
        assert remote.uses_shared_batches is shared_memory
        ended = run_both(local, remote, steps=80)
    finally:
        local.close()
        remote.close()
    assert ended >= 2, "the run must cross episode boundaries"
    assert "step" not in ordinary and "reset" not in ordinary
    # The first reset, then one call per env and vector step (an autoreset for NEXT_STEP), and
    # for SAME_STEP an autoreset after each step that ended an episode.
    ops = [op for op, _, _ in fixed_replies]
    assert len(ops) == NUM_ENVS + 80 * NUM_ENVS + (ended if mode == AutoresetMode.SAME_STEP else 0)
    assert ops.count("reset") >= NUM_ENVS + 2
    # Every reply was fixed-layout, with the observation written into its batch row by the worker
    # where the vector env has shared batches, and in the reply where it has not.
    assert {(fixed, in_row) for _, fixed, in_row in fixed_replies} == {(True, shared_memory)}


def test_make_vec_uses_the_vector_entry_point(server):
    envs = gym.make_vec(
        "remote/Env-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        env_id="CartPole-v1",
        address=server.address,
        envs_per_worker=2,
    )
    try:
        assert isinstance(envs.unwrapped, RemoteVectorEnv)
        assert len(envs.unwrapped.sessions) == 1, "both envs in one worker"
        observations, _ = envs.reset(seed=0)
        assert observations.shape == (2, 4)
    finally:
        envs.close()


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_call_get_attr_set_attr_render(server, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv(
        "gym_remote_testing/ImageEnv-v0",
        2,
        address=server.address,
        render_mode="rgb_array",
        envs_per_worker=envs_per_worker,
    )
    try:
        assert envs.get_attr("task_description") == ("look at the two cameras",) * 2
        envs.set_attr("episode_length", [3, 4])
        assert envs.call("episode_length") == (3, 4)
        envs.reset(seed=0)
        frames = envs.render()
        assert len(frames) == 2 and frames[0].shape == (256, 256, 3)
    finally:
        envs.close()


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_per_env_kwargs_reach_each_env_over_the_shared_ones(server, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv(
        "gym_remote_testing/ImageEnv-v0",
        2,
        address=server.address,
        episode_length=9,
        per_env_kwargs=[{}, {"episode_length": 4}],
        envs_per_worker=envs_per_worker,
    )
    try:
        assert len(envs.sessions) == 3 - envs_per_worker
        assert envs.get_attr("episode_length") == (9, 4)
    finally:
        envs.close()
    with pytest.raises(ValueError, match="per_env_kwargs has 1 dicts for 2 envs"):
        RemoteVectorEnv("CartPole-v1", 2, address=server.address, per_env_kwargs=[{}])


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_every_env_has_spaces_spec_metadata_and_render_mode_as_remote_envs_have(server, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    env_id, per_env_kwargs = "gym_remote_testing/ImageEnv-v0", [{}, {"episode_length": 4}]
    envs = RemoteVectorEnv(
        env_id,
        2,
        address=server.address,
        render_mode="rgb_array",
        episode_length=9,
        per_env_kwargs=per_env_kwargs,
        envs_per_worker=envs_per_worker,
    )
    singles = SyncVectorEnv(
        [
            lambda kwargs=kwargs: gym_remote.RemoteEnv(
                env_id, address=server.address, render_mode="rgb_array", **{"episode_length": 9, **kwargs}
            )
            for kwargs in per_env_kwargs
        ]
    )
    try:
        for name in ["observation_space", "action_space", "spec", "metadata", "render_mode"]:
            assert envs.get_attr(name) == singles.get_attr(name), name
            assert envs.call(name) == singles.call(name), name
        remade = gym.make(envs.get_attr("spec")[1])  # env 1 again, with its own episode length
        try:
            assert remade.get_wrapper_attr("episode_length") == 4
        finally:
            remade.close()
    finally:
        envs.close()
        singles.close()


def test_private_server_for_all_sessions(monkeypatch):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    envs = RemoteVectorEnv("CartPole-v1", 2)
    try:
        assert len({env.gym_remote.config.address for env in envs.sessions}) == 1
        assert envs.reset(seed=0)[0].shape == (2, 4)
    finally:
        envs.close()
    assert envs._embedded is None


def single_steps(env, actions):
    rewards, terminated, truncated, infos, observations = [], [], [], [], []
    for action in actions:
        observation, reward, term, trunc, info = env.step(action)
        for values, value in zip(
            (rewards, terminated, truncated, infos, observations), (reward, term, trunc, info, observation)
        ):
            values.append(value)
        if term or trunc:
            break
    return rewards, terminated, truncated, infos, observations


@pytest.mark.parametrize("chunk_length", [1, 8, 40])
def test_step_chunk_equals_single_steps_even_across_an_episode_end(server, chunk_length):
    chunked = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    single = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        chunked.reset(seed=4)
        single.reset(seed=4)
        actions = [np.int64(1)] * chunk_length  # always pushing right ends an episode within ~10 steps
        result = chunked.step_chunk(actions, all_observations=True)
        rewards, terminated, truncated, infos, observations = single_steps(single, actions)
        assert data_equivalence(
            (result.rewards, result.terminated, result.truncated, result.infos),
            (rewards, terminated, truncated, infos),
            exact=True,
        )
        assert data_equivalence(result.observations, observations, exact=True)
        assert np.array_equal(result.observation, observations[-1])
        if chunk_length == 40:
            assert result.terminated[-1] and len(result.rewards) < 40, "the chunk stops at the episode end"
        assert chunked.step_chunk(actions[:1]).observations is None
    finally:
        chunked.close()
        single.close()


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_vector_step_chunk(server, envs_per_worker):
    envs = RemoteVectorEnv("CartPole-v1", 2, address=server.address, envs_per_worker=envs_per_worker)
    single = [gym_remote.RemoteEnv("CartPole-v1", address=server.address) for _ in range(2)]
    try:
        envs.reset(seed=[10, 11])
        for env, seed in zip(single, [10, 11]):
            env.reset(seed=seed)
        chunks = [[np.int64(0)] * 5, [np.int64(1)] * 30]
        results = envs.step_chunk(chunks)
        for result, env, chunk in zip(results, single, chunks):
            expected = single_steps(env, chunk)
            assert data_equivalence(result.rewards, expected[0], exact=True)
            assert np.array_equal(result.observation, expected[4][-1])
        assert results[1].terminated[-1]
        with pytest.raises(gym_remote.InvalidCall, match=r"sub-envs \[1\] ended"):
            envs.step_chunk(chunks)
        envs.reset(options={"reset_mask": np.array([False, True])})
        envs.step_chunk(chunks)
    finally:
        envs.close()
        for env in single:
            env.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda envs: envs.step(np.array([1, 0])), r"2 actions for 3 sub-envs: give one each"),
        (lambda envs: envs.step(np.array([1, 0, 1, 1])), r"4 actions for 3 sub-envs"),
        (lambda envs: envs.step_chunk([np.array([1])] * 2), r"2 chunks of actions for 3 sub-envs"),
    ],
    ids=["step-too-few", "step-too-many", "chunks-too-few"],
)
def test_a_wrong_number_of_actions_is_an_invalid_call_and_no_env_steps(server, call, message):
    envs = RemoteVectorEnv("CartPole-v1", 3, address=server.address)
    local = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    try:
        envs.reset(seed=0)
        local.reset(seed=0)
        with pytest.raises(gym_remote.InvalidCall, match=message):
            call(envs)
        # Had any env stepped, the next step would part from the local envs'.
        assert np.array_equal(envs.step(np.array([1, 1, 1]))[0], local.step(np.array([1, 1, 1]))[0])
    finally:
        envs.close()
        local.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_envs": 0}, "num_envs must be at least 1, got 0"),
        ({"num_envs": 2, "envs_per_worker": 0}, "envs_per_worker must be at least 1, got 0"),
        ({"num_envs": 2, "per_env_kwargs": [{}]}, "per_env_kwargs has 1 dicts for 2 envs"),
        ({"num_envs": 2, "address": []}, "address is an empty list"),
    ],
    ids=["no-envs", "no-envs-per-worker", "kwargs-count", "no-addresses"],
)
def test_bad_vector_env_arguments_are_refused_before_any_session(arguments, message):
    before = descendants()
    with pytest.raises(ValueError, match=message):
        RemoteVectorEnv("CartPole-v1", **arguments)
    assert descendants() <= before, "no server or worker was started"


def test_a_missing_attribute_is_an_attribute_error_as_in_a_local_vector_env(server):
    envs = RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    local = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    try:
        for vector_env in (local, envs):  # `except AttributeError` fallbacks (LeRobot's) work on both
            with pytest.raises(AttributeError, match="no attribute 'task_description'"):
                vector_env.call("task_description")
            with pytest.raises(AttributeError):
                vector_env.get_attr("task_description")
        with pytest.raises(gym_remote.RemoteAttributeError) as raised:
            envs.call("task_description")
        assert isinstance(raised.value, gym_remote.RemoteError) and "Remote traceback" in str(raised.value)
        copied = pickle.loads(pickle.dumps(raised.value))
        assert (
            type(copied) is gym_remote.RemoteAttributeError
            and copied.remote_type == "builtins.AttributeError"
        )
        assert envs.get_attr("gravity") == (9.8, 9.8)  # the envs go on
    finally:
        envs.close()
        local.close()
