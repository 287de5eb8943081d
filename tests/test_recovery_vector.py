"""Recovery in a RemoteVectorEnv: only the failed sub-env is made again; its episode ends as lost
and its next one follows its seed schedule, while every other sub-env's episode goes on as in a
run without the fault.
"""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np
import psutil
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import gym_remote
from gym_remote import errors
from gym_remote.recovery import RestartPolicy
from tests.fault_helpers import private_servers

CRASHING = "gym_remote_testing/Crashing-v0"
SEEDS = [1, 2, 3, 4]
VICTIM = 2


def vector(server, tmp_path, victim_kwargs, **kwargs):
    per_env = [{} for _ in SEEDS]
    per_env[VICTIM] = {"once_marker": str(tmp_path / "crashed"), **victim_kwargs}
    kwargs.setdefault("restart_failed_envs", True)
    return gym_remote.RemoteVectorEnv(
        CRASHING, len(SEEDS), address=server.address, per_env_kwargs=per_env, **kwargs
    )


def scheduled_reset(seed: int, resets: int) -> np.ndarray:
    """The observation of a local CartPole's ``resets``-th reset after ``reset(seed=seed)``."""
    local = gym.make("CartPole-v1")
    observation, _ = local.reset(seed=seed)
    for _ in range(resets):
        observation, _ = local.reset()
    return observation


def actions(step: int) -> np.ndarray:
    return np.array([step % 2] * len(SEEDS))


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("crash", ["segfault", "kill"])
def test_one_killed_sub_env_is_restarted_and_the_others_run_as_without_the_fault(
    server, tmp_path, crash, attempt
):
    envs = vector(server, tmp_path, {"crash_at_step": 5, "crash": crash})
    reference = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * len(SEEDS))
    others = [index for index in range(len(SEEDS)) if index != VICTIM]
    try:
        observations, _ = envs.reset(seed=SEEDS)
        expected, _ = reference.reset(seed=SEEDS)
        np.testing.assert_array_equal(observations, expected)
        previous = observations
        for step in range(4):
            previous, *_ = envs.step(actions(step))
            reference.step(actions(step))
        observations, rewards, terminations, truncations, infos = envs.step(actions(4))
        expected, expected_rewards, *_ = reference.step(actions(4))
        np.testing.assert_array_equal(observations[others], expected[others])
        np.testing.assert_array_equal(rewards[others], expected_rewards[others])
        # The victim's episode ends, lost, at its last observation.
        assert truncations.tolist() == [index == VICTIM for index in range(len(SEEDS))]
        assert not terminations[VICTIM] and rewards[VICTIM] == 0.0
        np.testing.assert_array_equal(observations[VICTIM], previous[VICTIM])
        assert infos["episode_lost"].tolist() == truncations.tolist()
        assert infos["_episode_lost"].tolist() == truncations.tolist()
        assert "WorkerCrashed" in infos["lost_cause"][VICTIM]
        # Its next episode (the autoreset) starts where its seed schedule says.
        observations, *_ = envs.step(actions(5))
        expected, *_ = reference.step(actions(5))
        np.testing.assert_array_equal(observations[others], expected[others])
        np.testing.assert_array_equal(observations[VICTIM], scheduled_reset(SEEDS[VICTIM], 1))
        for step in range(6, 30):
            observations, rewards, terminations, truncations, _ = envs.step(actions(step))
            expected, expected_rewards, expected_terminations, *_ = reference.step(actions(step))
            np.testing.assert_array_equal(observations[others], expected[others])
            np.testing.assert_array_equal(terminations[others], expected_terminations[others])
    finally:
        envs.close()


