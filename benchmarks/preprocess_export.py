"""Preprocessing and model export on the demo job: cold export vs cache hit, model export, backends, serving.

    .venv/bin/python benchmarks/preprocess_export.py [--samples 4000] [--batches 50] [--threads 1]

Runs the real commands as separate processes (what an init container and a user pay, interpreter start and
imports included), in a fresh temporary ARTIFACTS folder:

1. ``kubefusion preprocess`` on ``builtin:demo`` (synthesises the demo data, then exports): cold.
2. The same command again: a cache hit. The cold/warm ratio is printed.
3. ``kubefusion export`` of a random-initialised demo-preset model (the architecture ``make demo`` trains).
4. ``kubefusion predict --data`` on the demo OOD folder (records/s, end to end).
5. The trainer's per-batch preprocessing: ``Preprocessor`` with the onnx and the tf backend on the same
   batches (64 demo-size images + numeric rows): batches/s and the ratio.
"""

from __future__ import annotations

import argparse
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

from kubefusion.config import demo, job_to_dict  # noqa: E402


def kubefusion(*argv: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kubefusion", *argv, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"kubefusion {' '.join(argv)} failed:\n{proc.stderr}")
    return seconds, json.loads(proc.stdout)


def backend_rate(artifacts: Path, backend: str, batches: list, threads: int | None) -> float:
    from kubefusion.preprocess.runtime import Preprocessor

    pre = Preprocessor.load(artifacts, backend, threads=threads)
    pre(*batches[0])  # warm-up (graph tracing, allocations)
    started = time.perf_counter()
    for image, numeric in batches:
        pre(image, numeric)
    return len(batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="demo records (default 4000, the preset's)")
    parser.add_argument("--batches", type=int, default=50, help="batches per backend timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads, 0 = every core (default 1, the Preprocessor default)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        job = demo()
        job.data.demo_samples = args.samples
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump(job_to_dict(job)))
        artifacts = tmp_path / "artifacts"

        cold, first = kubefusion("preprocess", "--config", str(job_file), "--out", str(artifacts))
        warm, second = kubefusion("preprocess", "--config", str(job_file), "--out", str(artifacts))
        assert not first["reused"] and second["reused"]
        manifest = json.loads((Path(first["artifact"]) / "manifest.json").read_text())

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

        ood = artifacts / "data" / f"demo-{args.samples}-seed0" / "ood"
        predict_s, predicted = kubefusion("predict", "--artifacts", str(tmp_path / "served"), "--data", str(ood))

        rng = np.random.default_rng(0)
        size, features = manifest["image_size"], len(manifest["numeric_columns"])
        threads = args.threads or None
        rates = {}
        for side in (size, 2 * size):  # at the training size (the pipeline's output) and needing a resize
            batches = [(rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8),
                        rng.normal(size=(64, features)).astype(np.float32)) for _ in range(args.batches)]
            rates[side] = {b: backend_rate(artifacts, b, batches, threads) for b in ("onnx", "tf")}

    print(f"demo job, {args.samples} records, {os.cpu_count()} CPUs")
    print(f"  kubefusion preprocess, cold (synth + export)  {cold:8.2f} s   (in-process stages: "
          f"{manifest['timings_seconds']})")
    print(f"  kubefusion preprocess, cache hit              {warm:8.2f} s   cold/warm = {cold / warm:.1f}x")
    print(f"  kubefusion export (demo model)                {export_s:8.2f} s   (torch.onnx.export "
          f"{exported['timings_seconds']['torch_onnx_export']} s, parity {exported['parity']['max_abs_diff']:.1e})")
    print(f"  preprocessing + model export                  {cold + export_s:8.2f} s")
    print(f"  kubefusion predict --data ood                 {predict_s:8.2f} s   "
          f"({predicted['records']} records, {predicted['records'] / predict_s:.0f} records/s end to end)")
    for side, rate in rates.items():
        print(f"  Preprocessor batches/s, 64 x {side}px -> {size}px  onnx {rate['onnx']:7.1f}   tf {rate['tf']:7.1f}   "
              f"onnx/tf = {rate['onnx'] / rate['tf']:.2f}x   (threads: {threads or 'all'})")


if __name__ == "__main__":
    main()
