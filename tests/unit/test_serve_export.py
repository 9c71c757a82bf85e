"""`kubefusion export` without the heavy part: where the preprocessing is found, what --out may be, and how a
previous export is replaced (kubefusion.serve.export)."""

from __future__ import annotations

import json
import os

import pytest

from kubefusion.errors import ArtifactError
from kubefusion.preprocess import artifact
from kubefusion.serve import export
from kubefusion.serve.export import _replace_dir, export_model, find_preprocessing, previous_dir

KEY = "0123456789abcdef01234567"


def _artifact(artifacts, key):
    folder = artifacts / key
    folder.mkdir(parents=True)
    (folder / artifact.MANIFEST).write_text(json.dumps({"content_key": key}))
    artifact.write_json_atomic(artifacts / artifact.POINTER, {"content_key": key, "path": key})
    return folder


def _export(folder, version):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(version)
    return folder


def test_the_run_folders_artifacts_are_found_by_the_checkpoints_content_key(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "CLUSTER_ARTIFACTS", tmp_path / "no-cluster-mount")
    run = tmp_path / "runs" / "x"
    wanted = _artifact(run / "artifacts", KEY)
    _artifact(run / "artifacts", "f" * 24)  # newer: latest.json points here, the key still picks the right one
    checkpoint = run / "checkpoints" / "model.pt"  # a training checkpoint two levels down works too
    checkpoint.parent.mkdir(parents=True)
    for path in (run / "model.pt", checkpoint):
        folder, chosen = find_preprocessing(path, KEY, None)
        assert folder == wanted and "content key" in chosen and str(run / "artifacts") in chosen


def test_an_artifacts_folder_without_the_key_is_passed_over_and_none_found_says_where_it_looked(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setattr(export, "CLUSTER_ARTIFACTS", tmp_path / "no-cluster-mount")
    _artifact(tmp_path / "artifacts", KEY)
    _artifact(tmp_path / "run" / "artifacts", "f" * 24)
    assert find_preprocessing(tmp_path / "run" / "model.pt", KEY, None)[0] == tmp_path / "artifacts" / KEY
    with pytest.raises(ArtifactError, match=f"--artifacts: needed; no preprocessing artifact with content key "
                                            f"{'e' * 24} in {tmp_path / 'run' / 'artifacts'}, "):
        find_preprocessing(tmp_path / "run" / "model.pt", "e" * 24, None)


def test_a_checkpoint_without_a_content_key_takes_the_nearest_artifacts_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "CLUSTER_ARTIFACTS", tmp_path / "no-cluster-mount")
    newest = _artifact(tmp_path / "run" / "artifacts", "f" * 24)
    folder, chosen = find_preprocessing(tmp_path / "run" / "model.pt", None, None)
    assert folder == newest and "records no content key" in chosen
    assert find_preprocessing(tmp_path / "run" / "model.pt", KEY, tmp_path / "run" / "artifacts")[1] == \
        "--artifacts, its latest.json"


def test_a_foreign_out_folder_is_refused_before_the_checkpoint_is_even_read(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="served: exists and is not a kubefusion export"):
        export_model(tmp_path / "no-such-checkpoint.pt", tmp_path / "served")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="file: exists and is not a folder"):
        export_model(tmp_path / "no-such-checkpoint.pt", tmp_path / "file")
    assert (tmp_path / "served" / "notes.txt").read_text() == "mine"


def test_a_crash_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    out = _export(tmp_path / "served", "one")
    temp = _export(artifact.new_temp_dir(tmp_path, "served"), "two")
    real_rename = os.rename

    def die_before_the_second_rename(src, dst):
        if src == temp:
            raise KeyboardInterrupt  # the process is killed here
        real_rename(src, dst)

    monkeypatch.setattr(export.os, "rename", die_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        _replace_dir(temp, out)
    monkeypatch.setattr(export.os, "rename", real_rename)
    assert not out.exists() and (previous_dir(out) / "model.json").read_text() == "one"

    export.recover_interrupted_replace(out)  # what the next export does first
    assert (out / "model.json").read_text() == "one" and not previous_dir(out).exists()
    _replace_dir(temp, out)
    assert (out / "model.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_a_leftover_previous_export_beside_a_finished_one_is_removed(tmp_path):
    out = _export(tmp_path / "served", "new")
    _export(previous_dir(out), "old")
    export.recover_interrupted_replace(out)
    assert (out / "model.json").read_text() == "new" and not previous_dir(out).exists()
