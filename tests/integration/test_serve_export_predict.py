"""`kubefusion export` + `kubefusion predict` on the demo data: the ONNX files alone give the torch model's
predictions, and predict imports neither torch nor TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubefusion.config import DataConfig, demo
from kubefusion.errors import ArtifactError

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parent))  # the shared helper lives beside this file, whatever the import mode
from test_preprocess_export import blocked_import_command  # noqa: E402


@pytest.fixture(scope="module")
def job_and_artifacts(tmp_path_factory):
    from kubefusion.data import ensure_demo_data
    from kubefusion.preprocess.export import prepare

    data_root = Path(ensure_demo_data(tmp_path_factory.mktemp("demo") / "data", 160, 0))
    job = demo(str(data_root))
    artifacts = tmp_path_factory.mktemp("artifacts")
    prepare(job, artifacts)
    return job, data_root, artifacts


def torch_inputs(records, pre, size, max_tokens):
    """Model inputs the way training makes them: the pipeline's TF decode and tokenizer, then the
    exported preprocessing (onnx backend)."""
    import torch

    from kubefusion.data import decode_image_file, load_tokenizer

    images = np.stack([decode_image_file(r.image_path, size) for r in records])
    numeric = np.stack([r.numeric for r in records]).astype(np.float32)
    pixel_values, numeric_std = pre(images, numeric)
    tokens = load_tokenizer("builtin:minilm")([r.text for r in records], padding="max_length", truncation=True,
                                              max_length=max_tokens, return_tensors="np")
    mask = np.array([r.mask for r in records], dtype=bool)
    return (torch.from_numpy(pixel_values), torch.from_numpy(tokens["input_ids"].astype(np.int64)),
            torch.from_numpy(tokens["attention_mask"].astype(np.int64)), torch.from_numpy(numeric_std),
            torch.from_numpy(mask))


@pytest.fixture(scope="module")
def trained(job_and_artifacts, tmp_path_factory):
    """A tiny demo-preset model trained for a few steps (so its predictions are not all alike), saved as the
    training engineer's model file."""
    import torch

    from kubefusion.config import job_to_dict
    from kubefusion.data import scan
    from kubefusion.model import build_model
    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train.checkpoint import write_model_file

    job, data_root, artifacts = job_and_artifacts
    pre = Preprocessor.load(artifacts)
    records = scan(DataConfig(path=str(data_root), missing_modality="keep"), data_root, verify_images=False).records
    inputs = torch_inputs(records, pre, pre.image_size, pre.max_tokens)
    labels = torch.tensor([r.label for r in records])
    torch.manual_seed(0)
    model = build_model(job.model, num_classes=len(pre.classes), num_numeric_features=len(pre.numeric_columns))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(*(t[:48] for t in inputs)), labels[:48]).backward()
        optimizer.step()
    model.eval()
    info = {**model.describe(), "classes": pre.classes, "numeric_columns": pre.numeric_columns,
            "content_key": pre.content_key}
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    write_model_file(path, {"model": model.state_dict(), "step": 6, "config": job_to_dict(job), "model_info": info})
    return model, path, records, inputs


