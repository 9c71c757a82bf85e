"""Read a dataset and join its modalities by id: :func:`scan`.

Layouts (``root`` is a local folder or a URI that ``tf.io.gfile`` reads):

- three sources: ``root/images/<id>.png|.jpg|.jpeg|.gif|.bmp|.webp``, ``root/text.csv`` (``id,text[,label]``) and
  ``root/numeric.csv`` (``id,<numeric columns>[,label]``), columns in any order, rows in any order; the label in
  one of the two files at least (where both have it, they must agree for each id);
- one manifest (``spec.data.manifest``): ``id,image,text,<numeric columns>,label``; ``image`` is a path relative
  to the manifest's folder (or absolute, or a URI). An empty ``image`` cell means the image is missing.

In both layouts an empty (or blank) text cell means the text modality is missing, and a row whose numeric cells
are all empty has no numeric modality (its label still counts).

Records are matched by id only, never by position. An empty numeric cell (or ``nan``) is a missing *value*
(NaN, imputed later by the preprocessing); a cell that is not a finite number is a bad record.

Bad records (reasons in :data:`~kubefusion.data.records.BAD_REASONS`): under ``onBadRecord: fail`` the first
one raises :class:`~kubefusion.errors.DataError` naming the file and line (or id) and the reason; under
``skip`` it is counted per reason and its id is left out entirely (in every modality, so a half-bad id never
trains on the half that looked fine). Ids missing a modality follow ``missingModality``: ``drop`` leaves them
out (counted in ``report.missing`` / ``dropped_incomplete``), ``keep`` keeps them with a modality mask.
An id with only an image has no label and is always left out (``report.unlabeled``).

Images of the joined records are decoded once during the scan (in parallel, with the pipeline's own decoder)
so a corrupt file is reported here, not halfway through an epoch; ``verify_images=False`` skips that for a
caller that already validated the same data.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kubefusion.config import MODALITIES, DataConfig
from kubefusion.data import _gfile
from kubefusion.data.images import formats_text, is_image_name, undecodable
from kubefusion.data.location import JOB_FILE, Spelling, manifest_hint
from kubefusion.data.records import (
    BadRecords,
    csv_reader,
    Record,
    ScanReport,
    ScanResult,
    class_balance,
    sort_class_names,
)
from kubefusion.errors import DataError

TEXT_FILE = "text.csv"
NUMERIC_FILE = "numeric.csv"
IMAGES_DIR = "images"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class _Tables:
    """Each modality's entries by id, before the join."""

    image: dict[str, str] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    """id -> (label name, file and line where it was first read)."""
    bad_ids: set[str] = field(default_factory=set)
    numeric_columns: list[str] = field(default_factory=list)
    other_files: dict[str, str] = field(default_factory=dict)
    """Files in ``images/`` in a format not read, by stem: an id's image that cannot be used, or no one's."""


def scan(
    data_cfg: DataConfig,
    root: str | Path,
    *,
    classes: list[str] | None = None,
    verify_images: bool = True,
    spelling: Spelling = JOB_FILE,
) -> ScanResult:
    """Read ``root`` under ``data_cfg``'s policies and join by id.

    ``classes``: the label names to index against (pass the training scan's ``classes`` when scanning OOD
    data, so label indices agree); a label outside them is a bad record (``unknown_label``). Without it the
    classes are the sorted label names found here. ``spelling``: how the user set the data settings (job fields,
    or a command's flags), for the messages.
    """
    root = str(root)
    if not _gfile.is_uri(root) and not Path(root).is_dir():
        raise DataError(f"{root}: no such dataset folder")
    report = ScanReport(
        root=root,
        layout="manifest" if data_cfg.manifest else "files",
        on_bad_record=data_cfg.on_bad_record,
        missing_modality=data_cfg.missing_modality,
    )
    bad = BadRecords(data_cfg.on_bad_record, report, spelling)
    tables = _Tables()
    if data_cfg.manifest:
        _read_manifest(_gfile.resolve(root, data_cfg.manifest), tables, bad)
    else:
        _read_layout(root, tables, bad, spelling)
    for modality in MODALITIES:
        report.modalities[modality] = len(getattr(tables, modality))
    records, labels = _join(tables, data_cfg.missing_modality, report)
    if classes is not None:  # before decoding images: the cheap check first
        known = set(classes)
        for record in records:
            if labels[record.id] not in known:
                _, path, line = tables.labels[record.id]
                bad("unknown_label", f"{path} line {line}",
                    f"id {record.id!r} has label {labels[record.id]!r}, not one of {', '.join(classes)}")
        records = [r for r in records if labels[r.id] in known]
    if verify_images:
        records = _drop_corrupt_images(records, bad)
    if classes is None:
        classes = sort_class_names({labels[r.id] for r in records})
    index = {name: i for i, name in enumerate(classes)}
    kept = records
    for record in kept:
        record.label = index[labels[record.id]]
    report.joined = len(kept)
    report.complete = sum(all(r.mask) for r in kept)
    report.class_balance = class_balance(kept, list(classes))
    return ScanResult(records=kept, classes=list(classes), numeric_columns=tables.numeric_columns, report=report)


