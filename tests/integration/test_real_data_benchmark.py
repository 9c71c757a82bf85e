"""benchmarks/real_data.py at fixture size, so the benchmark cannot rot: a package-shaped emoji folder (the
real ``emoji.json`` fields, drawn pictures) goes through the dataset builder, the scikit-learn baselines and
``kubefusion run`` of examples/own-data-job.yaml (pretrained EfficientNet-Lite0 + MiniLM, unimodal heads,
frozen warm-up, 2 processes); the trained model then exports to ONNX (parity checked by the export) and
``kubefusion predict`` serves it with onnxruntime alone."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).parent))
import real_data  # noqa: E402
from test_preprocess_export import blocked_import_command  # noqa: E402

CATEGORIES = {"Smileys & Emotion": ((250, 200, 40), "face"), "Animals & Nature": ((60, 160, 60), "cat"),
              "Flags": ((200, 30, 30), "flag"), "Food & Drink": ((230, 120, 30), "pizza"),
              "Component": ((120, 90, 60), "skin tone")}


def fake_package(root: Path, per_category: int = 6) -> Path:
    """The files of emoji-datasource-google that the builder reads, with drawn 64x64 RGBA pictures."""
    (root / "img" / "google" / "64").mkdir(parents=True)
    entries, code = [], 0x1F300
    for category, (colour, word) in CATEGORIES.items():
        for i in range(per_category):
            code += 1
            unified = f"{code:X}"
            picture = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent, like the real ones
            ImageDraw.Draw(picture).ellipse((8 + i, 8, 56 - i, 56), fill=(*colour, 255))
            picture.save(root / "img" / "google" / "64" / f"{unified.lower()}.png")
            entries.append({"name": f"{word} number {i}", "unified": unified, "image": f"{unified.lower()}.png",
                            "category": category, "subcategory": word, "sort_order": code,
                            "added_in": "15.0" if i == per_category - 1 else "1.0",
                            "has_img_apple": True, "has_img_google": True, "has_img_twitter": i % 2 == 0,
                            "has_img_facebook": False, "texts": [":)"] if i == 0 else None,
                            "skin_variations": {"1F3FB": {}} if category == "Smileys & Emotion" else None})
    (root / "emoji.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-data")
    package = fake_package(root / "package")
    data = root / "data"
    counts = real_data.build_dataset(package, data)
    doc = real_data.job_document(data, image_size=32, unimodal_loss_weight=None, baselines=True, epochs=2)
    doc["spec"]["training"]["batchSizePerGPU"] = 4
    doc["spec"]["data"]["validationFraction"] = doc["spec"]["data"]["testFraction"] = 0.2
    results, _ = real_data.run_kubefusion(doc, root / "runs", "remedy")
    return root, data, counts, doc, results


def test_the_builder_writes_the_kubefusion_layout_without_the_label_in_the_inputs(benchmark):
    _, data, counts, _, _ = benchmark
    assert counts == {"records": 20, "ood": 4}  # 4 categories x 5 older emoji; the skin-tone swatches left out
    with open(data / "text.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"Smileys & Emotion", "Animals & Nature", "Flags", "Food & Drink"}
    assert not any(r["label"].split()[0].lower() in r["text"].lower() for r in rows)
    with open(data / "numeric.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["id", *real_data.NUMERIC_COLUMNS, "label"]
    with Image.open(data / "images" / f"{rows[0]['id']}.png") as picture:  # composed on white, no alpha left
        assert picture.mode == "RGB" and picture.getpixel((0, 0)) == (255, 255, 255)
    assert len(list((data / "ood" / "images").iterdir())) == 4


def test_the_own_data_example_trains_fused_baselines_and_ablation_through_the_cli(benchmark):
    root, data, _, doc, results = benchmark
    assert results["fusion_type"] == "concat" and set(results["baselines"]) == {"image", "text", "numeric"}
    assert results["fused"]["test"]["top1"] is not None and results["fused"]["ood"]["samples"] == 4
    steps = [json.loads(line) for line in (root / "runs" / "remedy" / "logs" / "fused.steps.jsonl").open()]
    assert steps and all(s["loss"] == s["loss"] for s in steps)  # finite, unimodal terms included
    sk = real_data.sklearn_baselines(data, real_data.job_from_doc(doc))
    assert set(sk) == {"text", "pixels", "numeric", "fused"}
    assert all(0.0 <= v <= 1.0 for scores in sk.values() for v in scores.values())
    rows = real_data.table(results, None, sk)
    assert rows[0][0].startswith("kubefusion fused (concat + unimodal heads") and len(rows) == 11
    assert set(real_data.summary(results, None, sk)) == {"fused_vs_sklearn_fused_points", "best_single_modality",
                                                         "fused_vs_best_single_points"}


def test_the_pretrained_model_exports_to_onnx_and_serves_without_torch(benchmark, tmp_path):
    root, data, _, _, _ = benchmark
    from kubefusion.cli import main

    out = tmp_path / "served"
    assert main(["export", "--checkpoint", str(root / "runs" / "remedy" / "model.pt"), "--out", str(out)]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["parity"]["max_abs_diff"] <= info["parity"]["tolerance"]
    proc = subprocess.run(blocked_import_command(["predict", "--artifacts", str(out), "--data", str(data),
                                                  "--json"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["predictions"]) == 20
