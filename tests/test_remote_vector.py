"""RemoteVectorEnv: Gymnasium's vector layout and autoreset modes, action chunks, async stepping."""

from __future__ import annotations

import copy
import pickle
import select

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

import gym_remote
from gym_remote import RemoteVectorEnv
from gym_remote.batches import SharedBatches
from gym_remote.connection import Connection
from gym_remote.testing import FAULTS
from tests.helpers import all_gone, descendants, wait_for, worker_pids

NUM_ENVS = 3


def run_both(local, remote, steps, seed=5, remote_step=None):
    """Steps both vector envs with the same actions (the remote one with ``remote_step``, by
    default its ``step``); returns how many episodes ended."""
    local.action_space.seed(seed)
    assert data_equivalence(local.reset(seed=seed), remote.reset(seed=seed), exact=True)
    ended = 0
    for step in range(steps):
        actions = local.action_space.sample()
        local_result, remote_result = local.step(actions), (remote_step or remote.step)(actions)
        assert data_equivalence(local_result, remote_result, exact=True), f"step {step} differs"
        done = local_result[2] | local_result[3]
        ended += int(done.sum())
        if local.autoreset_mode == AutoresetMode.DISABLED and done.any():
            options = {"reset_mask": done}
            assert data_equivalence(
                local.reset(options=dict(options)), remote.reset(options=dict(options)), exact=True
            )
    return ended


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
    send, receive_fixed = Connection.send, Connection.receive_fixed
    monkeypatch.setattr(
        Connection, "send", lambda self, op, **fields: ordinary.append(op) or send(self, op, **fields)
    )

    def recorded_receive(self, op, *arguments, **keywords):
        fixed, result = receive_fixed(self, op, *arguments, **keywords)
        fixed_replies.append((op, fixed, fixed and result[0] is None))
        return fixed, result

    monkeypatch.setattr(Connection, "receive_fixed", recorded_receive)
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


def test_spread_over_two_servers_and_one_going_away(start_server):
    first, second = start_server(), start_server()
    envs = RemoteVectorEnv("CartPole-v1", 4, address=[first.address, second.address])
    try:
        assert [env.gym_remote.config.address for env in envs.sessions] == [first.address, second.address] * 2
        envs.reset(seed=1)
        envs.step(np.zeros(4, np.int64))
        second_workers = worker_pids(second.pid)
        assert len(second_workers) == 2
        second.process.kill()
        second.process.wait(10)
        # Its workers follow it; until they have, one could still answer a step.
        assert all_gone(second_workers), "the second server's workers outlived it"
        with pytest.raises(
            gym_remote.WorkerCrashed, match=f"sub-env 1 \\(CartPole-v1 at {second.address}\\)"
        ):
            envs.step(np.zeros(4, np.int64))
    finally:
        envs.close()


