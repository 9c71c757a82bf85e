"""Optimizer-step time of the multimodal classifier per precision, as ratios against fp32 in the same run.

    .venv/bin/python benchmarks/train_precision.py                  # the demo model, batch 64, on CPU or GPU
    .venv/bin/python benchmarks/train_precision.py --preset resnet50_bert_base --batch 16 --steps 10

Each precision runs the same steps through the training loop's own pieces (``precision_setup``,
``masked_cross_entropy``, AdamW, clipping) on random inputs of the preset's shapes; warm-up steps are not timed.
Pretrained presets are built with random weights (no files needed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kubefusion import config as cfg
from kubefusion.model import build_model
from kubefusion.train.loop import masked_cross_entropy, precision_setup


def time_steps(job, precision: str, device: torch.device, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    spec = job.model
    spec.vision.pretrained = spec.text.pretrained = False
    model = build_model(spec, num_classes=8, num_numeric_features=6).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast, scaler = precision_setup(precision, device)
    size, tokens = job.preprocessing.image_size, job.preprocessing.max_tokens
    inputs = {"pixel_values": torch.randn(batch, 3, size, size, device=device),
              "input_ids": torch.randint(1000, 2000, (batch, tokens), device=device),
              "attention_mask": torch.ones(batch, tokens, dtype=torch.long, device=device),
              "numeric": torch.randn(batch, 6, device=device),
              "modality_mask": torch.ones(batch, 3, dtype=torch.bool, device=device)}
    labels = torch.randint(0, 8, (batch,), device=device)
    valid = torch.ones(batch, dtype=torch.bool, device=device)
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        with autocast():
            logits = model(**inputs)
        scaler.scale(masked_cross_entropy(logits, labels, valid)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(cfg.PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"preset {args.preset}, batch {args.batch}, device {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    results = {p: time_steps(cfg.PRESETS[args.preset](), p, device, args.batch, args.steps, args.warmup)
               for p in ("fp32", "bf16", "fp16")}
    print("| precision | step (ms) | vs fp32 |\n|---|---:|---:|")
    for precision, seconds in results.items():
        print(f"| {precision} | {1000 * seconds:.1f} | {results['fp32'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
