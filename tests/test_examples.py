"""The examples in examples/ and in the README run as documented (with short settings)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gym_remote.simulators import recorded_routes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
README = EXAMPLES.parent / "README.md"
README_ADDRESS = "tcp://127.0.0.1:5555"
SIMULATORS = {route.name for route in recorded_routes()}
# Examples run real simulators in subprocesses: each test gets the time they need on a busy machine.
pytestmark = pytest.mark.timeout(900)


def run_example(name: str, *arguments: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        capture_output=True,
        text=True,
        timeout=840,
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
        "robosuite_lift.py", "--episodes", "1", "--max-steps", "100", "--output-dir", "lift", cwd=tmp_path
    )
    assert "success rate: 1/1" in output
    assert (tmp_path / "lift" / "videos" / "Lift" / "episode_0.mp4").stat().st_size > 1000
    assert (tmp_path / "lift" / "results.json").exists()


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
        "--output-dir",
        "out",
        cwd=tmp_path,
    )
    (row,) = [line.split() for line in output.splitlines() if line.startswith("libero_spatial/0 ")]
    assert row[:3] == ["libero_spatial/0", "1", "0"]
    assert (tmp_path / "out" / "videos" / "libero_spatial" / "0" / "episode_0.mp4").stat().st_size > 1000


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def with_results_checked(code: str) -> str:
    """``code`` with each line ``EXPRESSION  # LITERAL`` (a result the README shows) made an assert."""
    lines = []
    for line in code.splitlines():
        expression, _, comment = line.partition("  # ")
        try:
            ast.parse(expression, mode="eval")
            expected = ast.literal_eval(comment)
        except (SyntaxError, ValueError):
            lines.append(line)
            continue
        lines.append(f"assert ({expression}) == {expected!r}, {line!r}")
    return "\n".join(lines)


def test_the_readme_python_examples_run_as_written(start_server, tmp_path):
    # The README's server, on a free port instead of 5555: its examples are pointed there.
    (serve,) = [line for block in readme_blocks("bash") for line in block.splitlines() if " serve " in line]
    server = start_server(*shlex.split(serve.split(" serve ", 1)[1], comments=True))
    # The simulator examples run in test_simulators.py and above; these are the core's, each a
    # script of its own with the imports the first one shows.
    blocks = [block for block in readme_blocks("python") if "remote/Libero-v0" not in block]
    assert len(blocks) >= 4 and any(with_results_checked(block) != block for block in blocks)
    imports = "import gymnasium as gym\nimport gym_remote\n"
    for number, block in enumerate(blocks):
        script = tmp_path / f"example_{number}.py"
        script.write_text(imports + with_results_checked(block).replace(README_ADDRESS, server.address))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert result.returncode == 0, f"README example {number}:\n{block}\n{result.stderr[-3000:]}"
