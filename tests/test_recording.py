"""Recording (issue 25): what the wrappers, the recorder and `evaluate(record=...)` write, in
each autoreset mode, and what a SIGKILLed recording leaves."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from gym_remote.recording import RecordEpisodes, RecordVectorEpisodes
from gym_remote.recording.lerobot import LeRobotWriter
from gym_remote.recording.recorder import Recorder, open_dataset
from tests.helpers import record_then_kill

pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
h5py = pytest.importorskip("h5py")
FORMATS = ["lerobot", "hdf5"]


class CountingEnv(gym.Env):
    """Observation (episode number, step); episode e lasts 2 + e % 3 steps; succeeds on odd e."""

    metadata = {"render_fps": 10}

    def __init__(self, first_episode: int = 0) -> None:
        self.observation_space = spaces.Box(0, 1000, (2,), np.float32)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.task_description = "count"
        self.episode = first_episode - 1
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.steps = 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.steps += 1
        done = self.steps >= 2 + self.episode % 3
        info = {"is_success": bool(done and self.episode % 2)}
        return np.array([self.episode, self.steps], np.float32), float(action[0]), done, False, info


def read_episodes(directory: Path, format: str) -> list[dict]:
    """Each recorded episode's observations, actions, rewards and notes, in dataset order."""
    if format == "hdf5":
        with h5py.File(directory / "demo.hdf5", "r") as dataset:
            demos = [dataset[f"data/demo_{i}"] for i in range(int(dataset["data"].attrs["num_demos"]))]
            return [
                {
                    "observations": demo["obs/observation"][:],
                    "actions": demo["actions"][:],
                    "rewards": demo["rewards"][:],
                    "env_index": int(demo.attrs["env_index"]),
                    "success": bool(demo.attrs["success"]),
                }
                for demo in demos
            ]
    info = json.loads((directory / "meta" / "info.json").read_text())
    episodes = []
    for index in range(info["total_episodes"]):
        data = pyarrow_parquet.read_table(directory / f"data/chunk-000/file-{index:03d}.parquet").to_pydict()
        meta = pyarrow_parquet.read_table(directory / f"meta/episodes/chunk-000/file-{index:03d}.parquet")
        meta = meta.to_pylist()[0]
        assert data["episode_index"] == [index] * len(data["frame_index"])
        assert meta["dataset_to_index"] - meta["dataset_from_index"] == len(data["frame_index"])
        episodes.append(
            {
                "observations": np.array(data["observation.state"]),
                "actions": np.array(data["action"]),
                "rewards": np.array(data["next.reward"]),
                "env_index": meta["gym_remote/env_index"],
                "success": meta["gym_remote/success"],
            }
        )
    return episodes


def assert_counting_episode(episode: dict) -> None:
    """A whole CountingEnv episode: every step from the reset on, the last observation left out."""
    number = int(episode["observations"][0, 0])
    length = 2 + number % 3
    np.testing.assert_array_equal(episode["observations"][:, 0], [number] * length)
    np.testing.assert_array_equal(episode["observations"][:, 1], np.arange(length))
    np.testing.assert_array_equal(episode["rewards"], episode["actions"][:, 0].astype(np.float32))
    assert episode["success"] == bool(number % 2)


