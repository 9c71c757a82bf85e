"""Datasets to predict on: the training layouts with the label optional (``kubefusion predict --data``).

- a folder: ``images/<id>.png|.jpg|.jpeg|.gif|.bmp|.webp``, ``text.csv`` (``id,text[,label]``) and ``numeric.csv``
  (``id,<numeric columns>[,label]``); any of the three may be absent (that modality is then absent for every
  id);
- a manifest CSV file: ``id,image,text,<numeric columns>[,label]``, ``image`` relative to the manifest's folder.

Serving data usually has no labels. Where a row has one, it must be one of the model's classes and agree with
the same id's label in the other files (as in training); an empty label cell, or no ``label`` column, leaves
the record unlabelled. Unlike training, an id with only an image is predicted (training drops it: nothing
says its class). The numeric columns are matched to the model's by name, in any order; a missing or unknown
column is an error. Any bad row is an error naming the file and line: a prediction must not silently skip a
record. Local files only, read with the csv module (the training reader goes through ``tf.io.gfile``, and
serving has no TensorFlow).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from kubefusion.data.images import formats_text, is_image_name
from kubefusion.data.location import Spelling, manifest_hint
from kubefusion.data.records import csv_reader
from kubefusion.errors import DataError

PREDICT_FLAGS = Spelling(manifest="--manifest")
TEXT_FILE = "text.csv"
NUMERIC_FILE = "numeric.csv"
IMAGES_DIR = "images"


@dataclass(slots=True, eq=False)
class ServedRecord:
    """One id to predict, joined across modalities."""

    id: str
    image_path: str | None
    text: str | None
    numeric: np.ndarray
    """float32 [F] in the model's column order; NaN is a missing value; zeros when the id has no numbers."""
    mask: tuple[bool, bool, bool]
    """Which modalities are present: image, text, numeric."""
    label: int | None
    """Index into the model's classes, or None when the data does not say."""


class _Tables:
    def __init__(self, classes: Sequence[str], numeric_columns: Sequence[str]) -> None:
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.numeric_columns = list(numeric_columns)
        self.image: dict[str, str] = {}
        self.text: dict[str, str] = {}
        self.numeric: dict[str, np.ndarray] = {}
        self.labels: dict[str, tuple[int, str]] = {}
        """id -> (class index, file and line where it was first read)."""


def read_dataset(root: Path, classes: Sequence[str], numeric_columns: Sequence[str]) -> list[ServedRecord]:
    """The records of ``root`` (a dataset folder or a manifest CSV), sorted by id."""
    if "://" in str(root):
        raise DataError(f"{root}: predict reads local folders and files only")
    root = Path(root)
    tables = _Tables(classes, numeric_columns)
    if root.is_file():
        _read_manifest(root, tables)
    elif root.is_dir():
        _read_folder(root, tables)
    else:
        raise DataError(f"{root}: no such dataset folder or manifest file")
    width = len(tables.numeric_columns)
    records = []
    for record_id in sorted(set(tables.image) | set(tables.text) | set(tables.numeric)):
        numeric = tables.numeric.get(record_id)
        label = tables.labels.get(record_id)
        records.append(ServedRecord(
            id=record_id,
            image_path=tables.image.get(record_id),
            text=tables.text.get(record_id),
            numeric=numeric if numeric is not None else np.zeros(width, np.float32),
            mask=(record_id in tables.image, record_id in tables.text, record_id in tables.numeric),
            label=label[0] if label is not None else None,
        ))
    return records


def _read_folder(root: Path, tables: _Tables) -> None:
    images, text, numeric = root / IMAGES_DIR, root / TEXT_FILE, root / NUMERIC_FILE
    if not (images.is_dir() or text.is_file() or numeric.is_file()):
        raise DataError(f"{root}: none of {IMAGES_DIR}/, {TEXT_FILE}, {NUMERIC_FILE} (or a manifest CSV: the file "
                        f"itself, or --manifest){manifest_hint([p.name for p in root.iterdir()], PREDICT_FLAGS)}")
    other_files = _read_images(images, tables) if images.is_dir() else []
    if text.is_file():
        rows = _Rows(text, ("id", "text"), tables, numeric="none")
        text_col = rows.header.index("text")
        for _, record_id, cells in rows:
            if cells[text_col].strip():  # an empty cell is a missing text, as the training reader counts it
                tables.text[record_id] = cells[text_col]
    if numeric.is_file():
        rows = _Rows(numeric, ("id",), tables, numeric="required")
        for line, record_id, cells in rows:
            if any(cells[j].strip() for j in rows.positions):  # all empty: no numeric modality (as in training)
                tables.numeric[record_id] = rows.numbers(line, record_id, cells)
    for path in other_files:
        # An id's image in another format would be predicted without it: refused. Any other file (notes, a
        # thumbnail cache) is no one's image and left alone, as training leaves it.
        if path.stem in tables.text or path.stem in tables.numeric:
            raise DataError(f"{path}: not an image format the model reads ({formats_text()}); convert it, or "
                            "move it out of images/")


def _read_images(folder: Path, tables: _Tables) -> list[Path]:
    """Reads the images into ``tables``; returns the files of other formats."""
    others = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not is_image_name(path.name):
            others.append(path)
            continue
        if path.stem in tables.image:
            raise DataError(f"{path}: id {path.stem!r} already has {tables.image[path.stem]}")
        tables.image[path.stem] = str(path)
    return others


