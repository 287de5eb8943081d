"""Shared fixtures: real gym-remote server processes on loopback."""

from __future__ import annotations

import os

import pytest

# CartPole and friends declare a "human" render mode; check_env tries every mode.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Sessions given the test servers' loopback TCP addresses stay on TCP, the path clients on other
# hosts take; tests/test_local_socket.py turns the move to the server's local socket back on.
os.environ.setdefault("GYM_REMOTE_LOCAL_SOCKET", "0")

from gym_remote.testing import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server():
    """A real server on a free loopback TCP port that serves every env plus the test envs."""
    with ServerProcess("--import", "gym_remote.testing") as process:
        yield process


@pytest.fixture
def start_server():
    """Starts servers with custom options; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*arguments: str, **options) -> ServerProcess:
        process = ServerProcess(*arguments, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.__exit__(None, None, None)
