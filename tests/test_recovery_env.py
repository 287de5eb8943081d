"""Recovery of one RemoteEnv: a crashed, killed or wedged worker is made again (the episode ends
as lost, the next one follows the reset schedule), within a budget; the cause is visible.
"""

from __future__ import annotations

import pickle
import signal
import threading

import gymnasium as gym
import numpy as np
import psutil
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.error_envelope import error_from_wire, error_to_wire
from gym_remote.recovery import ResetSchedule, RestartPolicy, restart_policy
from gym_remote.testing import ServerProcess
from tests.fault_helpers import own_address, private_servers

CRASHING = "gym_remote_testing/Crashing-v0"
REPEATS = range(3)  # each fault test runs several times, to flush out races
# A wedged call's deadline: long enough for a worker to start and make CartPole on a busy machine.
WEDGE_TIMEOUT = 10


def crashing(server, tmp_path, **kwargs):
    kwargs.setdefault("once_marker", str(tmp_path / "crashed"))
    return gym_remote.RemoteEnv(CRASHING, address=server.address, **kwargs)


def wait_gone(pid: int, seconds: float = 60.0) -> bool:
    try:
        psutil.Process(pid).wait(seconds)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("attempt", REPEATS)
@pytest.mark.parametrize("crash", ["segfault", "kill", "exit"])
def test_a_crash_mid_episode_loses_the_episode_and_the_next_follows_the_schedule(
    server, tmp_path, crash, attempt
):
    env = crashing(server, tmp_path, crash_at_step=4, crash=crash, restart_failed_envs=True)
    local = gym.make("CartPole-v1")
    try:
        observation, _ = env.reset(seed=7)
        expected, _ = local.reset(seed=7)
        np.testing.assert_array_equal(observation, expected)
        first_pid = env.pid
        for _ in range(3):
            observation, reward, terminated, truncated, info = env.step(0)
            assert (reward, terminated, truncated, info) == (1.0, False, False, {})
            last, *_ = local.step(0)
        observation, reward, terminated, truncated, info = env.step(0)
        # The lost step: truncated, nothing earned, the last observation, and why.
        assert (reward, terminated, truncated, info["episode_lost"]) == (0.0, False, True, True)
        np.testing.assert_array_equal(observation, last)
        assert info["lost_cause"].startswith("WorkerCrashed: ")
        how = {"segfault": "killed by SIGSEGV", "kill": "killed by SIGKILL", "exit": "exited with code 3"}
        assert how[crash] in info["lost_cause"]
        assert "crashing-env: about to" in info["lost_cause"]  # its last words on stderr
        assert "crashing-env: about to" in info["lost_stderr"]
        assert (info["lost_signal"], info["lost_exit_code"]) == {
            "segfault": ("SIGSEGV", None),
            "kill": ("SIGKILL", None),
            "exit": (None, 3),
        }[crash]
        assert env.pid != first_pid and wait_gone(first_pid)
        # The env made again goes on with the seed schedule the first one had.
        observation, _ = env.reset()
        expected, _ = local.reset()
        np.testing.assert_array_equal(observation, expected)
        assert env.step(1)[3] is False
    finally:
        env.close()


@pytest.mark.parametrize("crash", ["segfault", "exit"])
def test_without_restarts_a_crash_says_how_the_worker_ended(server, tmp_path, crash):
    env = crashing(server, tmp_path, crash_at_step=1, crash=crash)
    try:
        env.reset(seed=0)
        with pytest.raises(errors.WorkerCrashed) as caught:
            env.step(0)
        error = caught.value
        assert (error.signal, error.exit_code) == (("SIGSEGV", None) if crash == "segfault" else (None, 3))
        assert any("crashing-env: about to" in line for line in error.stderr_tail)
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.signal, copy.exit_code, copy.stderr_tail) == (
            error.signal,
            error.exit_code,
            error.stderr_tail,
        )
        with pytest.raises(errors.SessionClosed, match="ended earlier"):
            env.reset()
    finally:
        env.close()