@pytest.mark.parametrize("envs_per_worker", [1, 3])
def test_a_failing_sub_env_is_named_and_several_are_noted(server, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv(
        "gym_remote_testing/Faulty-v0", 3, address=server.address, envs_per_worker=envs_per_worker
    )
    raises = FAULTS.index("raise")
    try:
        envs.reset(seed=0)
        with pytest.raises(gym_remote.RemoteError, match="sub-env 2 .*the simulator exploded") as caught:
            envs.step(np.array([-1, -1, raises]))
        assert "RuntimeError" in caught.value.remote_traceback
        envs.step(np.array([-1, -1, -1]))  # the others, and the failed one, go on
        # Several fail: the first is raised, the others are noted.
        with pytest.raises(gym_remote.RemoteError, match="sub-env 0 .*the simulator exploded") as caught:
            envs.step(np.array([raises, -1, raises]))
        assert caught.value.__notes__ == [
            f"also RemoteError: {caught.value.message.replace('sub-env 0', 'sub-env 2')}"
        ]
        envs.send(np.array([raises] * 3))
        with pytest.raises(gym_remote.RemoteError) as caught:
            envs.recv(min_envs=3)  # in the order the envs are ready
        named = [caught.value.message] + [
            note.removeprefix("also RemoteError: ") for note in caught.value.__notes__
        ]
        assert sorted(text.split(" (")[0] for text in named) == ["sub-env 0", "sub-env 1", "sub-env 2"]
        envs.step(np.array([-1, -1, -1]))
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


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_send_and_recv(server, envs_per_worker):
    envs = RemoteVectorEnv("CartPole-v1", 3, address=server.address, envs_per_worker=envs_per_worker)
    local = [gym.make("CartPole-v1") for _ in range(3)]
    try:
        envs.reset(seed=0)
        for index, env in enumerate(local):
            env.reset(seed=index)
        envs.send(np.array([1, 0]), env_ids=[2, 0])
        with pytest.raises(gym_remote.InvalidCall, match="in flight"):
            envs.send(np.array([1]), env_ids=[0])
        if envs_per_worker == 2:  # env 1 shares env 0's worker, whose reply is still to come
            with pytest.raises(gym_remote.InvalidCall, match=r"sub-envs \[1\] .*in flight"):
                envs.send(np.array([1]), env_ids=[1])
        observations, rewards, terminated, truncated, infos, env_ids = envs.recv(min_envs=2)
        assert env_ids.tolist() == [0, 2] and observations.shape == (2, 4)
        for position, index in enumerate(env_ids):
            expected = local[index].step(1 if index == 2 else 0)
            assert np.array_equal(observations[position], expected[0]) and rewards[position] == expected[1]
        with pytest.raises(gym_remote.InvalidCall, match="send"):
            envs.recv()
    finally:
        envs.close()


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
    ("actions", "env_ids", "message"),
    [
        ([1], [0, 1], r"1 actions for 2 sub-envs \[0, 1\]: give one each"),
        ([1, 0], None, r"2 actions for 3 sub-envs"),
        ([1, 0], [1, 1], r"distinct sub-envs from 0 to 2, got \[1, 1\]"),
        ([1], [3], r"got \[3\]"),
        ([1], [-1], r"got \[-1\]"),
    ],
    ids=["too-few-actions", "too-few-for-all", "repeated-env", "no-such-env", "negative-env"],
)
def test_bad_sends_are_invalid_calls_and_nothing_is_sent(server, actions, env_ids, message):
    envs = RemoteVectorEnv("CartPole-v1", 3, address=server.address)
    try:
        envs.reset(seed=0)
        with pytest.raises(gym_remote.InvalidCall, match=message):
            envs.send(np.array(actions), env_ids=env_ids)
        envs.step(np.array([1, 1, 1]))  # nothing in flight: step() goes on
    finally:
        envs.close()


