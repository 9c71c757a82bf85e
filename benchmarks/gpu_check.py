"""The GPU check: AMP against fp32 on the article's model, and the demo job end to end, on one GPU. One JSON.

    .venv/bin/python benchmarks/gpu_check.py > gpu-check.json          # on a machine with a CUDA GPU (< 8 min)
    .venv/bin/python benchmarks/gpu_check.py --dry-run                 # the same code path on CPU, tiny sizes

1. **Step time per precision**: the ``resnet50_bert_base`` preset (ResNet-50 + attention pooling, BERT-base,
   gated fusion; 224 px, 128 tokens) at batch 64, one model per precision (fp32, bf16, fp16 with a
   GradScaler), stepped in interleaved rounds by ``benchmarks/train_precision.py``'s ``PrecisionRun``
   (autocast, scaled loss, unscale, clipping, AdamW; synchronised after every step). Reported per precision:
   median step time, samples/s, peak CUDA memory (model, optimizer state and activations of that precision);
   and the speed-up of bf16 and fp16 over fp32 with its spread. Goal: AMP at least 2.0x fp32.
   Weights: the preset's pretrained ones when they load offline, else random init (the same step time; the
   JSON says which).
2. **The demo job end to end**: ``kubefusion run`` on ``examples/local-job.yaml`` (data synthesised,
   preprocessing exported, fused model and baselines trained under torchrun, evaluated). On a GPU the run must
   use NCCL on ``cuda``; the check reads the backend and device the trainer logged, the results it wrote, and
   probes the trainer's batch preparation: host tensors in pinned memory, copies issued non-blocking.

``--dry-run`` runs all of it on CPU at tiny sizes (the preset with the tiny built-in backbones, 2 rounds of
1 step at batch 2 and 64 px / 16 tokens; the demo job on 200 records for 2 steps in 1 process) so that
``tests/integration/test_benchmarks.py`` keeps it from rotting; the goal is not judged there. Exit status 0 when everything ran (and, on a GPU, the goal was met and the demo used
NCCL on cuda with pinned memory), 1 otherwise; the JSON always comes out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402

from harness import Spread, paired, parser  # noqa: E402
from kubefusion import config as cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = REPO / "examples" / "local-job.yaml"
AMP_GOAL = 2.0
LOGGED_RUNTIME = re.compile(r"backend (\w+), device (\S+), precision (\w+)")


def preset_job(dry_run: bool) -> tuple[cfg.JobConfig, str]:
    """The ``resnet50_bert_base`` preset with its pretrained weights when they are on disk, else random init."""
    from kubefusion.errors import UserError
    from kubefusion.model import check_model_sources

    job = cfg.resnet50_bert_base()
    if dry_run:  # the same preset code path with the tiny built-in backbones: three ResNet-50 + BERT-base
        # models with their optimizer state would take ~6 GB of a shared CPU machine's memory
        job.preprocessing.image_size, job.preprocessing.max_tokens = 64, 16
        job.model.vision.backbone, job.model.text.backbone = "builtin:resnet-tiny", "builtin:bert-tiny"
        job.model.vision.pretrained = job.model.text.pretrained = False
    try:
        check_model_sources(job.model)
        return job, "pretrained (loaded offline)"
    except UserError as exc:
        job.model.vision.pretrained = job.model.text.pretrained = False
        return job, f"random init: no local pretrained weights ({str(exc).splitlines()[0]})"


def precision_section(device: torch.device, dry_run: bool) -> dict[str, Any]:
    from train_precision import PRECISIONS, measure

    job, weights = preset_job(dry_run)
    batch, steps, rounds = (2, 1, 2) if dry_run else (64, 10, 5)
    started = time.perf_counter()
    runs, seconds = measure(job, device, batch, steps=steps, rounds=rounds, warmup=1 if dry_run else 3)
    out: dict[str, Any] = {"preset": "resnet50_bert_base", "weights": weights, "batch": batch,
                           "image_size": job.preprocessing.image_size, "max_tokens": job.preprocessing.max_tokens,
                           "rounds": rounds, "steps_per_round": steps, "precisions": {}}
    for precision in PRECISIONS:
        median = Spread.of(seconds[precision]).median
        out["precisions"][precision] = {
            "step_ms": round(1000 * median, 2),
            "step_ms_per_round": [round(1000 * s, 2) for s in seconds[precision]],
            "samples_per_s": round(batch / median, 1),
            "peak_cuda_memory_mib": round(runs[precision].peak_memory_bytes / 2**20, 1) if device.type == "cuda"
            else None}
        if precision != "fp32":
            speedup = paired(seconds["fp32"], seconds[precision])
            out["precisions"][precision]["speedup_vs_fp32"] = {
                "median": round(speedup.median, 3), "min": round(speedup.low, 3), "max": round(speedup.high, 3)}
    best = max(out["precisions"][p]["speedup_vs_fp32"]["median"] for p in ("bf16", "fp16"))
    out["amp_goal"] = {"goal": f"AMP >= {AMP_GOAL}x fp32", "best_amp_speedup": best,
                       "met": None if dry_run else best >= AMP_GOAL}
    out["seconds"] = round(time.perf_counter() - started, 1)
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def demo_job_file(folder: Path, dry_run: bool) -> Path:
    """``examples/local-job.yaml``, unchanged on a GPU; shrunk to seconds for the dry run."""
    import yaml

    doc = yaml.safe_load(DEMO_JOB.read_text())
    if dry_run:
        doc["spec"]["data"]["demoSamples"] = 200
        doc["spec"]["training"].update({"epochs": 1, "maxStepsPerEpoch": 2, "baselines": False})
        doc["spec"]["resources"]["gpusPerNode"] = 1
    doc["spec"].setdefault("monitoring", {})["metricsPort"] = 0
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def pinned_copy_probe(device: torch.device) -> dict[str, Any]:
    """What the trainer's batch preparation does on this device: pinned host tensors, non-blocking copies."""
    import numpy as np

    from kubefusion.train.prefetch import BatchPreparer

    copies: list[bool] = []
    original = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        copies.append(bool(kwargs.get("non_blocking")))
        return original(tensor, *args, **kwargs)

    batch = {"image": torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "numeric": torch.zeros(2, 3),
             "input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long),
             "modality_mask": torch.ones(2, 3, dtype=torch.bool), "label": torch.zeros(2, dtype=torch.long),
             "valid": torch.ones(2, dtype=torch.bool)}
    preparer = BatchPreparer(lambda image, numeric: (np.zeros((len(image), 3, 8, 8), np.float32), numeric), device)
    host = preparer.host(batch)
    torch.Tensor.to = recording_to
    try:
        on_device = preparer.to_device(host)
    finally:
        torch.Tensor.to = original
    return {"pinned_host_tensors": all(t.is_pinned() for t in host.values()) if device.type == "cuda" else None,
            "non_blocking_copies": bool(copies) and all(copies),
            "device": str(next(iter(on_device.values())).device)}


