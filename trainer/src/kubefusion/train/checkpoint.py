"""Checkpoints: one self-describing dict per file, written atomically, newest valid one wins on restart.

A training checkpoint (``<dir>/step-000000123.pt``) holds::

    {"format": FORMAT, "model": ..., "optimizer": ..., "scaler": ..., "scheduler": ...,
     "step": optimizer steps done, "epoch": epoch to resume in, "batch_in_epoch": per-rank batches of it consumed,
     "samples_in_epoch": the same position in samples over all ranks, "world_size", "batch_size_per_gpu",
     "grad_accumulation", "precision": what that position and the optimizer state were made with,
     "config": the MultimodalTrainJob document, "model_info": what rebuilds the architecture + data facts}

The final model file (``model.pt``) has the same shape without optimizer, scaler and scheduler. Files are
written to a temporary name in the same folder and renamed into place, so a killed writer leaves either the
old file or the new one, never half of one; a file that fails to load anyway (a disk that lied) is skipped
with a warning naming it, falling back to the previous checkpoint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from kubefusion.errors import ArtifactError
from kubefusion.train.atomic import atomic_write

FORMAT = "kubefusion-checkpoint/1"
MODEL_FILE = "model.pt"
_NAME = re.compile(r"step-(\d+)\.pt$")
REQUIRED = ("format", "model", "step", "config", "model_info")

log = logging.getLogger(__name__)


def atomic_torch_save(payload: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(payload, fh))


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Training checkpoints in ``directory``, newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(directory: Path, payload: dict[str, Any], *, keep: int) -> Path:
    """Write ``payload`` as the checkpoint of its step and delete all but the newest ``keep``."""
    path = checkpoint_path(directory, int(payload["step"]))
    atomic_torch_save({"format": FORMAT, **payload}, path)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file; raises :class:`ArtifactError` naming the file if it is not a valid one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong file: all mean "not usable"
        raise ArtifactError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a kubefusion checkpoint (format {FORMAT} expected)")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ArtifactError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write (call before any writer starts)."""
    removed = [p for p in directory.glob(".step-*.tmp")] if directory.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``directory`` that loads, or None when there is none.

    A newest file that does not load is reported (warning naming it) and the previous one is tried."""
    for path in list_checkpoints(directory):
        try:
            return read_checkpoint(path), path
        except ArtifactError as exc:
            reason = str(exc).removeprefix(f"{path}: ").splitlines()[0] if str(exc) else "unreadable"
            log.warning("warning: skipping corrupt checkpoint %s (%s); falling back to the previous one", path,
                        reason)
    return None


def write_model_file(path: Path, payload: dict[str, Any]) -> None:
    """The final model: the checkpoint dict without optimizer state (what export and serving read)."""
    keep = {k: v for k, v in payload.items() if k not in ("optimizer", "scaler", "scheduler")}
    atomic_torch_save({"format": FORMAT, **keep}, path)


def read_model_file(path: Path) -> tuple[dict[str, Any], Path]:
    """A model from a file, or from a folder: its ``model.pt``, else its newest valid checkpoint."""
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return read_checkpoint(path / MODEL_FILE), path / MODEL_FILE
        for folder in (path, path / "checkpoints" / "fused"):
            found = load_latest_checkpoint(folder)
            if found is not None:
                return found
        raise ArtifactError(f"{path}: no {MODEL_FILE} and no step-*.pt checkpoint in it")
    if not path.exists():
        raise ArtifactError(f"{path}: no such checkpoint file")
    return read_checkpoint(path), path