@pytest.mark.parametrize("envs_per_worker", [1, 2], ids=lambda count: f"{count}-per-worker")
@pytest.mark.parametrize(
    ("env_id", "in_rows"),
    [
        ("CartPole-v1", True),  # the workers write observations into shared batch rows
        ("gym_remote_testing/ImageEnv-v0", True),
        ("FrozenLake-v1", False),  # integer observations come in the replies
        ("gym_remote_testing/VaryingSteps-v0", True),  # some fit no row now and then
    ],
)
def test_recv_with_shared_batches_equals_local_envs(server, monkeypatch, env_id, in_rows, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # small observations too
    rows_copied = []
    copy_row = SharedBatches.copy_row
    monkeypatch.setattr(
        SharedBatches,
        "copy_row",
        lambda self, *arguments: rows_copied.append(1) or copy_row(self, *arguments),
    )
    remote = RemoteVectorEnv(env_id, NUM_ENVS, address=server.address, envs_per_worker=envs_per_worker)
    local = [gym.make(env_id) for _ in range(NUM_ENVS)]
    kept = []  # every batch returned, with a copy: none may change later
    try:
        assert remote.uses_shared_batches
        first_batch = remote.reset(seed=0)[0]  # a shared batch: sends must not write into it
        kept.append((first_batch, copy.deepcopy(first_batch)))
        ended, autoresets = [False] * NUM_ENVS, 0
        for index, env in enumerate(local):
            env.reset(seed=index)
            env.action_space.seed(index)
        for turn in range(90):
            env_ids = [turn % NUM_ENVS, (turn + 1) % NUM_ENVS]
            actions = {index: local[index].action_space.sample() for index in env_ids}
            remote.send(np.stack(list(actions.values())), env_ids=env_ids)
            observations, rewards, terminations, truncations, _, returned = remote.recv(min_envs=2)
            kept.append((observations, copy.deepcopy(observations)))
            assert sorted(returned.tolist()) == sorted(env_ids)
            expected = []  # the local envs' results, in the order recv() returned them
            for index in returned:
                if ended[index]:  # the send after an episode's end resets the env
                    expected.append((local[index].reset()[0], 0.0, False, False))
                    autoresets += 1
                else:
                    expected.append(local[index].step(actions[index])[:4])
                ended[index] = bool(expected[-1][2] or expected[-1][3])
            space = remote.single_observation_space
            expected_batch = concatenate(
                space, [result[0] for result in expected], create_empty_array(space, 2)
            )
            assert data_equivalence(observations, expected_batch, exact=True), f"turn {turn} differs"
            _, expected_rewards, expected_terminations, expected_truncations = zip(*expected)
            assert np.array_equal(rewards, np.array(expected_rewards, np.float64)), f"turn {turn} differs"
            assert terminations.tolist() == [bool(flag) for flag in expected_terminations]
            assert truncations.tolist() == [bool(flag) for flag in expected_truncations]
        for batch, contents in kept:
            assert data_equivalence(batch, contents, exact=True), "a returned batch changed"
    finally:
        remote.close()
        for env in local:
            env.close()
    assert autoresets >= 2, "the run must cross episode boundaries"
    assert bool(rows_copied) is in_rows


def test_recv_while_the_caller_holds_every_shared_batch_takes_observations_from_replies(server, monkeypatch):
    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # CartPole's too
    remote = RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    local = [gym.make("CartPole-v1") for _ in range(2)]
    try:
        held = [remote.reset(seed=0)[0], *(remote.step(np.array([1, 1]))[0] for _ in range(2))]
        assert len({id(batch.base) for batch in held}) == SharedBatches.COUNT
        contents = [batch.copy() for batch in held]
        for index, env in enumerate(local):
            env.reset(seed=index)
            for _ in range(2):
                env.step(1)
        remote.send(np.array([0, 1]))
        observations, *_, env_ids = remote.recv(min_envs=2)
        assert env_ids.tolist() == [0, 1]
        assert np.array_equal(observations, np.stack([local[0].step(0)[0], local[1].step(1)[0]]))
        assert all(np.array_equal(batch, kept) for batch, kept in zip(held, contents))
    finally:
        remote.close()
        for env in local:
            env.close()


def send_to_all_and_recv(remote, actions):
    """A vector step through send() and recv()."""
    remote.send(actions)
    *result, env_ids = remote.recv(min_envs=remote.num_envs)
    assert env_ids.tolist() == list(range(remote.num_envs))
    return tuple(result)


@pytest.mark.parametrize("envs_per_worker", [1, 2], ids=lambda count: f"{count}-per-worker")
@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "gym_remote_testing/VaryingSteps-v0"])
def test_send_and_recv_follow_the_autoreset_mode(server, monkeypatch, env_id, mode, envs_per_worker):
    import gym_remote.testing  # noqa: F401

    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # observations in batch rows too
    local = SyncVectorEnv([lambda: gym.make(env_id)] * NUM_ENVS, autoreset_mode=mode)
    remote = RemoteVectorEnv(
        env_id, NUM_ENVS, address=server.address, autoreset_mode=mode, envs_per_worker=envs_per_worker
    )
    try:
        ended = run_both(
            local, remote, steps=80, remote_step=lambda actions: send_to_all_and_recv(remote, actions)
        )
        assert ended >= 2, "the run must cross episode boundaries"
    finally:
        local.close()
        remote.close()


