"""What live progress reporting costs the training loop: the same stage trained without any progress, with
progress going to a live endpoint, to an endpoint that never answers, and to one that refuses, in one run.

    .venv/bin/python benchmarks/train_progress.py [--samples 2000] [--epochs 1] [--rounds 5] [--json]
    .venv/bin/python benchmarks/train_progress.py --smoke    # tiny and quick: what its test runs

One process (no torchrun), the tiny demo model, demo data synthesised into a temporary folder (removed at the
end). Every run trains the fused stage from scratch in a fresh output folder (rank 0's status.json is written
in all but the run without progress); a warm-up round is discarded, then the rounds rotate the variants'
order (harness.interleave) so that a machine that gets busier hurts all alike. One row per endpoint: its wall
time as the median of per-round ratios to the same round's run without progress; the notes add the training
thread's CPU seconds as the same kind of ratio (torch on one thread, so the step's compute runs there; other
processes on a shared machine change wall time far more than this thread's CPU time), the time the loop spent
in its progress calls and the longest such call, and what one report costs alone (1,000 handed over back to
back). Reports are offered at every step and sent every 0.5 s at most, 20 times more often than in a pod
(10 s), so that any cost shows.

- live endpoint: answers 202 at once (the operator up);
- wedged endpoint: accepts connections and never answers (a NetworkPolicy that drops the traffic): each
  report waits out its 5 s timeout on the sender thread, never on the loop;
- refused endpoint: nothing listens (the operator down or restarting, a Service without endpoints).

The last report's bounded wait at the end of a run (KUBEFUSION_PROGRESS_FINAL_TIMEOUT_SECONDS, 10 s by
default) is set to 0 here and is not in the timed part: it is paid once per run, after training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import yaml  # noqa: E402
from harness import Row, cpus, describe, emit, interleave, log, paired, parser  # noqa: E402

from kubefusion.config import load_job_file  # noqa: E402
from kubefusion.data.synth import ensure_demo_data  # noqa: E402
from kubefusion.data.tokenizer import load_tokenizer  # noqa: E402
from kubefusion.preprocess.export import prepare  # noqa: E402
from kubefusion.preprocess.runtime import Preprocessor  # noqa: E402
from kubefusion.train import distributed  # noqa: E402
from kubefusion.train import progress as live  # noqa: E402
from kubefusion.train.data import load_training_data  # noqa: E402
from kubefusion.train.loop import Session, Stage, stage_steps, train_stage  # noqa: E402
from kubefusion.train.recipe import make_prepare  # noqa: E402


def job_document(data: Path, epochs: int) -> dict:
    return {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "bench"},
            "spec": {"data": {"path": str(data), "validationFraction": 0.1, "testFraction": 0.1},
                     "preprocessing": {"imageSize": 32, "tokenizer": "builtin:minilm", "maxTokens": 16},
                     "model": {"vision": {"backbone": "builtin:resnet-tiny", "pretrained": False},
                               "text": {"backbone": "builtin:bert-tiny", "pretrained": False, "pooling": "mean"},
                               "numeric": {"hidden": [16]}, "fusion": {"type": "concat", "hidden": 32},
                               "embedDim": 16},
                     "training": {"epochs": epochs, "batchSizePerGPU": 16, "precision": "fp32", "baselines": False,
                                  "logEverySteps": 1, "checkpointEverySteps": 10_000, "exportOnnx": False},
                     "resources": {"gpusPerNode": 1}, "monitoring": {"metricsPort": 0}}}


LIVE_ENDPOINT = """
import signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
received, lock = 0, threading.Lock()


class Live(BaseHTTPRequestHandler):
    def do_POST(self):
        global received
        self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            received += 1
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    print(received, flush=True)
    sys.exit(0)


