"""Preprocessing pieces that need no TensorFlow: statistics, content key, atomic publication, verification
(and moving a corrupt artifact aside), unsupported-op detection, and the serving side's input parsing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kubefusion.config import demo
from kubefusion.errors import ArtifactError, DataError, UserError
from kubefusion.preprocess import artifact
from kubefusion.preprocess.export import existing_artifact_is_valid, key_material, nonstandard_ops
from kubefusion.preprocess.stats import NumericStatistics, compute_numeric_statistics
from kubefusion.serve.export import _replace_dir
from kubefusion.serve.predict import parse_numeric

NAN = np.nan


# ------------------------------------------------------------------------------------------- statistics


def test_statistics_ignore_missing_values():
    rows = np.array([[1.0, 10.0], [NAN, 20.0], [3.0, NAN], [5.0, 30.0]], np.float32)
    stats = compute_numeric_statistics(rows, ["a", "b"])
    np.testing.assert_allclose(stats.mean, [3.0, 20.0])
    np.testing.assert_allclose(stats.std, [np.std([1, 3, 5]), np.std([10, 20, 30])], rtol=1e-6)
    assert stats.observed.tolist() == [3, 3] and stats.rows == 4


def test_constant_and_empty_columns_do_not_blow_up():
    rows = np.array([[7.0, NAN], [7.0, NAN]], np.float32)
    stats = compute_numeric_statistics(rows, ["constant", "never_seen"])
    assert stats.std.tolist() == [1.0, 1.0]
    assert stats.mean.tolist() == [7.0, 0.0]


def test_statistics_round_trip_through_the_manifest():
    stats = compute_numeric_statistics(np.array([[1.0, 2.0], [3.0, NAN]]), ["x", "y"])
    doc = json.loads(json.dumps(stats.to_json()))
    back = NumericStatistics.from_json(doc)
    assert back.columns == ("x", "y") and back.rows == 2
    np.testing.assert_array_equal(back.mean, stats.mean)
    assert doc["columns"][1]["missing"] == 1


# ------------------------------------------------------------------------------------------ content key


def _dataset(root, text="id,text,label\na,hello,x\n"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "a.png").write_bytes(b"png-bytes")
    (root / "text.csv").write_text(text)
    (root / "numeric.csv").write_text("id,f1,label\na,1.0,x\n")
    return root


def _key(job, root):
    return artifact.content_key(key_material(job, root))


def test_key_follows_data_contents_not_location_or_time(tmp_path):
    job = demo("data")
    one = _dataset(tmp_path / "one")
    two = _dataset(tmp_path / "two")
    os.utime(two / "text.csv", (1, 1))
    assert _key(job, one) == _key(job, two)
    (two / "text.csv").write_text("id,text,label\na,hello!,x\n")
    assert _key(job, one) != _key(job, two)


def test_key_ignores_the_ood_folder_and_hidden_files(tmp_path):
    job = demo("data")
    root = _dataset(tmp_path / "d")
    before = _key(job, root)
    _dataset(root / "ood", text="id,text,label\nz,other,x\n")
    (root / ".cache").write_text("anything")
    assert _key(job, root) == before


def test_key_follows_preprocessing_and_split_settings_but_not_the_backend(tmp_path):
    root = _dataset(tmp_path / "d")
    base = _key(demo("data"), root)
    changed = []
    for tweak in (lambda j: setattr(j.preprocessing, "image_size", 48),
                  lambda j: setattr(j.preprocessing, "max_tokens", 20),
                  lambda j: setattr(j.preprocessing, "image_mean", (0.5, 0.5, 0.5)),
                  lambda j: setattr(j.data, "split_seed", 3),
                  lambda j: setattr(j.data, "validation_fraction", 0.2),
                  lambda j: setattr(j.data, "missing_modality", "keep")):
        job = demo("data")
        tweak(job)
        changed.append(_key(job, root))
    assert base not in changed and len(set(changed)) == len(changed)
    job = demo("data")
    job.preprocessing.backend = "tf"
    assert _key(job, root) == base


def test_empty_or_missing_dataset_folder_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no data files"):
        artifact.data_fingerprint(tmp_path)
    with pytest.raises(DataError, match="missing: no such dataset folder"):
        artifact.data_fingerprint(tmp_path / "missing")


# ------------------------------------------------------------------------------------- publish / resolve


def _fake_artifact(folder, payload=b"graph"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocess.onnx").write_bytes(payload)
    manifest = {"content_key": folder.name, "files": artifact.file_digests(folder)}
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_the_second_publisher_discards_its_copy_and_keeps_the_winner(tmp_path):
    first = _fake_artifact(artifact.new_temp_dir(tmp_path, "k"), b"first")
    second = _fake_artifact(artifact.new_temp_dir(tmp_path, "k"), b"second")
    assert artifact.publish(first, tmp_path / "k") is True
    assert artifact.publish(second, tmp_path / "k") is False
    assert (tmp_path / "k" / "preprocess.onnx").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_resolve_accepts_the_root_a_key_or_one_artifact(tmp_path):
    _fake_artifact(tmp_path / "aaa")
    _fake_artifact(tmp_path / "bbb")
    artifact.write_pointer(tmp_path, "bbb")
    assert artifact.resolve(tmp_path) == tmp_path / "bbb"
    assert artifact.resolve(tmp_path, "aaa") == tmp_path / "aaa"
    assert artifact.resolve(tmp_path / "aaa") == tmp_path / "aaa"
    with pytest.raises(ArtifactError, match="no preprocessing artifact with content key zzz"):
        artifact.resolve(tmp_path, "zzz")


def test_resolve_explains_an_empty_folder(tmp_path):
    with pytest.raises(ArtifactError, match="kubefusion preprocess"):
        artifact.resolve(tmp_path)


def test_verify_names_a_corrupted_file(tmp_path):
    folder = _fake_artifact(tmp_path / "k")
    assert artifact.verify(folder)["content_key"] == "k"
    (folder / "preprocess.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="preprocess.onnx: sha256 differs"):
        artifact.verify(folder)


def _corrupt_names(root):
    return [p.name for p in root.iterdir() if p.name.startswith(artifact.CORRUPT_PREFIX)]


def test_a_tampered_artifact_is_moved_aside_with_a_warning_and_reported_invalid(tmp_path, caplog):
    folder = _fake_artifact(tmp_path / "k")
    assert existing_artifact_is_valid(folder) and existing_artifact_is_valid(tmp_path / "nothing") is False
    (folder / "preprocess.onnx").write_bytes(b"tampered")
    with caplog.at_level("WARNING"):
        assert existing_artifact_is_valid(folder) is False
    assert not folder.exists()
    [aside] = _corrupt_names(tmp_path)
    assert aside.startswith(".corrupt-k-") and (tmp_path / aside / "preprocess.onnx").read_bytes() == b"tampered"
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "preprocess.onnx: sha256 differs" in warning and aside in warning


def test_an_artifact_without_its_manifest_is_moved_aside_too(tmp_path):
    folder = _fake_artifact(tmp_path / "k")
    (folder / artifact.MANIFEST).unlink()
    assert existing_artifact_is_valid(folder) is False
    assert not folder.exists() and len(_corrupt_names(tmp_path)) == 1


def test_the_loser_of_a_move_aside_race_finds_nothing_to_move(tmp_path):
    folder = _fake_artifact(tmp_path / "k")
    (folder / "preprocess.onnx").write_bytes(b"tampered")
    seen = folder.stat()
    assert artifact.move_aside_corrupt(folder, seen, "sha256 differs") is not None
    assert artifact.move_aside_corrupt(folder, seen, "sha256 differs") is None  # no error
    assert len(_corrupt_names(tmp_path)) == 1


def test_a_late_loser_puts_back_the_artifact_rebuilt_in_the_meantime(tmp_path):
    folder = _fake_artifact(tmp_path / "k")
    (folder / "preprocess.onnx").write_bytes(b"tampered")
    seen_by_loser = folder.stat()
    assert artifact.move_aside_corrupt(folder, folder.stat(), "sha256 differs") is not None
    rebuilt = _fake_artifact(artifact.new_temp_dir(tmp_path, "k"), b"rebuilt")
    assert artifact.publish(rebuilt, folder)
    assert artifact.move_aside_corrupt(folder, seen_by_loser, "sha256 differs") is None
    assert (folder / "preprocess.onnx").read_bytes() == b"rebuilt" and artifact.verify(folder)
    assert len(_corrupt_names(tmp_path)) == 1


def test_loading_a_corrupt_artifact_names_it_and_says_to_rerun_preprocess(tmp_path):
    from kubefusion.preprocess.runtime import Preprocessor

    folder = _fake_artifact(tmp_path / "k")
    artifact.write_pointer(tmp_path, "k")
    (folder / "preprocess.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError) as caught:
        Preprocessor.load(tmp_path, content_key="k")
    message = str(caught.value)
    assert message.startswith(f"{folder}: corrupt preprocessing artifact")
    assert "preprocess.onnx: sha256 differs" in message and "rerun `kubefusion preprocess`" in message


def test_stale_temporary_folders_are_cleaned_fresh_ones_kept(tmp_path):
    old = artifact.new_temp_dir(tmp_path, "k")
    fresh = artifact.new_temp_dir(tmp_path, "k")
    os.utime(old, (0, 0))
    artifact.remove_stale_temps(tmp_path)
    assert not old.exists() and fresh.exists()


# ---------------------------------------------------------------------------------- unsupported ops


def test_nonstandard_ops_are_found_in_graphs_and_subgraphs():
    from onnx import TensorProto, helper

    inner = helper.make_graph([helper.make_node("DecodeJpeg", ["c"], ["d"])], "inner", [],
                              [helper.make_tensor_value_info("d", TensorProto.UINT8, None)])
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("StringRegexReplace", ["y"], ["z"], domain="ai.onnx.contrib"),
             helper.make_node("If", ["cond"], ["w"], then_branch=inner, else_branch=inner)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    assert nonstandard_ops(helper.make_model(graph)) == {"DecodeJpeg", "ai.onnx.contrib:StringRegexReplace"}


# ------------------------------------------------------------------------------------ serving inputs


def test_numeric_argument_marks_empty_entries_missing():
    values = parse_numeric("1.5, ,nan,-2", ["a", "b", "c", "d"])
    assert values[0] == 1.5 and values[3] == -2
    assert np.isnan(values[1]) and np.isnan(values[2])


@pytest.mark.parametrize("text, message", [("1,2", "2 values given, the model takes 3 .a, b, c."),
                                           ("1,x,3", "b = 'x' is not a number"),
                                           ("1,inf,3", "b = 'inf' is not finite")])
def test_numeric_argument_errors_name_the_column(text, message):
    with pytest.raises(UserError, match=message):
        parse_numeric(text, ["a", "b", "c"])


# ------------------------------------------------------------------------------------------ model export


def test_a_new_export_replaces_the_previous_one(tmp_path):
    out = tmp_path / "served"
    for version in ("one", "two"):
        temp = artifact.new_temp_dir(tmp_path, "served")
        (temp / "model.json").write_text(version)
        _replace_dir(temp, out)
    assert (out / "model.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_export_does_not_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "notes.txt").write_text("mine")
    temp = artifact.new_temp_dir(tmp_path, "served")
    with pytest.raises(ArtifactError, match="not a kubefusion export"):
        _replace_dir(temp, tmp_path / "served")
    assert (tmp_path / "served" / "notes.txt").read_text() == "mine"