@pytest.mark.parametrize("format", FORMATS)
def test_a_wrapped_env_records_every_ended_episode_as_it_was_stepped(tmp_path, format):
    env = RecordEpisodes(CountingEnv(), tmp_path, format)
    env.action_space.seed(0)
    sent = []
    for _ in range(4):
        env.reset(seed=1)
        done = False
        while not done:
            action = env.action_space.sample()
            sent.append(action)
            *_, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    env.reset()
    env.step(env.action_space.sample())  # an episode still open at close is not kept
    env.close()
    episodes = read_episodes(tmp_path, format)
    assert [int(e["observations"][0, 0]) for e in episodes] == [0, 1, 2, 3]
    for episode in episodes:
        assert_counting_episode(episode)
    np.testing.assert_array_equal(np.concatenate([e["actions"] for e in episodes]), np.array(sent))


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_a_vector_env_records_one_dataset_of_every_sub_envs_episodes(tmp_path, format, mode):
    """Sub-env i counts episodes from 10 * i; every episode lands whole, in the order they end."""
    envs = SyncVectorEnv([lambda i=i: CountingEnv(10 * i) for i in range(3)], autoreset_mode=mode)
    recording = RecordVectorEpisodes(envs, tmp_path, format, fps=10)
    recording.reset(seed=0)
    ended = []
    for step in range(12):
        actions = np.full((3, 2), step / 12, np.float32)
        _, _, terminations, truncations, _ = recording.step(actions)
        ended += [index for index in range(3) if terminations[index] or truncations[index]]
        if mode == AutoresetMode.DISABLED and (terminations | truncations).any():
            recording.reset(options={"reset_mask": terminations | truncations})
    recording.close()
    episodes = read_episodes(tmp_path, format)
    assert [episode["env_index"] for episode in episodes] == ended
    assert sorted({int(e["observations"][0, 0]) // 10 for e in episodes}) == [0, 1, 2]
    for episode in episodes:
        assert_counting_episode(episode)
        assert int(episode["observations"][0, 0]) // 10 == episode["env_index"]


def test_only_successes_are_kept_when_asked(tmp_path):
    env = RecordEpisodes(CountingEnv(), tmp_path, "hdf5", only_success=True)
    for _ in range(5):
        env.reset()
        while not env.step(np.zeros(2, np.float32))[2]:
            pass
    env.close()
    assert [int(e["observations"][0, 0]) for e in read_episodes(tmp_path, "hdf5")] == [1, 3]


@pytest.mark.parametrize("format", FORMATS)
def test_a_dataset_is_not_overwritten_and_a_resumed_one_goes_on(tmp_path, format):
    env = RecordEpisodes(CountingEnv(), tmp_path, format)
    env.reset()
    while not env.step(np.zeros(2, np.float32))[2]:
        pass
    env.close()
    with pytest.raises(FileExistsError, match="holds a dataset"):
        RecordEpisodes(CountingEnv(), tmp_path, format)
    env = RecordEpisodes(CountingEnv(first_episode=1), tmp_path, format, resume=True)
    env.reset()
    while not env.step(np.zeros(2, np.float32))[2]:
        pass
    env.close()
    assert [int(e["observations"][0, 0]) for e in read_episodes(tmp_path, format)] == [0, 1]


def test_resuming_a_lerobot_dataset_with_other_features_is_refused(tmp_path):
    env = RecordEpisodes(CountingEnv(), tmp_path, "lerobot")
    env.reset()
    env.step(np.zeros(2, np.float32))
    env.step(np.zeros(2, np.float32))
    env.close()
    other = spaces.Box(0, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="other features"):
        LeRobotWriter(tmp_path, other, other, fps=10, resume=True)


def test_unknown_formats_and_odd_camera_sizes_are_refused(tmp_path):
    box = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ValueError, match="unknown dataset format 'zarr'"):
        open_dataset(tmp_path, "zarr", box, box, 10)
    odd = spaces.Dict({"pixels": spaces.Box(0, 255, (33, 32, 3), np.uint8)})
    with pytest.raises(ValueError, match="even heights and widths"):
        open_dataset(tmp_path, "lerobot", odd, box, 10)
    with pytest.raises(TypeError, match="recording needs an observation space"):
        open_dataset(tmp_path, "hdf5", spaces.Dict({"text": spaces.Text(5)}), box, 10)


def test_a_writer_error_is_raised_in_the_recording_thread(tmp_path):
    class Failing:
        def write(self, episode):
            raise OSError("disk full")

        def close(self):
            pass

    recorder = Recorder(Failing())
    recorder.start(0, np.zeros(2), "task")
    recorder.step(0, np.zeros(2), np.zeros(2), 0.0, True, False)
    recorder.end(0, True)
    with pytest.raises(OSError, match="disk full"):
        recorder.flush()
    with pytest.raises(OSError, match="disk full"):
        recorder.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("format", FORMATS)
def test_a_sigkilled_recording_keeps_every_episode_it_finished(tmp_path, format):
    record_then_kill(tmp_path, format)
    if format == "hdf5":
        with h5py.File(tmp_path / "demo.hdf5", "r") as dataset:
            assert int(dataset["data"].attrs["num_demos"]) == 2
            assert dataset["data/demo_1/obs/pixels_image"].shape == (6, 256, 256, 3)
    else:
        import av

        info = json.loads((tmp_path / "meta" / "info.json").read_text())
        assert info["total_episodes"] == 2 and info["total_frames"] == 12
        with av.open(str(tmp_path / "videos/observation.images.image/chunk-000/file-001.mp4")) as video:
            assert len(list(video.decode(video=0))) == 6
    writer = open_dataset(
        tmp_path,
        format,
        gym.make("gym_remote_testing/ImageEnv-v0").observation_space,
        spaces.Box(-1.0, 1.0, (7,), np.float32),
        20,
        resume=True,
    )
    assert (writer.info["total_episodes"] if format == "lerobot" else len(writer.demos)) == 2


def test_an_evaluation_records_every_episode_and_writes_its_row_after_it(tmp_path):
    from gym_remote.evaluation import Task, evaluate

    evaluation = evaluate(
        [Task("CartPole-v1", "CartPole-v1")],
        "random",
        episodes=3,
        num_envs=2,
        max_steps=8,
        output_dir=tmp_path / "results",
        record=tmp_path / "dataset",
        record_format="hdf5",
    )
    with h5py.File(tmp_path / "dataset" / "demo.hdf5", "r") as dataset:
        demos = [dict(dataset[f"data/demo_{i}"].attrs) for i in range(3)]
    assert sorted((d["seed"], d["num_samples"]) for d in demos) == sorted(
        (e.seed, e.length) for e in evaluation.episodes
    )
    rows = (tmp_path / "results" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 4  # a header and a row per episode


def test_recording_and_evaluation_import_nothing_heavy_until_a_dataset_is_opened():
    import subprocess
    import sys

    probe = (
        "import sys, gym_remote, gym_remote.recording, gym_remote.evaluation; "
        "print(sorted({'pyarrow', 'av', 'h5py', 'torch', 'websockets'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_evaluation_records_tasks_of_one_kind_into_one_dataset(tmp_path):
    from gym_remote.evaluation import Task, evaluate

    tasks = [Task("cartpole", "CartPole-v1"), Task("pendulum", "Pendulum-v1", {"g": 9.0})]
    with pytest.raises(ValueError, match="task pendulum has other observation or action spaces"):
        evaluate(tasks, "random", episodes=1, max_steps=3, record=tmp_path, record_format="hdf5")
    with h5py.File(tmp_path / "demo.hdf5", "r") as dataset:
        assert int(dataset["data"].attrs["num_demos"]) == 1, "the first task's episode is kept"
        assert json.loads(dataset["data"].attrs["env_args"])["env_name"] == "CartPole-v1"
    evaluate(tasks[1:], "random", episodes=1, max_steps=3, record=tmp_path / "p", record_format="hdf5")
    with h5py.File(tmp_path / "p" / "demo.hdf5", "r") as dataset:
        assert json.loads(dataset["data"].attrs["env_args"])["env_kwargs"] == {"g": 9.0}


def test_env_args_keep_only_the_kwargs_json_can_hold(tmp_path):
    gym.register("gym_remote_tests/Counting-v0", entry_point=CountingEnv)
    try:
        made = gym.make("gym_remote_tests/Counting-v0", first_episode=3)
        made.spec.kwargs["array"] = [np.zeros(2)]  # not JSON: left out, not a failure
        env = RecordEpisodes(made, tmp_path, "hdf5")
        env.reset()
        while not env.step(np.zeros(2, np.float32))[2]:
            pass
        env.close()
    finally:
        gym.registry.pop("gym_remote_tests/Counting-v0")
    with h5py.File(tmp_path / "demo.hdf5", "r") as dataset:
        env_args = json.loads(dataset["data"].attrs["env_args"])
    assert env_args["env_name"] == "gym_remote_tests/Counting-v0"
    assert env_args["env_kwargs"] == {"first_episode": 3}
