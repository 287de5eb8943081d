"""LeRobot's own LeRobotDataset (LeRobot 0.6.1, in .venv-lerobot: `make test-lerobot`) loads
the datasets gym-remote writes without torch (issue 25): numbers exactly as recorded, camera
frames within codec tolerance, and every finished episode of a SIGKILLed recording."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lerobot")
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

import gym_remote  # noqa: E402
from gym_remote.recording import RecordVectorEpisodes  # noqa: E402
from gym_remote.recording.layout import ObservationLeaves  # noqa: E402
from gym_remote.simulators import recorded_routes  # noqa: E402
from tests.helpers import record_then_kill  # noqa: E402

pytestmark = pytest.mark.timeout(900)
needs_robosuite = pytest.mark.skipif(
    "robosuite" not in {route.name for route in recorded_routes()},
    reason="run `gym-remote setup robosuite` (`make test` does)",
)


def psnr(decoded: np.ndarray, original: np.ndarray) -> float:
    error = np.mean((decoded.astype(np.float64) - original.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def as_uint8_image(frame) -> np.ndarray:
    """A LeRobot camera frame (channels x height x width, 0..1) as height x width x channels."""
    return np.round(frame.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


@needs_robosuite
def test_lerobot_loads_a_recorded_robosuite_vector_env_exactly(server, tmp_path):
    kwargs = {"env_name": "Lift", "camera_names": ["agentview"], "camera_height": 64, "camera_width": 64}
    envs = gym_remote.RemoteVectorEnv(
        "gym_remote/Robosuite-v0", 2, address=server.address, horizon=10, **kwargs
    )
    recording = RecordVectorEpisodes(envs, tmp_path / "lift", "lerobot")
    leaves = ObservationLeaves(envs.single_observation_space)
    rng = np.random.default_rng(0)
    observations, _ = recording.reset(seed=0)
    pending = [{key: value[i] for key, value in observations.items()} for i in range(2)]
    frames: list[list] = [[], []]
    expected = []
    resets_next = np.zeros(2, bool)
    try:
        for _ in range(23):  # two episodes of 10 steps each, with NEXT_STEP's reset step between
            actions = rng.uniform(-1, 1, (2, 7)).astype(np.float32)
            observations, rewards, terminations, truncations, _ = recording.step(actions)
            for i in range(2):
                row = {key: value[i] for key, value in observations.items()}
                if not resets_next[i]:
                    frames[i].append((pending[i], actions[i], rewards[i]))
                    if terminations[i] or truncations[i]:
                        expected.append(frames[i])
                        frames[i] = []
                pending[i] = row
            resets_next = terminations | truncations
    finally:
        recording.close()
    assert len(expected) == 4

    dataset = LeRobotDataset("local/lift", root=tmp_path / "lift")
    assert dataset.num_episodes == 4 and len(dataset) == 40 and dataset.fps == 20
    assert dataset.meta.tasks.index.tolist() == ["Lift"]
    stats = json.loads((tmp_path / "lift" / "meta" / "stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["action"]["count"] == [40]
    quality = []
    every_frame = [(number, frame) for number, episode in enumerate(expected) for frame in episode]
    for index, (episode, frame) in enumerate(every_frame):
        item = dataset[index]
        observation, action, reward = frame
        assert int(item["episode_index"]) == episode
        np.testing.assert_array_equal(item["observation.state"].numpy(), leaves.state_of(observation))
        np.testing.assert_array_equal(item["action"].numpy(), action)
        assert float(item["next.reward"]) == np.float32(reward)
        image = as_uint8_image(item["observation.images.agentview_image"])
        quality.append(psnr(image, observation["agentview_image"]))
    assert min(quality) >= 35, f"PSNR {min(quality):.1f} dB"


def test_lerobot_loads_every_finished_episode_of_a_sigkilled_recording(tmp_path):
    record_then_kill(tmp_path, "lerobot")
    dataset = LeRobotDataset("local/killed", root=tmp_path)
    assert dataset.num_episodes == 2 and len(dataset) == 12
    last = dataset[11]
    assert int(last["episode_index"]) == 1 and int(last["frame_index"]) == 5
    assert last["task"] == "look at the two cameras"
    # The image env's first camera shows the step count in every pixel.
    assert abs(float(last["observation.images.image"].mean()) * 255 - 5) < 2