@pytest.fixture(scope="module")
def exported(trained, job_and_artifacts, tmp_path_factory):
    """Exported from `kubefusion run --local`'s layout (OUT/model.pt beside OUT/artifacts) without --artifacts:
    the export finds the run's preprocessing by the checkpoint's content key."""
    _, checkpoint, _, _ = trained
    run = tmp_path_factory.mktemp("runs") / "demo"
    run.mkdir()
    (run / "artifacts").symlink_to(job_and_artifacts[2], target_is_directory=True)
    shutil.copy(checkpoint, run / "model.pt")
    out = tmp_path_factory.mktemp("export") / "served"
    proc = subprocess.run([sys.executable, "-m", "kubefusion", "export", "--checkpoint", str(run / "model.pt"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    EXPORT_OUTPUT.update(stdout=proc.stdout, stderr=proc.stderr)
    return out


EXPORT_OUTPUT: dict[str, str] = {}


def test_export_says_where_the_preprocessing_came_from_and_the_parity_and_nothing_else(exported):
    lines = EXPORT_OUTPUT["stderr"].splitlines()
    assert len(lines) == 2, EXPORT_OUTPUT["stderr"][-3000:]  # no converter or optimiser chatter
    assert lines[0].startswith("preprocessing ") and "found by the checkpoint's content key" in lines[0]
    assert lines[1].startswith("exported ") and "max |torch - onnxruntime|" in lines[1]
    assert EXPORT_OUTPUT["stdout"] == f"{exported}\n"


def _predict(argv):
    proc = subprocess.run(blocked_import_command(["predict", *argv, "--json"]), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _torch_probabilities(model, inputs):
    import torch

    with torch.no_grad():
        return torch.softmax(model(*inputs), dim=1).numpy()


def test_export_folder_serves_alone_with_dynamic_axes(exported):
    info = json.loads((exported / "model.json").read_text())
    preprocessing = {p.name for p in Path(info["preprocessing"]["path"]).iterdir()}
    assert {"manifest.json", "preprocess.onnx", "saved_model", "tokenizer"} <= preprocessing
    assert {p.name for p in exported.iterdir()} == preprocessing | {"model.json", "model.onnx", "model.onnx.data"}
    shapes = {i["name"]: i["shape"] for i in info["inputs"]}
    assert shapes["input_ids"] == ["batch", "sequence"] and shapes["pixel_values"][0] == "batch"
    assert info["parity"]["max_abs_diff"] <= 1e-4
    assert set(info["files"]) == {"model.onnx", "model.onnx.data"}
    assert info["preprocessing"]["content_key"] == info["content_key"]
    assert "found by the checkpoint's content key" in info["preprocessing"]["chosen"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".tmp-")]


def test_predict_on_the_dataset_equals_torch_without_importing_torch_or_tf(exported, trained):
    model, _, records, inputs = trained
    expected = _torch_probabilities(model, inputs)
    result = _predict(["--artifacts", str(exported), "--data", str(Path(records[0].image_path).parent.parent)])
    rows = {row["id"]: row for row in result["predictions"]}
    assert len(rows) == len(records) == result["records"]
    classes = json.loads((exported / "model.json").read_text())["classes"]
    got = np.array([[rows[r.id]["probabilities"][c] for c in classes] for r in records])
    assert np.abs(got - expected).max() <= 1e-4
    assert [rows[r.id]["predicted_index"] for r in records] == expected.argmax(axis=1).tolist()
    assert len(set(expected.argmax(axis=1))) > 1  # a model that says one class for everything proves little
    accuracy = np.mean(expected.argmax(axis=1) == np.array([r.label for r in records]))
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_predict_one_sample_equals_torch(exported, trained):
    model, _, records, inputs = trained
    record = next(r for r in records if np.isnan(r.numeric).any()) if any(
        np.isnan(r.numeric).any() for r in records) else records[0]
    i = records.index(record)
    numeric = ",".join("" if np.isnan(v) else repr(float(v)) for v in record.numeric)
    result = _predict(["--artifacts", str(exported), "--image", record.image_path, "--text", record.text,
                       "--numeric", numeric])
    probabilities = list(result["predictions"][0]["probabilities"].values())
    expected = _torch_probabilities(model, tuple(t[i:i + 1] for t in inputs))[0]
    assert np.abs(np.array(probabilities) - expected).max() <= 1e-4


def test_export_refuses_a_model_trained_on_other_preprocessing(trained, job_and_artifacts, tmp_path):
    import torch

    from kubefusion.serve.export import export_model

    _, checkpoint, _, _ = trained
    payload = torch.load(checkpoint, weights_only=False)
    payload["model_info"]["content_key"] = "0123456789abcdef01234567"
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    with pytest.raises(ArtifactError, match="trained with preprocessing 0123456789abcdef01234567"):
        export_model(other, tmp_path / "out", artifacts=job_and_artifacts[2])
    assert not (tmp_path / "out").exists()


def _unlabelled_copy(data_root, dest, *, labelled_ids=()):
    """The dataset with the label column dropped from numeric.csv, and text.csv's labels kept only for
    ``labelled_ids`` (the other cells empty)."""
    import csv

    dest.mkdir()
    (dest / "images").symlink_to(data_root / "images", target_is_directory=True)
    for name, keep_label in (("text.csv", True), ("numeric.csv", False)):
        with open(data_root / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        columns = [c for c in rows[0] if keep_label or c != "label"]
        with open(dest / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "label": row["label"] if row["id"] in labelled_ids else ""})
    return dest


def test_predict_on_partly_labelled_data_scores_only_the_labelled_rows(exported, trained, tmp_path):
    model, _, records, inputs = trained
    labelled = {r.id for r in records[::3]}
    root = _unlabelled_copy(Path(records[0].image_path).parent.parent, tmp_path / "serving", labelled_ids=labelled)
    result = _predict(["--artifacts", str(exported), "--data", str(root)])
    expected = _torch_probabilities(model, inputs).argmax(axis=1)
    rows = {row["id"]: row for row in result["predictions"]}
    assert [rows[r.id]["predicted_index"] for r in records] == expected.tolist()
    assert result["records"] == len(records) and result["labelled"] == len(labelled)
    assert all(("label" in rows[r.id]) == (r.id in labelled) for r in records)
    hits = [expected[i] == r.label for i, r in enumerate(records) if r.id in labelled]
    assert result["accuracy"] == pytest.approx(np.mean(hits), abs=1e-6)


def test_predict_on_unlabelled_data_reports_no_accuracy(exported, trained, tmp_path, capsys):
    from kubefusion.cli import main

    _, _, records, _ = trained
    root = _unlabelled_copy(Path(records[0].image_path).parent.parent, tmp_path / "serving")
    assert main(["predict", "--artifacts", str(exported), "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == len(records) + 1 and "(label" not in out
    assert out.endswith(f"{len(records)} records, none labelled: no accuracy\n")


def test_a_damaged_export_is_one_line_naming_the_file(exported, tmp_path):
    damaged = tmp_path / "served"
    shutil.copytree(exported, damaged)
    (damaged / "model.json").write_text((exported / "model.json").read_text()[:40])
    proc = subprocess.run(blocked_import_command(["predict", "--artifacts", str(damaged), "--text", "hi"]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{damaged / 'model.json'}: not valid JSON" in proc.stderr