def test_a_same_step_reset_that_fails_in_recv_loses_no_other_result(server):
    import gym_remote.testing  # noqa: F401

    end, end_then_fail_reset = FAULTS.index("end"), FAULTS.index("end_then_fail_reset")
    remote = RemoteVectorEnv(
        "gym_remote_testing/Faulty-v0", 4, address=server.address, autoreset_mode=AutoresetMode.SAME_STEP
    )
    try:
        remote.reset(seed=0)
        remote.send(np.array([end_then_fail_reset, end, -1, end_then_fail_reset]))
        # As everywhere, the first failure is raised (sub-env 3's reset failed too).
        with pytest.raises(gym_remote.RemoteError, match=r"sub-env 0 .*the reset exploded"):
            remote.recv(min_envs=4)
        # Sub-env 1's episode ended and its reset worked: it comes back as step() gives it.
        _, _, terminations, _, infos, env_ids = remote.recv()
        assert env_ids.tolist() == [1, 2] and terminations.tolist() == [True, False]
        assert infos["_final_obs"].tolist() == [True, False] and infos["final_obs"][0].shape == (1 << 20,)
        # The envs whose reset failed are reset by their next send.
        remote.send(np.array([-1, -1]), env_ids=[0, 3])
        _, _, terminations, _, _, env_ids = remote.recv(min_envs=2)
        assert env_ids.tolist() == [0, 3] and terminations.tolist() == [False, False]
    finally:
        remote.close()


def test_send_to_an_env_that_ended_with_autoreset_disabled_is_refused(server):
    remote = RemoteVectorEnv("CartPole-v1", 2, address=server.address, autoreset_mode=AutoresetMode.DISABLED)
    try:
        remote.reset(seed=0)
        for _ in range(100):  # pushing one way ends an episode within a few dozen steps
            remote.send(np.array([1]), env_ids=[0])
            if remote.recv()[2][0]:
                break
        else:
            pytest.fail("the episode never ended")
        with pytest.raises(gym_remote.InvalidCall, match=r"sub-envs \[0\] ended their episodes: reset them"):
            remote.send(np.array([1, 1]))
        remote.send(np.array([1]), env_ids=[1])  # the other env goes on
        assert remote.recv()[-1].tolist() == [1]
        remote.reset(options={"reset_mask": np.array([True, False])})
        remote.send(np.array([1]), env_ids=[0])
        assert remote.recv()[-1].tolist() == [0]
    finally:
        remote.close()


@pytest.mark.parametrize("envs_per_worker", [1, 3])
def test_send_reset_resets_each_env_with_its_own_seed_and_options_while_others_step(server, envs_per_worker):
    """An evaluation's episode plan: an env that ended is reset with its episode's seed while the
    others are mid-step; recv() returns its first observation as a step with no reward."""
    remote = RemoteVectorEnv(
        "gym_remote_testing/ImageEnv-v0",
        3,
        address=server.address,
        autoreset_mode=AutoresetMode.DISABLED,
        envs_per_worker=envs_per_worker,
    )
    local = gym.make("gym_remote_testing/ImageEnv-v0")
    try:
        remote.reset(seed=0)
        remote.send(remote.action_space.sample(), env_ids=[0, 1, 2])
        remote.recv(min_envs=3)
        if envs_per_worker == 1:  # a worker mate's step would hold env 1's reset back
            remote.send(remote.action_space.sample()[:2], env_ids=[0, 2])
        remote.send_reset([1], seeds=[7], options=[{"note": "planned"}])
        received = {}
        while len(received) < (3 if envs_per_worker == 1 else 1):
            observations, rewards, terminations, truncations, infos, env_ids = remote.recv()
            for position, index in enumerate(env_ids.tolist()):
                received[index] = (observations["state"][position], rewards[position], terminations[position])
        expected, _ = local.reset(seed=7)
        state, reward, terminated = received[1]
        np.testing.assert_array_equal(state, expected["state"])
        assert reward == 0.0 and not terminated
        with pytest.raises(gym_remote.InvalidCall, match="2 seeds and 1 options"):
            remote.send_reset([0], seeds=[1, 2], options=[None])
        remote.send_reset([0], seeds=[3])
        with pytest.raises(gym_remote.InvalidCall, match="in flight"):
            remote.send_reset([0], seeds=[3])
        assert remote.recv()[-1].tolist() == [0]
    finally:
        remote.close()
        local.close()