# ------------------------------------------------------------------------------------------ CSV reading


def _csv_rows(path: str, bad: BadRecords, bad_ids: set[str]) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells) for each non-blank row, header first. A row that the csv module
    cannot parse, or that is not UTF-8, is reported as ``unparsable_row`` and not yielded; the ids of a row
    the csv module rejects, and of every line a broken quote swallowed with it, go into ``bad_ids`` (so they
    count as bad records, never as ids missing a modality)."""
    not_utf8: set[int] = set()
    consumed: list[str] = []  # raw lines of the row being parsed: a rejected row's ids are read from them

    def lines() -> Iterator[str]:
        with _gfile.readable(path), _gfile.open_binary(path) as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    not_utf8.add(number)
                    text = raw.decode("utf-8", "replace")
                text = text.removeprefix("\ufeff") if number == 1 else text
                consumed.append(text)
                yield text

    reader = csv_reader(lines(), strict=True)
    start, id_col = 1, 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            _broken_row(path, start, reader.line_num, consumed, str(exc), id_col, bad, bad_ids)
            consumed.clear()
            start = reader.line_num + 1
            continue
        consumed.clear()
        end = reader.line_num
        if start == 1 and "id" in (header := [cell.strip() for cell in row]):
            id_col = header.index("id")
        if not_utf8 and any(start <= n <= end for n in not_utf8):
            bad("unparsable_row", f"{path} line {start}", "not valid UTF-8")
        elif row and any(cell.strip() for cell in row):
            yield start, row
        start = end + 1


def _broken_row(path: str, start: int, end: int, consumed: list[str], error: str, id_col: int,
                bad: BadRecords, bad_ids: set[str]) -> None:
    """Report a row the csv module rejected. An unbalanced quote makes it read on past the row's own line,
    so the lines ``start..end`` may hold several rows: each line's id (its raw id field) is bad."""
    ids = [i for i in dict.fromkeys(_raw_id(line, id_col) for line in consumed) if i]
    bad_ids.update(ids)
    listed = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    which = f"id {listed}" if len(ids) == 1 else f"ids {listed}" if ids else "no readable id"
    if "unexpected end of data" in error:
        where = f"{path} lines {start}-{end}" if end > start else f"{path} line {start}"
        detail = (f"unclosed quote: the quoted field opened on line {start} runs to the end of the file "
                  f"(line {end}), swallowing {end - start + 1} line(s) ({which})")
    elif end > start:
        where = f"{path} lines {start}-{end}"
        detail = f"{error} (a quoted field runs over lines {start}-{end}; {which})"
    else:
        where = f"{path} line {start}"
        detail = f"{error} ({which})"
    bad("unparsable_row", where, detail, count=max(1, len(ids)))


def _raw_id(line: str, id_col: int) -> str:
    """The id field of one raw line, read without the csv module's quoting rules (the quoting is broken)."""
    fields = line.rstrip("\r\n").split(",")
    return fields[id_col].strip().strip('"').strip() if id_col < len(fields) else ""


