"""`gym_remote.evaluate`: planned episodes, deterministic whatever the parallelism, results on disk."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import gym_remote
from gym_remote.evaluation import (
    EpisodeResult,
    Task,
    evaluate,
    libero_tasks,
    load_policy,
    parse_task_ids,
    plan_episodes,
    wilson_interval,
)
from gym_remote.evaluation.results import from_row

CARTPOLE = Task("cartpole", "CartPole-v1")


class BalancingPolicy:
    """Pushes the cart toward where the pole leans: deterministic, so results depend only on
    each episode's seed. With ``chunk``, returns that many copies of the action each call."""

    def __init__(self, chunk: int = 0, **_) -> None:
        self.chunk = chunk
        self.calls = 0
        self.resets: list[int] = []

    def reset(self, env_index: int) -> None:
        self.resets.append(env_index)

    def act(self, observations, env_indices):
        self.calls += 1
        actions = (np.asarray(observations)[:, 2] > 0).astype(np.int64)
        return np.repeat(actions[:, None], self.chunk, axis=1) if self.chunk else actions


def balancing(**context):
    return BalancingPolicy(**context)


def test_wilson_intervals_match_the_textbook_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(5, 10)
    assert round(low, 4) == 0.2366 and round(high, 4) == 0.7634
    low, high = wilson_interval(10, 10)
    assert round(low, 4) == 0.7225 and high == 1.0
    assert wilson_interval(0, 10)[0] == 0.0


def test_task_ids_and_plans():
    assert parse_task_ids("0-2,7,1") == [0, 1, 2, 7]
    for bad in ["x", "3-1", "-1", ""]:
        with pytest.raises(ValueError, match="task ids"):
            parse_task_ids(bad)
    (task,) = libero_tasks("libero_goal", [3], observation_height=64)
    assert task.name == "libero_goal/3" and task.env_kwargs["task_id"] == 3
    plan = plan_episodes(task, 3, seed=10)
    assert [(episode.seed, episode.reset_options) for episode in plan] == [
        (10, {"init_state_id": 0}),
        (11, {"init_state_id": 1}),
        (12, {"init_state_id": 2}),
    ]
    assert plan_episodes(CARTPOLE, 2)[1].reset_options is None


def test_policies_by_name():
    import gymnasium as gym

    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    assert load_policy("zeros", action_space=box).act(None, [0, 1]).shape == (2, 3)
    assert load_policy("random", action_space=box, seed=0).act(None, [4]).shape == (1, 3)
    assert isinstance(load_policy("tests.test_evaluation:balancing"), BalancingPolicy)
    with pytest.raises(ValueError, match="unknown policy"):
        load_policy("nonsense")
    with pytest.raises(ValueError, match="no_such_module"):
        load_policy("no_such_module:factory")


@pytest.mark.parametrize(
    "chunk, replan_steps, prefetch_steps",
    [(0, None, 0), (4, 2, 0), (5, 5, 2)],
    ids=["single", "chunks", "chunks-prefetched"],
)
def test_results_do_not_depend_on_the_number_of_sessions(server, chunk, replan_steps, prefetch_steps):
    runs = {}
    for num_envs in (1, 3):
        policy = BalancingPolicy(chunk)
        evaluation = evaluate(
            [CARTPOLE],
            policy,
            episodes=5,
            num_envs=num_envs,
            address=server.address,
            replan_steps=replan_steps,
            prefetch_steps=prefetch_steps,
            max_steps=60,
        )
        runs[num_envs] = sorted(
            (result.episode, result.seed, result.length, result.episode_return, result.failure)
            for result in evaluation.episodes
        )
        assert len(policy.resets) == 5, "one policy reset per episode"
    assert runs[1] == runs[3]
    assert [episode for episode, *_ in runs[1]] == [0, 1, 2, 3, 4]
    assert {failure for *_, failure in runs[1]} <= {"terminated", "max_steps"}


def test_a_prefetched_chunk_is_asked_for_before_the_last_one_runs_out(server):
    """With prefetch_steps=2 and chunks of 5, the policy is asked at the reset, then after steps
    3 and 8: one call per 5 steps still, each from the observation 2 steps before its chunk."""
    policy = BalancingPolicy(chunk=5)
    evaluation = evaluate(
        [CARTPOLE], policy, episodes=1, address=server.address, replan_steps=5, prefetch_steps=2, max_steps=10
    )
    (result,) = evaluation.episodes
    assert result.length == 10
    assert policy.calls == 3
    with pytest.raises(ValueError, match="prefetch_steps"):
        evaluate([CARTPOLE], policy, episodes=1, address=server.address, prefetch_steps=-1)


