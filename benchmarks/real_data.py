"""Real data: kubefusion's own-data preset against scikit-learn on a public image + text + numeric dataset.

    .venv/bin/python benchmarks/real_data.py [--out runs/real-data] [--limit N] [--image-size S]

The dataset is every emoji of Unicode Emoji 16.0 from the npm package ``emoji-datasource-google`` (pinned in
``benchmarks/realdata/package-lock.json``; installed with ``npm ci`` on first use, nothing else is fetched):

- image: the emoji's Noto Emoji picture (Google, Apache-2.0), 64x64 PNG, put on a white background;
- text: its name (``grinning face``, ``Vatican City Flag``, ``squared cjk unified ideograph-7533``);
- numeric: the Emoji version it came with, how many code points it has, whether it takes skin tones, how
  many of the four vendor sets draw it, whether an ASCII emoticon maps to it;
- label: its Unicode CLDR category (9 classes: Smileys & Emotion, People & Body, Animals & Nature, Food & Drink,
  Travel & Places, Activities, Objects, Symbols, Flags; the 5 skin-tone "Component" swatches are left out).

None of the inputs spells the label out (the data's ``sort_order``, ``sheet_x/y`` and ``subcategory`` would:
they follow the category order, so they are left out). Emoji new in Emoji 15.0 or later go to ``ood/``: the
out-of-distribution split is "emoji newer than anything trained on".

One run, same data, same splits (kubefusion's own stratified split, read back with ``split_records``):

1. ``kubefusion run`` (the real CLI, 2 processes) on ``examples/own-data-job.yaml`` pointed at the data:
   the fused model with the preset's fusion remedy (unimodal heads), each single-modality baseline, the
   ablation;
2. the same job with plain concatenation (``unimodalLossWeight: 0``), fused model only;
3. scikit-learn: TF-IDF (word 1-2 grams) on the text, raw pixels (32x32 RGB), the numeric columns, each alone
   and all three concatenated (early fusion) into a logistic regression; C and the block weights are chosen on
   the validation split.

It prints one table (test and OOD top-1) and writes it to OUT/real_data.md and OUT/real_data.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO / "benchmarks" / "realdata"
PACKAGE = "emoji-datasource-google"
EXAMPLE = REPO / "examples" / "own-data-job.yaml"
VENDORS = ("apple", "google", "twitter", "facebook")
OOD_FROM_VERSION = 15.0
"""Emoji new in this Emoji version or later form the out-of-distribution split."""
LEFT_OUT_CATEGORIES = ("Component",)
NUMERIC_COLUMNS = ("emoji_version", "code_points", "skin_tones", "vendor_images", "ascii_emoticon")


# ----------------------------------------------------------------------------------------- the dataset


def package_dir(root: Path = PACKAGE_ROOT) -> Path:
    """The installed npm package; ``npm ci`` installs the pinned version on first use."""
    folder = root / "node_modules" / PACKAGE
    if not (folder / "emoji.json").is_file():
        subprocess.run(["npm", "ci", "--prefix", str(root), "--ignore-scripts", "--no-audit", "--no-fund"],
                       check=True)
    return folder


def numeric_row(entry: dict[str, Any]) -> list[float]:
    return [float(entry["added_in"]), float(len(entry["unified"].split("-"))),
            float(bool(entry.get("skin_variations"))), float(sum(bool(entry.get(f"has_img_{v}")) for v in VENDORS)),
            float(bool(entry.get("texts")))]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_split(folder: Path, entries: list[dict[str, Any]], package: Path) -> None:
    images = folder / "images"
    images.mkdir(parents=True)
    text_rows, numeric_rows = [], []
    for entry in entries:
        ident = entry["unified"].lower()
        with Image.open(package / "img" / "google" / "64" / entry["image"]) as picture:
            rgba = picture.convert("RGBA")
        # Transparent pixels have arbitrary colour values: compose on white, as a page shows them.
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        canvas.convert("RGB").save(images / f"{ident}.png")
        text_rows.append([ident, entry["name"], entry["category"]])
        numeric_rows.append([ident, *numeric_row(entry), entry["category"]])
    _write_csv(folder / "text.csv", ["id", "text", "label"], text_rows)
    _write_csv(folder / "numeric.csv", ["id", *NUMERIC_COLUMNS, "label"], numeric_rows)


def build_dataset(package: Path, out: Path, *, limit: int | None = None) -> dict[str, int]:
    """Write the kubefusion layout (``images/``, ``text.csv``, ``numeric.csv``, and ``ood/`` alike) into ``out``
    (replaced whole: written under a temporary name, then renamed). ``limit`` keeps every n-th emoji so that
    about ``limit`` remain (for quick runs and tests). Returns record counts."""
    entries = [e for e in json.loads((package / "emoji.json").read_text())
               if e["category"] not in LEFT_OUT_CATEGORIES and e.get("has_img_google")]
    entries.sort(key=lambda e: e["unified"])
    if limit is not None and limit < len(entries):
        step = len(entries) / limit
        entries = [entries[int(i * step)] for i in range(limit)]
    ood = [e for e in entries if float(e["added_in"]) >= OOD_FROM_VERSION]
    main = [e for e in entries if float(e["added_in"]) < OOD_FROM_VERSION]
    temp = out.with_name(out.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    _write_split(temp, main, package)
    if ood:
        _write_split(temp / "ood", ood, package)
    shutil.rmtree(out, ignore_errors=True)
    temp.rename(out)
    return {"records": len(main), "ood": len(ood)}


# ------------------------------------------------------------------------------------------ scikit-learn


def _load_split_arrays(data: Path, job, pixels: int) -> dict[str, dict[str, Any]]:
    """Text, raw pixels, numeric columns and labels per split, with kubefusion's own split of the records."""
    from kubefusion.data import scan
    from kubefusion.data.split import split_records

    scanned = scan(job.data, data)
    splits = split_records(scanned.records, job.data.validation_fraction, job.data.test_fraction,
                           job.data.split_seed)
    if (data / "ood").is_dir():
        splits["ood"] = scan(job.data, data / "ood", classes=scanned.classes).records

    def arrays(records) -> dict[str, Any]:
        images = []
        for record in records:
            with Image.open(record.image_path) as picture:
                images.append(np.asarray(picture.convert("RGB").resize((pixels, pixels), Image.BILINEAR),
                                         dtype=np.float32).ravel() / 255.0)
        return {"text": [r.text for r in records], "pixels": np.stack(images),
                "numeric": np.array([r.numeric for r in records], dtype=np.float64),
                "label": np.array([r.label for r in records])}

    return {name: arrays(records) for name, records in splits.items() if records}


