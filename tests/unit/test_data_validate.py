"""`kubefusion data validate`: exit codes, JSON and table output."""

from __future__ import annotations

import csv
import json
import shutil

from kubefusion.cli import main


def test_valid_dataset_json_reports_joined_missing_bad_and_ood(demo_dataset, capsys):
    assert main(["data", "validate", str(demo_dataset), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["joined"] == 300
    assert out["missing"] == {"image": 0, "text": 0, "numeric": 0}
    assert set(out["bad"]) >= {"corrupt_image", "duplicate_id", "label_conflict"} and out["bad_total"] == 0
    assert out["ood"]["joined"] == 60 and len(out["class_balance"]) == 8


def test_table_output(demo_dataset, capsys):
    assert main(["data", "validate", str(demo_dataset), "--no-ood"]) == 0
    out = capsys.readouterr().out
    assert "joined 300 (complete 300)" in out and "bad records: none" in out and "OOD" not in out


def test_a_small_dataset_is_pointed_at_the_pretrained_preset(demo_dataset, capsys, monkeypatch):
    from kubefusion.data import validate

    assert main(["data", "validate", str(demo_dataset), "--no-ood"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "hint: 300 records is little to train encoders from scratch on; start from examples/own-data-job.yaml")
    assert main(["data", "validate", str(demo_dataset), "--no-ood", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["suggested_preset"] == "small_pretrained"
    monkeypatch.setattr(validate, "SMALL_DATASET", 300)  # 300 records is then plenty: no hint
    assert main(["data", "validate", str(demo_dataset), "--no-ood"]) == 0
    assert "hint" not in capsys.readouterr().out


def _broken(src, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(src, root)
    with open(root / "numeric.csv", newline="") as fh:
        table = list(csv.reader(fh))
    table[5][1] = "twelve"
    table[9][-1] = "0-horizontal-sea-falling" if table[9][-1] != "0-horizontal-sea-falling" else "1-horizontal-sea-rising"
    with open(root / "numeric.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(table)
    return root


def test_bad_record_exits_2_under_fail_and_0_under_skip_with_counts(demo_dataset, tmp_path, capsys):
    root = _broken(demo_dataset, tmp_path)
    assert main(["data", "validate", str(root), "--json", "--no-ood"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "numeric.csv line 6: non-numeric value: column 'feature1'" in captured.err
    assert main(["data", "validate", str(root), "--json", "--on-bad-record", "skip"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bad"]["non_numeric"] == 1 and out["bad"]["label_conflict"] == 1 and out["joined"] == 298


def test_nothing_joins_exits_1(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "text.csv").write_text("id,text,label\na,hello,x\n")
    (root / "numeric.csv").write_text("id,feature1,label\nb,1,x\n")
    assert main(["data", "validate", str(root)]) == 1
    assert "no record joins" in capsys.readouterr().err


def test_missing_folder_is_one_error_line(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such dataset folder"


def _manifest_only(id_dataset):
    """A dataset of one manifest.csv (its image column relative to it), no text.csv or numeric.csv."""
    root = id_dataset(6)
    table = [["id", "image", "text", "feature1", "label"]]
    table += [[f"r{k:03d}", f"images/r{k:03d}.png", f"record {k}", str(k), f"c{k % 3}"] for k in range(6)]
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(table)
    (root / "text.csv").unlink()
    (root / "numeric.csv").unlink()
    return root


def test_a_manifest_is_given_however_the_user_points_at_it(id_dataset, tmp_path, capsys, monkeypatch):
    root = _manifest_only(id_dataset)
    monkeypatch.chdir(tmp_path)
    relative = root.relative_to(tmp_path)
    for argv in ([str(root / "manifest.csv")],                           # the file itself
                 [str(relative), "--manifest", str(relative / "manifest.csv")],  # a path from here, not DIR/DIR/...
                 [str(root), "--manifest", "manifest.csv"]):              # a name in DIR
        assert main(["data", "validate", *argv, "--json", "--no-ood"]) == 0, argv
        out = json.loads(capsys.readouterr().out)
        assert out["joined"] == 6 and out["layout"] == "manifest", argv


def test_messages_name_the_flags_the_user_typed_not_job_fields(id_dataset, capsys):
    root = _manifest_only(id_dataset)
    assert main(["data", "validate", str(root)]) == 2
    err = capsys.readouterr().err
    assert "spec.data" not in err
    assert "or a manifest CSV given with --manifest); found manifest.csv: if it is a manifest" in err
    assert "give --manifest manifest.csv, or the file itself as the dataset" in err

    with open(root / "manifest.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["r009", "images/r009.png", "text", "nine", "c0"])
    assert main(["data", "validate", str(root / "manifest.csv")]) == 2
    err = capsys.readouterr().err
    assert "spec.data" not in err
    assert "(--on-bad-record is fail; give --on-bad-record skip to drop and count such records)" in err
