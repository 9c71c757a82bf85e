"""``kubefusion run JOB.yaml --local --output DIR``: the cluster's steps, as local processes.

What the operator does with pods, this does on one machine, with the same job file:

1. data: ``spec.data.path: builtin:demo`` is synthesised into ``DIR/data`` (reused when already there);
2. the init container's step: ``kubefusion preprocess --config JOB.yaml --out DIR/artifacts``;
3. the ``pytorch`` container's step, under torchrun with a standalone rendezvous on a free local port::

       python -m torch.distributed.run --nnodes 1 --nproc-per-node N --rdzv-backend c10d \\
           --rdzv-endpoint 127.0.0.1:PORT --max-restarts 0 --log-dir DIR/logs/torchrun \\
           -m kubefusion train --config JOB.yaml --artifacts DIR/artifacts --output DIR

   N comes from :func:`plan_processes`: nodes collapse onto this one machine, so the job's
   ``nodes x gpusPerNode`` processes, capped by the GPUs here (NCCL) or, without GPUs, by the CPU cores
   (gloo, torch threads split evenly between the processes);
4. the results table (printed by rank 0) is in ``DIR/results.md`` and ``DIR/results.json``, the fused model
   in ``DIR/model.pt`` and as ONNX in ``DIR/onnx`` (``spec.training.exportOnnx``), and ``DIR/status.json``
   holds what a cluster job's status shows (progress, validation, checkpoint, results).

Running it again with the same ``--output`` resumes training from the newest checkpoints; the folder belongs to
one training configuration (``OUT/run.json``, :mod:`kubefusion.train.runfolder`): a changed job is refused, naming
what changed, unless ``--restart`` discards the old run. A failing rank ends
the whole run (torchrun tears the others down) and this command prints one ``error:`` line; torchrun's full
output is kept in ``DIR/logs/torchrun.log``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kubefusion.config import JobConfig, ResourcesConfig, load_job_file
from kubefusion.errors import UserError


class LocalRunError(UserError):
    """A step of the local run failed; the message says which and where its full log is."""


# ------------------------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class LocalPlan:
    processes: int
    device: str
    """``cuda`` or ``cpu``."""
    backend: str
    """``nccl`` on GPUs, ``gloo`` on CPU."""
    threads_per_process: int
    notes: tuple[str, ...] = field(default=())
    """What was adjusted from the spec to fit this machine, in words."""


def plan_processes(resources: ResourcesConfig, *, gpus: int, cpus: int) -> LocalPlan:
    """Map the job's ``resources`` onto this machine's ``gpus`` and ``cpus``.

    The job asks for ``nodes x gpusPerNode`` processes in all (``nodes`` on a CPU-only job); locally every node
    is this machine, so that total is capped by the GPUs, or on a machine without GPUs by the CPU cores."""
    cpus = max(1, cpus)
    wanted = max(1, resources.nodes * max(1, resources.gpus_per_node))
    notes = []
    if resources.nodes > 1:
        notes.append(f"spec.resources.nodes={resources.nodes}: all nodes run on this machine")
    if gpus > 0:
        processes = min(wanted, gpus)
        if processes < wanted:
            notes.append(f"the job asks for {wanted} GPU processes, this machine has {gpus} GPU(s)")
        return LocalPlan(processes, "cuda", "nccl", max(1, cpus // processes), tuple(notes))
    processes = min(wanted, cpus)
    if processes < wanted:
        notes.append(f"no GPU here: {processes} CPU process(es) for the {wanted} the job asks for "
                     f"({cpus} CPU core(s))")
    return LocalPlan(processes, "cpu", "gloo", max(1, cpus // processes), tuple(notes))


def torchrun_command(plan: LocalPlan, *, job_file: Path, artifacts: Path, output: Path, data: Path | None,
                     port: int) -> list[str]:
    """The exact torchrun command line the local run executes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", str(plan.processes), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "0",
               # torchrun's own records (a failed rank's error.json) stay with the run, not in a new
               # /tmp/torchelastic_* folder that nothing ever removes
               "--log-dir", str(output / "logs" / "torchrun"),
               "-m", "kubefusion", "train", "--config", str(job_file), "--artifacts", str(artifacts),
               "--output", str(output)]
    if data is not None:
        command += ["--data", str(data)]
    return command