def sklearn_baselines(data: Path, job, *, pixels: int = 32) -> dict[str, dict[str, float]]:
    """Top-1 (fractions) on validation, test and OOD of logistic regressions on TF-IDF text, raw pixels, numeric
    columns, and all three concatenated. Each block is standardised (TF-IDF rows are already unit length) and,
    in the early fusion, scaled by a weight; C and the weights are picked on the validation split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    s = _load_split_arrays(data, job, pixels)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(s["train"]["text"])
    pixel_scale = StandardScaler().fit(s["train"]["pixels"])
    numeric_scale = StandardScaler().fit(s["train"]["numeric"])
    # Standardised pixels have ~3000 unit-variance columns; dividing by sqrt(dim) gives each block a comparable
    # norm, so neither the pixels nor the text drowns the other before the weights are tuned. Dense arrays:
    # with a few thousand rows lbfgs is much faster on them than on sparse ones.
    blocks = {split: {"text": tfidf.transform(d["text"]).toarray(),
                      "pixels": pixel_scale.transform(d["pixels"]) / np.sqrt(d["pixels"].shape[1]),
                      "numeric": numeric_scale.transform(d["numeric"]) / np.sqrt(d["numeric"].shape[1])}
              for split, d in s.items()}
    labels = {split: d["label"] for split, d in s.items()}

    def fit_and_score(weights: dict[str, float]) -> dict[str, float]:
        def features(split: str) -> np.ndarray:
            return np.hstack([blocks[split][b] * w for b, w in weights.items()])

        best = None
        for c in (1.0, 10.0, 100.0):
            model = LogisticRegression(C=c, max_iter=2000).fit(features("train"), labels["train"])
            val = float((model.predict(features("validation")) == labels["validation"]).mean())
            if best is None or val > best[0]:
                best = (val, model)
        return {split: float((best[1].predict(features(split)) == labels[split]).mean())
                for split in labels if split != "train"}

    results = {name: fit_and_score({name: 1.0}) for name in ("text", "pixels", "numeric")}
    best_fused = None
    for text_w, numeric_w in ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (2.0, 2.0)):
        scores = fit_and_score({"text": text_w, "pixels": 1.0, "numeric": numeric_w})
        if best_fused is None or scores["validation"] > best_fused["validation"]:
            best_fused = scores
    results["fused"] = best_fused
    return results


# --------------------------------------------------------------------------------------------- kubefusion


def job_document(data: Path, *, image_size: int | None, unimodal_loss_weight: float | None,
                 baselines: bool, epochs: int | None = None) -> dict[str, Any]:
    """examples/own-data-job.yaml pointed at ``data``, with the run's overrides."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["data"]["path"] = str(data)
    spec["data"].pop("source", None)
    if image_size is not None:
        spec["preprocessing"]["imageSize"] = image_size
    if unimodal_loss_weight is not None:
        spec["model"]["fusion"]["unimodalLossWeight"] = unimodal_loss_weight
    spec["training"]["baselines"] = baselines
    if epochs is not None:
        spec["training"]["epochs"] = epochs
        spec["training"]["frozenBackboneEpochs"] = min(spec["training"].get("frozenBackboneEpochs", 0), epochs - 1)
    spec.setdefault("monitoring", {})["metricsPort"] = 0
    # The runs are timed as training runs; `kubefusion export` of the result is measured on its own.
    spec["training"]["exportOnnx"] = False
    return doc


