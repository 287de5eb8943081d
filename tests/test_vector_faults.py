"""RemoteVectorEnv's faults: failing and crashing sub-envs are named, servers that go away, and
results kept beside the ones that failed.
"""

from __future__ import annotations

import select

import gymnasium as gym
import numpy as np
import pytest

import gym_remote
from gym_remote import RemoteVectorEnv
from gym_remote.testing import FAULTS
from tests.helpers import all_gone, wait_for, worker_pids


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
        sockets = [session._steps.connection.fileno() for session in envs.sessions]
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
