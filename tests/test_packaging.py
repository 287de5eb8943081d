"""The wheel users install holds every module, the typing marker and the console script."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_module_the_typing_marker_and_the_console_script(tmp_path):
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gym_remote", source / "gym_remote", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel_path,) = (tmp_path / "dist").glob("gym_remote-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        console_scripts = wheel.read(entry_points).decode()
    modules = {path.relative_to(source).as_posix() for path in (source / "gym_remote").rglob("*.py")}
    assert "gym_remote/envs/libero.py" in modules
    assert modules | {"gym_remote/py.typed"} <= names
    assert "gym-remote = gym_remote.cli:main" in console_scripts