def job_from_doc(doc: dict[str, Any]):
    from kubefusion.config import job_from_dict

    return job_from_dict(doc)


def run_kubefusion(doc: dict[str, Any], out: Path, name: str) -> tuple[dict[str, Any], float]:
    """``kubefusion run JOB --local`` as a user runs it; returns results.json and the wall time."""
    out.mkdir(parents=True, exist_ok=True)
    job_file = out / f"{name}.yaml"
    job_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli = Path(sys.executable).with_name("kubefusion")
    started = time.perf_counter()
    subprocess.run([str(cli), "run", str(job_file), "--local", "--output", str(out / name)], check=True)
    seconds = time.perf_counter() - started
    return json.loads((out / name / "results.json").read_text()), seconds


# ------------------------------------------------------------------------------------------------ report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def table(remedy: dict[str, Any], plain: dict[str, Any] | None, sk: dict[str, dict[str, float]]) -> list[list[str]]:
    def top1(entry: dict[str, Any], split: str) -> float | None:
        return (entry.get(split) or {}).get("top1")

    weight = remedy.get("unimodal_loss_weight")
    rows = [[f"kubefusion fused ({remedy.get('fusion_type')} + unimodal heads, weight {weight})",
             _pct(top1(remedy["fused"], "test")), _pct(top1(remedy["fused"], "ood"))]]
    if plain is not None:
        rows.append(["kubefusion fused (plain concat)", _pct(top1(plain["fused"], "test")),
                     _pct(top1(plain["fused"], "ood"))])
    for modality in ("image", "text", "numeric"):
        entry = remedy["ablation"].get(f"without_{modality}", {})
        rows.append([f"kubefusion fused, {modality} masked", _pct(top1(entry, "test")), _pct(top1(entry, "ood"))])
    for modality in ("image", "text", "numeric"):
        entry = remedy["baselines"].get(modality, {})
        rows.append([f"kubefusion {modality} only", _pct(top1(entry, "test")), _pct(top1(entry, "ood"))])
    rows.append(["scikit-learn early fusion (TF-IDF + pixels + numeric)", _pct(sk["fused"]["test"]),
                 _pct(sk["fused"].get("ood"))])
    for name, label in (("text", "TF-IDF text"), ("pixels", "raw pixels"), ("numeric", "numeric")):
        rows.append([f"scikit-learn {label} only", _pct(sk[name]["test"]), _pct(sk[name].get("ood"))])
    return rows


