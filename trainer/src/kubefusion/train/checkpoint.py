"""Checkpoints: one self-describing dict per file, written atomically, newest valid one wins on restart.

A training checkpoint (``<dir>/step-000000123.pt``) holds::

    {"format": FORMAT, "model": ..., "optimizer": ..., "scaler": ..., "scheduler": ...,
     "step": optimizer steps done, "epoch": epoch to resume in, "batch_in_epoch": per-rank batches of it consumed,
     "samples_in_epoch": the same position in samples over all ranks, "world_size", "batch_size_per_gpu",
     "grad_accumulation", "precision": what that position and the optimizer state were made with,
     "config": the MultimodalTrainJob document, "model_info": what rebuilds the architecture + data facts}

The final model file (``model.pt``) has the same shape without optimizer, scaler and scheduler. Files are
written to a temporary name in the same folder, fsynced and renamed into place, so a killed writer leaves
either the old file or the new one, never half of one; a file that fails to load anyway (a disk that lied) is
skipped with a warning naming it, falling back to the previous checkpoint.

The zip records are written without their CRC-32: ``torch.load`` never checks it (a flipped byte in a tensor
loads as is, with or without one), and computing it was half of the CPU time of serialising a checkpoint
(17 of 37 ms for the demo model's 29 MB, ``torch.save`` to a file, on the development machine). What guards a
checkpoint is the atomic rename and the full load on resume (a truncated file does not load).
"""

from __future__ import annotations

import contextlib
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map
from torch.utils.serialization import config as serialization_config

from kubefusion.errors import ArtifactError
from kubefusion.train.atomic import atomic_write

FORMAT = "kubefusion-checkpoint/1"
MODEL_FILE = "model.pt"
_NAME = re.compile(r"step-(\d+)\.pt$")
REQUIRED = ("format", "model", "step", "config", "model_info")

log = logging.getLogger(__name__)


def atomic_torch_save(payload: Any, path: Path) -> None:
    with _without_crc32():
        atomic_write(path, lambda fh: torch.save(payload, fh))


@contextlib.contextmanager
def _without_crc32():
    """torch's save setting is process-wide: switched off for this write only (see the module docstring)."""
    before = serialization_config.save.compute_crc32
    serialization_config.save.compute_crc32 = False
    try:
        yield
    finally:
        serialization_config.save.compute_crc32 = before


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


def detached_copy(payload: Any) -> Any:
    """``payload`` with every tensor copied to host memory: what was true at this step, however the live
    model and optimizer change after it."""
    return tree_map(lambda v: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v, payload)


class BackgroundWriter:
    """Writes one rank's checkpoints on a thread of its own, one at a time, so that the training step does not
    wait for serialisation and the disk (tens of ms for the demo model's 29 MB on the development machine,
    fsync included; seconds for a ResNet-50 + BERT-base checkpoint). The state is copied to host memory first,
    on the caller's thread; a write that fails re-raises on the training thread at the next :meth:`poll`,
    :meth:`submit` or :meth:`wait`. A process killed mid-write leaves a temporary file that
    :func:`remove_partial_writes` clears, as before: the previous checkpoint stays the newest valid one."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubefusion-checkpoint")
        self._pending: Future | None = None
        self._step: int | None = None

    def submit(self, directory: Path, payload: dict[str, Any], *, keep: int,
               model_file: Path | None = None) -> int | None:
        """Start writing ``payload`` (as :func:`save_checkpoint`) and then, given ``model_file``, the final model
        from the same copy (as :func:`write_model_file`: the checkpoint is on disk before the model file);
        returns the step of the write this one waited for, if any."""
        finished = self.wait()
        self._step = int(payload["step"])
        self._pending = self._pool.submit(_write_checkpoint_and_model, directory, detached_copy(payload), keep,
                                          model_file)
        return finished

    def poll(self) -> int | None:
        """The step of the checkpoint that has just finished writing, once; None while none has."""
        if self._pending is None or not self._pending.done():
            return None
        return self.wait()

    def wait(self) -> int | None:
        """Block until the pending write is on disk; returns its step (None when nothing was pending)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.result()
        return self._step

    def close(self) -> int | None:
        try:
            return self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def drain(self) -> None:
        """On the way out of a stage that failed: let the pending write finish, raising nothing (the stage's
        own error is the one to report; a write that failed too is logged)."""
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 (any write error: the training error is already on its way)
            log.warning("warning: the checkpoint being written when training stopped was not written (%s)", exc)


def _write_checkpoint_and_model(directory: Path, payload: dict[str, Any], keep: int,
                                 model_file: Path | None) -> None:
    save_checkpoint(directory, payload, keep=keep)
    if model_file is not None:
        write_model_file(model_file, payload)


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
