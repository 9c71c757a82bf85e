"""`kubefusion run JOB.yaml --local`: the whole product on one machine, as a newcomer runs it.

A tiny job (demo data, 2 gloo processes, baselines on) goes through data synthesis, preprocessing, torchrun
training, evaluation and the results table; a job that cannot start fails with one error line, no hang.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def job(tmp_path: Path, **text) -> Path:
    doc = {
        "apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "tiny-local"},
        "spec": {
            "data": {"path": "builtin:demo", "demoSamples": 240, "validationFraction": 0.15, "testFraction": 0.15},
            "preprocessing": {"imageSize": 32, "tokenizer": "builtin:minilm", "maxTokens": 16},
            "model": {"vision": {"backbone": "builtin:resnet-tiny", "pretrained": False},
                      "text": {"backbone": "builtin:bert-tiny", "pretrained": False, "pooling": "mean", **text},
                      "numeric": {"hidden": [16]}, "fusion": {"type": "attention", "hidden": 32, "heads": 4,
                                                             "layers": 1, "modalityDropout": 0.2},
                      "embedDim": 16},
            "training": {"epochs": 1, "batchSizePerGPU": 32, "learningRate": 2.0e-3, "precision": "fp32",
                         "baselines": True},
            "resources": {"gpusPerNode": 2},
            "monitoring": {"metricsPort": 0},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def kubefusion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "kubefusion", *args], env=env, capture_output=True, text=True,
                          timeout=400)


def info_step(run: Path) -> int:
    from kubefusion.train.checkpoint import read_checkpoint

    return read_checkpoint(run / "model.pt")["step"]


def test_local_run_trains_fused_and_baselines_and_prints_the_table(tmp_path):
    out = tmp_path / "run"
    done = kubefusion("run", str(job(tmp_path)), "--local", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on cpu (gloo" in done.stdout
    assert "| **fused** (attention" in done.stdout and "numeric only (baseline" in done.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ("validation", "test", "ood"):
        assert 0.0 <= results["fused"][key]["top1"] <= 1.0
    for modality in ("image", "text", "numeric"):
        assert "top1" in results["baselines"][modality]["test"]
        assert "top1" in results["ablation"][f"without_{modality}"]["test"]
    assert results["best_achievable"]["top1"] > 0.9  # carried over from the demo data's dataset.json
    assert (out / "results.md").read_text().startswith("# Results: tiny-local")
    assert (out / "model.pt").is_file() and len(list((out / "baselines").glob("*.pt"))) == 3
    assert list((out / "tensorboard" / "fused").glob("events.out.tfevents.*"))
    # The run folder's status.json holds what a cluster job's status shows; the bars show the same numbers.
    status = json.loads((out / "status.json").read_text())
    assert status["results"]["fusedTestTop1"] == pytest.approx(results["fused"]["test"]["top1"], abs=1e-6)
    assert status["results"]["model"] == str(out.resolve() / "model.pt")
    assert status["progress"]["percent"] == 100.0 and status["summary"]["progress"] == "100%"
    fused = status["metrics"]["validation"][0]
    assert fused["stage"] == "fused" and fused["top1"] == pytest.approx(results["fused"]["validation"]["top1"])
    assert f"val={status['summary']['valTop1']}" in done.stdout and "job=" in done.stdout
    # spec.training.exportOnnx (the default): the fused model as ONNX beside it, named in the results.
    assert status["results"]["onnx"] == str(out.resolve() / "onnx")
    assert json.loads((out / "onnx" / "model.json").read_text())["checkpoint"]["step"] == info_step(out)

    from kubefusion.model import load_model_from_checkpoint

    model, info = load_model_from_checkpoint(out)
    assert info["modalities"] == ["image", "text", "numeric"] and len(info["classes"]) == 8


def test_a_missing_pretrained_model_fails_with_one_error_line_before_preprocessing(tmp_path):
    done = kubefusion("run", str(job(tmp_path, backbone="nobody/missing-bert", pretrained=True)), "--local",
                      "--output", str(tmp_path / "run"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: spec.model.text.backbone: no folder 'nobody/missing-bert'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "artifacts").exists()  # told before preprocessing, the data or torchrun
