"""File access through ``tf.io.gfile``, so a dataset root may be a local path or a URI (``gs://``, ``s3://``,
``hdfs://``: whatever file systems the installed TensorFlow registers).

TensorFlow is imported on first use, not at import time: ``kubefusion data validate --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from kubefusion.errors import DataError


@functools.cache
def gfile() -> Any:
    from kubefusion.data._tf import tensorflow  # noqa: PLC0415 (deliberately lazy)

    return tensorflow().io.gfile


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(root: str | Path, *parts: str) -> str:
    """Join path parts; URIs keep forward slashes whatever the local OS."""
    if is_uri(root):
        return posixpath.join(str(root), *parts)
    return str(Path(root).joinpath(*parts))


def resolve(root: str | Path, path: str) -> str:
    """``path`` as written in a manifest: absolute paths and URIs stand, anything else is under ``root``."""
    if is_uri(path) or Path(path).is_absolute():
        return path
    return join(root, path)


# A scheme this TensorFlow does not serve (s3:// without tensorflow-io) or an unreachable store fails on the
# first look at a path, not only on reads: that must be a one-line DataError too, not a traceback.


def exists(path: str) -> bool:
    with readable(path):
        return bool(gfile().exists(path))


def isdir(path: str) -> bool:
    with readable(path):
        return bool(gfile().isdir(path))


def listdir(path: str) -> list[str]:
    with readable(path):
        return list(gfile().listdir(path))


def open_binary(path: str) -> IO[bytes]:
    return gfile().GFile(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_binary(path) as fh:
        return fh.read()


def files_below(root: str) -> list[str]:
    """Paths of every file below ``root``, relative to it with forward slashes, sorted (stable across file
    systems: object stores list in their own order and may end folder names with a slash)."""
    top = root.rstrip("/")
    found = []
    for folder, _, names in gfile().walk(top):
        rel = folder.rstrip("/")[len(top):].strip("/")
        found += [posixpath.join(rel, name.rstrip("/")) if rel else name.rstrip("/") for name in names]
    return sorted(found)


def read_chunks(path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """A file's contents through ``tf.io.gfile``, in chunks."""
    with open_binary(path) as fh:
        while chunk := fh.read(chunk_bytes):
            yield chunk


@contextlib.contextmanager
def readable(path: str) -> Iterator[None]:
    """Turn a file system failure while reading ``path`` (permissions, a folder where a file should be, a
    bucket that is not there) into a one-line :class:`DataError` naming it. Does not import TensorFlow (a
    caller may have swapped :func:`gfile` for plain local files): TF's errors are recognised by their module."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith("tensorflow"):
            raise
        message = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip()
        raise DataError(f"{path}: cannot read: {message.splitlines()[0]}") from None