def child_environment(plan: LocalPlan, job: JobConfig, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    threads = str(plan.threads_per_process)
    env.update({
        "OMP_NUM_THREADS": threads,            # torch's intra-op threads per process
        "TF_NUM_INTRAOP_THREADS": threads,     # the tf.data side of each process
        "TF_NUM_INTEROP_THREADS": threads,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "KUBEFUSION_NAMESPACE": env.get("KUBEFUSION_NAMESPACE", job.namespace),
        "KUBEFUSION_JOB_NAME": env.get("KUBEFUSION_JOB_NAME", job.name),
        "PYTHONUNBUFFERED": "1",
    })
    if plan.device == "cpu":
        # OpenMP's idle threads spin by default; on a machine shared with anything else the thread they wait
        # for is often descheduled, and one process x 2 threads ran an epoch 8-10x slower than with sleeping
        # waiters (benchmarks/ddp_cpu.py, docs/benchmarks.md). A value the user set is kept.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- torchrun's output, filtered

# Library chatter (absl/glog lines such as "I0000 00:00:... port.cc:153] oneDNN custom operations are on", TensorFlow's
# deprecation notices from tf2onnx) says nothing to a user; it stays in the log file only.
_NOISE = re.compile(r"^(?:[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\] |WARNING: All log messages before absl"
                    r"|To enable the following instructions|.*oneDNN |From /.* is deprecated|Instructions for "
                    r"updating:|This API was designed for TensorFlow v1|Assets written to: )")
_WORKER_ERROR = re.compile(r"^error(?: \(rank (\d+)\))?: ")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*)(?:Error|Exception|Interrupt): ")
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


class OutputFilter:
    """Passes a child's stderr through (minus noise) and remembers what explains a failure. From the first
    Python traceback on (a failing run: torchrun's own ChildFailedError report, or its SignalException when
    Ctrl-C stops it) nothing more is echoed: the one ``error:`` line and the log file say it all."""

    def __init__(self, log: IO[str], echo: IO[str]):
        self.log, self.echo = log, echo
        self.muted = False
        self.worker_error: str | None = None
        self.exception: str | None = None
        self.failed_rank: str | None = None
        self.exit_code: int | None = None
        self._in_root_cause = False
        self.root_rank: str | None = None
        self.root_exit_code: int | None = None

    def feed(self, line: str) -> None:
        self.log.write(line)
        text = line.rstrip("\n")
        if (m := _WORKER_ERROR.match(text)) and self.worker_error is None:
            rank = m.group(1)
            self.worker_error = (f"rank {rank}: " if rank else "") + text[m.end():]
        elif _EXCEPTION.match(text) and "ChildFailedError" not in text:
            self.exception = text
        if (m := _FAILED_RANK.match(text)) and self.failed_rank is None:
            self.failed_rank = m.group(1)
        if (m := _EXIT.match(text)) and self.exit_code is None:
            self.exit_code = int(m.group(1))
        # torchrun's summary lists every failed rank, then the "Root Cause (first observed failure)".
        self._in_root_cause = self._in_root_cause or text.startswith("Root Cause")
        if self._in_root_cause and (m := _FAILED_RANK.match(text)) and self.root_rank is None:
            self.root_rank = m.group(1)
        if self._in_root_cause and (m := _EXIT.match(text)) and self.root_exit_code is None:
            self.root_exit_code = int(m.group(1))
        self.muted = self.muted or text.startswith("Traceback (most recent call last)")
        if not self.muted and self.worker_error is None and self.exception is None and not _NOISE.match(text):
            self.echo.write(line)
            self.echo.flush()

    def mute(self) -> None:
        """Echo nothing more (the run is being stopped: what the child prints as it dies is for the log)."""
        self.muted = True

    def reason(self) -> str:
        if self.root_rank is not None and self.root_exit_code is not None and self.root_exit_code < 0:
            # A killed rank says nothing itself; what the others then print (a peer reset) is only a symptom.
            return _killed(self.root_rank, self.root_exit_code)
        if self.worker_error:
            return self.worker_error
        if self.exception:
            return self.exception
        if self.failed_rank is not None and self.exit_code is not None and self.exit_code < 0:
            return _killed(self.failed_rank, self.exit_code)
        if self.failed_rank is not None:
            return f"rank {self.failed_rank} exited with code {self.exit_code}"
        return "torchrun failed"


