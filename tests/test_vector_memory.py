"""RemoteVectorEnv's batch memory: shared batches the workers write into, and pooled batches reused
only once the caller let go.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from gym_remote import RemoteVectorEnv
from gym_remote.batches import SharedBatches
from tests.vector_helpers import NUM_ENVS


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
