"""Files that appear whole or not at all: written beside their place, then renamed into it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["write_atomically"]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write`` with a temporary path beside ``path`` (its name ends in ``.tmp``, so no
    reader's glob for the real suffix finds it), flushes it to disk and renames it to ``path``.
    A process killed meanwhile leaves the old file (or none), never half a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
