"""Training-step time with the exported preprocessing inline (the old path) vs prefetched, in the same run.

    .venv/bin/python benchmarks/train_prefetch.py [--image-size 224] [--batch 64] [--steps 8] [--torch-threads 1]

Builds a preprocessing artifact of the demo job at ``--image-size`` (demo data, ``kubefusion.preprocess``),
then runs the demo model's optimizer steps (forward, backward, AdamW; ``--torch-threads`` torch threads, 1 as
under torchrun) on batches of raw uint8 images and numbers, two ways:

- inline: ``Preprocessor`` with 1 onnxruntime thread (``torch.get_num_threads()`` under torchrun) called in
  the step, as the loop did before;
- prefetched: :class:`kubefusion.train.prefetch.BatchPreparer` with the threads of
  ``preprocess_threads(available_cpus(), 1)``, preparing batches ahead on a background thread.

Prints per-step median time, the time the step waits for its batch, and the ratio (inline / prefetched).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kubefusion import config as cfg  # noqa: E402


def raw_batches(count: int, batch: int, size: int, features: int):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield {"image": torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
               "numeric": torch.from_numpy(rng.normal(size=(batch, features)).astype(np.float32)),
               "input_ids": torch.from_numpy(rng.integers(1000, 2000, (batch, 24))),
               "attention_mask": torch.ones(batch, 24, dtype=torch.long),
               "modality_mask": torch.ones(batch, 3, dtype=torch.bool),
               "label": torch.from_numpy(rng.integers(0, 8, batch)), "valid": torch.ones(batch, dtype=torch.bool)}


def run(stream, model, optimizer, warmup: int) -> tuple[float, float]:
    """(median step seconds, median seconds the step waited for its inputs), warm-up steps excluded."""
    from kubefusion.train.loop import masked_cross_entropy

    steps, waits = [], []
    for i in range(10**9):
        started = time.perf_counter()
        try:
            inputs = next(stream)
        except StopIteration:
            break
        waited = time.perf_counter() - started
        labels, valid = inputs.pop("label"), inputs.pop("valid")
        masked_cross_entropy(model(**inputs), labels, valid).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            steps.append(time.perf_counter() - started)
            waits.append(waited)
    return statistics.median(steps), statistics.median(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()

    from kubefusion.model import build_model
    from kubefusion.preprocess.export import prepare
    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train.prefetch import BatchPreparer, available_cpus, preprocess_threads

    torch.set_num_threads(args.torch_threads)
    job = cfg.demo()
    job.preprocessing.image_size = args.image_size
    job.data.demo_samples = 400
    with tempfile.TemporaryDirectory() as tmp:
        from kubefusion.data.synth import ensure_demo_data

        data = ensure_demo_data(Path(tmp) / "data", job.data.demo_samples, job.data.demo_seed)
        prepare(job, Path(tmp) / "artifacts", data_root=data)
        threads = preprocess_threads(available_cpus(), 1)
        inline_pre = Preprocessor.load(Path(tmp) / "artifacts", threads=1)
        ahead_pre = Preprocessor.load(Path(tmp) / "artifacts", threads=threads)
        features = len(inline_pre.manifest["numeric_columns"])
        cpu = torch.device("cpu")
        results = {}
        for name, preprocessor in (("inline", inline_pre), ("prefetched", ahead_pre)):
            torch.manual_seed(0)
            model = build_model(job.model, num_classes=8, num_numeric_features=features).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            preparer = BatchPreparer(preprocessor, cpu)
            batches = raw_batches(args.warmup + args.steps, args.batch, args.image_size, features)
            stream = map(preparer, batches) if name == "inline" else preparer.stream(batches)
            results[name] = run(stream, model, optimizer, args.warmup)
    print(f"{args.image_size} px, batch {args.batch}, {args.torch_threads} torch thread(s), CPUs available "
          f"{available_cpus()}, onnxruntime threads: inline 1, prefetched {threads}")
    for name, (step, wait) in results.items():
        print(f"  {name:>10}: step {1000 * step:7.1f} ms (median), of which waiting for the batch {1000 * wait:6.1f} ms")
    print(f"  step time inline / prefetched: {results['inline'][0] / results['prefetched'][0]:.2f}x; "
          f"data wait inline / prefetched: {results['inline'][1] / max(1e-9, results['prefetched'][1]):.1f}x")


if __name__ == "__main__":
    main()