def test_recv_with_a_timeout_returns_what_is_ready_by_then(server):
    import gym_remote.testing  # noqa: F401

    sleep = FAULTS.index("sleep")
    remote = RemoteVectorEnv(
        "gym_remote_testing/Faulty-v0", 2, address=server.address, sleep_seconds=6.0, allocate_bytes=16
    )
    try:
        remote.reset(seed=0)
        remote.send(np.array([sleep]), env_ids=[0])
        observations, rewards, *_, env_ids = remote.recv(timeout=0)  # a poll: nothing is ready
        assert env_ids.tolist() == [] and observations.shape == (0, 16) and rewards.shape == (0,)
        remote.send(np.array([-1]), env_ids=[1])
        socket = remote.sessions[1]._connection.fileno()
        wait_for(lambda: select.select([socket], [], [], 1.0)[0], what="sub-env 1 to answer")
        # Sub-env 0 sleeps for seconds more: after the timeout, only sub-env 1 comes back.
        assert remote.recv(min_envs=2, timeout=0.2)[-1].tolist() == [1]
        assert remote.recv(min_envs=1)[-1].tolist() == [0]  # no timeout: waits for it
    finally:
        remote.close()


def test_send_takes_dict_actions_as_a_batch_or_a_list(server):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/RichSpaces-v0", 3, address=server.address)
    try:
        envs.reset(seed=0)
        actions = batch_space(envs.single_action_space, 2).sample()  # {"force": (2, 2), "move": (2,)}
        envs.send(actions, env_ids=[2, 0])
        _, rewards, *_, env_ids = envs.recv(min_envs=2)
        assert env_ids.tolist() == [0, 2]
        # The reward is the sum of the force each env was sent: row 1 went to env 0, row 0 to env 2.
        expected = [actions["force"][1].sum(), actions["force"][0].sum()]
        assert np.allclose(rewards, expected)
        one_each = [envs.single_action_space.sample() for _ in range(2)]  # a list also works
        envs.send(one_each, env_ids=[1, 2])
        _, rewards, *_, env_ids = envs.recv(min_envs=2)
        assert env_ids.tolist() == [1, 2]
        assert np.allclose(rewards, [action["force"].sum() for action in one_each])
    finally:
        envs.close()


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


def test_recv_keeps_the_results_of_the_sessions_beside_one_that_crashed(server):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/Faulty-v0", 3, address=server.address)
    local = [gym.make("gym_remote_testing/Faulty-v0") for _ in range(3)]
    try:
        envs.reset(seed=0)
        for index, env in enumerate(local):
            env.reset(seed=index)
        # Sub-env 1 crashes after the others replied, so that it is received last.
        envs.send(np.array([-1, -1]), env_ids=[0, 2])
        envs.send(np.array([FAULTS.index("exit")]), env_ids=[1])
        sockets = [session._connection.fileno() for session in envs.sessions]
        wait_for(lambda: len(select.select(sockets, [], [], 1.0)[0]) == 3, what="every session to answer")
        with pytest.raises(gym_remote.WorkerCrashed, match=r"sub-env 1 "):
            envs.recv(min_envs=3)
        with pytest.raises(gym_remote.InvalidCall, match=r"sub-envs \[0\] .*not yet returned"):
            envs.send(np.array([-1]), env_ids=[0])
        observations, rewards, *_, env_ids = envs.recv()
        assert env_ids.tolist() == [0, 2]
        for position, index in enumerate(env_ids):
            expected = local[index].step(-1)
            assert np.array_equal(observations[position], expected[0]) and rewards[position] == expected[1]
        envs.send(np.array([-1]), env_ids=[2])  # the others go on
        assert envs.recv()[-1].tolist() == [2]
    finally:
        envs.close()
        for env in local:
            env.close()


def test_recv_keeps_the_results_of_the_envs_beside_one_that_raised_in_their_worker(server):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/Faulty-v0", 4, address=server.address, envs_per_worker=2)
    try:
        envs.reset(seed=0)
        envs.send(np.array([-1, FAULTS.index("raise"), -1, -1]))
        with pytest.raises(gym_remote.RemoteError, match=r"sub-env 1 .*exploded"):
            envs.recv(min_envs=4)
        # Env 1's worker mate, env 0, has a result to return first.
        with pytest.raises(gym_remote.InvalidCall, match=r"sub-envs \[1\] .*not yet returned"):
            envs.send(np.array([-1]), env_ids=[1])
        assert envs.recv()[-1].tolist() == [0, 2, 3]  # env 0 shares env 1's worker
        envs.send(np.array([-1, -1, -1, -1]))
        assert envs.recv(min_envs=4)[-1].tolist() == [0, 1, 2, 3]
    finally:
        envs.close()


