"""RemoteEnv behaves like the local env: check_env, exact equivalence, attributes, spec, render."""

from __future__ import annotations

import pickle
from copy import deepcopy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import gym_remote
import gym_remote.testing  # noqa: F401


def make_remote(server, env_id, **kwargs):
    return gym.make("remote/Env-v0", env_id=env_id, address=server.address, **kwargs)


@pytest.mark.parametrize(
    "env_id",
    ["CartPole-v1", "Pendulum-v1", "FrozenLake-v1", "Blackjack-v1", "gym_remote_testing/RichSpaces-v0"],
)
def test_check_env_passes(server, env_id):
    env = make_remote(server, env_id)
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_spaces_metadata_and_spec_mirror_the_remote_env(server):
    local = gym.make("gym_remote_testing/RichSpaces-v0")
    remote = make_remote(server, "gym_remote_testing/RichSpaces-v0")
    try:
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert remote.metadata == local.metadata
        assert remote.spec.max_episode_steps == local.spec.max_episode_steps == 100
        assert remote.spec.id == "remote/Env-v0"
        assert remote.spec.kwargs["env_id"] == "gym_remote_testing/RichSpaces-v0"
    finally:
        remote.close()
        local.close()


# Each crosses episode boundaries within the run (by termination or by its time limit).
EQUIVALENCE_IDS = [
    "CartPole-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Acrobot-v1",
    "FrozenLake-v1",
    "FrozenLake8x8-v1",
    "Blackjack-v1",
    "Taxi-v4",
]


@pytest.mark.parametrize("env_id", EQUIVALENCE_IDS)
def test_same_seed_and_actions_give_identical_results(server, env_id):
    local = gym.make(env_id)
    remote = make_remote(server, env_id)
    local.action_space.seed(7)
    steps, episodes = 1200, 0
    try:
        results = [local.reset(seed=42), remote.reset(seed=42)]
        assert data_equivalence(results[0], results[1], exact=True)
        for step in range(steps):
            action = local.action_space.sample()
            local_result = local.step(action)
            remote_result = remote.step(action)
            assert data_equivalence(local_result, remote_result, exact=True), f"step {step}"
            for local_value, remote_value in zip(local_result, remote_result):
                assert type(local_value) is type(remote_value)
            if local_result[2] or local_result[3]:
                episodes += 1
                seed = None if episodes % 2 else episodes  # unseeded resets too
                assert data_equivalence(local.reset(seed=seed), remote.reset(seed=seed), exact=True)
        assert episodes >= 1, "the run must cross an episode boundary"
    finally:
        local.close()
        remote.close()


def test_remote_attributes_and_methods(server):
    env = make_remote(server, "gym_remote_testing/ImageEnv-v0")
    try:
        assert env.get_wrapper_attr("task_description") == "look at the two cameras"
        assert env.get_wrapper_attr("episode_length") == 50
        env.unwrapped.set_wrapper_attr("episode_length", 3)
        assert env.get_wrapper_attr("episode_length") == 3
        env.reset(seed=0)
        truncations = [env.step(env.action_space.sample())[3] for _ in range(3)]
        assert truncations == [False, False, True]
        with pytest.raises(AttributeError, match="no attribute 'missing'"):
            env.get_wrapper_attr("missing")
        assert not hasattr(env.unwrapped, "missing")
    finally:
        env.close()

    faulty = gym_remote.RemoteEnv("gym_remote_testing/Faulty-v0", address=server.address)
    try:
        assert faulty.describe("x", suffix="!") == "x:FaultyEnv!"
        assert faulty.get_wrapper_attr("sleep_seconds") == 5.0
    finally:
        faulty.close()


def test_render_rgb_array(server):
    env = make_remote(server, "gym_remote_testing/ImageEnv-v0", render_mode="rgb_array")
    try:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame[0, 0, 0] == 1
        assert env.render_mode == "rgb_array"
    finally:
        env.close()

    cartpole = make_remote(server, "CartPole-v1", render_mode="rgb_array")
    local = gym.make("CartPole-v1", render_mode="rgb_array")
    try:
        cartpole.reset(seed=1)
        local.reset(seed=1)
        assert np.array_equal(cartpole.render(), local.render())
    finally:
        cartpole.close()
        local.close()


def test_rgb_array_list_renders_every_frame_since_the_last_render_as_locally(server):
    remote = make_remote(server, "CartPole-v1", render_mode="rgb_array_list")
    local = gym.make("CartPole-v1", render_mode="rgb_array_list")
    try:
        for env in (remote, local):
            env.reset(seed=2)
            env.step(0)
            env.step(1)
        remote_frames, local_frames = remote.render(), local.render()
        assert len(remote_frames) == len(local_frames) == 3
        assert all(np.array_equal(a, b) for a, b in zip(remote_frames, local_frames))
        assert remote.render() == local.render() == []  # the list starts again
    finally:
        remote.close()
        local.close()


def test_human_rendering_shows_the_remote_frames_in_a_local_window(server, monkeypatch):
    import pygame

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a window with no display
    remote = gym.wrappers.HumanRendering(make_remote(server, "CartPole-v1", render_mode="rgb_array"))
    local = gym.make("CartPole-v1", render_mode="rgb_array")
    try:
        assert remote.render_mode == "human"
        remote.reset(seed=4)
        local.reset(seed=4)
        remote.step(1)
        local.step(1)
        shown = pygame.surfarray.array3d(remote.window).swapaxes(0, 1)
        assert np.array_equal(shown, local.render())
    finally:
        remote.close()
        local.close()


