"""The wheel users install: its name, its contents, and that it installs and serves in a fresh venv."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

import gym_remote
from gym_remote.testing import ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The wheel built from this checkout, and the copy of the sources it was built from."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gym_remote", source / "gym_remote", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Not "gym-remote": on PyPI that name is an unrelated project (issue 24 item 1).
    (wheel_path,) = (tmp_path / "dist").glob("gymnasium_remote-*.whl")
    return wheel_path, source


def test_the_wheel_ships_every_module_the_typing_marker_and_the_console_script(built):
    wheel_path, source = built
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        console_scripts = wheel.read(entry_points).decode()
    modules = {path.relative_to(source).as_posix() for path in (source / "gym_remote").rglob("*.py")}
    assert "gym_remote/envs/libero.py" in modules
    assert modules | {"gym_remote/py.typed"} <= names
    assert "gym-remote = gym_remote.cli:main" in console_scripts


@pytest.mark.timeout(900)  # a fresh venv installs gymnasium, NumPy and msgpack from the index
def test_the_wheel_installs_and_serves_in_a_fresh_venv(built, tmp_path):
    wheel_path, _ = built
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel_path)],
        capture_output=True,
        text=True,
        timeout=840,
        env=environment,
    )
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run(
        [
            python,
            "-c",
            "import gym_remote, importlib.metadata as m; "
            "print(gym_remote.__file__, m.version('gymnasium-remote'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=tmp_path,
    )
    module_file, version = where.stdout.split()
    assert module_file.startswith(str(tmp_path / "venv")), "gym_remote must come from the venv"
    assert version == gym_remote.__version__
    # `gym-remote setup` installs the same wheel into simulator venvs, not a name from the index.
    core = subprocess.run(
        [python, "-c", "from gym_remote.simulators import _core_requirement; print(*_core_requirement())"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=tmp_path,
    )
    assert core.stdout.strip() == str(wheel_path), core.stderr
    with ServerProcess(
        "--allow",
        "CartPole-*",
        address=f"unix://{tmp_path}/s.sock",
        python=python,
        env=environment,
        cwd=str(tmp_path),
    ) as server:
        env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
        try:
            observation, _ = env.reset(seed=0)
            assert observation.shape == (4,)
            assert env.step(1)[0].shape == (4,)
        finally:
            env.close()


def test_no_doc_or_help_tells_users_to_install_the_unrelated_pypi_project():
    installs_by_name = re.compile(r"pip install ['\"]?gym-remote(?![/\w-])")
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("integrations/**/*.md")]
    files += [
        *ROOT.glob("gym_remote/**/*.py"),
        *ROOT.glob("examples/*.py"),
        *ROOT.glob("integrations/**/*.toml"),
    ]
    offending = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in files
        for line in path.read_text().splitlines()
        if installs_by_name.search(line) and "Never" not in line
    ]
    assert not offending
    requirement = (ROOT / "integrations/lerobot/pyproject.toml").read_text()
    assert '"gymnasium-remote>=' in requirement
