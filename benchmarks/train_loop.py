"""The training loop as a real run drives it against a bare torch loop: same model, batches and precision.

    .venv/bin/python benchmarks/train_loop.py [--rounds 5] [--steps 30] [--json] [--smoke]

The demo job (its model, batch 64, fp32, ``checkpointEverySteps: 20``, ``logEverySteps: 10``) on its
synthesised data, in one process set up as each of the demo run's two ranks is (``kubefusion run --local`` on
2 cores: 1 torch thread, 1 onnxruntime thread). The data
batches (raw uint8 images, tokens, raw numbers) are read once by the tf.data pipeline and kept in memory, so
both sides get the very same batches and neither pays for decoding (the pipeline has its own row). Per round:

- **loop**: ``kubefusion.train.loop.train_stage`` for one epoch of ``--steps`` steps into a fresh output
  folder: model set-up, the exported preprocessing applied through onnxruntime on the prefetch thread, per-step
  reseeding, on-device loss/accuracy sums, the per-step log, Prometheus metrics, TensorBoard, live progress
  (``status.json``), a checkpoint every 20 steps and at the epoch end, ``model.pt``; no validation split
  (evaluation is not a training step);
- **bare**: the same model built the same way, the same AdamW parameter groups, warm-up + cosine schedule,
  precision and gradient clipping, stepping through the same batches already preprocessed: nothing else.

Rows: loop steps/s / bare steps/s (goal: at least 0.95), and bare / loop CPU seconds of the whole process (every
thread: the prefetch, the checkpoint writer, TensorBoard's and the progress reporter's), which a busy machine
does not blur.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402

from demo_setup import demo_artifacts  # noqa: E402
from harness import Goal, Row, cpus, describe, emit, interleave, log, paired, parser, timed  # noqa: E402
from kubefusion import config as cfg  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/train_loop.py"


class InMemoryData:
    """The ``TrainingData`` interface over batches read once: every epoch yields the same ones."""

    def __init__(self, batches: list[dict], classes: list[str], numeric_columns: list[str]):
        self._batches, self.classes, self.numeric_columns = batches, classes, numeric_columns
        self.splits = {"train": batches}

    def batches_per_epoch(self, split: str = "train") -> int:
        return len(self._batches)

    def batches(self, split: str, *, epoch: int = 0, skip: int = 0, limit: int | None = None):
        return iter(self._batches[skip:limit])


def read_batches(demo, steps: int) -> tuple[list[dict], list[str], list[str]]:
    from kubefusion.data import load_tokenizer, scan
    from kubefusion.data.pipeline import encode_records, torch_batches

    job = demo.job
    scanned = scan(job.data, demo.data, verify_images=False)
    encoded = encode_records(scanned.records, tokenizer=load_tokenizer(job.preprocessing.tokenizer),
                             max_tokens=job.preprocessing.max_tokens)
    batches = []
    for batch in torch_batches(encoded, image_size=job.preprocessing.image_size,
                               batch_size=job.training.batch_size_per_gpu, seed=0, epoch=0):
        if len(batch["label"]) == job.training.batch_size_per_gpu:
            batches.append({k: v.clone() for k, v in batch.items() if k != "index"})
        if len(batches) == steps:
            break
    return batches, scanned.classes, scanned.numeric_columns


def bare_loop(job: cfg.JobConfig, inputs: list[dict], classes: list[str], features: int) -> None:
    """What a torch user writes for the same recipe: model, AdamW groups, schedule, autocast, clip, step."""
    from kubefusion.model import build_model
    from kubefusion.train.loop import masked_cross_entropy, precision_setup, step_seed
    from kubefusion.train.optim import build_optimizer, build_scheduler, freeze_backbones

    training = job.training
    torch.manual_seed(step_seed(training.seed, 0, 0, 0))
    model = build_model(job.model, num_classes=len(classes), num_numeric_features=features)
    freeze_backbones(model, job.model)
    optimizer = build_optimizer(model, job.model, training)
    scheduler = build_scheduler(optimizer, len(inputs), training)
    autocast, scaler = precision_setup(training.precision, torch.device("cpu"))
    model.train()
    for batch in inputs:
        batch = dict(batch)
        labels, valid = batch.pop("label"), batch.pop("valid")
        with autocast():
            logits = model(**batch)
        scaler.scale(masked_cross_entropy(logits, labels, valid)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()


def real_loop(job: cfg.JobConfig, data: InMemoryData, preprocessor, metrics, output: Path) -> None:
    """``train_stage`` with everything a ``kubefusion train`` process gives it."""
    from kubefusion.train.distributed import Runtime
    from kubefusion.train.loop import Session, Stage, stage_steps, train_stage
    from kubefusion.train.progress import start_progress
    from kubefusion.train.recipe import make_prepare, tensorboard_writers

    runtime = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    tensorboard, writers = tensorboard_writers(output)
    progress = start_progress(["fused"], stage_steps(data, job.training)[2], job.training.epochs, output)
    session = Session(job=job, runtime=runtime, data=data, prepare=make_prepare(preprocessor, runtime.device),
                      output=output, metrics=metrics, tensorboard=tensorboard, progress=progress,
                      artifact_info={"content_key": preprocessor.content_key, "classes": data.classes,
                                     "numeric_columns": data.numeric_columns})
    try:
        train_stage(session, Stage("fused", cfg.MODALITIES, 0))
    finally:
        for writer in writers.values():
            writer.close()
        progress.close()


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per round (one epoch)")
    args = p.parse_args(argv)
    steps, rounds, samples = (4, 1, 400) if args.smoke else (args.steps, args.rounds or 5, 4000)

    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train.metrics import TrainerMetrics
    from kubefusion.train.prefetch import available_cpus, preprocess_threads
    from kubefusion.train.recipe import make_prepare

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        demo = demo_artifacts(Path(tmp), samples=samples)
        job = demo.job
        job.training.epochs, job.training.baselines = 1, False
        if args.smoke:
            job.training.checkpoint_every_steps, job.training.log_every_steps = 2, 2
        batches, classes, columns = read_batches(demo, steps)
        data = InMemoryData(batches, classes, columns)
        # As one of the demo run's two ranks on this machine (local.child_environment, recipe.run_recipe).
        torch.set_num_threads(max(1, cpus() // 2))
        preprocessor = Preprocessor.load(demo.artifacts, threads=preprocess_threads(available_cpus(), 2))
        prepare = make_prepare(preprocessor, torch.device("cpu"))
        inputs = [prepare(b) for b in batches]
        metrics = TrainerMetrics(namespace="bench", job_name="bench", rank=0, port=None)
        outputs = iter(range(10**6))
        cpu: dict[str, list[float]] = {"loop": [], "bare": []}

        def trial(name: str, run) -> float:
            """Wall seconds of ``run``; its CPU seconds (every thread of this process) go to ``cpu``."""
            started_cpu = time.process_time()
            wall = timed(run)
            cpu[name].append(time.process_time() - started_cpu)
            return wall

        log(f"train_loop: demo model, {len(batches)} steps of {job.training.batch_size_per_gpu}, "
            f"{torch.get_num_threads()} torch threads, {rounds} rounds")
        written: list[int] = []

        def loop_trial() -> float:
            output = Path(tmp) / f"run-{next(outputs)}"
            wall = trial("loop", lambda: real_loop(job, data, preprocessor, metrics, output))
            written.append(sum(f.stat().st_size for f in [*output.glob("checkpoints/fused/step-*.pt"),
                                                          output / "model.pt"]))
            return wall

        seconds = interleave({"loop": loop_trial,
                              "bare": lambda: trial("bare", lambda: bare_loop(job, inputs, classes, len(columns)))},
                             rounds=rounds, warmup=1, progress=log)
    cpu = {name: values[1:] for name, values in cpu.items()}  # the warm-up round's are dropped too
    steps_per_s = {name: [len(batches) / s for s in values] for name, values in seconds.items()}
    every = job.training.checkpoint_every_steps
    measured = (f"training loop: demo model, batch {job.training.batch_size_per_gpu}, {job.training.precision}, "
                f"{len(batches)} steps (one epoch), one rank of the demo run ({torch.get_num_threads()} torch "
                f"thread), {cpus()} cores")
    baseline = ("bare torch loop, same model, AdamW groups, schedule, clipping and batches (preprocessed "
                "beforehand)")
    row = Row(
        measured=f"{measured}: steps/s", value=f"loop {describe(steps_per_s['loop'], 'steps/s', 1)}",
        baseline=f"{baseline}: {describe(steps_per_s['bare'], 'steps/s', 1)}",
        ratio=paired(steps_per_s["loop"], steps_per_s["bare"]), ratio_of="loop / bare", goal=Goal(">=", 0.95),
        command=COMMAND,
        note=f"The loop also preprocesses every batch (onnxruntime, prefetch thread), writes a checkpoint every "
             f"{every} steps and at the epoch end plus model.pt (on a background thread), and logs every step "
             f"(steps log, Prometheus, TensorBoard, status.json).",
        if_missed=f"on a machine whose cores are all busy, steps/s follows CPU seconds: the next row gives the "
                  f"CPU the loop's own work takes, much of it writing {max(written) / 1e6:.0f} MB of checkpoints and "
                  f"model.pt per epoch of {len(batches)} steps (the last checkpoint and model.pt while the loop "
                  f"waits for them at its end); see docs/benchmarks.md.")
    cpu_row = Row(
        measured=f"{measured}: CPU seconds of the whole process (every thread), per epoch",
        value=f"loop {describe(cpu['loop'], 's', 2)}", baseline=f"{baseline}: {describe(cpu['bare'], 's', 2)}",
        ratio=paired(cpu["bare"], cpu["loop"]), ratio_of="bare CPU s / loop CPU s", command=COMMAND,
        note="CPU time does not depend on how busy the machine is: this is the bookkeeping's own cost.")
    emit([row, cpu_row], args)
    return [row, cpu_row]


if __name__ == "__main__":
    main()