def test_np_random_is_seeded_like_a_local_env(server):
    """The client's np_random is seeded by reset(seed=...) exactly as a local env's would be."""
    from gymnasium.utils.seeding import np_random

    remote = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    try:
        remote.reset(seed=5)
        assert remote.np_random_seed == 5
        assert remote.np_random.bit_generator.state == np_random(5)[0].bit_generator.state
        state = remote.np_random.bit_generator.state
        remote.reset()
        assert remote.np_random.bit_generator.state == state, "an unseeded reset keeps the generator"
    finally:
        remote.close()


def test_a_remote_env_pickles_before_it_connects_and_copies_get_their_own_session(server):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address, max_episode_steps=10)
    copy = pickle.loads(pickle.dumps(env))
    assert copy.gym_remote.state is gym_remote.client.SessionState.NOT_CONNECTED
    copy.reset(seed=0)
    assert copy.spec.max_episode_steps == 10
    env.reset(seed=0)
    env.step(1)
    assert pickle.loads(pickle.dumps(env)).gym_remote.state is gym_remote.client.SessionState.NOT_CONNECTED
    # As the how-to says: a copy of a reset env is a new session, to be reset before it steps.
    duplicate = deepcopy(env)
    with pytest.raises(gym_remote.InvalidCall, match="reset"):
        duplicate.step(1)
    duplicate.close()
    assert env.step(1)[0].shape == (4,), "the original's session goes on"
    env.close()
    copy.close()


def test_the_remote_envs_attributes_are_not_shadowed_by_gym_remotes_own(server):
    """``state``, ``config``, ``env_id`` and ``env_kwargs`` are the remote env's; gym-remote's own
    session state lives behind ``gym_remote`` (issue 24 item 7)."""
    remote = gym.make("remote/Env-v0", env_id="CartPole-v1", address=server.address)
    local = gym.make("CartPole-v1")
    try:
        remote.reset(seed=3)
        local.reset(seed=3)
        np.testing.assert_array_equal(remote.unwrapped.state, local.unwrapped.state)
        np.testing.assert_array_equal(remote.get_wrapper_attr("state"), local.unwrapped.state)
        for name, value in [("config", {"gain": 2}), ("env_id", "mine"), ("env_kwargs", [1, 2])]:
            remote.set_wrapper_attr(name, value)
            assert remote.get_wrapper_attr(name) == value
            assert name not in vars(remote.unwrapped), f"{name} was set on the client, not the remote env"
        session = remote.unwrapped.gym_remote
        assert session.state is gym_remote.client.SessionState.ACTIVE
        assert session.env_id == "CartPole-v1" and session.env_kwargs == {}
        assert session.config.address == server.address
    finally:
        remote.close()
        local.close()


def test_a_token_stays_out_of_specs_and_reprs(start_server):
    """Trainers log specs and configs: the token is in neither (issue 24 item 8)."""
    secret = "s3cret-token-value"
    server = start_server("--token", secret)
    env = gym.make("remote/Env-v0", env_id="CartPole-v1", address=server.address, token=secret)
    vector = gym.make_vec(
        "remote/Env-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        env_id="CartPole-v1",
        address=server.address,
        token=secret,
    )
    try:
        env.reset(seed=0)  # the token reached the server
        vector.reset(seed=0)
        shown = [
            str(env.spec.kwargs),
            env.spec.to_json(),
            repr(env.spec),
            repr(env.unwrapped.gym_remote.config),
            repr(env),
            str(vector.spec.kwargs),
            vector.spec.to_json(),
            repr(vector),
            repr(vector.unwrapped.sessions[0].gym_remote.config),
        ]
        assert not [text for text in shown if secret in text]
        assert env.spec.kwargs["env_id"] == "CartPole-v1"
        copy = pickle.loads(pickle.dumps(env.unwrapped))  # a copy still reaches the server
        copy.reset(seed=0)
        copy.close()
    finally:
        env.close()
        vector.close()


def test_close_is_idempotent_and_later_calls_say_closed(server):
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    local = gym.make("CartPole-v1")
    env.reset()
    env.close()
    env.close()
    with pytest.raises(gym_remote.SessionClosed, match="closed"):
        env.step(0)
    # What the env is stays readable, as a local env's does after close.
    assert env.observation_space == local.observation_space and env.action_space == local.action_space
    assert env.metadata["render_fps"] == local.metadata["render_fps"] and env.spec.max_episode_steps == 500


def test_reset_options_reach_the_remote_env(server):
    env = gym_remote.RemoteEnv("gym_remote_testing/RichSpaces-v0", address=server.address)
    try:
        _, info = env.reset(seed=1, options={"level": 3, "tags": ("a", "b")})
        assert info["options"] == {"level": 3, "tags": ("a", "b")}
    finally:
        env.close()


def test_register_remote_makes_named_ids(server):
    gym_remote.register_remote("remote/TestCartPole-v1", "CartPole-v1", address=server.address)
    env = gym.make("remote/TestCartPole-v1")
    try:
        observation, _ = env.reset(seed=3)
        assert observation.shape == (4,)
        assert env.spec.id == "remote/TestCartPole-v1" and env.spec.max_episode_steps == 500
    finally:
        env.close()
