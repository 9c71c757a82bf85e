"""The joined record, the scan report, and the bad-record policy (pure; no I/O).

A :class:`Record` is one id with whatever modalities it has. Labels are indices into ``ScanResult.classes``
(the sorted label names), so they are stable between a training set and its OOD set when the OOD scan is
given the training classes.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kubefusion.config import MODALITIES
from kubefusion.errors import DataError

BAD_REASONS = (
    "missing_file",
    "corrupt_image",
    "unparsable_row",
    "non_numeric",
    "duplicate_id",
    "label_conflict",
    "unknown_label",
    "unsupported_image",
)
"""Every reason a record can be bad, as counted in ``ScanReport.bad`` (always all present, zero or more)."""

_REASON_TEXT = {
    "missing_file": "missing file",
    "corrupt_image": "corrupt image",
    "unparsable_row": "unparsable row",
    "non_numeric": "non-numeric value",
    "duplicate_id": "duplicate id",
    "label_conflict": "labels disagree",
    "unknown_label": "label not among the training classes",
    "unsupported_image": "image format not read",
}


@dataclass(slots=True, eq=False)
class Record:
    """One id joined across modalities."""

    id: str
    label: int
    """Index into ``ScanResult.classes``."""
    image_path: str | None
    """Path or URI of the image file; None when the id has no image (``missingModality: keep``)."""
    text: str | None
    """The text; None when the id has no text row."""
    numeric: np.ndarray
    """float32 [F], raw values; NaN marks a missing value (an empty cell). Zeros when the id has no numeric row."""
    mask: tuple[bool, bool, bool]
    """Which modalities are present, in the order image, text, numeric."""


@dataclass
class ScanReport:
    """What a scan met. ``to_dict()`` is what ``kubefusion data validate --json`` prints."""

    root: str
    layout: Literal["files", "manifest"]
    on_bad_record: str
    missing_modality: str
    modalities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    """Ids read without error per modality (image files, text rows, numeric rows)."""
    ids: int = 0
    """Distinct ids met in any modality, bad ones included."""
    joined: int = 0
    """Records returned (what training uses)."""
    complete: int = 0
    """Joined records that have all three modalities."""
    missing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    """Ids (among those not dropped as bad) lacking each modality."""
    dropped_incomplete: int = 0
    """Ids dropped for a missing modality (``missingModality: drop``)."""
    unlabeled: int = 0
    """Ids with an image but neither a text nor a numeric row: no label, always dropped."""
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_REASONS, 0))
    """Bad records met per reason (rows, files or ids; with ``skip`` they were dropped)."""
    first_bad: dict[str, str] = field(default_factory=dict)
    """The first message per reason, to show the user where to look."""
    ignored_files: int = 0
    """Files in ``images/`` that are neither an image format read nor named after an id (left alone)."""
    class_balance: dict[str, int] = field(default_factory=dict)
    """Joined records per class name."""

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "policy": {"onBadRecord": self.on_bad_record, "missingModality": self.missing_modality},
            "modalities": dict(self.modalities),
            "ids": self.ids,
            "joined": self.joined,
            "complete": self.complete,
            "missing": dict(self.missing),
            "dropped_incomplete": self.dropped_incomplete,
            "unlabeled": self.unlabeled,
            "bad": dict(self.bad),
            "bad_total": self.bad_total,
            "first_bad": dict(self.first_bad),
            "ignored_files": self.ignored_files,
            "class_balance": dict(self.class_balance),
        }


@dataclass
class ScanResult:
    records: list[Record]
    """Joined records, sorted by id (so nothing downstream depends on row order in the files)."""
    classes: list[str]
    """Label names; a record's ``label`` is a position in this list."""
    numeric_columns: list[str]
    report: ScanReport


class BadRecords:
    """Applies ``onBadRecord``: ``fail`` raises :class:`DataError` at the first bad record, ``skip`` counts it
    (per reason, with the first message kept) and lets the caller drop it."""

    def __init__(self, policy: str, report: ScanReport, spelling: Any = None) -> None:
        from kubefusion.data.location import JOB_FILE  # noqa: PLC0415

        self.policy = policy
        self.report = report
        self.spelling = spelling or JOB_FILE
        """How the user set the policy (:class:`kubefusion.data.location.Spelling`), named in the message."""

    def __call__(self, reason: str, where: str, detail: str, count: int = 1) -> None:
        """``count``: how many records the one message stands for (rows a broken quote swallowed)."""
        message = f"{where}: {_REASON_TEXT[reason]}: {detail}"
        if self.policy == "fail":
            name = self.spelling.on_bad_record
            verb = "give" if name.startswith("-") else "set"
            raise DataError(f"{message} ({name} is fail; {verb} {self.spelling.set_to('on_bad_record', 'skip')} "
                            "to drop and count such records)")
        self.report.bad[reason] += count
        self.report.first_bad.setdefault(reason, message)


CSV_CELL_LIMIT = 2**31 - 1
"""Python's csv module refuses a cell over 128 KiB by default; a text of any length is read (the tokenizer cuts
it to maxTokens tokens), up to what csv can count."""


def csv_reader(lines: Iterable[str], **options: Any) -> Any:
    """``csv.reader`` over ``lines`` without the 128 KiB cell limit (the limit is process-wide in csv)."""
    csv.field_size_limit(CSV_CELL_LIMIT)
    return csv.reader(lines, **options)


def sort_class_names(names: set[str] | list[str]) -> list[str]:
    """Label names in a stable order: numerically when every name is an integer (so 2 comes before 10),
    otherwise by natural order (``class2`` before ``class10``)."""
    names = list(set(names))
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=int)

    def natural(name: str) -> list[Any]:
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]

    return sorted(names, key=natural)


def class_balance(records: list[Record], classes: list[str]) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}
