"""DDP on CPU: 2 gloo processes x 1 thread against 1 process x 2 threads, same global batch, time per epoch.

    .venv/bin/python benchmarks/ddp_cpu.py [--rounds 2] [--epochs 1] [--samples 1000] [--json] [--smoke]

The demo job on its synthesised data (preprocessing exported once), launched as ``kubefusion run --local``
launches it: ``torchrun --nproc-per-node N`` with the environment of ``kubefusion.local.child_environment``
(``OMP_NUM_THREADS`` and TensorFlow's thread counts = cores / N):

- **ddp**: 2 processes x 1 thread, gloo, ``batchSizePerGPU: 64`` (the demo's own setting): global batch 128;
- **single**: 1 process x 2 threads (torchrun, a process group of one), ``batchSizePerGPU: 128``, with
  ``OMP_WAIT_POLICY=PASSIVE`` as ``kubefusion run --local`` sets it on CPU (idle OpenMP threads sleep);
- **single, spinning**: the same without ``OMP_WAIT_POLICY`` (OpenMP's default: idle threads spin for a while
  before they sleep), which is what the local run did before it set the policy.

Each launch loads the data and the preprocessing once, trains a 2-step warm-up run, then ``--epochs`` fresh
one-epoch runs of the fused model (``train_stage``: tf.data reading, prefetched preprocessing, DDP,
validation, the epoch-end checkpoint and model.pt), each timed between barriers; their median is the launch's
time per epoch. Launches rotate (ddp, single, spinning; single, spinning, ddp; ...); a round's ratio is single /
ddp seconds per epoch, so above 1 means the two processes win.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import Row, cpus, describe, emit, interleave, log, paired, parser  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/ddp_cpu.py"
GLOBAL_BATCH = 128
RESULT = "ddp-epoch-seconds: "


def worker(config: Path, artifacts: Path, output: Path, epochs: int) -> None:
    """One rank under torchrun: time ``epochs`` + 1 one-epoch trainings of the fused model."""
    from kubefusion import config as cfg
    from kubefusion.data.tokenizer import load_tokenizer
    from kubefusion.preprocess.artifact import TOKENIZER_DIR
    from kubefusion.preprocess.runtime import Preprocessor
    from kubefusion.train import distributed
    from kubefusion.train.data import load_training_data
    from kubefusion.train.loop import Session, Stage, train_stage
    from kubefusion.train.prefetch import available_cpus, preprocess_threads
    from kubefusion.train.recipe import make_prepare

    job = cfg.load_job_file(config)
    runtime = distributed.setup(job.training.collective_timeout_seconds)
    try:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        preprocessor = Preprocessor.load(artifacts, threads=preprocess_threads(available_cpus(), local_ranks))
        data = load_training_data(job, job.data_dir, manifest=preprocessor.manifest,
                                  tokenizer=load_tokenizer(str(preprocessor.artifact_dir / TOKENIZER_DIR)),
                                  rank=runtime.rank, world_size=runtime.world_size,
                                  artifact_dir=preprocessor.artifact_dir)
        seconds = []
        warm_up = cfg.job_from_dict(cfg.job_to_dict(job))
        warm_up.training.max_steps_per_epoch = 2
        for run in range(epochs + 1):
            session = Session(job=warm_up if run == 0 else job, runtime=runtime, data=data,
                              prepare=make_prepare(preprocessor, runtime.device), output=output / f"run-{run}",
                              artifact_info={"content_key": preprocessor.content_key, "classes": data.classes,
                                             "numeric_columns": data.numeric_columns})
            distributed.barrier()
            started = time.perf_counter()
            train_stage(session, Stage("fused", cfg.MODALITIES, 0))
            distributed.barrier()
            seconds.append(time.perf_counter() - started)
        if runtime.is_main:
            print(RESULT + json.dumps(seconds[1:]), flush=True)
    finally:
        distributed.teardown()


def launch(processes: int, demo, folder: Path, epochs: int, *, spinning: bool = False) -> float:
    """Median seconds per epoch of one torchrun launch with ``processes`` ranks sharing this machine's cores."""
    import yaml

    from kubefusion import config as cfg
    from kubefusion.local import LocalPlan, child_environment, free_port

    job = cfg.job_from_dict(cfg.job_to_dict(demo.job))
    job.training.epochs, job.training.baselines = 1, False
    job.training.batch_size_per_gpu = GLOBAL_BATCH // processes
    job.monitoring.metrics_port = 0
    config = folder / f"job-{processes}.yaml"
    config.write_text(yaml.safe_dump(cfg.job_to_dict(job)))
    plan = LocalPlan(processes, "cpu", "gloo", max(1, cpus() // processes))
    output = Path(tempfile.mkdtemp(prefix=f"ddp-{processes}x-", dir=folder))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--max-restarts", "0",
               __file__, "--worker", "--config", str(config), "--artifacts", str(demo.artifacts),
               "--output", str(output), "--epochs", str(epochs)]
    env = child_environment(plan, job, {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    if spinning:
        env.pop("OMP_WAIT_POLICY")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"ddp_cpu: the {processes}-process launch failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return statistics.median(json.loads(lines[-1][len(RESULT):]))


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=1, help="timed one-epoch runs per launch (after the warm-up)")
    p.add_argument("--samples", type=int, default=1000, help="demo records")
    p.add_argument("--without-spinning", action="store_true",
                   help="leave out the third launch (OpenMP's default wait policy) and its row: make bench's budget")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.config, args.artifacts, args.output, args.epochs)
        return []

    from demo_setup import demo_artifacts

    samples, epochs, rounds = (400, 1, 1) if args.smoke else (args.samples, args.epochs, args.rounds or 2)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        demo = demo_artifacts(Path(tmp), samples=samples)
        trials = {"ddp": lambda: launch(2, demo, Path(tmp), epochs),
                  "single": lambda: launch(1, demo, Path(tmp), epochs),
                  "spinning": lambda: launch(1, demo, Path(tmp), epochs, spinning=True)}
        if args.without_spinning or args.smoke:  # smoke: "single" but for one variable, not worth a third start-up
            del trials["spinning"]
        log(f"ddp_cpu: demo job, {samples} records, global batch {GLOBAL_BATCH}, {rounds} rounds of "
            f"{len(trials)} launches")
        seconds = interleave(trials, rounds=rounds, progress=log)
    ratio = paired(seconds["single"], seconds["ddp"])
    winner = "2 processes x 1 thread win" if ratio.median > 1 else "1 process x 2 threads wins"
    measured = (f"seconds per epoch: demo job, {samples} records (70% train, validation each epoch), global batch "
                f"{GLOBAL_BATCH}, {cpus()} cores; 2 gloo processes x 1 thread, batchSizePerGPU {GLOBAL_BATCH // 2}")
    rows = [
        Row(measured=measured, value=f"ddp {describe(seconds['ddp'], 's', 2)}",
            baseline=f"1 process x 2 threads, batchSizePerGPU {GLOBAL_BATCH}, as kubefusion run --local runs it "
                     f"(OMP_WAIT_POLICY=PASSIVE): {describe(seconds['single'], 's', 2)}",
            ratio=ratio, ratio_of="single s / ddp s", command=COMMAND,
            note=f"{winner} here. {WHY}")]
    if "spinning" in seconds:
        spinning = paired(seconds["spinning"], seconds["ddp"])
        rows.append(Row(measured=measured, value=f"ddp {describe(seconds['ddp'], 's', 2)}",
                        baseline=f"1 process x 2 threads with OpenMP's default wait policy (idle threads spin): "
                                 f"{describe(seconds['spinning'], 's', 2)}",
                        ratio=spinning, ratio_of="single (spinning) s / ddp s", command=COMMAND,
                        note=SPINNING if spinning.median > 1.5 * ratio.median else NOT_SPINNING))
    emit(rows, args)
    return rows


WHY = ("Two single-threaded processes each run the whole step on their half of the batch and meet once, in the "
       "gloo all-reduce of the gradients over loopback, and each reads and preprocesses its own half of the data; "
       "one process with two threads does no all-reduce and reads everything once, but splits every operator "
       "(small convolutions and matmuls at 32 px) between its threads, which meet at its end: hundreds of "
       "barriers per step.")
SPINNING = ("What the local run did before it set OMP_WAIT_POLICY=PASSIVE: at every barrier the idle OpenMP thread "
            "spins on its core, and on a machine shared with other work the thread it waits for is often "
            "descheduled, so the spinning burns the very core that thread needs.")
NOT_SPINNING = "OpenMP's default (spinning) wait policy does not change this much here."


if __name__ == "__main__":
    main()