def demo_section(device: torch.device, dry_run: bool) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-demo-") as tmp:
        job_file, output = demo_job_file(Path(tmp), dry_run), Path(tmp) / "run"
        done = subprocess.run([sys.executable, "-m", "kubefusion", "run", str(job_file), "--local",
                               "--output", str(output)], capture_output=True, text=True)
        log_file = output / "logs" / "torchrun.log"
        logged = LOGGED_RUNTIME.search(log_file.read_text()) if log_file.exists() else None
        results_file = output / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
    fused = results.get("fused", {}).get("test", {})
    out = {"command": f"kubefusion run {DEMO_JOB.relative_to(REPO)} --local"
                      + (" (dry run: 200 records, 2 steps, 1 process)" if dry_run else ""),
           "exit_code": done.returncode, "seconds": round(time.perf_counter() - started, 1),
           "backend": logged.group(1) if logged else None, "device": logged.group(2) if logged else None,
           "precision": logged.group(3) if logged else None, "processes": results.get("processes"),
           "fused_test_top1": fused.get("top1"), "best_achievable_top1": results.get("best_achievable", {}).get("top1"),
           "batch_preparation": pinned_copy_probe(device)}
    if done.returncode != 0:
        out["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return out


def verdict(report: dict[str, Any], device: torch.device) -> bool:
    demo = report["demo_job"]
    ran = demo["exit_code"] == 0 and demo["backend"] is not None and demo["fused_test_top1"] is not None
    if device.type != "cuda":
        return ran
    probe = demo["batch_preparation"]
    return (ran and demo["backend"] == "nccl" and str(demo["device"]).startswith("cuda")
            and probe["pinned_host_tensors"] and probe["non_blocking_copies"]
            and bool(report["amp"]["amp_goal"]["met"]))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--dry-run", action="store_true", help="the same code path on CPU at tiny sizes")
    args = p.parse_args(argv)
    dry_run = args.dry_run or args.smoke
    if not dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --dry-run to exercise the check on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if dry_run else torch.device("cuda", 0)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "amp": precision_section(device, dry_run),
        "demo_job": demo_section(device, dry_run),
    }
    report["ok"] = verdict(report, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