server = ThreadingHTTPServer(("127.0.0.1", 0), Live)
signal.signal(signal.SIGTERM, stop)
print(server.server_port, flush=True)
server.serve_forever()
"""
"""An endpoint that answers 202 at once; it runs in a process of its own, as the operator does, so that its
request handling does not compete with the training loop for this interpreter. Prints its port, then, when
terminated, how many reports it received."""


class TimedProgress:
    """The run's Progress, with the time the training loop spends in each of its calls (handing a report over:
    the tracker's arithmetic, a lock, waking the sender threads). A loop that waited for a send would show it
    here as a call of seconds."""

    def __init__(self, progress: live.Progress) -> None:
        self.progress, self.seconds, self.longest, self.calls = progress, 0.0, 0.0, 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.progress, name)
        if not callable(attribute):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                self.seconds, self.longest, self.calls = self.seconds + took, max(self.longest, took), self.calls + 1
        return timed


def wedged_endpoint() -> tuple[socket.socket, list]:
    """A listener that accepts and never answers; the accepted connections are kept (and counted)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, held


def refused_endpoint() -> socket.socket:
    """A port nothing listens on: bound and never listened, so that no one else takes it meanwhile."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    return closed


COMMAND = ".venv/bin/python benchmarks/train_progress.py"
VARIANTS = {"live endpoint": "an endpoint that answers 202 at once (the operator up)",
            "wedged endpoint": "an endpoint that accepts and never answers (a NetworkPolicy dropping the traffic)",
            "refused endpoint": "an endpoint that refuses (the operator down, a Service without endpoints)"}


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=2000, help="demo records (101 steps of batch 16 at 2000)")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs = 120, 1
    args.rounds = 1 if args.smoke else (args.rounds or 5)
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="kubefusion-progress-bench-"))
    try:
        summary = measure(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = rows_of(summary)
    emit(rows, args)
    return rows


def rows_of(summary: dict) -> list[Row]:
    """One row per endpoint: its training wall time against the same round's run without progress; the notes
    say what the wall time hides (the training thread's CPU, the loop's longest progress call)."""
    base = summary["variants"]["none"]
    cost = summary["hand_over"]
    rows = []
    for name, description in VARIANTS.items():
        variant = summary["variants"][name]
        waited = (f" {summary['wedged_connections']} request(s) held unanswered, each waiting out its 5 s timeout "
                  f"on the sender thread." if name == "wedged endpoint" else "")
        rows.append(Row(
            measured=f"training with live progress to {description}: the demo model's fused stage, "
                     f"{summary['steps']} steps of batch 16, a report every step (sent every 0.5 s at most), "
                     f"1 torch thread, {cpus()} cores, wall s",
            value=describe(variant["walls"], "s", 1),
            baseline=f"the same training without progress: {describe(base['walls'], 's', 1)}",
            ratio=paired(variant["walls"], base["walls"]), ratio_of="with progress s / without s",
            command=COMMAND,
            note=f"Training thread CPU: {paired(variant['cpus'], base['cpus']).format()} of the run without "
                 f"progress. The loop's longest progress call {variant['longest_call_ms']:.1f} ms, "
                 f"{1000 * statistics.median(variant['in_calls_s']):.0f} ms in all per run (one report handed "
                 f"over alone: {cost['cpu_us']:.0f} µs CPU, {cost['wall_us']:.0f} µs wall). Reports delivered "
                 f"{variant['delivered']}, failed {variant['failed']}.{waited}",
            details={**variant, "steps": summary["steps"], "hand_over": cost,
                     "wedged_connections": summary["wedged_connections"],
                     "live_received": summary["live_received"]}))
    return rows


def hand_over_cost(root: Path, url: str, calls: int = 1000) -> dict:
    """What one report costs the loop with no training around it: ``calls`` steps reported back to back to a
    Progress whose endpoint refuses, in microseconds per call (wall, and this thread's CPU)."""
    env = {live.ENV_URL: url, live.ENV_INTERVAL: "0.5", live.ENV_FINAL_TIMEOUT: "0"}
    progress = live.start_progress(["fused"], calls, 1, root / "hand-over", env=env)
    progress.stage_started("fused", 0, 0)
    started, started_cpu = time.perf_counter(), time.thread_time()
    for step in range(1, calls + 1):
        progress.steps_done(step, 0, 100.0)
    wall, used = time.perf_counter() - started, time.thread_time() - started_cpu
    progress.close()
    return {"calls": calls, "wall_us": round(1e6 * wall / calls, 1), "cpu_us": round(1e6 * used / calls, 1)}


def measure(root: Path, args: argparse.Namespace) -> dict:
    data = ensure_demo_data(root / "data", args.samples, 0)
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_document(data, args.epochs)))
    job = load_job_file(job_file)
    prepare(job, root / "artifacts", data_root=data)
    runtime = distributed.setup(60)
    pre = Preprocessor.load(root / "artifacts")
    training = load_training_data(job, data, manifest=pre.manifest,
                                  tokenizer=load_tokenizer(str(pre.artifact_dir / "tokenizer")), rank=0,
                                  world_size=1, artifact_dir=pre.artifact_dir)
    steps = stage_steps(training, job.training)[2]

    server = subprocess.Popen([sys.executable, "-c", LIVE_ENDPOINT], stdout=subprocess.PIPE, text=True)
    live_port = int(server.stdout.readline())
    listener, held = wedged_endpoint()
    refusing = refused_endpoint()
    endpoints = {"none": None, "live endpoint": f"http://127.0.0.1:{live_port}/p",
                 "wedged endpoint": f"http://127.0.0.1:{listener.getsockname()[1]}/p",
                 "refused endpoint": f"http://127.0.0.1:{refusing.getsockname()[1]}/p"}
    runs: dict[str, list[dict]] = {name: [] for name in endpoints}
    """Every run's figures per variant, warm-up first (interleave keeps the rounds' wall times only)."""

    def run(name: str) -> float:
        output = root / f"{name.replace(' ', '-')}-{len(runs[name])}"
        progress = None
        if endpoints[name] is not None:
            env = {live.ENV_URL: endpoints[name], live.ENV_INTERVAL: "0.5", live.ENV_FINAL_TIMEOUT: "0"}
            progress = TimedProgress(live.start_progress(["fused"], steps, job.training.epochs, output, env=env))
        session = Session(job=job, runtime=runtime, data=training, prepare=make_prepare(pre, runtime.device),
                          output=output, progress=progress,
                          artifact_info={"content_key": pre.content_key, "classes": training.classes,
                                         "numeric_columns": training.numeric_columns})
        started, started_cpu = time.perf_counter(), time.thread_time()
        train_stage(session, Stage("fused", ("image", "text", "numeric"), 0))
        figures = {"wall": time.perf_counter() - started, "cpu": time.thread_time() - started_cpu}
        if progress is not None:
            progress.progress.close()  # after training, and not timed as the loop's: it may wait for the send
            endpoint = progress.publisher.threads[1]
            figures.update(delivered=endpoint.delivered, failed=endpoint.failures, calls=progress.calls,
                           in_calls=progress.seconds, longest=progress.longest)
        runs[name].append(figures)
        return figures["wall"]

    warmup = 0 if args.smoke else 1  # first-call costs (allocator, kernels' first use) hurt no variant
    try:
        hand_over = hand_over_cost(root, endpoints["refused endpoint"])
        log(f"train_progress: {steps} steps per run, {args.rounds} rounds after {warmup} warm-up")
        interleave({name: (lambda name=name: run(name)) for name in endpoints}, rounds=args.rounds, warmup=warmup,
                   progress=log)
    finally:
        server.terminate()
        received = int(server.communicate(timeout=30)[0] or -1)
        listener.close()
        refusing.close()

    variants = {}
    for name, every in runs.items():
        kept = every[warmup:]
        variants[name] = {"walls": [r["wall"] for r in kept], "cpus": [r["cpu"] for r in kept],
                          "delivered": sum(r.get("delivered", 0) for r in kept),
                          "failed": sum(r.get("failed", 0) for r in kept),
                          "calls": min((r.get("calls", 0) for r in kept), default=0),
                          "in_calls_s": [r.get("in_calls", 0.0) for r in kept],
                          "longest_call_ms": round(1000 * max(r.get("longest", 0.0) for r in kept), 2)}
    return {"steps": steps, "rounds": args.rounds, "load_average": os.getloadavg()[0], "variants": variants,
            "wedged_connections": len(held), "live_received": received, "hand_over": hand_over}


if __name__ == "__main__":
    main()
