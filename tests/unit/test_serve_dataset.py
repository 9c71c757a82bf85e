"""`kubefusion predict --data` reads serving data: labels optional, columns by name, every bad row an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kubefusion.errors import ArtifactError, DataError
from kubefusion.serve.dataset import read_dataset
from kubefusion.serve.predict import read_model_info

CLASSES = ["cat", "dog"]
COLUMNS = ["height", "weight"]


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _by_id(records):
    return {r.id: r for r in records}


def test_unlabelled_folder_predicts_every_id_and_matches_numeric_columns_by_name(tmp_path):
    _write(tmp_path, "text.csv", "id,text\na,hello\nb,world\nc,\n")  # c: empty text is a missing text
    _write(tmp_path, "numeric.csv", "weight,id,height\n2.5,a,1\n,c,3\n,b,\n")  # other column order; b: none
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "d.png").write_bytes(b"")  # listed, not decoded: an image-only id is predicted too
    records = _by_id(read_dataset(tmp_path, CLASSES, COLUMNS))
    assert sorted(records) == ["a", "b", "c", "d"]
    assert all(r.label is None for r in records.values())
    np.testing.assert_array_equal(records["a"].numeric, np.array([1.0, 2.5], np.float32))
    assert records["c"].numeric[0] == 3.0 and np.isnan(records["c"].numeric[1])
    assert records["a"].mask == (False, True, True)
    assert records["b"].mask == (False, True, False) and records["c"].mask == (False, False, True)
    assert records["d"].mask == (True, False, False) and records["d"].image_path.endswith("d.png")


def test_labels_where_given_must_be_known_and_agree_across_files(tmp_path):
    _write(tmp_path, "text.csv", "id,text,label\na,hello,cat\nb,world,\n")
    _write(tmp_path, "numeric.csv", "id,height,weight\na,1,2\nb,3,4\nc,5,6\n")
    records = _by_id(read_dataset(tmp_path, CLASSES, COLUMNS))
    assert (records["a"].label, records["b"].label, records["c"].label) == (0, None, None)

    _write(tmp_path, "numeric.csv", "id,height,weight,label\na,1,2,dog\n")
    with pytest.raises(DataError, match=r"numeric.csv line 2: id 'a' has label 'dog' here but 'cat' at .*text.csv "
                                        r"line 2"):
        read_dataset(tmp_path, CLASSES, COLUMNS)
    _write(tmp_path, "numeric.csv", "id,height,weight,label\na,1,2,bird\n")
    with pytest.raises(DataError, match="numeric.csv line 2: id 'a' has label 'bird', not one of the model's"):
        read_dataset(tmp_path, CLASSES, COLUMNS)


def test_manifest_without_labels(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "x.jpg").write_bytes(b"")
    manifest = _write(tmp_path, "serve.csv", "id,image,text,weight,height\nx,pics/x.jpg,,,\ny,,hi,1,\n")
    records = _by_id(read_dataset(manifest, CLASSES, COLUMNS))
    assert records["x"].mask == (True, False, False) and records["x"].label is None
    assert records["y"].mask == (False, True, True)
    assert np.isnan(records["y"].numeric[0]) and records["y"].numeric[1] == 1.0


@pytest.mark.parametrize(("name", "text", "message"), [
    ("numeric.csv", "id,height\na,1\n", r"numeric.csv line 1: lacks column\(s\) weight"),
    ("numeric.csv", "id,height,weight,age\na,1,2,3\n", r"has column\(s\) age the model does not take"),
    ("numeric.csv", "id,height,weight\na,1,tall\n", r"line 2: column 'weight' of id 'a' is 'tall', not a finite"),
    ("numeric.csv", "id,height,weight\na,1,2\na,3,4\n", r"line 3: id 'a' already on line 2"),
    ("text.csv", "id,text,mood\na,hi,ok\n", r"text.csv line 1: unexpected column\(s\) mood"),
    ("text.csv", "id,text\na,hi,extra\n", r"text.csv line 2: expected 2 fields"),
    ("text.csv", "text\nhi\n", r"text.csv line 1: header lacks column\(s\) id"),
])
def test_bad_rows_are_errors_naming_file_and_line(tmp_path, name, text, message):
    _write(tmp_path, name, text)
    with pytest.raises(DataError, match=message):
        read_dataset(tmp_path, CLASSES, COLUMNS)


def test_an_empty_or_missing_dataset_is_named(tmp_path):
    with pytest.raises(DataError, match="none of images/, text.csv, numeric.csv"):
        read_dataset(tmp_path, CLASSES, COLUMNS)
    with pytest.raises(DataError, match="no such dataset folder or manifest file"):
        read_dataset(tmp_path / "absent", CLASSES, COLUMNS)


def test_a_damaged_model_json_is_one_artifact_error_naming_it(tmp_path):
    with pytest.raises(ArtifactError, match="model.json: missing"):
        read_model_info(tmp_path)
    (tmp_path / ".served.previous").mkdir()
    with pytest.raises(ArtifactError, match=r"served: missing; an export died while replacing it .*\.served\.previous"):
        read_model_info(tmp_path / "served")
    (tmp_path / "model.json").write_text('{"files": {')
    with pytest.raises(ArtifactError, match="model.json: not valid JSON"):
        read_model_info(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"files": {}, "classes": ["a"]}))
    with pytest.raises(ArtifactError, match="model.json: 'content_key' missing"):
        read_model_info(tmp_path)


def test_unparsable_csv_is_an_error_naming_the_line(tmp_path):
    _write(tmp_path, "text.csv", 'id,text\na,fine\n\nb,"multi\nline"\nc,"broken"x\n')
    with pytest.raises(DataError, match=r"text.csv line 6: unparsable row"):
        read_dataset(tmp_path, CLASSES, COLUMNS)
    (tmp_path / "text.csv").write_bytes(b"id,text\na,\xff\xfe\n")
    with pytest.raises(DataError, match=r"text.csv line 2: not valid UTF-8"):
        read_dataset(tmp_path, CLASSES, COLUMNS)


def test_serving_reads_the_image_formats_training_reads_and_refuses_any_other(tmp_path):
    from PIL import Image

    from kubefusion.serve.images import decode_image

    _write(tmp_path, "text.csv", "id,text\na,hello\nb,world\n")
    (tmp_path / "images").mkdir()
    picture = Image.new("RGB", (8, 8), (200, 30, 60))
    picture.save(tmp_path / "images" / "a.webp", lossless=True)
    (tmp_path / "images" / ".DS_Store").write_bytes(b"")  # a hidden file is no one's image
    (tmp_path / "images" / "notes.txt").write_text("taken in May")  # nor a file named after no id (as training)
    records = _by_id(read_dataset(tmp_path, CLASSES, COLUMNS))
    assert records["a"].image_path.endswith("a.webp") and records["a"].mask[0]
    assert sorted(records) == ["a", "b"] and not records["b"].mask[0]
    assert decode_image(records["a"].image_path, 8)[0, 0].tolist() == [200, 30, 60]

    picture.save(tmp_path / "images" / "b.tiff")  # never predicted without its image, silently
    with pytest.raises(DataError, match=r"b.tiff: not an image format the model reads \(.png, .jpg, .jpeg, .gif, "
                                        r".bmp, .webp\)"):
        read_dataset(tmp_path, CLASSES, COLUMNS)
    picture.save(tmp_path / "disguised.png", format="TIFF")  # by content too: training could not decode it
    with pytest.raises(DataError, match="disguised.png: a TIFF image; training reads .png, .jpg"):
        decode_image(tmp_path / "disguised.png", 8)


def test_predict_takes_a_manifest_as_data_validate_does(tmp_path, monkeypatch):
    from kubefusion.data.location import dataset_location

    _write(tmp_path / "set", "manifest.csv", "id,image,text,height,weight\na,,hello,1,2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"set: none of images/, text.csv, numeric.csv \(or a manifest CSV: the file "
                                        r"itself, or --manifest\); found manifest.csv: .* give --manifest "
                                        r"manifest.csv"):
        read_dataset(Path("set"), CLASSES, COLUMNS)
    for given, manifest in (("set/manifest.csv", None), ("set", "set/manifest.csv"), ("set", "manifest.csv")):
        where = dataset_location(given, manifest)
        assert (where.root, where.manifest) == ("set", "manifest.csv"), (given, manifest)
        assert list(_by_id(read_dataset(Path(where.root) / where.manifest, CLASSES, COLUMNS))) == ["a"]
    with pytest.raises(DataError, match="give either the manifest CSV itself, or its folder and --manifest"):
        dataset_location("set/manifest.csv", "manifest.csv")


def test_a_text_of_any_length_is_predicted_as_training_reads_it(tmp_path):
    import csv

    csv.field_size_limit(128 * 1024)  # the csv module's default (process-wide): as in a fresh `kubefusion predict`
    long_text = "word " * 60_000  # 300 KB: over that limit
    _write(tmp_path, "text.csv", f"id,text,label\na,{long_text},cat\nb,short,dog\n")
    records = _by_id(read_dataset(tmp_path, CLASSES, COLUMNS))
    assert records["a"].text == long_text and records["a"].label == 0