def test_a_crash_on_every_reset_spends_the_budget_and_names_every_restart(server, tmp_path):
    env = crashing(
        server,
        tmp_path,
        crash_on_reset=True,
        once_marker=None,
        restart_failed_envs=RestartPolicy(max_restarts=2),
    )
    try:
        assert env.observation_space.shape == (4,)  # the first make works: every reset crashes
        with pytest.raises(errors.WorkerCrashed) as caught:
            env.reset(seed=0)
        message = str(caught.value)
        assert "not restarted again: 2 restarts within 600 s" in message
        assert "#1 at" in message and "#2 at" in message and "#3" not in message
        assert message.count("killed by SIGSEGV") >= 3  # the last failure and both restarts' causes
        with pytest.raises(errors.SessionClosed):
            env.reset()
    finally:
        env.close()


def test_a_first_make_that_fails_is_raised_at_once(server):
    env = gym_remote.RemoteEnv(CRASHING, address=server.address, crash="nonsense", restart_failed_envs=True)
    with pytest.raises(errors.RemoteError, match="crash must be one of"):
        env.reset()
    env.close()


@pytest.mark.parametrize("attempt", range(2))
def test_a_wedged_worker_is_killed_and_its_slot_freed_then_the_env_restarts(start_server, tmp_path, attempt):
    # One session at most: the restart can only get a worker once the wedged one is gone.
    server = start_server("--import", "gym_remote.testing", "--max-sessions", "1")
    env = crashing(
        server, tmp_path, crash_at_step=2, crash="wedge", timeout=WEDGE_TIMEOUT, restart_failed_envs=True
    )
    try:
        env.reset(seed=3)
        wedged = env.pid
        env.step(0)
        observation, reward, terminated, truncated, info = env.step(0)
        assert truncated and info["episode_lost"]
        assert info["lost_cause"].startswith("RemoteTimeout: step got no reply")
        assert not psutil.pid_exists(wedged) or wait_gone(wedged, 1.0)
        assert env.pid != wedged
        env.reset(seed=3)
        assert env.step(0)[3] is False
    finally:
        env.close()


def test_without_restarts_a_wedged_worker_times_out_and_frees_its_slot(start_server, tmp_path):
    server = start_server("--import", "gym_remote.testing", "--max-sessions", "1")
    env = crashing(server, tmp_path, crash_at_step=1, crash="wedge", timeout=WEDGE_TIMEOUT)
    env.reset(seed=0)
    wedged = env.pid
    with pytest.raises(errors.RemoteTimeout):
        env.step(0)
    env.close()
    assert wait_gone(wedged)  # killed by the server, long before its 120 s native call returns
    other = gym_remote.RemoteEnv("CartPole-v1", address=server.address, timeout=30)
    try:
        other.reset(seed=0)  # the one slot is free again
    finally:
        other.close()


@pytest.mark.parametrize("attempt", REPEATS)
def test_a_server_killed_and_restarted_on_its_address_is_reconnected_to(tmp_path, attempt):
    address = own_address(tmp_path)
    first = ServerProcess("--import", "gym_remote.testing", address=address)
    second: list[ServerProcess] = []
    env = gym_remote.RemoteEnv("CartPole-v1", address=address, restart_failed_envs=True)
    local = gym.make("CartPole-v1")
    try:
        env.reset(seed=11)
        local.reset(seed=11)
        env.step(0)
        last, *_ = local.step(0)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        # Restarted while the client already tries to reconnect (it waits with backoff).
        restarter = threading.Thread(
            target=lambda: second.append(ServerProcess("--import", "gym_remote.testing", address=address))
        )
        restarter.start()
        observation, reward, terminated, truncated, info = env.step(0)
        restarter.join(60)
        assert truncated and info["episode_lost"]
        np.testing.assert_array_equal(observation, last)
        observation, _ = env.reset()
        np.testing.assert_array_equal(observation, local.reset()[0])
    finally:
        env.close()
        first.__exit__(None, None, None)
        for server in second:
            server.__exit__(None, None, None)


def test_without_restarts_a_killed_server_fails_fast():
    with ServerProcess("--import", "gym_remote.testing") as server:
        env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
        env.reset(seed=0)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        with pytest.raises(errors.WorkerCrashed, match="its server stopped"):
            env.step(0)
        env.close()


