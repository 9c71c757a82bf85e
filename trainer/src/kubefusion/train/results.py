"""The results table: does fusion help, by how much, and does it generalise? (pure, plus an atomic writer)

``results.json`` keys other tools rely on: ``fused.<split>.top1`` (validation, test, ood), ``baselines.<modality>
.<split>.top1``, ``ablation.without_<modality>.<split>.top1``, ``best_achievable.top1`` (demo data) and
``summary`` (the fusion gain over the best single modality, in points) and ``configuration`` (the run record the
models come from: every spec field that shapes them, the data, the fingerprint; :mod:`kubefusion.train.runfolder`). Accuracies are fractions in [0, 1];
the Markdown table shows percentages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubefusion.config import MODALITIES
from kubefusion.train.atomic import atomic_write_text


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Fusion gain over the best single-modality baseline (test and OOD) and the gap to the best achievable."""
    summary: dict[str, Any] = {}
    fused = results.get("fused", {})
    baselines = results.get("baselines", {})
    for split in ("test", "ood"):
        scores = {m: b[split]["top1"] for m, b in baselines.items() if b.get(split, {}).get("top1") is not None}
        fused_top1 = fused.get(split, {}).get("top1")
        if scores and fused_top1 is not None:
            best = max(scores, key=scores.get)
            summary[f"best_single_modality_{split}"] = best
            summary[f"fusion_gain_{split}_points"] = round(100 * (fused_top1 - scores[best]), 2)
    best_achievable = (results.get("best_achievable") or {}).get("top1")
    if best_achievable is not None and fused.get("test", {}).get("top1") is not None:
        summary["gap_to_best_achievable_test_points"] = round(100 * (best_achievable - fused["test"]["top1"]), 2)
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_markdown(results: dict[str, Any]) -> str:
    """The table a user reads after a run (also printed at the end of ``kubefusion train``)."""
    header = ("| model | validation top-1 | test top-1 | test top-5 | test macro-F1 | test loss | OOD top-1 |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
    rows = []

    def row(name: str, entry: dict[str, Any]) -> None:
        val, test, ood = entry.get("validation", {}), entry.get("test", {}), entry.get("ood", {})
        rows.append(f"| {name} | {_pct(val.get('top1'))} | {_pct(test.get('top1'))} | {_pct(test.get('top5'))} | "
                    f"{_pct(test.get('macro_f1'))} | {_num(test.get('loss'))} | {_pct(ood.get('top1'))} |")

    fusion = results.get("fusion_type", "")
    if "fused" in results:
        row(f"**fused** ({fusion}: {' + '.join(results.get('modalities', MODALITIES))})", results["fused"])
    for modality in MODALITIES:
        if f"without_{modality}" in results.get("ablation", {}):
            row(f"fused, {modality} masked at test time", results["ablation"][f"without_{modality}"])
    for modality in MODALITIES:
        if modality in results.get("baselines", {}):
            row(f"{modality} only (baseline, same recipe)", results["baselines"][modality])
    best = (results.get("best_achievable") or {}).get("top1")
    if best is not None:
        rows.append(f"| best achievable (Bayes-optimal, from dataset.json) | – | {_pct(best)} | – | – | – | "
                    f"{_pct(best)} |")

    lines = [f"# Results: {results.get('job', '')}", "", header, *rows, ""]
    sizes = results.get("sizes")
    if sizes:
        lines.append("Records per split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
        if "ood" not in sizes:
            lines.append("No out-of-distribution split (hence the empty OOD column): put one in an `ood` folder "
                         "under the data, or name it in spec.data.oodPath.")
    s = results.get("summary", {})
    for split, label in (("test", "test"), ("ood", "out-of-distribution")):
        if f"fusion_gain_{split}_points" in s:
            lines.append(f"Fusion vs the best single modality ({s[f'best_single_modality_{split}']} only) on "
                         f"{label}: {s[f'fusion_gain_{split}_points']:+.2f} points top-1.")
    if "gap_to_best_achievable_test_points" in s:
        lines.append(f"Fused model vs the best achievable on test: {-s['gap_to_best_achievable_test_points']:+.2f} "
                     "points.")
    run = results.get("configuration")
    if run:
        lines.append(f"Training configuration {run['fingerprint']}: every field that shapes the model is under "
                     "\"configuration\" in results.json.")
    return "\n".join(lines) + "\n"


def write_results(output: Path, results: dict[str, Any]) -> str:
    """Write ``results.json`` and ``results.md`` atomically; returns the Markdown."""
    markdown = render_markdown(results)
    atomic_write_text(output / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(output / "results.md", markdown)
    return markdown
