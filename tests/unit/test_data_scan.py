"""Reading and joining by id: layouts, bad-record policies, missing modalities."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubefusion.config import DataConfig
from kubefusion.data import BAD_REASONS, scan
from kubefusion.data.records import sort_class_names
from kubefusion.errors import DataError


def cfg(**kw) -> DataConfig:
    return DataConfig(path="unused", **kw)


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def write_rows(path: Path, table: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(table)


def edit_row(path: Path, record_id: str, change) -> int:
    """Apply ``change(row) -> row`` to the row of ``record_id``; returns its 1-based line number."""
    table = rows(path)
    for i, row in enumerate(table):
        if row[0] == record_id:
            table[i] = change(row)
            write_rows(path, table)
            return i + 1
    raise AssertionError(record_id)


def test_join_by_id_when_every_file_lists_rows_in_another_order(id_dataset):
    root = id_dataset(20, seed=3)
    result = scan(cfg(), root)
    assert result.report.joined == 20 and result.report.bad_total == 0
    assert [r.id for r in result.records] == sorted(r.id for r in result.records)
    assert result.classes == ["c0", "c1", "c2"]
    assert result.numeric_columns == ["feature1", "feature2"]
    for record in result.records:
        k = int(record.id[1:])
        pixel = np.asarray(Image.open(record.image_path))[0, 0, 0]
        assert (pixel, record.text, record.numeric.tolist()) == (k, f"record {k}", [k, 2 * k])
        assert result.classes[record.label] == f"c{k % 3}"
        assert record.mask == (True, True, True)


def test_empty_numeric_cell_is_a_missing_value_not_a_bad_record(id_dataset):
    root = id_dataset()
    edit_row(root / "numeric.csv", "r004", lambda row: [row[0], "", row[2], row[3]])
    record = next(r for r in scan(cfg(), root).records if r.id == "r004")
    assert np.isnan(record.numeric[0]) and record.numeric[1] == 8


# Each bad-record kind: how to make it on record r005, and what the fail message must name.
def _unparsable(root: Path) -> str:
    line = edit_row(root / "text.csv", "r005", lambda row: row[:2])
    return f"text.csv line {line}: unparsable row: expected 3 fields"


def _non_numeric(root: Path) -> str:
    line = edit_row(root / "numeric.csv", "r005", lambda row: [row[0], "abc", row[2], row[3]])
    return f"numeric.csv line {line}: non-numeric value: column 'feature1' of id 'r005' is 'abc'"


def _duplicate(root: Path) -> str:
    table = rows(root / "text.csv")
    first = next(i for i, row in enumerate(table) if row[0] == "r005") + 1
    table.append(["r005", "record 5 again", "c2"])
    write_rows(root / "text.csv", table)
    return f"text.csv line {len(table)}: duplicate id: id 'r005' already on line {first}"


def _label_conflict(root: Path) -> str:
    line = edit_row(root / "numeric.csv", "r005", lambda row: [*row[:3], "c0"])
    return f"numeric.csv line {line}: labels disagree: id 'r005' has label 'c0' here but 'c2' at"


def _corrupt_image(root: Path) -> str:
    (root / "images" / "r005.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return "r005.png: corrupt image:"


def _missing_file(root: Path) -> str:
    table = [["id", "image", "text", "feature1", "label"]]
    table += [[f"r{k:03d}", f"images/r{k:03d}.png", f"record {k}", str(k), f"c{k % 3}"] for k in range(12)]
    write_rows(root / "manifest.csv", table)
    (root / "images" / "r005.png").unlink()
    return "manifest.csv line 7: missing file: image"


def _unsupported_image(root: Path) -> str:
    image = root / "images" / "r005.png"
    Image.open(image).save(root / "images" / "r005.tiff")
    image.unlink()
    return "r005.tiff: image format not read: id 'r005': images are read in .png, .jpg, .jpeg, .gif, .bmp, .webp"


BAD_KINDS = {
    "unsupported_image": _unsupported_image,
    "unparsable_row": _unparsable,
    "non_numeric": _non_numeric,
    "duplicate_id": _duplicate,
    "label_conflict": _label_conflict,
    "corrupt_image": _corrupt_image,
    "missing_file": _missing_file,
}


@pytest.mark.parametrize("reason", sorted(BAD_KINDS))
def test_bad_record_fails_naming_file_line_and_reason(id_dataset, reason):
    root = id_dataset()
    expected = BAD_KINDS[reason](root)
    manifest = "manifest.csv" if reason == "missing_file" else None
    with pytest.raises(DataError) as caught:
        scan(cfg(manifest=manifest), root)
    assert expected in str(caught.value)
    assert "onBadRecord is fail" in str(caught.value)


@pytest.mark.parametrize("reason", sorted(BAD_KINDS))
def test_bad_record_is_dropped_and_counted_under_skip(id_dataset, reason):
    root = id_dataset()
    BAD_KINDS[reason](root)
    manifest = "manifest.csv" if reason == "missing_file" else None
    result = scan(cfg(manifest=manifest, on_bad_record="skip"), root)
    assert result.report.bad == {r: int(r == reason) for r in BAD_REASONS}
    assert [r.id for r in result.records] == [f"r{k:03d}" for k in range(12) if k != 5]
    assert result.report.missing == {"image": 0, "text": 0, "numeric": 0}  # a bad id is not "missing"
    assert "r005" in result.report.first_bad[reason] or reason == "corrupt_image"


def test_every_bad_kind_at_once_counts_under_skip_and_fail_stops_at_the_first(id_dataset):
    root = id_dataset(30)
    text_lines = {
        edit_row(root / "text.csv", "r001", lambda row: row[:2]): "expected 3 fields",       # unparsable
        edit_row(root / "text.csv", "r002", lambda row: [*row, "extra"]): "expected 3 fields",  # unparsable
        edit_row(root / "text.csv", "r010", lambda row: ["", *row[1:]]): "empty id",         # unparsable
    }
    edit_row(root / "numeric.csv", "r003", lambda row: [row[0], "1e999", row[2], row[3]])  # non-numeric
    edit_row(root / "numeric.csv", "r004", lambda row: [row[0], "x", "y", row[3]])         # non-numeric
    edit_row(root / "numeric.csv", "r006", lambda row: [*row[:3], "c1"])                   # label conflict
    table = rows(root / "numeric.csv")
    write_rows(root / "numeric.csv", [*table, ["r007", "7", "14", "c1"], ["r007", "7", "14", "c1"]])  # 2 dups
    (root / "images" / "r008.png").write_bytes(b"")                                          # corrupt
    (root / "images" / "r009.png").unlink()                                                  # missing image
    (root / "images" / "r999.jpg").write_bytes(b"only an image, no rows")                     # unlabelled

    result = scan(cfg(on_bad_record="skip"), root)
    report = result.report
    assert report.bad == {"missing_file": 0, "corrupt_image": 1, "unparsable_row": 3, "non_numeric": 2,
                          "duplicate_id": 2, "label_conflict": 1, "unknown_label": 0, "unsupported_image": 0}
    assert report.missing == {"image": 1, "text": 2, "numeric": 1}  # r009 image; r010 + r999 text; r999 numeric
    assert report.unlabeled == 1 and report.dropped_incomplete == 2
    dropped = {1, 2, 3, 4, 6, 7, 8, 9, 10}
    assert [r.id for r in result.records] == [f"r{k:03d}" for k in range(30) if k not in dropped]
    assert report.joined == 30 - len(dropped)

    first = min(text_lines)  # text.csv is read before numeric.csv; images are decoded after the join
    with pytest.raises(DataError, match=rf"text\.csv line {first}: unparsable row: {text_lines[first]}"):
        scan(cfg(), root)


def test_missing_modality_drop_leaves_ids_out_and_keep_masks_them(id_dataset):
    root = id_dataset()
    (root / "images" / "r001.png").unlink()
    write_rows(root / "text.csv", [row for row in rows(root / "text.csv") if row[0] != "r002"])
    write_rows(root / "numeric.csv", [row for row in rows(root / "numeric.csv") if row[0] != "r003"])

    dropped = scan(cfg(), root)
    assert [r.id for r in dropped.records] == [f"r{k:03d}" for k in range(12) if k not in (1, 2, 3)]
    assert dropped.report.missing == {"image": 1, "text": 1, "numeric": 1}
    assert dropped.report.dropped_incomplete == 3 and dropped.report.bad_total == 0

    kept = {r.id: r for r in scan(cfg(missing_modality="keep"), root).records}
    assert len(kept) == 12
    assert kept["r001"].mask == (False, True, True) and kept["r001"].image_path is None
    assert kept["r002"].mask == (True, False, True) and kept["r002"].text is None
    assert kept["r003"].mask == (True, True, False) and kept["r003"].numeric.tolist() == [0.0, 0.0]
    assert kept["r002"].label == 2  # the label still comes from the file that has the id


def test_manifest_layout_joins_rows_and_resolves_image_paths(id_dataset):
    root = id_dataset()
    table = [["id", "image", "text", "feature1", "feature2", "label"]]
    table += [[f"r{k:03d}", f"images/r{k:03d}.png" if k != 4 else "", f"record {k}", str(k), "", f"c{k % 3}"]
              for k in range(12)]
    write_rows(root / "manifest.csv", table)
    result = scan(cfg(manifest="manifest.csv", missing_modality="keep"), root)
    assert result.numeric_columns == ["feature1", "feature2"]
    by_id = {r.id: r for r in result.records}
    assert by_id["r004"].mask == (False, True, True)
    assert Path(by_id["r007"].image_path) == root / "images" / "r007.png"
    assert by_id["r007"].numeric[0] == 7 and np.isnan(by_id["r007"].numeric[1])


def test_missing_layout_file_is_a_clear_error(id_dataset):
    root = id_dataset()
    (root / "numeric.csv").unlink()
    with pytest.raises(DataError, match=r"no numeric\.csv \(expected images/, text\.csv and numeric\.csv"):
        scan(cfg(), root)
    with pytest.raises(DataError, match="no such dataset folder"):
        scan(cfg(), root / "nope")


def test_header_without_required_column_names_the_file(id_dataset):
    root = id_dataset()
    table = rows(root / "text.csv")
    write_rows(root / "text.csv", [["id", "body", "label"], *table[1:]])
    with pytest.raises(DataError, match=r"text\.csv line 1: header lacks column\(s\) text"):
        scan(cfg(on_bad_record="skip"), root)


def test_rows_that_are_not_utf8_or_badly_quoted_are_unparsable(id_dataset):
    root = id_dataset()
    data = (root / "text.csv").read_bytes()
    (root / "text.csv").write_bytes(data + b'r100,caf\xe9,c1\nr101,"bad"quote,c1\n')
    report = scan(cfg(on_bad_record="skip"), root).report
    assert report.bad["unparsable_row"] == 2
    assert "not valid UTF-8" in report.first_bad["unparsable_row"]


def test_ood_scan_uses_the_training_classes(id_dataset):
    train = scan(cfg(), id_dataset(6, name="train"))
    ood_root = id_dataset(6, name="ood")
    edit_row(ood_root / "text.csv", "r001", lambda row: [row[0], row[1], "c9"])
    edit_row(ood_root / "numeric.csv", "r001", lambda row: [*row[:3], "c9"])
    with pytest.raises(DataError, match=r"unknown|label not among the training classes: id 'r001' has label 'c9'"):
        scan(cfg(), ood_root, classes=train.classes)
    ood = scan(cfg(on_bad_record="skip"), ood_root, classes=["c0", "c1", "c2"])
    assert ood.report.bad["unknown_label"] == 1 and ood.classes == ["c0", "c1", "c2"]


def test_class_names_sort_numerically_when_they_are_numbers():
    assert sort_class_names({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_class_names({"class10", "class2", "b"}) == ["b", "class2", "class10"]


def test_a_uri_root_is_read_through_tf_io_gfile(id_dataset):
    root = id_dataset(5)
    result = scan(cfg(), f"file://{root}")
    assert result.report.joined == 5
    assert result.records[0].image_path == f"file://{root}/images/r000.png"


def test_an_unreadable_file_is_one_clear_error(id_dataset):
    root = id_dataset(3)
    (root / "text.csv").unlink()
    (root / "text.csv").mkdir()
    with pytest.raises(DataError, match=r"text\.csv: is a folder, expected a CSV file"):
        scan(cfg(), root)


def test_a_read_failure_becomes_a_data_error_naming_the_file(id_dataset, monkeypatch):
    import tensorflow as tf

    from kubefusion.data import _gfile

    root = id_dataset(3)

    def refuse(path, mode="rb"):
        raise tf.errors.PermissionDeniedError(None, None, "access denied by the bucket policy")

    monkeypatch.setattr(_gfile.gfile(), "GFile", refuse)
    with pytest.raises(DataError, match=r"text\.csv: cannot read: access denied by the bucket policy"):
        scan(cfg(), root)


def test_a_truncated_jpeg_is_a_corrupt_image(id_dataset):
    import io

    root = id_dataset(4)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "images" / "r002.png").unlink()
    (root / "images" / "r002.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    report = scan(cfg(on_bad_record="skip"), root).report
    assert report.bad["corrupt_image"] == 1 and report.joined == 3
    assert "r002.jpg: corrupt image: " in report.first_bad["corrupt_image"]
    assert "{{" not in report.first_bad["corrupt_image"]


def test_windows_line_endings_a_byte_order_mark_and_quoted_newlines_are_read(id_dataset):
    root = id_dataset(3)
    table = rows(root / "text.csv")
    table[1][1] = "two\nlines"
    body = "\r\n".join(",".join(f'"{c}"' for c in row) for row in table) + "\r\n"
    (root / "text.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    texts = {r.id: r.text for r in scan(cfg(), root).records}
    assert texts[table[1][0]] == "two\nlines" and len(texts) == 3


def test_manifest_with_every_bad_kind_counts_under_skip_and_fails_at_the_first(id_dataset):
    root = id_dataset(10)
    table = [["id", "image", "text", "feature1", "label"]]
    table += [[f"r{k:03d}", f"images/r{k:03d}.png", f"record {k}", str(k), f"c{k % 3}"] for k in range(10)]
    table[2][1] = "images/gone.png"                  # r001 missing file (line 3)
    table[3] = table[3][:3]                          # r002 unparsable (line 4)
    table[4][3] = "n/a"                              # r003 non-numeric (line 5)
    table.append(list(table[5]))                     # r004 duplicate (line 12)
    table[7][4] = "c7"                               # r006 unknown label (with the training classes)
    (root / "images" / "r008.png").write_bytes(b"")  # r008 corrupt image
    write_rows(root / "manifest.csv", table)

    result = scan(cfg(manifest="manifest.csv", on_bad_record="skip"), root, classes=["c0", "c1", "c2"])
    assert result.report.bad == {"missing_file": 1, "corrupt_image": 1, "unparsable_row": 1, "non_numeric": 1,
                                 "duplicate_id": 1, "label_conflict": 0, "unknown_label": 1,
                                 "unsupported_image": 0}
    assert [r.id for r in result.records] == ["r000", "r005", "r007", "r009"]
    with pytest.raises(DataError, match=r"manifest\.csv line 3: missing file: image .*gone\.png of id 'r001'"):
        scan(cfg(manifest="manifest.csv"), root, classes=["c0", "c1", "c2"])


def _break_quote(root: Path, record_id: str, closing_on: str | None) -> tuple[int, list[str]]:
    """Open a quote in ``record_id``'s text row that is never closed on its line; ``closing_on``: the id of a
    later row whose text gets quoted (so the csv module pairs the quotes across lines), None for no quote
    anywhere after. Returns (the broken row's line, the text.csv lines)."""
    lines = (root / "text.csv").read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if line.startswith(record_id + ","))
    rid, text, label = lines[broken].split(",")
    lines[broken] = f'{rid},"{text},{label}'
    if closing_on is not None:
        later = next(i for i, line in enumerate(lines) if line.startswith(closing_on + ","))
        assert later == broken + 1
        rid, text, label = lines[later].split(",")
        lines[later] = f'{rid},"{text}",{label}'
    (root / "text.csv").write_text("\n".join(lines) + "\n")
    return broken + 1, lines


