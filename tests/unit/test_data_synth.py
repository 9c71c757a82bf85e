"""The built-in demo dataset: layout, determinism, OOD split, ceilings, atomic reuse."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from kubefusion.config import DataConfig
from kubefusion.data import ensure_demo_data, scan
from kubefusion.data.synth import CLASSES, ceilings, synthesize
from kubefusion.errors import DataError


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def column(path: Path, name: str) -> list[str]:
    with open(path, newline="") as fh:
        return [row[name] for row in csv.DictReader(fh)]


def test_layout_ood_split_and_dataset_json(demo_dataset):
    info = json.loads((demo_dataset / "dataset.json").read_text())
    assert info["classes"] == CLASSES and info["num_classes"] == 8
    assert info["numeric_columns"] == [f"feature{i}" for i in range(1, 7)]
    assert info["seed"] == 0 and info["samples"] == 300 and info["label_noise"] == 0.03
    assert info["ceilings"] == {m: pytest.approx(0.97 / 4 + 0.03 / 8) for m in ("image", "text", "numeric")}
    assert info["best_achievable"]["top1"] == pytest.approx(1 - 0.03 * 7 / 8)
    assert "description" in info and info["ood"]["samples"] == 60
    assert len(list((demo_dataset / "images").iterdir())) == 300
    assert len(list((demo_dataset / "ood" / "images").iterdir())) == 60
    text_ids, numeric_ids = column(demo_dataset / "text.csv", "id"), column(demo_dataset / "numeric.csv", "id")
    assert sorted(text_ids) == sorted(numeric_ids) and text_ids != numeric_ids != sorted(text_ids)


def test_scan_joins_every_record_and_ood_keeps_the_classes(demo_dataset):
    train = scan(DataConfig(path="unused"), demo_dataset)
    assert train.report.joined == 300 and train.classes == CLASSES
    ood = scan(DataConfig(path="unused"), demo_dataset / "ood", classes=train.classes)
    assert ood.report.joined == 60 and not {r.id for r in ood.records} & {r.id for r in train.records}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    synthesize(tmp_path / "a", samples=40, seed=3, progress=False)
    synthesize(tmp_path / "b", samples=40, seed=3, progress=False)
    synthesize(tmp_path / "c", samples=40, seed=4, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["text.csv"] != digest(tmp_path / "c")["text.csv"]


def test_ceilings_follow_the_label_noise():
    c = ceilings(0.0)
    assert c["ceilings"]["image"] == 0.25 and c["pair_ceilings"]["image+text"] == 0.5
    assert c["best_achievable"]["top1"] == 1.0


def test_ensure_demo_data_reuses_a_complete_copy_and_leaves_no_temporary_folders(tmp_path):
    dest = tmp_path / "cache" / "demo"
    assert ensure_demo_data(dest, samples=20, seed=1) == dest
    stamp = (dest / "dataset.json").stat().st_mtime_ns
    ensure_demo_data(dest, samples=20, seed=1)
    assert (dest / "dataset.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    ensure_demo_data(dest, samples=25, seed=1)  # other parameters: replaced
    assert json.loads((dest / "dataset.json").read_text())["samples"] == 25
    assert [p.name for p in dest.parent.iterdir()] == ["demo"]


def test_synth_refuses_to_overwrite_a_folder_with_something_else(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not this dataset"):
        synthesize(tmp_path / "mine", samples=5, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_write_error_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    from kubefusion import cli
    from kubefusion.data import synth

    def denied(out, **kw):
        raise PermissionError(13, "Permission denied", str(out / "images"))

    monkeypatch.setattr(synth, "_write_split", denied)
    assert cli.main(["data", "synth", "--out", str(tmp_path / "d"), "--samples", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'd'}: cannot write the dataset (Permission denied at ")
    assert err.endswith("/images)\n") and err.count("\n") == 1
    assert not list(tmp_path.glob(".d.tmp-*"))  # the temporary folder is gone