def _read_manifest(path: Path, tables: _Tables) -> None:
    rows = _Rows(path, ("id", "image", "text"), tables, numeric="optional")
    image_col, text_col = rows.header.index("image"), rows.header.index("text")
    for line, record_id, cells in rows:
        image = cells[image_col].strip()
        if image:
            image_path = path.parent / image
            if not image_path.is_file():
                raise DataError(f"{path} line {line}: image {image_path} of id {record_id!r} does not exist")
            tables.image[record_id] = str(image_path)
        if cells[text_col].strip():
            tables.text[record_id] = cells[text_col]
        if rows.positions and any(cells[j].strip() for j in rows.positions):
            tables.numeric[record_id] = rows.numbers(line, record_id, cells)
        if not (image or cells[text_col].strip() or record_id in tables.numeric):
            raise DataError(f"{path} line {line}: id {record_id!r} has no image, text or numbers to predict from")


class _Rows:
    """One CSV's rows as (line, id, cells), after the checks every file shares: field count, id, duplicate
    ids, and the optional label (one of the classes, the same in every file). The columns besides
    ``required`` and ``label`` are the numeric ones: ``numeric`` says whether there must be none, the model's,
    or none or the model's."""

    def __init__(self, path: Path, required: tuple[str, ...], tables: _Tables, *, numeric: str) -> None:
        self.path, self.tables = path, tables
        self._rows = _csv_rows(path)
        try:
            _, header = next(self._rows)
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a header with {','.join(required)}") from None
        self.header = [name.strip() for name in header]
        lacking = [name for name in required if name not in self.header]
        if lacking:
            raise DataError(f"{path} line 1: header lacks column(s) {', '.join(lacking)} "
                            f"(found {','.join(self.header)})")
        repeated = sorted({name for name in self.header if self.header.count(name) > 1})
        if repeated:
            raise DataError(f"{path} line 1: column(s) {', '.join(repeated)} appear more than once")
        others = [c for c in self.header if c not in required and c != "label"]
        self.positions: list[int] = []
        if numeric == "none" and others:
            raise DataError(f"{path} line 1: unexpected column(s) {', '.join(others)} "
                            f"(expected {','.join(required)}[,label])")
        if numeric == "required" or (numeric == "optional" and others):
            self._match_numeric_columns(others)
        self.label_col = self.header.index("label") if "label" in self.header else None
        self.seen: dict[str, int] = {}

    def _match_numeric_columns(self, found: list[str]) -> None:
        wanted = self.tables.numeric_columns
        missing = [c for c in wanted if c not in found]
        unknown = [c for c in found if c not in wanted]
        if missing or unknown:
            problems = ([f"lacks column(s) {', '.join(missing)}"] if missing else []) + \
                       ([f"has column(s) {', '.join(unknown)} the model does not take"] if unknown else [])
            raise DataError(f"{self.path} line 1: {'; '.join(problems)} (the model's numeric columns: "
                            f"{', '.join(wanted) or 'none'})")
        self.positions = [self.header.index(c) for c in wanted]

    def __iter__(self) -> Iterator[tuple[int, str, list[str]]]:
        for line, cells in self._rows:
            where = f"{self.path} line {line}"
            if len(cells) != len(self.header):
                raise DataError(f"{where}: expected {len(self.header)} fields ({','.join(self.header)}), "
                                f"found {len(cells)}")
            record_id = cells[self.header.index("id")].strip()
            if not record_id:
                raise DataError(f"{where}: empty id")
            if record_id in self.seen:
                raise DataError(f"{where}: id {record_id!r} already on line {self.seen[record_id]}")
            self.seen[record_id] = line
            if self.label_col is not None and cells[self.label_col].strip():
                self._label(where, record_id, cells[self.label_col].strip())
            yield line, record_id, cells

    def _label(self, where: str, record_id: str, label: str) -> None:
        index = self.tables.class_index.get(label)
        if index is None:
            raise DataError(f"{where}: id {record_id!r} has label {label!r}, not one of the model's classes "
                            f"({', '.join(self.tables.class_index)})")
        first = self.tables.labels.setdefault(record_id, (index, where))
        if first[0] != index:
            names = list(self.tables.class_index)
            raise DataError(f"{where}: id {record_id!r} has label {label!r} here but {names[first[0]]!r} at "
                            f"{first[1]}")

    def numbers(self, line: int, record_id: str, cells: list[str]) -> np.ndarray:
        """The numeric cells in the model's column order as float32; empty or ``nan`` is a missing value."""
        values = np.full(len(self.positions), np.nan, np.float32)
        for i, j in enumerate(self.positions):
            cell = cells[j].strip()
            if not cell or cell.lower() == "nan":
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.inf
            if not math.isfinite(value) or abs(value) > np.finfo(np.float32).max:
                raise DataError(f"{self.path} line {line}: column {self.header[j]!r} of id {record_id!r} is "
                                f"{cell!r}, not a finite number")
            values[i] = value
        return values


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells) for each non-blank row, header first; a row the csv module cannot
    parse, or a line that is not UTF-8, is an error naming its line."""

    def lines(fh: Iterator[bytes]) -> Iterator[str]:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path} line {number}: not valid UTF-8") from None
            yield text.removeprefix("\ufeff") if number == 1 else text

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        reader = csv_reader(lines(fh), strict=True)
        start = 1  # the first bad row ends the read: no resynchronising after it, unlike training's skip
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path} line {start}: unparsable row: {exc}") from None