def test_a_broken_quote_makes_every_swallowed_row_bad_not_missing(id_dataset):
    root = id_dataset()
    lines = (root / "text.csv").read_text().splitlines()
    first, second = lines[3].split(",")[0], lines[4].split(",")[0]
    line, _ = _break_quote(root, first, closing_on=second)
    with pytest.raises(DataError, match=rf"text\.csv lines {line}-{line + 1}: unparsable row: .*"
                                        rf"ids '{first}', '{second}'"):
        scan(cfg(), root)
    result = scan(cfg(on_bad_record="skip", missing_modality="keep"), root)
    assert result.report.bad["unparsable_row"] == 2
    assert result.report.missing == {"image": 0, "text": 0, "numeric": 0}
    assert {first, second}.isdisjoint(r.id for r in result.records) and result.report.joined == 10
    assert f"lines {line}-{line + 1}" in result.report.first_bad["unparsable_row"]


def test_an_unclosed_quote_that_swallows_the_rest_of_the_file_says_so(id_dataset):
    root = id_dataset()
    lines = (root / "text.csv").read_text().splitlines()
    line, lines = _break_quote(root, lines[8].split(",")[0], closing_on=None)
    swallowed = [row.split(",")[0].strip('"') for row in lines[line - 1:]]
    with pytest.raises(DataError, match=rf"text\.csv lines {line}-{len(lines)}: unparsable row: unclosed quote: "
                                        rf"the quoted field opened on line {line} runs to the end of the file"):
        scan(cfg(), root)
    result = scan(cfg(on_bad_record="skip", missing_modality="keep"), root)
    assert result.report.bad["unparsable_row"] == len(swallowed) == len(lines) - line + 1
    assert result.report.missing["text"] == 0
    assert set(swallowed).isdisjoint(r.id for r in result.records)


