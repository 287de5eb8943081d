"""The overhead benchmark's floors stay honest and the script keeps running (no timings asserted)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import gym_remote.testing  # noqa: F401  (registers the image env)
from benchmarks import common
from benchmarks.python_floor import MinimalPythonEnv
from gym_remote.simulators import recorded_routes

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("over_unix_socket", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "gym_remote_testing/ImageEnv-v0"])
def test_the_minimal_python_pair_returns_what_the_local_env_does(env_id, over_unix_socket, tmp_path):
    local_env = gym.make(env_id)
    minimal = MinimalPythonEnv(env_id, unix_path=str(tmp_path / "pair.sock") if over_unix_socket else None)
    try:
        local_env.action_space.seed(0)
        expected, _ = local_env.reset(seed=3)
        observation, _ = minimal.reset(seed=3)
        for _ in range(60):
            _assert_same(observation, expected)
            action = local_env.action_space.sample()
            expected, reward, terminated, truncated, _ = local_env.step(action)
            observation, remote_reward, remote_terminated, remote_truncated, _ = minimal.step(action)
            assert (remote_reward, remote_terminated, remote_truncated) == (reward, terminated, truncated)
            if terminated or truncated:
                expected, _ = local_env.reset(seed=4)
                observation, _ = minimal.reset(seed=4)
        _assert_same(observation, expected)
    finally:
        minimal.close()
        local_env.close()


def _assert_same(observation, expected) -> None:
    if isinstance(expected, dict):
        assert observation.keys() == expected.keys()
        for key in expected:
            _assert_same(observation[key], expected[key])
    else:
        assert observation.dtype == expected.dtype and observation.flags.writeable
        np.testing.assert_array_equal(observation, expected)


def run_benchmark(name: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m benchmarks.NAME ARGUMENTS --no-record``, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *arguments, "--no-record"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_overhead_benchmark_prints_its_table_without_recording():
    result = run_benchmark("overhead", "--steps", "200", "--rounds", "1", timeout=240)
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| CartPole", "| image"))]
    # Given the TCP address: over TCP alone per reply path, and by default (the local socket);
    # given a Unix socket's: each by its default reply path, also against the bare TCP round trip.
    paths = [row.split(" | ")[1] for row in rows]
    assert paths == [
        "TCP, socket",
        "local socket (the default)",
        "TCP, socket",
        "TCP, shared memory",
        "local socket, shared memory (the default)",
        "socket",
        "shared memory",
    ]
    for index, row in enumerate(rows):
        ratios = [float(value) for value in re.findall(r"\| ([\d.]+)x", row)]
        assert len(ratios) == (2 if index < 5 else 3) and all(ratio > 0 for ratio in ratios), row
    assert "results written" not in result.stdout


@pytest.mark.parametrize(
    ("driver", "poll_ns", "expected_poll_ns", "expected_words"),
    [
        ("haltpoll\n", "0\n", 0, "halt at once (guest halt polling off)"),
        ("haltpoll\n", "200000\n", 200000, "poll up to 200 us before halting"),
        ("acpi_idle\n", "200000\n", None, None),
        (None, None, None, None),
    ],
)
def test_the_machine_line_says_how_idle_vcpus_wait(
    tmp_path, monkeypatch, driver, poll_ns, expected_poll_ns, expected_words
):
    driver_file, poll_file = tmp_path / "current_driver", tmp_path / "guest_halt_poll_ns"
    for path, text in ((driver_file, driver), (poll_file, poll_ns)):
        if text is not None:
            path.write_text(text)
    monkeypatch.setattr(common, "CPUIDLE_DRIVER", driver_file)
    monkeypatch.setattr(common, "GUEST_HALT_POLL_NS", poll_file)
    assert common.guest_halt_poll_ns() == expected_poll_ns
    line = common.machine_line()
    if expected_words is None:
        assert "halt" not in line
    else:
        assert line.endswith(expected_words)


def test_the_eval_benchmark_prints_every_loop_without_recording():
    result = run_benchmark("eval", "--episodes", "4", timeout=300)
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| lockstep") or "evaluate`" in line
    ]
    assert len(rows) == 4 and all("episodes" not in row.split(" | ")[1] for row in rows)
    assert [row.split(" | ")[-1].strip(" |") for row in rows][0] == "1.00x"


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    "robosuite" not in {route.name for route in recorded_routes()},
    reason="run `gym-remote setup robosuite` (`make test` does)",
)
def test_the_recording_benchmark_prints_every_loop_without_recording():
    result = run_benchmark("recording", "--episodes", "4", "--rounds", "1", timeout=900)
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("| no recording") or "`record=`" in line
    ]
    assert len(rows) == 3 and rows[0].endswith("| 1.00x |")
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)


@pytest.mark.timeout(600)
def test_the_scale_benchmark_prints_both_tables_without_recording():
    pytest.importorskip("ray", reason="Ray is in the dev extra (`make test` installs it)")
    pytest.importorskip("cryptography", reason="cryptography is in the dev extra")
    result = run_benchmark("scale", "--steps", "100", "--rounds", "1", timeout=600)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 4, result.stdout
    assert rows[0].endswith("| 1.00x |")  # the servers started by hand are the baseline
