"""Training-step time with the exported preprocessing inline (the old path) vs prefetched, interleaved.

    .venv/bin/python benchmarks/train_prefetch.py [--image-size 224] [--batch 32] [--steps 3] [--rounds 3]

Builds the demo job's preprocessing artifact at ``--image-size`` (demo data, ``kubefusion.preprocess``), then
steps the demo model (forward, backward, AdamW; 1 torch thread, as each rank of a torchrun job) on batches of
raw uint8 images and numbers, two ways, one model each, alternating round by round:

- inline: ``Preprocessor`` with 1 onnxruntime thread called in the step, as the loop did before;
- prefetched: :class:`kubefusion.train.prefetch.BatchPreparer` with the threads of
  ``preprocess_threads(available_cpus(), 1)``, preparing batches ahead on a background thread.

Row: inline / prefetched median step time; the time each step waited for its batch is in the notes.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from demo_setup import demo_artifacts  # noqa: E402
from harness import Row, cpus, describe, emit, interleave, log, paired, parser  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/train_prefetch.py"


def raw_batches(count: int, batch: int, size: int, features: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {"image": torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
               "numeric": torch.from_numpy(rng.normal(size=(batch, features)).astype(np.float32)),
               "input_ids": torch.from_numpy(rng.integers(1000, 2000, (batch, 24))),
               "attention_mask": torch.ones(batch, 24, dtype=torch.long),
               "modality_mask": torch.ones(batch, 3, dtype=torch.bool),
               "label": torch.from_numpy(rng.integers(0, 8, batch)), "valid": torch.ones(batch, dtype=torch.bool)}


class Stepper:
    """One model and optimizer, stepped over a stream of prepared inputs."""

    def __init__(self, job, features: int):
        from kubefusion.model import build_model

        torch.manual_seed(0)
        self.model = build_model(job.model, num_classes=8, num_numeric_features=features).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.waits: list[float] = []

    def run(self, stream, keep_waits: bool = True) -> float:
        """Median seconds per step over ``stream``; the time each step blocked on its inputs goes to waits."""
        from kubefusion.train.loop import masked_cross_entropy

        steps = []
        while True:
            started = time.perf_counter()
            try:
                inputs = next(stream)
            except StopIteration:
                return statistics.median(steps)
            if keep_waits:
                self.waits.append(time.perf_counter() - started)
            labels, valid = inputs.pop("label"), inputs.pop("valid")
            masked_cross_entropy(self.model(**inputs), labels, valid).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            steps.append(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps per path per round")
    args = p.parse_args(argv)
    size, batch, steps, rounds = (32, 4, 2, 1) if args.smoke else (args.image_size, args.batch, args.steps,
                                                                   args.rounds or 3)

    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train.prefetch import BatchPreparer, available_cpus, preprocess_threads

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-prefetch-") as tmp:
        demo = demo_artifacts(Path(tmp), samples=400, image_size=size)
        threads = preprocess_threads(available_cpus(), 1)
        inline = BatchPreparer(Preprocessor.load(demo.artifacts, threads=1), torch.device("cpu"))
        ahead = BatchPreparer(Preprocessor.load(demo.artifacts, threads=threads), torch.device("cpu"))
        features = len(inline.preprocess.manifest["numeric_columns"])
        steppers = {"inline": Stepper(demo.job, features), "prefetched": Stepper(demo.job, features)}
        seeds = iter(range(10**6))
        warmed = dict.fromkeys(steppers, False)

        def trial(name: str) -> float:
            # one extra batch first: the prefetch thread's start and the first step's allocations are not timed
            batches = raw_batches(steps + 1, batch, size, features, next(seeds))
            stream = map(inline, batches) if name == "inline" else ahead.stream(batches)
            stepper = steppers[name]
            next(stream)
            if not warmed[name]:  # the warm-up round's waits are not kept either
                warmed[name] = True
                return stepper.run(stream, keep_waits=False)
            return stepper.run(stream)

        log(f"train_prefetch: {size} px, batch {batch}, {rounds} rounds of {steps} steps, onnxruntime threads: "
            f"inline 1, prefetched {threads}")
        seconds = interleave({"inline": lambda: trial("inline"), "prefetched": lambda: trial("prefetched")},
                             rounds=rounds, warmup=1, progress=log)
    waits = {name: 1000 * statistics.median(s.waits) for name, s in steppers.items()}
    row = Row(
        measured=f"training step time, exported preprocessing prefetched on a background thread "
                 f"({threads} onnxruntime threads): demo model at {size} px, batch {batch}, 1 torch thread, "
                 f"{cpus()} cores",
        value=f"prefetched {describe([1000 * s for s in seconds['prefetched']], 'ms', 1)}",
        baseline=f"preprocessing inline in the step (1 onnxruntime thread): "
                 f"{describe([1000 * s for s in seconds['inline']], 'ms', 1)}",
        ratio=paired(seconds["inline"], seconds["prefetched"]), ratio_of="inline s / prefetched s",
        command=COMMAND,
        note=f"Median wait for the batch: inline {waits['inline']:.1f} ms, prefetched {waits['prefetched']:.1f} ms "
             f"per step. With the model on a GPU the prefetched work overlaps the GPU's; on a CPU it competes "
             f"with the step for the same cores.")
    emit([row], args)
    return [row]


if __name__ == "__main__":
    main()
