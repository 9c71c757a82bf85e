"""Atomic file writes: a temporary file in the same folder, fsync, then a rename over the target.

A reader (or a restarted job) therefore sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def make_output_dir(path: Path, option: str = "--output") -> Path:
    """Create the output folder ``path`` (named as the user gave it, ``option``) or say in one line why not."""
    from kubefusion.errors import UserError

    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        reason = "a file, not a folder" if path.exists() and not path.is_dir() else \
            (exc.strerror or type(exc).__name__).lower()
        raise UserError(f"{option} {path}: cannot use it as the output folder ({reason}); give a folder path "
                        "that can be created and written") from None
    return path


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), binary=False)
