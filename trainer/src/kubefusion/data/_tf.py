"""Import TensorFlow without its start-up chatter on stderr.

TensorFlow 2.21 logs through absl before absl is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not stop
``WARNING: All log messages before absl::InitializeLog() ...`` and the oneDNN ``I0000 ... port.cc`` line from
reaching stderr while its libraries load. Every command of the data layer (``kubefusion data validate``, the
scan in ``preprocess``) would print them. The import runs with file descriptor 2 captured; afterwards every
captured line except those two known ones is written back to stderr, so a real import error still shows.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)
"""Substrings of the start-up lines that say nothing about the user's data."""


def tensorflow() -> Any:
    """The ``tensorflow`` module, imported quietly the first time."""
    module = sys.modules.get("tensorflow")
    if module is not None:
        return module
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines; errors still show
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: PLC0415
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(noise in line for noise in NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tf
