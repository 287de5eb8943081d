"""Shared helpers for the benchmark scripts: start a real server, record results in the docs."""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import platform
from typing import Any, Iterator

import numpy as np

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_line() -> str:
    """Today's date and what this machine is, for the results table."""
    return (
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    )


def record(section: str, markdown: str) -> None:
    """Replaces the block of ``section`` in docs/benchmarks.md (made if missing) with ``markdown``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)
    print(f"results written to {DOCS}")


def observation_leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, np.ndarray]]:
    """The arrays of an observation (nested dicts of arrays), each with its path of keys."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in observation_leaves(item, (*path, key))]
    return [(path, np.asarray(value))]


@contextlib.contextmanager
def shared_memory_setting(enabled: bool) -> Iterator[None]:
    """Sets ``GYM_REMOTE_SHARED_MEMORY`` for the remote envs made inside (their configs read it
    when they are made), then leaves the caller's own setting as it was."""
    previous = os.environ.get("GYM_REMOTE_SHARED_MEMORY")
    os.environ["GYM_REMOTE_SHARED_MEMORY"] = str(int(enabled))
    try:
        yield
    finally:
        if previous is None:
            del os.environ["GYM_REMOTE_SHARED_MEMORY"]
        else:
            os.environ["GYM_REMOTE_SHARED_MEMORY"] = previous