def _header(path: str, rows: Iterator[tuple[int, list[str]]], required: tuple[str, ...]) -> list[str]:
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: empty file; expected a header with {','.join(required)}") from None
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{path} line 1: header lacks column(s) {', '.join(missing)} (found {','.join(header)})")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path} line 1: column(s) {', '.join(duplicated)} appear more than once")
    return header


def _open_csv(path: str, bad: BadRecords, bad_ids: set[str]) -> Iterator[tuple[int, list[str]]]:
    if not _gfile.exists(path):
        raise DataError(f"{path}: no such file")
    if _gfile.isdir(path):
        raise DataError(f"{path}: is a folder, expected a CSV file")
    return _csv_rows(path, bad, bad_ids)


class _RowReader:
    """Checks shared by every CSV: field count, id, label, duplicates, label agreement across files.
    Also parses numeric cells. Kept lean: it runs once per row of files with millions of rows."""

    def __init__(self, path: str, header: list[str], tables: _Tables, bad: BadRecords) -> None:
        self.path, self.header, self.tables, self.bad = path, header, tables, bad
        self.width = len(header)
        self.id_col = header.index("id")
        self.label_col = header.index("label") if "label" in header else None
        """None: this file says nothing about labels (the other file of the layout does)."""
        self.seen: dict[str, int] = {}
        self.label_names: dict[str, str] = {}  # one string object per distinct label, not one per row

    def where(self, line: int) -> str:
        return f"{self.path} line {line}"

    def row(self, line: int, cells: list[str]) -> str | None:
        """The row's id, or None when the row is bad (reported already)."""
        record_id = cells[self.id_col].strip() if len(cells) > self.id_col else ""
        if len(cells) != self.width:
            self.reject("unparsable_row", line, record_id,
                        f"expected {self.width} fields ({','.join(self.header)}), found {len(cells)}")
            return None
        if not record_id:
            self.reject("unparsable_row", line, "", "empty id")
            return None
        label = cells[self.label_col].strip() if self.label_col is not None else None
        if label == "":
            self.reject("unparsable_row", line, record_id, "empty label")
            return None
        if record_id in self.seen:
            self.reject("duplicate_id", line, record_id, f"id {record_id!r} already on line {self.seen[record_id]}")
            return None
        self.seen[record_id] = line
        if label is None:
            return record_id
        label = self.label_names.setdefault(label, label)
        first = self.tables.labels.get(record_id)
        if first is None:
            self.tables.labels[record_id] = (label, self.path, line)
        elif first[0] != label:
            self.reject("label_conflict", line, record_id,
                        f"id {record_id!r} has label {label!r} here but {first[0]!r} at {first[1]} line {first[2]}")
            return None
        return record_id

    def reject(self, reason: str, line: int, record_id: str, detail: str) -> None:
        if record_id and f"id {record_id!r}" not in detail:
            detail += f" (id {record_id!r})"
        self.bad(reason, self.where(line), detail)
        if record_id:
            self.tables.bad_ids.add(record_id)

    def numbers(self, line: int, record_id: str, cells: list[str], columns: list[int]) -> np.ndarray | None:
        """The cells at ``columns`` as float32 (empty or ``nan`` -> NaN), or None when one is not a finite
        number (reported)."""
        try:
            values = [float(cells[j]) if cells[j].strip() else math.nan for j in columns]
            if not any(v > _FLOAT32_MAX or v < -_FLOAT32_MAX for v in values):  # NaN compares False: allowed
                return np.array(values, dtype=np.float32)
        except ValueError:
            pass
        for j in columns:  # slow path, only for a bad row: find the culprit
            cell = cells[j].strip()
            try:
                value = float(cell) if cell else 0.0
            except ValueError:
                value = math.inf
            if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX and not math.isnan(value):
                self.reject("non_numeric", line, record_id,
                            f"column {self.header[j]!r} of id {record_id!r} is {cell!r}, not a finite number")
                return None
        raise AssertionError("unreachable: a value failed to parse but every cell parses")


# ------------------------------------------------------------------------------------------------ layouts