def test_empty_text_and_all_empty_numeric_rows_are_missing_modalities_in_both_layouts(id_dataset):
    root = id_dataset()
    edit_row(root / "text.csv", "r002", lambda row: [row[0], "  ", row[2]])
    edit_row(root / "numeric.csv", "r003", lambda row: [row[0], "", "", row[3]])
    files = {r.id: r for r in scan(cfg(missing_modality="keep"), root).records}

    by_id = {row[0]: row for row in rows(root / "text.csv")[1:]}
    numeric = {row[0]: row for row in rows(root / "numeric.csv")[1:]}
    table = [["id", "image", "text", "feature1", "feature2", "label"]]
    table += [[k, f"images/{k}.png", by_id[k][1], numeric[k][1], numeric[k][2], by_id[k][2]] for k in sorted(by_id)]
    write_rows(root / "manifest.csv", table)
    manifest = {r.id: r for r in scan(cfg(manifest="manifest.csv", missing_modality="keep"), root).records}

    for result in (files, manifest):
        assert result["r002"].mask == (True, False, True) and result["r002"].text is None
        assert result["r003"].mask == (True, True, False) and result["r003"].numeric.tolist() == [0.0, 0.0]
    dropped = scan(cfg(), root)
    assert dropped.report.missing == {"image": 0, "text": 1, "numeric": 1} and dropped.report.joined == 10


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "BMP"])
def test_every_format_serving_reads_is_an_image_and_other_files_are_left_alone(id_dataset, fmt):
    root = id_dataset()
    image = root / "images" / "r005.png"
    Image.open(image).save(root / "images" / f"r005.{fmt.lower()}", format=fmt, **(
        {"lossless": True} if fmt == "WEBP" else {}))
    image.unlink()
    (root / "images" / "README.txt").write_text("not an id")
    result = scan(cfg(), root)
    record = next(r for r in result.records if r.id == "r005")
    assert record.image_path.endswith(f"r005.{fmt.lower()}") and record.mask == (True, True, True)
    assert result.report.joined == 12 and result.report.ignored_files == 1


