"""The LeRobot plugin (integrations/lerobot) with the real LeRobot: discovery, env types, lerobot-eval.

LeRobot 0.6 needs Python >= 3.12, so `make test` runs this file a second time in .venv-lerobot
(LeRobot, its CPU or CUDA torch, gym-remote and the plugin); in the main venv it is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip(
    "lerobot",
    reason="LeRobot is not importable here; `make test` runs this file in .venv-lerobot (Python 3.12)",
)

import gymnasium as gym  # noqa: E402
from lerobot.envs.configs import EnvConfig  # noqa: E402
from lerobot.envs.utils import preprocess_observation  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

import gym_remote  # noqa: E402,F401
from gym_remote.simulators import recorded_routes  # noqa: E402
from tests.fault_helpers import command_line  # noqa: E402

IMAGE_SIZE = 64


def needs_libero() -> None:
    if "libero" not in {route.name for route in recorded_routes()}:
        pytest.skip("run `gym-remote setup libero` (`make test` does)")


def save_tiny_policy(folder) -> None:
    """A randomly initialised ACT policy for LeRobot's LIBERO features, saved with save_pretrained."""
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(0)
    image = PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE))
    config = ACTConfig(
        input_features={
            "observation.images.image": image,
            "observation.images.image2": image,
            "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
        normalization_mapping={kind: NormalizationMode.IDENTITY for kind in ("VISUAL", "STATE", "ACTION")},
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        chunk_size=4,
        n_action_steps=4,
        use_vae=False,
        pretrained_backbone_weights=None,
        device="cpu",
    )
    ACTPolicy(config).save_pretrained(folder)
    for processor in make_pre_post_processors(config, dataset_stats=None):
        processor.save_pretrained(folder)


@pytest.fixture(autouse=True, scope="module")
def plugins():
    """LeRobot's own plugin discovery, as lerobot-eval runs it at start."""
    register_third_party_plugins()


def test_lerobot_discovers_both_env_types():
    assert {"remote_libero", "remote"} <= set(EnvConfig.get_known_choices())


@pytest.mark.timeout(600)
def test_lerobot_eval_runs_against_a_remote_libero(server, tmp_path):
    needs_libero()
    save_tiny_policy(tmp_path / "policy")
    command = [
        sys.executable,
        "-m",
        "lerobot.scripts.lerobot_eval",
        f"--policy.path={tmp_path / 'policy'}",
        "--policy.device=cpu",
        "--env.type=remote_libero",
        f"--env.address={server.address}",
        "--env.task=libero_goal",
        "--env.task_ids=[8]",
        "--env.episode_length=5",
        f"--env.observation_height={IMAGE_SIZE}",
        f"--env.observation_width={IMAGE_SIZE}",
        "--eval.n_episodes=4",
        "--eval.batch_size=2",
        "--eval.use_async_envs=true",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert results["overall"]["n_episodes"] == 4
    (task,) = results["per_task"]
    assert (task["task_group"], task["task_id"]) == ("libero_goal", 8)
    assert len(task["metrics"]["successes"]) == 4
    videos = task["metrics"]["video_paths"]
    assert len(videos) == 4 and all((tmp_path / "eval" / "videos").glob("libero_goal_8/*.mp4"))


@pytest.mark.timeout(300)
def test_remote_libero_moves_each_sub_env_to_new_init_states_every_rollout(server):
    """As LeRobot's own libero type: sub-env i of n starts at init state i, then i + n, ..."""
    needs_libero()
    config = EnvConfig.get_choice_class("remote_libero")(
        task="libero_goal",
        task_ids=[8],
        address=server.address,
        observation_height=IMAGE_SIZE,
        observation_width=IMAGE_SIZE,
    )
    envs = config.create_envs(n_envs=2, use_async_envs=False)["libero_goal"][8]
    reference = gym.make(
        "remote/Libero-v0",
        address=server.address,
        task_suite="libero_goal",
        task_id=8,
        init_state_id=2,
        observation_height=IMAGE_SIZE,
        observation_width=IMAGE_SIZE,
    )
    try:
        assert envs.call("_max_episode_steps") == (300, 300)  # the suite's length, from the server
        first, _ = envs.reset(seed=[0, 1], options={"lerobot_new_rollout": True})
        second, _ = envs.reset(seed=[2, 3], options={"lerobot_new_rollout": True})
        expected, _ = reference.reset(seed=2)
        joints = second["robot_state"]["joints"]["pos"]
        assert not np.array_equal(first["robot_state"]["joints"]["pos"][0], joints[0])
        np.testing.assert_array_equal(joints[0], expected["robot_state"]["joints"]["pos"])
    finally:
        envs.close()
        reference.close()


def test_remote_type_maps_any_env_into_lerobots_layout(server):
    config = EnvConfig.get_choice_class("remote")(
        env_id="gym_remote_testing/ImageEnv-v0", address=server.address, episode_length=3
    )
    envs = config.create_envs(n_envs=2, use_async_envs=False)["remote"][0]
    try:
        assert config.features_map == {
            "action": "action",
            "pixels/image": "observation.images.image",
            "pixels/image2": "observation.images.image2",
            "agent_pos": "observation.state",
        }
        assert config.features["agent_pos"].shape == (9,)
        assert envs.call("_max_episode_steps") == (3, 3)
        observations, _ = envs.reset(seed=[0, 1])
        batch = preprocess_observation(observations)
        assert batch["observation.images.image"].shape == (2, 3, 256, 256)
        assert batch["observation.state"].shape == (2, 9)
        for _ in range(3):
            *_, infos = envs.step(envs.action_space.sample())
        assert envs.call("task_description") == ("look at the two cameras",) * 2
    finally:
        envs.close()


def test_sub_envs_take_the_servers_of_an_address_list_in_turn(server):
    from gym_remote.testing import ServerProcess

    with ServerProcess("--import", "gym_remote.testing") as second:
        config = EnvConfig.get_choice_class("remote")(
            env_id="gym_remote_testing/ImageEnv-v0", address=f"{server.address},{second.address}"
        )
        envs = config.create_envs(n_envs=3, use_async_envs=False)["remote"][0]
        try:
            envs.reset(seed=[0, 1, 2])
            used = [view.config.address for view in envs.call("gym_remote")]
            assert used == [server.address, second.address, server.address]
        finally:
            envs.close()


def test_remote_type_needs_an_env_id():
    with pytest.raises(ValueError, match="--env.env_id"):
        EnvConfig.get_choice_class("remote")()


def test_remote_type_restarts_a_crashed_sub_env(server):
    """``--env.restart_failed_envs=true``: the sub-env whose worker was killed ends its rollout
    as lost, the other goes on (issue 27)."""
    import psutil

    def workers() -> dict[int, psutil.Process]:
        return {
            child.pid: child
            for child in psutil.Process(server.pid).children()
            if "gym_remote.worker" in command_line(child)
        }

    earlier = workers()  # those of earlier tests may still be ending
    config = EnvConfig.get_choice_class("remote")(
        env_id="gym_remote_testing/ImageEnv-v0", address=server.address, restart_failed_envs=True
    )
    envs = config.create_envs(n_envs=2, use_async_envs=False)["remote"][0]
    try:
        envs.reset(seed=[0, 1])
        envs.step(envs.action_space.sample())
        ours = [process for pid, process in workers().items() if pid not in earlier]
        assert len(ours) == 2
        ours[0].kill()
        ours[0].wait(30)
        _, _, _, truncations, infos = envs.step(envs.action_space.sample())
        assert sorted(truncations.tolist()) == [False, True]
        assert infos["episode_lost"].tolist() == truncations.tolist()
    finally:
        envs.close()
