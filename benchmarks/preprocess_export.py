"""Preprocessing on the demo job: the exported ONNX graph against the TensorFlow graph it came from, and a
cold ``kubefusion preprocess`` against a cache hit.

    .venv/bin/python benchmarks/preprocess_export.py [--samples 1000] [--batches 30] [--rounds 5]
        [--cache-rounds 2] [--serving]

1. ``kubefusion preprocess`` on ``builtin:demo`` (synthesises the demo data, then exports) into a fresh
   ARTIFACTS folder, then the same command again: a cache hit. Each command is a fresh process (what an init
   container pays, interpreter start and imports included); ``--cache-rounds`` rounds, each with its own folder.
2. The trainer's per-batch preprocessing: ``Preprocessor`` with the onnx and the tf backend, loaded from the
   same artifact, on the same batches of 64 images + numeric rows, interleaved round by round: at the
   artifact's image size (what the pipeline hands over) and at twice that size (a resize inside the graph).
   onnxruntime gets the threads the trainer gives it in one process (``preprocess_threads``), TensorFlow its
   own default pool: both use every core.
3. ``--serving`` also times ``kubefusion export`` of a random-initialised demo model and ``kubefusion predict
   --data`` on the OOD folder (seconds only: they have no baseline, so they are not rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from harness import Goal, Row, cpus, describe, emit, interleave, log, paired, parser, timed  # noqa: E402
from kubefusion.config import demo, job_to_dict  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/preprocess_export.py"
BATCH = 64


def kubefusion(*argv: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kubefusion", *argv, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"kubefusion {' '.join(argv)} failed:\n{proc.stderr}")
    return seconds, json.loads(proc.stdout)


def serving(job, artifacts: Path, tmp_path: Path, manifest: dict, samples: int) -> None:
    import torch

    from kubefusion.model import build_model
    from kubefusion.train.checkpoint import write_model_file

    torch.manual_seed(0)
    model = build_model(job.model, num_classes=manifest["num_classes"],
                        num_numeric_features=len(manifest["numeric_columns"]))
    info = {**model.describe(), "classes": manifest["classes"], "numeric_columns": manifest["numeric_columns"],
            "content_key": manifest["content_key"]}
    checkpoint = tmp_path / "model.pt"
    write_model_file(checkpoint, {"model": model.state_dict(), "step": 0, "config": job_to_dict(job),
                                  "model_info": info})
    export_s, exported = kubefusion("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "served"),
                                    "--artifacts", str(artifacts))
    ood = artifacts / "data" / f"demo-{samples}-seed0" / "ood"
    predict_s, predicted = kubefusion("predict", "--artifacts", str(tmp_path / "served"), "--data", str(ood))
    log(f"kubefusion export (demo model): {export_s:.2f} s (torch.onnx.export "
        f"{exported['timings_seconds']['torch_onnx_export']} s, parity {exported['parity']['max_abs_diff']:.1e}); "
        f"kubefusion predict --data ood: {predict_s:.2f} s ({predicted['records']} records)")


def backend_rows(artifacts: Path, manifest: dict, batches: int, rounds: int) -> list[Row]:
    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train.prefetch import available_cpus, preprocess_threads

    import tensorflow as tf

    # One thread each, as each rank of the demo run has (kubefusion run --local: 2 ranks on 2 cores); one
    # thread is also the setting a shared machine's load disturbs least.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    threads = preprocess_threads(available_cpus(), 2)
    backends = {"onnx": Preprocessor.load(artifacts, "onnx", threads=threads), "tf": Preprocessor.load(artifacts, "tf")}
    rng = np.random.default_rng(0)
    size, features = manifest["image_size"], len(manifest["numeric_columns"])
    rows = []
    for side in (size, 2 * size):
        data = [(rng.integers(0, 256, (BATCH, side, side, 3), dtype=np.uint8),
                 rng.normal(size=(BATCH, features)).astype(np.float32)) for _ in range(batches)]
        for pre in backends.values():
            pre(*data[0])  # graph tracing and first allocations are not timed

        def rate(pre=None, data=data) -> float:
            return len(data) / timed(lambda: [pre(image, numeric) for image, numeric in data])

        log(f"preprocess_export: backends at {side} px, {rounds} rounds of {batches} batches")
        rates = interleave({name: (lambda pre=pre: rate(pre)) for name, pre in backends.items()},
                           rounds=rounds, progress=log)
        what = f"64 x {side} px (the artifact's size)" if side == size else f"64 x {side} px -> {size} px (resize)"
        rows.append(Row(
            measured=f"trainer preprocessing batches/s, exported ONNX graph in onnxruntime ({threads} thread(s)): "
                     f"{what} + {features} numeric columns",
            value=f"onnx {describe(rates['onnx'], 'batches/s')}",
            baseline=f"the same graph in TensorFlow (its SavedModel, {threads} thread(s)), same batches: "
                     f"{describe(rates['tf'], 'batches/s')}",
            ratio=paired(rates["onnx"], rates["tf"]), ratio_of="onnx / tf", goal=Goal(">=", 1.0), command=COMMAND,
            note="" if side == size else "Not on the training path: the pipeline hands images over at the "
                                         "artifact's size; serving resizes before the graph too.",
            if_missed=RESIZE_CAUSE if side != size else "see docs/benchmarks.md."))
    return rows


RESIZE_CAUSE = ("the graph spells the bilinear resize as four gathers and lerps on full-resolution float tensors "
                "(so that both runtimes compute the same coordinates: kubefusion/preprocess/graph.py); "
                "in onnxruntime's own profiler the gathers and lerps take most of the graph's time. Gathering the "
                "uint8 rows before the cast would give the same floats on a quarter of the bytes; not done yet.")


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=1000, help="demo records")
    p.add_argument("--batches", type=int, default=30, help="batches per backend per round")
    p.add_argument("--cache-rounds", type=int, default=2, help="cold + cache-hit command pairs")
    p.add_argument("--serving", action="store_true", help="also time kubefusion export and predict")
    args = p.parse_args(argv)
    samples, batches, rounds, cache_rounds = (200, 2, 1, 1) if args.smoke else (
        args.samples, args.batches, args.rounds or 5, args.cache_rounds)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        job = demo()
        job.data.demo_samples = samples
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump(job_to_dict(job)))
        folders = iter(tmp_path / f"artifacts-{i}" for i in range(10**6))
        current: list[Path] = []

        def cold() -> float:
            current.append(next(folders))
            seconds, first = kubefusion("preprocess", "--config", str(job_file), "--out", str(current[-1]))
            assert not first["reused"], first
            return seconds

        def warm() -> float:  # the rounds start with cold (the rotation puts it first), so a folder exists
            seconds, second = kubefusion("preprocess", "--config", str(job_file), "--out", str(current[-1]))
            assert second["reused"], second
            return seconds

        log(f"preprocess_export: {cache_rounds} rounds of cold + cache-hit kubefusion preprocess")
        seconds = interleave({"cold": cold, "warm": warm}, rounds=cache_rounds, progress=log)
        from kubefusion.preprocess.runtime import Preprocessor

        artifacts = current[-1]
        manifest = Preprocessor.load(artifacts).manifest
        rows = [Row(
            measured=f"kubefusion preprocess on a cache hit (same job and data: content key found), demo job, "
                     f"{samples} records, a fresh process",
            value=f"cache hit {describe(seconds['warm'], 's', 2)}",
            baseline=f"cold: the same command into an empty ARTIFACTS folder (synthesise the demo data, scan, "
                     f"statistics, SavedModel, tf2onnx, parity): {describe(seconds['cold'], 's', 1)}",
            ratio=paired(seconds["cold"], seconds["warm"]), ratio_of="cold s / cache-hit s", command=COMMAND,
            note="What every pod's init container pays once the artifact exists (interpreter start and imports "
                 "included).")]
        rows += backend_rows(artifacts, manifest, batches, rounds)
        if args.serving:
            serving(job, artifacts, tmp_path, manifest, samples)
    emit(rows, args)
    return rows


if __name__ == "__main__":
    main()