def _read_layout(root: str, tables: _Tables, bad: BadRecords, spelling: Spelling) -> None:
    images_dir = _gfile.join(root, IMAGES_DIR)
    text_path = _gfile.join(root, TEXT_FILE)
    numeric_path = _gfile.join(root, NUMERIC_FILE)
    absent = [name for name, p in ((IMAGES_DIR + "/", images_dir), (TEXT_FILE, text_path),
                                   (NUMERIC_FILE, numeric_path)) if not _gfile.exists(p)]
    if absent:
        with _gfile.readable(root):
            names = _gfile.listdir(root)
        raise DataError(f"{root}: no {', '.join(absent)} (expected images/, text.csv and numeric.csv, or a manifest "
                        f"CSV given with {spelling.manifest}){manifest_hint(names, spelling)}")
    _read_images(images_dir, tables, bad)
    labelled = _read_text(text_path, tables, bad)
    labelled += _read_numeric(numeric_path, tables, bad)
    if not labelled:
        raise DataError(f"{root}: neither {TEXT_FILE} nor {NUMERIC_FILE} has a label column; one of them needs it "
                        "(both may have it, and must then agree for each id)")
    _unusable_images(tables, bad)


def _read_images(images_dir: str, tables: _Tables, bad: BadRecords) -> None:
    first_file: dict[str, str] = {}
    with _gfile.readable(images_dir):
        names = _gfile.listdir(images_dir)
    for name in sorted(names):
        name = name.rstrip("/")
        stem = name.rpartition(".")[0] or name
        path = _gfile.join(images_dir, name)
        if not is_image_name(name):
            if name.startswith("."):
                bad.report.ignored_files += 1
            else:
                tables.other_files.setdefault(stem, path)
            continue
        if stem in first_file:
            bad("duplicate_id", path, f"id {stem!r} already has {first_file[stem]}")
            tables.bad_ids.add(stem)
            continue
        first_file[stem] = name
        tables.image[stem] = path


def _unusable_images(tables: _Tables, bad: BadRecords) -> None:
    """A file in ``images/`` named after an id that has rows, in a format not read (.tiff, .heic...), is that
    id's image, unusable: a bad record, not an id silently trained without its image. Other files are left
    alone (counted as ignored)."""
    for stem, path in sorted(tables.other_files.items()):
        if stem in tables.image or stem in tables.bad_ids or not (stem in tables.labels or stem in tables.text
                                                                  or stem in tables.numeric):
            bad.report.ignored_files += 1
            continue
        bad("unsupported_image", path, f"id {stem!r}: images are read in {formats_text()} only; convert it")
        tables.bad_ids.add(stem)


def _read_text(path: str, tables: _Tables, bad: BadRecords) -> list[str]:
    """Reads text.csv; returns [path] when it has a label column (the label may be in either file, or both)."""
    rows = _open_csv(path, bad, tables.bad_ids)
    header = _header(path, rows, ("id", "text"))
    extra = [c for c in header if c not in ("id", "text", "label")]
    if extra:
        raise DataError(f"{path} line 1: unexpected column(s) {', '.join(extra)} (expected id,text[,label])")
    reader = _RowReader(path, header, tables, bad)
    text_col = header.index("text")
    for line, cells in rows:
        record_id = reader.row(line, cells)
        if record_id is not None and cells[text_col].strip():  # an empty text is no text, as in a manifest
            tables.text[record_id] = cells[text_col]
    return [path] if "label" in header else []


def _read_numeric(path: str, tables: _Tables, bad: BadRecords) -> list[str]:
    """Reads numeric.csv; returns [path] when it has a label column."""
    rows = _open_csv(path, bad, tables.bad_ids)
    header = _header(path, rows, ("id",))
    columns = [c for c in header if c not in ("id", "label")]
    if not columns:
        raise DataError(f"{path} line 1: no numeric columns (expected id,feature1,...,featureN[,label])")
    tables.numeric_columns = columns
    reader = _RowReader(path, header, tables, bad)
    positions = [header.index(c) for c in columns]
    for line, cells in rows:
        record_id = reader.row(line, cells)
        if record_id is None or not any(cells[j].strip() for j in positions):  # no values: no numeric modality
            continue
        values = reader.numbers(line, record_id, cells, positions)
        if values is not None:
            tables.numeric[record_id] = values
    return [path] if "label" in header else []