def test_chunks_are_asked_for_once_per_replan(server):
    policy = BalancingPolicy(chunk=5)
    evaluation = evaluate(
        [CARTPOLE], policy, episodes=1, address=server.address, replan_steps=5, max_steps=20
    )
    (result,) = evaluation.episodes
    assert policy.calls == -(-result.length // 5)  # one call per 5 steps, rounded up


def test_results_on_disk_agree_and_a_resumed_run_skips_what_is_there(server, tmp_path):
    first = evaluate(
        [CARTPOLE], "tests.test_evaluation:balancing", episodes=2, address=server.address, output_dir=tmp_path
    )
    summary = json.loads((tmp_path / "results.json").read_text())
    with (tmp_path / "episodes.csv").open(newline="") as file:
        rows = [from_row(EpisodeResult, row) for row in csv.DictReader(file)]
    assert sorted(rows, key=lambda r: r.episode) == sorted(first.episodes, key=lambda r: r.episode)
    assert summary == first.summary()
    assert summary["tasks"]["cartpole"]["episodes"] == 2 and summary["overall"]["successes"] == 0
    assert "cartpole" in first.table() and "overall" in first.table()
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate([CARTPOLE], "zeros", episodes=2, address=server.address, output_dir=tmp_path)
    policy = BalancingPolicy()
    resumed = evaluate(
        [CARTPOLE], policy, episodes=4, address=server.address, output_dir=tmp_path, resume=True
    )
    assert sorted(result.episode for result in resumed.episodes) == [0, 1, 2, 3]
    assert len(policy.resets) == 2, "only the episodes not yet run are run"
    assert json.loads((tmp_path / "results.json").read_text())["overall"]["episodes"] == 4


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "name what to evaluate"),
        (["CartPole-v1", "--suite", "libero_goal"], "name what to evaluate"),
        (["CartPole-v1", "--env-kwargs", "[1]"], "must be a JSON object"),
        (["--suite", "libero_goal", "--tasks", "3-1"], "task ids"),
        (["CartPole-v1", "--policy", "nonsense"], "unknown policy"),
    ],
)
def test_eval_command_line_mistakes_are_one_line_errors(server, arguments, message):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gym_remote",
            "eval",
            *arguments,
            "--address",
            server.address,
            "--episodes",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


class FaultOnce:
    """Steps without faults, but for one env of its call number ``call`` it names ``fault``."""

    def __init__(self, fault: str, call: int = 3) -> None:
        from gym_remote.testing import FAULTS

        self.fault = FAULTS.index(fault)
        self.call = call
        self.calls = 0

    def reset(self, env_index):
        pass

    def act(self, observations, env_indices):
        self.calls += 1
        actions = np.full(len(env_indices), -1, dtype=np.int64)
        if self.calls == self.call:
            actions[0] = self.fault
        return actions


FAULTY = Task("faulty", "gym_remote_testing/Faulty-v0", {"allocate_bytes": 4})


@pytest.mark.parametrize("fault, reason", [("raise", "RemoteError: "), ("exit", "WorkerCrashed: ")])
def test_an_env_that_fails_ends_its_episode_as_a_failure_and_the_eval_goes_on(server, fault, reason):
    evaluation = evaluate(
        [FAULTY],
        FaultOnce(fault),
        episodes=4,
        num_envs=2,
        address=server.address,
        max_steps=5,
        restart_failed_envs=False,  # with restarts, a crash is a lost episode (test_recovery_eval.py)
    )
    failures = [result.failure for result in evaluation.episodes]
    assert sorted(result.episode for result in evaluation.episodes) == [0, 1, 2, 3]
    (failed,) = [failure for failure in failures if failure != "max_steps"]
    assert failed.startswith(reason) and failures.count("max_steps") == 3, failures
    if fault == "raise":
        assert "the simulator exploded" in failed


def test_an_eval_whose_every_session_ended_raises_and_keeps_what_ended(server, tmp_path):
    """Episode 2's worker dies: no session is left for episode 3."""
    with pytest.raises(gym_remote.WorkerCrashed):
        evaluate(
            [FAULTY],
            FaultOnce("exit", call=12),
            episodes=4,
            address=server.address,
            max_steps=5,
            output_dir=tmp_path,
            restart_failed_envs=False,
        )
    summary = json.loads((tmp_path / "results.json").read_text())
    assert [episode["failure"][:14] for episode in summary["episodes"]] == [
        "max_steps",
        "max_steps",
        "WorkerCrashed:",
    ]