def test_in_same_step_mode_the_lost_episode_is_in_final_info(server, tmp_path):
    envs = vector(server, tmp_path, {"crash_at_step": 3}, autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        envs.reset(seed=SEEDS)
        for step in range(2):
            envs.step(actions(step))
        observations, _, _, truncations, infos = envs.step(actions(2))
        assert truncations[VICTIM]
        assert infos["final_info"]["episode_lost"][VICTIM]
        assert infos["_final_info"].tolist() == [index == VICTIM for index in range(len(SEEDS))]
        np.testing.assert_array_equal(observations[VICTIM], scheduled_reset(SEEDS[VICTIM], 1))
    finally:
        envs.close()


@pytest.mark.parametrize("attempt", range(3))
def test_a_worker_killed_between_calls_loses_its_episode_in_send_and_recv(server, tmp_path, attempt):
    envs = vector(server, tmp_path, {})
    try:
        envs.reset(seed=SEEDS)
        os.kill(envs.get_attr("pid")[VICTIM], signal.SIGKILL)
        envs.send(actions(0))
        seen: dict[int, bool] = {}
        for _ in range(len(SEEDS)):  # bounded: at least one result per recv
            if len(seen) == len(SEEDS):
                break
            _, _, _, truncations, infos, env_ids = envs.recv()
            lost = infos.get("episode_lost", np.zeros(len(env_ids), dtype=bool))
            seen.update((int(index), bool(flag)) for index, flag in zip(env_ids, lost))
        assert seen == {index: index == VICTIM for index in range(len(SEEDS))}
        envs.send(actions(1))  # the restarted env resets (NEXT_STEP), the others step
        results = {}
        while len(results) < len(SEEDS):
            observations, *_, env_ids = envs.recv(min_envs=len(SEEDS) - len(results))
            results.update((int(index), row) for index, row in zip(env_ids, observations))
        np.testing.assert_array_equal(results[VICTIM], scheduled_reset(SEEDS[VICTIM], 1))
    finally:
        envs.close()


def test_a_sub_env_that_crashes_on_every_reset_spends_its_budget(server, tmp_path):
    envs = vector(
        server,
        tmp_path,
        {"crash_on_reset": True, "once_marker": None},
        restart_failed_envs=RestartPolicy(max_restarts=1),
    )
    try:
        with pytest.raises(errors.WorkerCrashed, match=r"sub-env 2 .*not restarted again: 1 restarts"):
            envs.reset(seed=SEEDS)
    finally:
        envs.close()


def test_restarts_need_one_env_per_worker(server):
    with pytest.raises(ValueError, match="envs_per_worker=1"):
        gym_remote.RemoteVectorEnv(
            "CartPole-v1", 2, address=server.address, envs_per_worker=2, restart_failed_envs=True
        )


def test_make_vec_passes_restarts_on(server):
    envs = gym.make_vec(
        "remote/Env-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        env_id=CRASHING,
        address=server.address,
        restart_failed_envs=True,
    )
    try:
        envs.reset(seed=0)
        os.kill(envs.get_attr("pid")[0], signal.SIGKILL)
        _, _, _, truncations, infos = envs.step(np.array([0, 0]))
        assert truncations.tolist() == [True, False] and infos["episode_lost"][0]
    finally:
        envs.close()


def test_a_killed_private_server_is_started_again_on_its_address():
    earlier = private_servers()  # of envs of earlier tests not yet collected
    envs = gym_remote.RemoteVectorEnv("CartPole-v1", 2, restart_failed_envs=True)
    try:
        envs.reset(seed=[5, 6])
        (private,) = private_servers() - earlier
        workers = private.children()
        private.kill()
        private.wait(30)
        # Each worker ends once it sees its server's control socket close: not at the same instant.
        assert not psutil.wait_procs(workers, timeout=30)[1], "a worker outlived its server"
        _, _, _, truncations, infos = envs.step(np.array([0, 1]))
        assert truncations.tolist() == [True, True] and infos["episode_lost"].all()
        observations, *_ = envs.step(np.array([0, 1]))  # both reset, each on its schedule
        np.testing.assert_array_equal(observations[0], scheduled_reset(5, 1))
        np.testing.assert_array_equal(observations[1], scheduled_reset(6, 1))
    finally:
        envs.close()