def summary(remedy: dict[str, Any], plain: dict[str, Any] | None, sk: dict[str, dict[str, float]]) -> dict[str, Any]:
    fused = remedy["fused"]["test"]["top1"]
    singles = {m: b["test"]["top1"] for m, b in remedy["baselines"].items()}
    best = max(singles, key=singles.get) if singles else None
    out = {"fused_vs_sklearn_fused_points": round(100 * (fused - sk["fused"]["test"]), 2)}
    if best:
        out.update(best_single_modality=best, fused_vs_best_single_points=round(100 * (fused - singles[best]), 2))
    if plain is not None:
        out["remedy_vs_plain_concat_points"] = round(100 * (fused - plain["fused"]["test"]["top1"]), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real-data")
    parser.add_argument("--limit", type=int, default=None, help="keep about this many emoji (quick runs)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override spec.preprocessing.imageSize of the example (default: keep it)")
    parser.add_argument("--epochs", type=int, default=None, help="override spec.training.epochs")
    parser.add_argument("--skip-plain", action="store_true", help="do not train the plain-concat comparison")
    parser.add_argument("--package", type=Path, default=None, help="an unpacked emoji-datasource-google")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    args.out = args.out.resolve()  # the job files written there name the data by absolute path
    package = args.package or package_dir()
    data = args.out / "data"
    counts = build_dataset(package, data, limit=args.limit)
    print(f"dataset: {counts['records']} emoji, {counts['ood']} newer ones as OOD, in {data}", flush=True)

    remedy_doc = job_document(data, image_size=args.image_size, unimodal_loss_weight=None, baselines=True,
                              epochs=args.epochs)
    job = job_from_doc(remedy_doc)
    t0 = time.perf_counter()
    sk = sklearn_baselines(data, job)
    sklearn_s = time.perf_counter() - t0
    print(f"scikit-learn ({sklearn_s:.0f} s): " + ", ".join(f"{k} {100 * v['test']:.2f}" for k, v in sk.items()),
          flush=True)
    remedy, remedy_s = run_kubefusion(remedy_doc, args.out, "remedy")
    remedy["unimodal_loss_weight"] = job.model.fusion.unimodal_loss_weight
    plain, plain_s = None, None
    if not args.skip_plain:
        plain_doc = job_document(data, image_size=args.image_size, unimodal_loss_weight=0.0, baselines=False,
                                 epochs=args.epochs)
        plain, plain_s = run_kubefusion(plain_doc, args.out, "plain")

    rows = table(remedy, plain, sk)
    facts = summary(remedy, plain, sk)
    timings = {"kubefusion_remedy_with_baselines_s": round(remedy_s, 1), "sklearn_s": round(sklearn_s, 1),
               "total_s": round(time.perf_counter() - started, 1)}
    if plain_s is not None:
        timings["kubefusion_plain_fused_only_s"] = round(plain_s, 1)
    lines = ["| model | test top-1 | OOD top-1 |", "|---|---:|---:|", *("| " + " | ".join(r) + " |" for r in rows),
             "", f"Records: {remedy['sizes']}, OOD {counts['ood']}; {remedy['processes']} processes; "
             f"image size {job.preprocessing.image_size}.",
             "Summary: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
             "Seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items()) + "."]
    markdown = "\n".join(lines) + "\n"
    (args.out / "real_data.md").write_text(markdown)
    (args.out / "real_data.json").write_text(json.dumps(
        {"rows": rows, "summary": facts, "timings": timings, "counts": counts, "sklearn": sk}, indent=2) + "\n")
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
