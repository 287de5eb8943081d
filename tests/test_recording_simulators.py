"""Recorded datasets of real simulators (issue 25): HDF5 demos replay exactly, and LeRobot's own
class (LeRobot 0.6.1, in .venv-lerobot) loads what gym-remote wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from gym_remote.recording import RecordEpisodes
from tests.test_simulators import needs_libero, needs_robosuite

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.timeout(900)
LEROBOT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-lerobot" / "bin" / "python"
LIFT = {"env_name": "Lift", "camera_names": ["agentview"], "camera_height": 64, "camera_width": 64}


def record_random_episode(env: gym.Env, directory: Path, steps: int, seed: int, **reset_options) -> None:
    recording = RecordEpisodes(env, directory, "hdf5")
    recording.reset(seed=seed, options=reset_options or None)
    recording.action_space.seed(seed)
    for step in range(steps):
        *_, terminated, truncated, _ = recording.step(recording.action_space.sample())
        if step == steps - 1 and not (terminated or truncated):
            recording.recorder.end(0, False)  # the test's own cut: keep the episode as it is
    recording.recorder.close()


def assert_replays_exactly(env: gym.Env, directory: Path, seed: int, **reset_options) -> None:
    """The demo's actions, from its first state, give its observations exactly."""
    with h5py.File(directory / "demo.hdf5", "r") as dataset:
        demo = dataset["data/demo_0"]
        actions, states = demo["actions"][:], demo["states"][:]
        recorded = {key: demo["obs"][key][:] for key in demo["obs"]}
        assert json.loads(dataset["data"].attrs["env_args"])["env_name"]
    assert len(states) == len(actions) and len(actions) > 5
    env.reset(seed=seed, options=reset_options or None)
    env.unwrapped.set_state(states[0])
    # Frame 0's observation is the reset's, which LIBERO's settling step sampled mid-step: the
    # replay checks its state, then every later frame's observation and state.
    np.testing.assert_array_equal(env.unwrapped.get_state(), states[0])
    for frame in range(1, len(actions)):
        observation, *_ = env.step(actions[frame - 1])
        flat = dict(_flatten(observation))
        for key, values in recorded.items():
            np.testing.assert_array_equal(flat[key], values[frame], err_msg=f"{key} at frame {frame}")
        np.testing.assert_array_equal(env.unwrapped.get_state(), states[frame], err_msg=f"state {frame}")


def _flatten(observation, prefix=""):
    for key, value in observation.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


@needs_robosuite
def test_a_recorded_robosuite_demo_replays_exactly(server, tmp_path):
    env = gym.make("remote/Robosuite-v0", address=server.address, **LIFT)
    try:
        record_random_episode(env, tmp_path, steps=12, seed=3)
        assert_replays_exactly(env, tmp_path, seed=3)
    finally:
        env.close()


@needs_libero
def test_a_recorded_libero_demo_replays_exactly(server, tmp_path):
    kwargs = {"task_suite": "libero_object", "task_id": 1, "observation_height": 64, "observation_width": 64}
    env = gym.make("remote/Libero-v0", address=server.address, **kwargs)
    try:
        record_random_episode(env, tmp_path, steps=8, seed=1, init_state_id=2)
        with h5py.File(tmp_path / "demo.hdf5", "r") as dataset:
            attributes = dict(dataset["data/demo_0"].attrs)
            problem = json.loads(dataset["data"].attrs["problem_info"])
        assert attributes["init_state"] == 2 and attributes["seed"] == 1
        assert problem["language_instruction"] == env.get_wrapper_attr("task_description")
        assert_replays_exactly(env, tmp_path, seed=1, init_state_id=2)
    finally:
        env.close()


@needs_robosuite
def test_gym_remote_record_keeps_only_the_scripted_lifts_that_succeed_and_they_replay(server, tmp_path):
    """Data generation: `gym-remote record --only-success` with the scripted Lift policy, over 2
    sessions; each demo is a success, and its results are beside it for --resume."""
    kwargs = {"use_camera_obs": False, "horizon": 150}
    dataset = tmp_path / "lifts"
    command = [sys.executable, "-m", "gym_remote", "record", str(dataset), "--env-name", "Lift"]
    command += ["--env-kwargs", json.dumps(kwargs), "--policy", "lift", "--episodes", "3", "--num-envs", "2"]
    command += ["--address", server.address, "--format", "hdf5", "--only-success"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((dataset / "results" / "results.json").read_text())
    successes = [e for e in results["episodes"] if e["success"]]
    assert len(successes) >= 2, f"the scripted lift succeeded in {len(successes)} of 3 episodes"
    with h5py.File(dataset / "demo.hdf5", "r") as demos:
        recorded = [dict(demos[f"data/demo_{i}"].attrs) for i in range(int(demos["data"].attrs["num_demos"]))]
    assert all(demo["success"] for demo in recorded)
    assert sorted(d["seed"] for d in recorded) == sorted(e["seed"] for e in successes)
    env = gym.make("remote/Robosuite-v0", address=server.address, env_name="Lift", **kwargs)
    try:
        assert_replays_exactly(env, dataset, seed=int(recorded[0]["seed"]))
    finally:
        env.close()
    again = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    with h5py.File(dataset / "demo.hdf5", "r") as demos:
        assert int(demos["data"].attrs["num_demos"]) == len(recorded), "--resume ran nothing again"
