"""What live progress reporting costs the training loop: the same stage trained without any progress, with
progress going to a live endpoint, to an endpoint that never answers, and to one that refuses, in one run.

    .venv/bin/python benchmarks/train_progress.py [--samples 2000] [--epochs 1] [--rounds 5] [--json]
    .venv/bin/python benchmarks/train_progress.py --smoke    # tiny and quick: what its test runs

One process (no torchrun), the tiny demo model, demo data synthesised into a temporary folder (removed at the
end). Every variant trains the fused stage from scratch in a fresh output folder (rank 0's status.json is
written in all but the first); one warm-up run is discarded, then rounds interleaved (A B C D A B C D) so that
a machine that gets busier hurts all alike. Printed per variant: wall seconds and the CPU seconds of the
training thread itself (torch on one thread, so the step's compute runs there; other processes on a shared
machine change wall time far more than this thread's CPU time), medians over rounds, and each as the median
over rounds of its ratio to the same round's run without progress; the time the loop spent in its progress
calls and the longest such call; and what one report costs alone (1,000 handed over back to back). Reports
are offered at every step and sent every 0.5 s at most, 20 times more often than in a pod (10 s), so that any
cost shows.

- live endpoint: answers 202 at once (the operator up);
- wedged endpoint: accepts connections and never answers (a NetworkPolicy that drops the traffic): each
  report waits out its 5 s timeout on the sender thread, never on the loop;
- refused endpoint: nothing listens (the operator down or restarting, a Service without endpoints).

The last report's bounded wait at the end of a run (KUBEFUSION_PROGRESS_FINAL_TIMEOUT_SECONDS, 10 s by
default) is set to 0 here and is not in the timed part: it is paid once per run, after training.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--smoke", action="store_true",
                        help="120 samples, 1 round, no warm-up: checks that it runs, measures nothing")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.epochs, args.rounds = 120, 1, 1
    import torch

    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="kubefusion-progress-bench-"))
    try:
        summary = measure(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"\n{summary['steps']} optimizer steps per run (batch 16, logging every step), {args.rounds} round(s), "
          f"load average {summary['load_average']:.1f}")
    print("| progress | wall s | ratio (same round) | training thread CPU s | ratio (same round) | "
          "loop in progress calls, ms per run | longest call ms | reports delivered / failed |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in summary["variants"].items():
        in_calls = f"{1000 * statistics.median(row['in_calls_s']):.1f}" if row["in_calls_s"] else "-"
        print(f"| {name} | {row['wall_s']:.1f} | {row['wall_ratio']:.2f} | {row['cpu_s']:.1f} | "
              f"{row['cpu_ratio']:.2f} | {in_calls} | {row['longest_call_ms'] or '-'} | "
              f"{row['delivered']} / {row['failed']} |")
    for name, row in summary["variants"].items():
        print(f"{name}: wall s per round {' '.join(f'{w:.1f}' for w in row['walls'])}; "
              f"training thread CPU s {' '.join(f'{c:.2f}' for c in row['cpus'])}")
    cost = summary["hand_over"]
    print(f"one report handed over, alone: {cost['wall_us']} us wall, {cost['cpu_us']} us CPU "
          f"(mean over {cost['calls']} back to back)")
    print(f"wedged endpoint: {summary['wedged_connections']} connection(s) held unanswered; "
          f"live endpoint: {summary['live_received']} report(s) received")


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
    seconds: dict[str, list[float]] = {name: [] for name in endpoints}
    cpu: dict[str, list[float]] = {name: [] for name in endpoints}
    sent = {name: {"delivered": 0, "failed": 0, "calls": 0, "in_calls_s": [], "longest_call_ms": 0.0}
            for name in endpoints}

    def run(name: str, output: Path) -> tuple[float, float]:
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
        elapsed = time.perf_counter() - started, time.thread_time() - started_cpu
        if progress is not None:
            progress.progress.close()  # after training, and not timed as the loop's: it may wait for the send
            endpoint = progress.publisher.threads[1]
            sent[name]["delivered"] += endpoint.delivered
            sent[name]["failed"] += endpoint.failures
            sent[name]["calls"] += progress.calls
            sent[name]["in_calls_s"].append(progress.seconds)
            sent[name]["longest_call_ms"] = max(sent[name]["longest_call_ms"], round(1000 * progress.longest, 2))
        return elapsed

    try:
        hand_over = hand_over_cost(root, endpoints["refused endpoint"])
        if not args.smoke:
            run("none", root / "warm-up")  # first-call costs (allocator, kernels' first use) hurt no variant
        for round_ in range(args.rounds):
            for name in endpoints:
                wall, used = run(name, root / f"{name.replace(' ', '-')}-{round_}")
                seconds[name].append(wall)
                cpu[name].append(used)
    finally:
        server.terminate()
        received = int(server.communicate(timeout=30)[0] or -1)
        listener.close()
        refusing.close()

    def paired(values: dict[str, list[float]], name: str) -> float:
        """Median over rounds of this variant's time over the same round's run without progress: the runs of a
        round are next to each other in time, so a load that comes and goes cancels out."""
        return round(statistics.median(v / b for v, b in zip(values[name], values["none"])), 3)

    variants = {name: {"wall_s": round(statistics.median(seconds[name]), 3), "wall_ratio": paired(seconds, name),
                       "cpu_s": round(statistics.median(cpu[name]), 3), "cpu_ratio": paired(cpu, name),
                       "walls": seconds[name], "cpus": cpu[name], **sent[name]}
                for name in endpoints}
    return {"steps": steps, "rounds": args.rounds, "load_average": os.getloadavg()[0], "variants": variants,
            "wedged_connections": len(held), "live_received": received, "hand_over": hand_over}


if __name__ == "__main__":
    main()