def test_a_crash_ends_every_env_of_its_worker_and_names_them(server):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/Faulty-v0", 4, address=server.address, envs_per_worker=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(gym_remote.WorkerCrashed, match=r"sub-envs \[2, 3\] "):
            envs.step(np.array([-1, -1, -1, FAULTS.index("exit")]))
        assert [session.gym_remote.state.value for session in envs.sessions] == ["active", "broken"]
        with pytest.raises(gym_remote.SessionClosed, match=r"sub-envs \[2, 3\]"):
            envs.step(np.array([-1, -1, -1, -1]))
    finally:
        envs.close()


def test_the_server_limits_envs_per_worker(start_server):
    server = start_server("--max-envs-per-session", "2")
    with pytest.raises(gym_remote.InvalidCall, match="from 1 to 2 .*--max-envs-per-session.*got 3"):
        RemoteVectorEnv("CartPole-v1", 3, address=server.address, envs_per_worker=3)
    envs = RemoteVectorEnv("CartPole-v1", 3, address=server.address, envs_per_worker=2)
    try:
        assert envs.reset(seed=0)[0].shape == (3, 4)
    finally:
        envs.close()
    with pytest.raises(ValueError, match="envs_per_worker must be at least 1"):
        RemoteVectorEnv("CartPole-v1", 3, address=server.address, envs_per_worker=0)


def test_new_batches_reuse_memory_only_when_the_caller_let_go(server):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/ImageEnv-v0", 2, address=server.address, envs_per_worker=2)
    actions = np.zeros((2, 7), np.float32)
    try:
        envs.reset(seed=0)
        kept = [envs.step(actions)[0] for _ in range(5)]  # the pixels differ from step to step
        view = envs.step(actions)[0]["pixels"]["image"][1]  # only a view of the batch survives
        view_before = view.copy()
        leaves_used = []
        for _ in range(10):
            observations = envs.step(actions)[0]
            leaves_used.append(id(observations["pixels"]["image"]))  # the pool keeps them alive
        assert len(set(leaves_used[2:])) <= 3, "released batches are reused"
        for number, batch in enumerate(kept, start=1):
            assert (batch["pixels"]["image"] == number % 256).all(), "a kept batch was overwritten"
        assert np.array_equal(view, view_before)
        assert all(len(arrays) <= 3 for arrays in envs._batches._arrays.values())
    finally:
        envs.close()


def test_a_partial_reset_gives_the_envs_own_observations_whatever_the_caller_did_to_its_batch(server):
    local = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    remote = RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    try:
        for envs in (local, remote):
            observations, _ = envs.reset(seed=7)
            observations[:] = 99.0  # the caller's own batch
            envs.step(np.array([0, 1]))[0][:] = -1.0
        options = {"reset_mask": np.array([True, False])}
        assert data_equivalence(
            local.reset(options=dict(options)), remote.reset(options=dict(options)), exact=True
        )
    finally:
        local.close()
        remote.close()


def test_shared_batches_only_for_large_observations_where_every_worker_can_write_them(server, monkeypatch):
    import gym_remote.testing  # noqa: F401

    envs = RemoteVectorEnv("gym_remote_testing/ImageEnv-v0", 2, address=server.address, copy=False)
    try:
        assert envs.uses_shared_batches
        first, _ = envs.reset(seed=0)
        second = envs.step(envs.action_space.sample())[0]
        assert np.shares_memory(first["pixels"]["image"], second["pixels"]["image"]), (
            "copy=False reuses one batch, as SyncVectorEnv does"
        )
    finally:
        envs.close()
    # CartPole's 16 bytes travel in the replies for less work than writing them into rows.
    envs = RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    try:
        assert not envs.uses_shared_batches and envs.reset(seed=0)[0].shape == (2, 4)
    finally:
        envs.close()
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "0")
    envs = RemoteVectorEnv("gym_remote_testing/ImageEnv-v0", 2, address=server.address)
    try:
        assert not envs.uses_shared_batches
        assert envs.reset(seed=0)[0]["pixels"]["image"].shape[0] == 2
    finally:
        envs.close()
