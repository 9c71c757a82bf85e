"""Optimizer-step time of the multimodal classifier per precision, as ratios against fp32 in the same run.

    .venv/bin/python benchmarks/train_precision.py [--preset demo] [--batch 64] [--steps 2] [--rounds 3]
    .venv/bin/python benchmarks/train_precision.py --preset resnet50_bert_base --batch 16 --steps 3

One model per precision (fp32, bf16, fp16 with a GradScaler) is built once; each round runs ``--steps``
optimizer steps of every precision in turn (the order rotates) through the training loop's own pieces
(``precision_setup``, ``masked_cross_entropy``, AdamW, unscale, clipping) on random inputs of the preset's
shapes, and keeps each precision's median step time; rows are bf16 / fp32 and fp16 / fp32 step-time speed-ups.
Pretrained presets are built with random weights (no files needed). On CPU (the default here) this says which
precision a CPU job should use; ``benchmarks/gpu_check.py`` runs the same steps on a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import Row, describe, emit, interleave, log, paired, parser
from kubefusion import config as cfg
from kubefusion.model import build_model
from kubefusion.train.loop import masked_cross_entropy, precision_setup

COMMAND = ".venv/bin/python benchmarks/train_precision.py"
PRECISIONS = ("fp32", "bf16", "fp16")
NUMERIC_FEATURES = 6


@dataclass
class PrecisionRun:
    """One model, optimizer and batch of random inputs, stepped in one precision."""

    job: cfg.JobConfig
    precision: str
    device: torch.device
    batch: int
    peak_memory_bytes: int = 0
    """CUDA only: the most memory this run's model, optimizer and steps held (set by :meth:`steps`)."""
    _parts: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        torch.manual_seed(0)
        model = build_model(self.job.model, num_classes=8, num_numeric_features=NUMERIC_FEATURES)
        model = model.to(self.device).train()
        size, tokens, device = self.job.preprocessing.image_size, self.job.preprocessing.max_tokens, self.device
        autocast, scaler = precision_setup(self.precision, device)
        self._parts = {
            "model": model, "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-4), "autocast": autocast,
            "scaler": scaler, "before": before,
            "inputs": {"pixel_values": torch.randn(self.batch, 3, size, size, device=device),
                       "input_ids": torch.randint(1000, 2000, (self.batch, tokens), device=device),
                       "attention_mask": torch.ones(self.batch, tokens, dtype=torch.long, device=device),
                       "numeric": torch.randn(self.batch, NUMERIC_FEATURES, device=device),
                       "modality_mask": torch.ones(self.batch, 3, dtype=torch.bool, device=device)},
            "labels": torch.randint(0, 8, (self.batch,), device=device),
            "valid": torch.ones(self.batch, dtype=torch.bool, device=device)}

    def step(self) -> None:
        p = self._parts
        with p["autocast"]():
            logits = p["model"](**p["inputs"])
        p["scaler"].scale(masked_cross_entropy(logits, p["labels"], p["valid"])).backward()
        p["scaler"].unscale_(p["optimizer"])
        torch.nn.utils.clip_grad_norm_(p["model"].parameters(), 1.0)
        p["scaler"].step(p["optimizer"])
        p["scaler"].update()
        p["optimizer"].zero_grad(set_to_none=True)

    def steps(self, count: int) -> list[float]:
        """Seconds of each of ``count`` steps (the GPU finished with each before the next starts)."""
        cuda = self.device.type == "cuda"
        times = []
        for _ in range(count):
            started = time.perf_counter()
            self.step()
            if cuda:
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - started)
        if cuda:
            self.peak_memory_bytes = max(self.peak_memory_bytes,
                                         torch.cuda.max_memory_allocated(self.device) - self._parts["before"])
        return times

    def median_step(self, count: int) -> float:
        return statistics.median(self.steps(count))


def measure(job: cfg.JobConfig, device: torch.device, batch: int, *, steps: int, rounds: int,
            warmup: int = 2) -> tuple[dict[str, PrecisionRun], dict[str, list[float]]]:
    """Build every precision's run (warming each up alone, which is when its peak memory is taken), then
    interleave ``rounds`` rounds of ``steps`` steps each: {precision: [median step seconds per round]}."""
    runs = {}
    for precision in PRECISIONS:
        runs[precision] = PrecisionRun(job, precision, device, batch)
        runs[precision].steps(warmup)
    seconds = interleave({p: (lambda run=run: run.median_step(steps)) for p, run in runs.items()},
                         rounds=rounds, progress=log)
    return runs, seconds


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--preset", default="demo", choices=sorted(cfg.PRESETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="steps per precision per round")
    args = p.parse_args(argv)
    job = cfg.PRESETS[args.preset]()
    job.model.vision.pretrained = job.model.text.pretrained = False
    batch, steps, rounds = (4, 1, 1) if args.smoke else (args.batch, args.steps, args.rounds or 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        # As each rank of the demo run (2 processes x 1 thread); on a shared machine a second OpenMP thread
        # mostly adds waiting at every operator's barrier, which would drown the precision's own effect.
        torch.set_num_threads(1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    log(f"train_precision: preset {args.preset}, batch {batch}, {where}, {rounds} rounds of {steps} steps")
    _, seconds = measure(job, device, batch, steps=steps, rounds=rounds)
    rows = [Row(
        measured=f"optimizer step time in {precision}: {args.preset} model (random init), batch {batch}, {where}",
        value=f"{precision} {describe([1000 * s for s in seconds[precision]], 'ms', 1)}",
        baseline=f"fp32, same model, inputs and steps: {describe([1000 * s for s in seconds['fp32']], 'ms', 1)}",
        ratio=paired(seconds["fp32"], seconds[precision]), ratio_of=f"fp32 s / {precision} s",
        command=COMMAND if args.preset == "demo" else f"{COMMAND} --preset {args.preset}",
        note=NOTES[precision] if device.type == "cpu" else "")
        for precision in PRECISIONS[1:]]
    emit(rows, args)
    return rows


NOTES = {
    "bf16": "Whether bfloat16 autocast pays on a CPU depends on its bfloat16 units; for the demo model on this "
            "one the ratio says it. The GPU goal (AMP at least 2x fp32) is checked by benchmarks/gpu_check.py.",
    "fp16": "CPU float16 autocast has no fast kernels for these ops: it exists here so that the fp16 + "
            "GradScaler path is tested without a GPU, not to be used on CPU.",
}


if __name__ == "__main__":
    main()
