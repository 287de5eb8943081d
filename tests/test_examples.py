"""The examples in examples/ run as documented (with short settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gym_remote.simulators import recorded_routes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIMULATORS = {route.name for route in recorded_routes()}


def run_example(name: str, *arguments: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demo(tmp_path):
    output = run_example("demo.py", cwd=tmp_path)
    assert "remote CartPole-v1" in output and "steps/s" in output
    local, remote = (line.split("mean return")[1] for line in output.splitlines() if "CartPole" in line)
    assert local.split(",")[0] == remote.split(",")[0], "the same seeds give the same returns"


@pytest.mark.skipif(
    "robosuite" not in SIMULATORS, reason="run `gym-remote setup robosuite` (`make test` does)"
)
def test_robosuite_lift_example_lifts_the_cube(tmp_path):
    output = run_example(
        "robosuite_lift.py", "--episodes", "1", "--max-steps", "100", "--video", "lift.mp4", cwd=tmp_path
    )
    assert "success rate: 1/1" in output
    assert (tmp_path / "lift.mp4").stat().st_size > 1000


@pytest.mark.skipif("libero" not in SIMULATORS, reason="run `gym-remote setup libero` (`make test` does)")
def test_libero_eval_example(tmp_path):
    output = run_example(
        "libero_eval.py",
        "--episodes",
        "1",
        "--max-steps",
        "4",
        "--size",
        "64",
        "--video",
        "libero.mp4",
        cwd=tmp_path,
    )
    assert "task: pick up the black bowl" in output and "success rate: 0/1" in output
    assert (tmp_path / "libero.mp4").stat().st_size > 1000
