"""Shared helpers for the benchmark scripts: start a real server, record results in the docs."""

from __future__ import annotations

import datetime
import pathlib
import platform
import re
import subprocess
import sys

import numpy as np

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class ServerProcess:
    """A real ``gym-remote serve`` process on a free loopback port (a context manager)."""

    def __init__(self, *extra_arguments: str, address: str = "tcp://127.0.0.1:0") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gym_remote", "serve", "--address", address,
             "--log-level", "warning", *extra_arguments],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"serving on (\S+)", line)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.address = match.group(1)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(30)


def machine_line() -> str:
    """Today's date and what this machine is, for the results table."""
    import os

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