@pytest.mark.parametrize("without", ["numeric.csv", "text.csv"])
def test_one_file_carrying_the_label_is_enough(id_dataset, without):
    root = id_dataset()
    write_rows(root / without, [row[:-1] for row in rows(root / without)])  # label is the last column
    result = scan(cfg(), root)
    assert result.report.joined == 12 and result.report.bad_total == 0
    assert result.numeric_columns == ["feature1", "feature2"]
    assert {r.id: result.classes[r.label] for r in result.records} == {f"r{k:03d}": f"c{k % 3}" for k in range(12)}


def test_without_a_label_in_either_file_the_scan_says_so(id_dataset):
    root = id_dataset()
    for name in ("numeric.csv", "text.csv"):
        write_rows(root / name, [row[:-1] for row in rows(root / name)])
    with pytest.raises(DataError, match="neither text.csv nor numeric.csv has a label column"):
        scan(cfg(), root)


def test_a_text_of_any_length_is_read_not_refused(id_dataset):
    from kubefusion.serve.dataset import read_dataset

    root = id_dataset()
    long_text = "word " * 60_000  # 300 KB: over the csv module's default 128 KiB cell limit
    edit_row(root / "text.csv", "r005", lambda row: [row[0], long_text, row[2]])
    result = scan(cfg(), root)
    assert result.report.bad_total == 0 and next(r for r in result.records if r.id == "r005").text == long_text
    served = {r.id: r for r in read_dataset(root, ["c0", "c1", "c2"], ["feature1", "feature2"])}
    assert served["r005"].text == long_text
