"""The record index: exactly which records a preprocessing artifact was built from.

``kubefusion preprocess`` scans the data once under the job's policies, decoding every image, and writes the
surviving records' ids, labels and modality masks (plus the scan report) into the artifact as
:data:`INDEX_FILE`. Training ranks then read the CSVs (cheap), skip decoding the images again, and keep
exactly the indexed ids (:func:`select`), so every rank trains on the same records by construction: a
transient read error on one rank can no longer change that rank's split.

Pure numpy (no TensorFlow): ``np.load`` of a compressed npz without pickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubefusion.config import MODALITIES
from kubefusion.data.records import Record, ScanResult
from kubefusion.errors import ArtifactError, DataError
from kubefusion.preprocess.artifact import RECORD_INDEX as INDEX_FILE

__all__ = ["INDEX_FILE", "RecordIndex", "records_digest", "select"]


@dataclass
class RecordIndex:
    ids: np.ndarray
    """str [N], sorted (the scan's order)."""
    labels: np.ndarray
    """int32 [N], positions in ``classes``."""
    masks: np.ndarray
    """bool [N, 3]: image, text, numeric present."""
    classes: list[str]
    report: dict[str, Any]
    """The scan report (``ScanReport.to_dict()``): bad records by reason, missing modalities, ..."""

    @classmethod
    def from_scan(cls, scanned: ScanResult) -> RecordIndex:
        records = scanned.records
        return cls(ids=np.asarray([r.id for r in records], dtype=str),
                   labels=np.asarray([r.label for r in records], dtype=np.int32),
                   masks=np.asarray([r.mask for r in records], dtype=bool).reshape(-1, len(MODALITIES)),
                   classes=list(scanned.classes), report=scanned.report.to_dict())

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(fh, ids=self.ids, labels=self.labels, masks=self.masks,
                                classes=np.asarray(self.classes, dtype=str),
                                report=np.asarray(json.dumps(self.report, sort_keys=True)))

    @classmethod
    def load(cls, path: Path) -> RecordIndex:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(ids=data["ids"], labels=data["labels"].astype(np.int32), masks=data["masks"],
                           classes=[str(c) for c in data["classes"]], report=json.loads(str(data["report"])))
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; the preprocessing artifact has no record index "
                                "(rerun `kubefusion preprocess`)") from None
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: unreadable record index ({exc}); rerun `kubefusion preprocess`") from None

    def digest(self) -> str:
        return records_digest(self.ids, self.labels, self.masks)


def records_digest(ids: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray,
                   masks: Any = None) -> str:
    """sha256 over ids, labels (and masks): equal digests mean the same records in the same order."""
    digest = hashlib.sha256()
    digest.update("\n".join(str(i) for i in ids).encode())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    if masks is not None:
        digest.update(np.asarray(masks, dtype=bool).tobytes())
    return digest.hexdigest()


def select(index: RecordIndex, scanned: ScanResult, *, source: str) -> list[Record]:
    """The records of ``scanned`` (read with ``verify_images=False`` and ``classes=index.classes``) that the
    index lists, in index order. Raises :class:`DataError` telling to rerun preprocessing when a listed id is
    no longer readable or now differs (label, modalities) from what the artifact was built on."""
    if list(scanned.classes) != list(index.classes):
        raise ArtifactError(f"{source}: the data has classes {scanned.classes}, the preprocessing artifact's "
                            f"record index was built for {index.classes}; rerun `kubefusion preprocess`")
    by_id = {r.id: r for r in scanned.records}
    rerun = "the data changed since `kubefusion preprocess` ran (or cannot be read now); rerun it"
    absent = [str(i) for i in index.ids if str(i) not in by_id]
    if absent:
        raise DataError(f"{source}: {len(absent)} record(s) listed in the preprocessing artifact's record index "
                        f"are no longer readable (first: id {absent[0]!r}); {rerun}")
    chosen = [by_id[str(i)] for i in index.ids]
    for record, label, mask in zip(chosen, index.labels, index.masks, strict=True):
        if record.label != int(label) or tuple(record.mask) != tuple(bool(m) for m in mask):
            now = f"label {index.classes[record.label]!r}, modalities {_present(record.mask)}"
            then = f"label {index.classes[int(label)]!r}, modalities {_present(mask)}"
            raise DataError(f"{source}: id {record.id!r} now has {now}, the preprocessing artifact's record "
                            f"index has {then}; {rerun}")
    return chosen


def _present(mask: Any) -> str:
    return "+".join(m for m, on in zip(MODALITIES, mask, strict=True) if on) or "none"