def test_a_server_that_stays_away_is_given_up_on_at_the_reconnect_deadline(tmp_path):
    server = ServerProcess("--import", "gym_remote.testing", address=own_address(tmp_path))
    env = gym_remote.RemoteEnv(
        "CartPole-v1", address=server.address, restart_failed_envs=RestartPolicy(reconnect_seconds=1.0)
    )
    try:
        env.reset(seed=0)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        with pytest.raises(errors.ServerUnavailable, match="gave up restarting the env after 1 s"):
            env.step(0)
    finally:
        env.close()
        server.__exit__(None, None, None)


def test_a_private_server_that_was_killed_is_started_again():
    earlier = private_servers()  # of envs of earlier tests not yet collected
    env = gym_remote.RemoteEnv("CartPole-v1", restart_failed_envs=True)
    try:
        env.reset(seed=2)
        servers = list(private_servers() - earlier)
        assert len(servers) == 1
        servers[0].kill()
        servers[0].wait(30)
        assert env.step(0)[4]["episode_lost"]
        assert env.step(0)[3] is False  # a new private server, its env reset by the replay
    finally:
        env.close()


def test_restarts_come_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_RESTART_FAILED_ENVS", "1")
    assert restart_policy(None) == RestartPolicy()
    assert restart_policy(False) is None
    monkeypatch.setenv("GYM_REMOTE_RESTART_FAILED_ENVS", "0")
    assert restart_policy(None) is None
    custom = RestartPolicy(max_restarts=1, window_seconds=5, reconnect_seconds=2)
    assert restart_policy(custom) is custom
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=0)


def test_restarts_travel_with_a_pickled_env_and_through_gym_make():
    env = gym.make("remote/Env-v0", env_id="CartPole-v1", restart_failed_envs=True)
    try:
        assert env.spec.kwargs["restart_failed_envs"] is True
        copy = pickle.loads(pickle.dumps(env.unwrapped))
        assert copy._recovery is not None and env.unwrapped._recovery is not None
    finally:
        env.close()


def test_the_reset_schedule_replays_the_resets_since_the_last_seeded_one():
    schedule = ResetSchedule()
    schedule.note(None, None)  # never seeded: nothing to replay
    assert list(schedule.replay()) == []
    schedule.note(5, {"init_state_id": 2})
    schedule.note(None, None)
    schedule.note(None, None)
    schedule.note(None, {"init_state_id": 9})
    assert list(schedule.replay()) == [
        (5, {"init_state_id": 2}),
        (None, None),
        (None, None),
        (None, {"init_state_id": 9}),
    ]
    schedule.note(6, None)
    assert list(schedule.replay()) == [(6, None)]


def test_crash_details_from_a_hostile_peer_are_bounded():
    crash = errors.WorkerCrashed("gone", exit_code=3, signal=None, stderr_tail=["a", "b"])
    copy = error_from_wire(error_to_wire(crash))
    assert (copy.exit_code, copy.signal, copy.stderr_tail) == (3, None, ("a", "b"))
    hostile = error_to_wire(crash)
    hostile["details"] = {"exit_code": 2**80, "signal": "S" * 1000, "stderr_tail": ["x" * 10**5] * 1000 + [7]}
    copy = error_from_wire(hostile)
    assert copy.exit_code is None and copy.signal is None
    assert len(copy.stderr_tail) <= 10 and all(len(line) <= 500 for line in copy.stderr_tail)
    hostile["details"] = "not a map"
    assert error_from_wire(hostile).stderr_tail == ()


def test_a_private_server_says_how_its_worker_ended_too():
    earlier = private_servers()
    env = gym_remote.RemoteEnv("CartPole-v1")
    try:
        env.reset(seed=0)
        (private,) = private_servers() - earlier
        (worker,) = private.children()
        worker.kill()
        worker.wait(30)
        with pytest.raises(errors.WorkerCrashed, match="was killed by SIGKILL") as caught:
            env.step(0)
        assert (caught.value.signal, caught.value.exit_code) == ("SIGKILL", None)
    finally:
        env.close()