def _read_manifest(path: str, tables: _Tables, bad: BadRecords) -> None:
    rows = _open_csv(path, bad, tables.bad_ids)
    header = _header(path, rows, ("id", "image", "text", "label"))
    columns = [c for c in header if c not in ("id", "image", "text", "label")]
    tables.numeric_columns = columns
    base = path.rsplit("/", 1)[0] if _gfile.is_uri(path) else str(Path(path).parent)
    file_exists = _ExistenceCache()
    reader = _RowReader(path, header, tables, bad)
    image_col, text_col = header.index("image"), header.index("text")
    positions = [header.index(c) for c in columns]
    for line, cells in rows:
        record_id = reader.row(line, cells)
        if record_id is None:
            continue
        image = cells[image_col].strip()
        image_path = _gfile.resolve(base, image) if image else None
        if image_path is not None and not file_exists(image_path):
            reader.reject("missing_file", line, record_id, f"image {image_path} of id {record_id!r} does not exist")
            continue
        values = None
        if positions and any(cells[j].strip() for j in positions):
            values = reader.numbers(line, record_id, cells, positions)
            if values is None:
                continue
        if image_path is not None:
            tables.image[record_id] = image_path
        if cells[text_col].strip():
            tables.text[record_id] = cells[text_col]
        if values is not None:
            tables.numeric[record_id] = values


class _ExistenceCache:
    """File existence by listing each folder once (one listing instead of one stat per row: a manifest of
    a million rows on an object store is a million requests otherwise)."""

    def __init__(self) -> None:
        self.folders: dict[str, set[str]] = {}

    def __call__(self, path: str) -> bool:
        folder, _, name = path.rpartition("/") if _gfile.is_uri(path) else (str(Path(path).parent), "", Path(path).name)
        if folder not in self.folders:
            try:
                self.folders[folder] = {n.rstrip("/") for n in _gfile.listdir(folder)}
            except Exception:  # noqa: BLE001 (gfile raises NotFoundError or OSError subclasses by scheme)
                self.folders[folder] = set()
        return name in self.folders[folder]


# ------------------------------------------------------------------------------------------------- join


def _join(tables: _Tables, missing_policy: str, report: ScanReport) -> tuple[list[Record], dict[str, str]]:
    """Records (label still unset: -1) for the ids that survive, sorted by id; plus id -> label name."""
    every_id = set(tables.image) | set(tables.text) | set(tables.numeric) | set(tables.labels) | tables.bad_ids
    report.ids = len(every_id)
    width = len(tables.numeric_columns)
    records: list[Record] = []
    labels: dict[str, str] = {}
    for record_id in sorted(every_id - tables.bad_ids):
        mask = (record_id in tables.image, record_id in tables.text, record_id in tables.numeric)
        for modality, present in zip(MODALITIES, mask, strict=True):
            report.missing[modality] += not present
        if record_id not in tables.labels:  # only an image: nothing says its class
            report.unlabeled += 1
            continue
        if not all(mask) and (missing_policy == "drop" or not any(mask)):
            report.dropped_incomplete += 1
            continue
        labels[record_id] = tables.labels[record_id][0]
        numeric = tables.numeric.get(record_id)
        records.append(Record(
            id=record_id,
            label=-1,
            image_path=tables.image.get(record_id),
            text=tables.text.get(record_id),
            numeric=numeric if numeric is not None else np.zeros(width, dtype=np.float32),
            mask=mask,
        ))
    return records, labels


def _drop_corrupt_images(records: list[Record], bad: BadRecords) -> list[Record]:
    with_image = [r for r in records if r.image_path is not None]
    failures = undecodable([r.image_path for r in with_image])  # type: ignore[misc]
    if not failures:
        return records
    corrupt: set[str] = set()
    for position in sorted(failures, key=lambda p: with_image[p].image_path or ""):
        record = with_image[position]
        bad("corrupt_image", str(record.image_path), f"{failures[position]} (id {record.id!r})")
        corrupt.add(record.id)
    return [r for r in records if r.id not in corrupt]
