"""Evaluations keep their counts through crashed workers and a restarted server: a lost episode
is run again from the same seed, noted as lost, and counts in no rate.
"""

from __future__ import annotations

import csv
import json
import signal
import threading

import pytest

from gym_remote.evaluation import Task, evaluate
from gym_remote.testing import ServerProcess
from tests.fault_helpers import own_address

CRASHING = "gym_remote_testing/Crashing-v0"
EPISODES = 6  # seeds 0..5: episodes 0, 2 and 4 succeed (see CrashingEnv's success_after)


def crash_task(tmp_path, **kwargs) -> Task:
    kwargs.setdefault("once_marker", str(tmp_path / "crashed"))
    return Task("crashing", CRASHING, {"success_after": 5, **kwargs})


def assert_complete(evaluation):
    assert sorted(result.episode for result in evaluation.episodes) == list(range(EPISODES))
    assert [result.success for result in sorted(evaluation.episodes, key=lambda r: r.episode)] == [
        episode % 2 == 0 for episode in range(EPISODES)
    ]
    assert all(result.failure in ("", "terminated") for result in evaluation.episodes)
    assert evaluation.summary()["overall"]["successes"] == EPISODES // 2


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("crash", ["segfault", "kill"])
def test_a_crash_mid_eval_loses_one_episode_and_runs_it_again(server, tmp_path, crash, attempt):
    output = tmp_path / "results"
    evaluation = evaluate(
        [crash_task(tmp_path, crash_at_step=3, crash=crash)],
        "random",
        episodes=EPISODES,
        num_envs=2,
        address=server.address,
        output_dir=output,
    )
    assert_complete(evaluation)
    (lost,) = evaluation.lost
    assert lost.task == "crashing" and lost.length == 2 and lost.cause.startswith("WorkerCrashed: ")
    # The run again started from the lost episode's own seed.
    rerun = next(result for result in evaluation.episodes if result.episode == lost.episode)
    assert rerun.seed == lost.seed == lost.episode
    summary = json.loads((output / "results.json").read_text())
    assert summary["lost_episodes"]["count"] == 1 and summary["overall"]["episodes"] == EPISODES
    with (output / "lost.csv").open(newline="") as file:
        assert [row["episode"] for row in csv.DictReader(file)] == [str(lost.episode)]
    assert "lost and run again: 1 episode(s) (1 WorkerCrashed)" in evaluation.table()


def test_without_restarts_a_crash_is_a_failure_and_its_env_stops(server, tmp_path):
    evaluation = evaluate(
        [crash_task(tmp_path, crash_at_step=3)],
        "random",
        episodes=EPISODES,
        num_envs=2,
        address=server.address,
        restart_failed_envs=False,
    )
    assert len(evaluation.episodes) == EPISODES and not evaluation.lost
    failed = [result for result in evaluation.episodes if result.failure.startswith("WorkerCrashed")]
    assert len(failed) == 1


def test_an_episode_that_crashes_every_time_ends_as_a_failure_after_three_losses(server, tmp_path):
    evaluation = evaluate(
        [crash_task(tmp_path, crash_at_step=1, once_marker=None)],
        "random",
        episodes=1,
        address=server.address,
    )
    (result,) = evaluation.episodes
    assert not result.success and result.failure.startswith("lost 3 times, last: WorkerCrashed")
    assert len(evaluation.lost) == 3


@pytest.mark.parametrize("attempt", range(3))
def test_a_server_killed_and_restarted_mid_eval_still_gives_every_planned_episode(tmp_path, attempt):
    address = own_address(tmp_path)
    servers = [ServerProcess("--import", "gym_remote.testing", address=address)]
    restarted = threading.Event()

    def restart_server():
        servers.append(ServerProcess("--import", "gym_remote.testing", address=address))
        restarted.set()

    def kill_after_two(ended, planned, successes):
        if ended == 2 and len(servers) == 1:
            servers[0].process.send_signal(signal.SIGKILL)
            servers[0].process.wait(30)
            threading.Thread(target=restart_server).start()  # up while the clients retry

    try:
        evaluation = evaluate(
            [crash_task(tmp_path)],
            "random",
            episodes=EPISODES,
            num_envs=2,
            address=address,
            progress=kill_after_two,
        )
        assert restarted.wait(60)
        assert_complete(evaluation)
        # The episodes under way when the server died are lost (none, if both envs were
        # between episodes: their resets are made again).
        assert len(evaluation.lost) <= 2
        assert all(lost.cause.startswith("WorkerCrashed: ") for lost in evaluation.lost)
    finally:
        restarted.wait(60)
        for server in servers:
            server.__exit__(None, None, None)


def test_a_resumed_eval_keeps_the_lost_episodes_of_the_run_before(server, tmp_path):
    output = tmp_path / "results"
    task = crash_task(tmp_path, crash_at_step=3)
    first = evaluate([task], "random", episodes=3, address=server.address, output_dir=output)
    assert len(first.lost) == 1
    resumed = evaluate(
        [task], "random", episodes=EPISODES, address=server.address, output_dir=output, resume=True
    )
    assert_complete(resumed)
    assert resumed.lost == first.lost  # no crash this time (its marker is there): the old one kept
    assert json.loads((output / "results.json").read_text())["lost_episodes"]["count"] == 1