def _killed(rank: str, exit_code: int) -> str:
    import signal

    name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
    return f"rank {rank} was killed by {name}"


def run_filtered(command: list[str], *, env: dict[str, str], log_path: Path) -> tuple[int, OutputFilter]:
    """Run ``command`` with stdout passed through and stderr filtered; the full stderr goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        out = OutputFilter(log, sys.stderr)
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1,
                                start_new_session=True)
        reader = threading.Thread(target=lambda: [out.feed(line) for line in proc.stderr], daemon=True)
        reader.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            out.mute()
            os.killpg(proc.pid, 15)  # torchrun forwards it to its workers
            proc.wait()
            reader.join(timeout=10)
            raise
        reader.join(timeout=10)
    return code, out


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", type=Path, help="MultimodalTrainJob YAML file")
    parser.add_argument("--local", action="store_true", required=True,
                        help="run on this machine (the only mode of this command; on a cluster use kubectl apply)")
    parser.add_argument("--output", type=Path, default=Path("runs/local"),
                        help="folder for data, artifacts, checkpoints and results (default runs/local); it belongs "
                             "to one training configuration: run again with the same job to resume")
    parser.add_argument("--restart", action="store_true",
                        help="discard the run already in --output (checkpoints, models, results, curves; the data "
                             "and preprocessing stay) and start over, e.g. after changing the job")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from kubefusion.model import check_model_sources
    from kubefusion.train.atomic import make_output_dir
    from kubefusion.train.runfolder import claim

    job = load_job_file(args.job)
    check_model_sources(job.model)  # seconds here, not after preprocessing, a data scan and torchrun start
    output = make_output_dir(args.output.resolve())
    # The spec part now, in a second; training checks the data part once preprocessing knows it.
    claim(output, job, restart=args.restart)
    logs = output / "logs"
    env = child_environment(plan_processes(job.resources, gpus=0, cpus=1), job, dict(os.environ))

    data_dir = None
    if job.uses_demo_data:
        from kubefusion.data.synth import ensure_demo_data

        print(f"[1/3] demo data -> {output / 'data'}", flush=True)
        data_dir = Path(ensure_demo_data(output / "data", job.data.demo_samples, job.data.demo_seed))
    else:
        print(f"[1/3] data: {job.data_dir}", flush=True)

    artifacts = output / "artifacts"
    print(f"[2/3] preprocessing -> {artifacts}", flush=True)
    preprocess = [sys.executable, "-m", "kubefusion", "preprocess", "--config", str(args.job.resolve()),
                  "--out", str(artifacts)] + (["--data", str(data_dir)] if data_dir else [])
    code, out = run_filtered(preprocess, env=env, log_path=logs / "preprocess.log")
    if code != 0:
        raise LocalRunError(f"preprocessing failed: {out.reason()} (full log: {logs / 'preprocess.log'})")

    plan = plan_processes(job.resources, gpus=_gpu_count(), cpus=_cpu_count())
    command = torchrun_command(plan, job_file=args.job.resolve(), artifacts=artifacts, output=output,
                               data=data_dir, port=free_port())
    print(f"[3/3] training: {plan.processes} process(es) on {plan.device} ({plan.backend}, "
          f"{plan.threads_per_process} thread(s) each)", flush=True)
    notes = list(plan.notes)
    if job.resources.nodes > 1 and not job.storage.get("checkpoints"):
        notes.append("on a cluster this job needs spec.storage.checkpoints, a volume all its pods share")
    for note in notes:
        print(f"      note: {note}", flush=True)
    print("      " + " ".join(command), flush=True)
    code, out = run_filtered(command, env=child_environment(plan, job, dict(os.environ)),
                             log_path=logs / "torchrun.log")
    if code != 0:
        raise LocalRunError(f"training failed: {out.reason()} (full log: {logs / 'torchrun.log'})")
    onnx = f" (ONNX: {output / 'onnx'})" if (output / "onnx" / "model.json").is_file() else \
        f" (to serve it: kubefusion export --checkpoint {output / 'model.pt'} --out {output / 'onnx'})"
    print(f"done in {time.monotonic() - started:.0f} s; results in {output / 'results.md'} and "
          f"{output / 'results.json'}; model in {output / 'model.pt'}{onnx}; progress and results as a cluster "
          f"job shows them in {output / 'status.json'}", flush=True)
    return 0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
