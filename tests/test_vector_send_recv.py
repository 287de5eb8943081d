"""RemoteVectorEnv's envpool-style calls: send(), send_reset() and recv(), their call cycle,
timeouts and autoreset modes.
"""

from __future__ import annotations

import pickle
import select

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

import gym_remote
from gym_remote import RemoteVectorEnv
from gym_remote.batches import SharedBatches
from gym_remote.testing import FAULTS
from tests.helpers import wait_for
from tests.vector_helpers import NUM_ENVS, run_both


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


def test_the_call_cycle_is_an_explicit_state_with_gymnasiums_errors(server):
    envs = RemoteVectorEnv("CartPole-v1", 2, address=server.address)
    try:
        envs.reset(seed=0)
        assert envs.call_state is gym_remote.CallState.DEFAULT
        with pytest.raises(gym.error.NoAsyncCallError) as no_call:
            envs.recv()
        assert isinstance(no_call.value, gym_remote.NoCallInFlight) and no_call.value.name == "recv"
        envs.send(np.array([1]), env_ids=[0])
        assert envs.call_state is gym_remote.CallState.WAITING_RECV
        for call, name in [
            (lambda: envs.step(np.array([1, 1])), "step"),
            (lambda: envs.reset(), "reset"),
            (lambda: envs.send(np.array([1]), env_ids=[0]), "send"),
        ]:
            with pytest.raises(gym.error.AlreadyPendingCallError) as pending:
                call()
            assert isinstance(pending.value, gym_remote.CallInFlight) and pending.value.name == name
            copy = pickle.loads(pickle.dumps(pending.value))  # as AsyncVectorEnv's pipes carry it
            assert type(copy) is gym_remote.CallInFlight and copy.name == name
            assert copy.message == pending.value.message
        assert envs.recv()[-1].tolist() == [0]
        assert envs.call_state is gym_remote.CallState.DEFAULT
        assert envs.step(np.array([0, 0]))[0].shape == (2, 4)  # nothing out: step() goes on
    finally:
        envs.close()


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
        socket = remote.sessions[1]._steps.connection.fileno()
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
