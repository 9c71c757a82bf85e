"""Prometheus metrics of one training rank (names fixed in docs/architecture.md, "Trainer metrics").

Every rank serves its own registry on ``spec.monitoring.metricsPort + LOCAL_RANK`` so that the PodMonitor
scrapes each rank separately (container ports ``metrics-0`` .. ``metrics-<gpusPerNode-1>``). Every series
carries ``namespace``, ``job_name`` and ``rank``; ``job`` is left to Prometheus (it is its target label). The
per-step and evaluation series also carry ``stage`` (``fused``, ``baseline-image``, ``baseline-text``,
``baseline-numeric``): with baselines on, one process trains four models one after another, each counting its
steps and epochs from 0.

The registry is private to each :class:`TrainerMetrics`, never the process-global one, so that several can
live in one process (tests, a single-process multi-rank run) without "Duplicated timeseries" errors.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from kubefusion.errors import UserError

LABELS = ("namespace", "job_name", "rank")

# From a tiny CPU smoke test (tens of ms) to a large multi-node step (about a minute).
STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# samples_per_second covers at least this much step time: one slow step neither hides nor dominates.
THROUGHPUT_WINDOW_SECONDS = 10.0

# The model trained first (train/recipe.py stages_for), and the stage of calls that name none.
FIRST_STAGE = "fused"


class MetricsPortError(UserError):
    """The metrics port cannot be bound (another rank or process holds it)."""


class TrainerMetrics:
    """The metrics of one rank; the training loop calls ``observe_*`` and nothing else.

    ``port`` None or 0 keeps the series in memory only (no HTTP server), which is what
    ``spec.monitoring.metricsPort: 0`` means.
    """

    def __init__(self, namespace: str, job_name: str, rank: int, port: int | None) -> None:
        if port is not None and not 0 <= int(port) <= 65535:
            raise ValueError(f"metrics port must be in [0, 65535] (got {port})")
        self.namespace = namespace
        self.job_name = job_name
        self.rank = int(rank)
        self.port = int(port) if port else None
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._window_seconds = 0.0
        self._window_samples = 0
        self._window_stage = ""
        values = (namespace, job_name, str(self.rank))
        reg = self.registry
        staged = LABELS + ("stage",)

        self._step_seconds = Histogram(
            "kubefusion_trainer_step_seconds", "Wall time of one optimizer step, data wait included.",
            staged, registry=reg, buckets=STEP_SECONDS_BUCKETS)
        self._data_wait = Counter(
            "kubefusion_trainer_data_wait_seconds", "Time spent waiting for the next batch.", staged, registry=reg)
        self._samples = Counter(
            "kubefusion_trainer_samples", "Samples processed by this rank.", staged, registry=reg)
        self._samples_per_second = Gauge(
            "kubefusion_trainer_samples_per_second",
            f"Samples per second of this rank over the last ~{THROUGHPUT_WINDOW_SECONDS:g} s of steps.",
            staged, registry=reg)
        self._loss = Gauge(
            "kubefusion_trainer_loss", "Training loss of the last observed step (this rank's batch).",
            staged, registry=reg)
        self._accuracy = Gauge(
            "kubefusion_trainer_accuracy",
            "Accuracy on split train (last observed step) or at the last evaluation of validation, test, ood.",
            staged + ("split",), registry=reg)
        self._eval_loss = Gauge(
            "kubefusion_trainer_eval_loss", "Loss of the last evaluation of a split (validation, test, ood).",
            staged + ("split",), registry=reg)
        self._learning_rate = Gauge(
            "kubefusion_trainer_learning_rate", "Current peak learning rate.", staged, registry=reg)
        self._epoch = Gauge("kubefusion_trainer_epoch", "Current epoch of the stage.", staged, registry=reg)
        self._step = Gauge("kubefusion_trainer_step", "Optimizer steps finished in the stage.", staged,
                           registry=reg)
        self._last_step = Gauge(
            "kubefusion_trainer_last_step_timestamp_seconds", "Unix time of the last finished step of the stage.",
            staged, registry=reg)
        self._last_eval = Gauge(
            "kubefusion_trainer_last_eval_timestamp_seconds",
            "Unix time of the last finished evaluation of the stage (any split).", staged, registry=reg)
        # The process's device, whichever stage runs: no stage label.
        self._gpu_memory = Gauge(
            "kubefusion_trainer_gpu_memory_bytes", "CUDA memory of this rank's device (allocated, reserved).",
            LABELS + ("kind",), registry=reg)
        self._values = values
        # The first stage's progress exists from the start, at 0: a rank that serves metrics but never finishes
        # a step is what the KubefusionTrainingNotStarted alert looks for, and the dashboard counts ranks by it.
        for gauge in (self._step, self._last_step):
            gauge.labels(*values, FIRST_STAGE)
        # RSS and CPU of the rank process: a leaking input pipeline shows here before the OOM kill.
        ProcessCollector(registry=reg)

    @classmethod
    def from_environment(cls, metrics_port: int) -> "TrainerMetrics":
        """Labels and port from what the operator and torchrun put in the environment.

        ``KUBEFUSION_NAMESPACE``/``KUBEFUSION_JOB_NAME`` (operator), ``RANK``/``LOCAL_RANK`` (torchrun);
        the port is ``metrics_port + LOCAL_RANK`` (0 stays 0: no server).
        """
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return cls(
            namespace=os.environ.get("KUBEFUSION_NAMESPACE", "local"),
            job_name=os.environ.get("KUBEFUSION_JOB_NAME", "local"),
            rank=int(os.environ.get("RANK", "0")),
            port=metrics_port + local_rank if metrics_port else None,
        )

    def start(self) -> "TrainerMetrics":
        """Serve ``/metrics`` on all interfaces (no-op without a port, or when already serving)."""
        if self.port is None or self._server is not None:
            return self
        try:
            self._server, self._thread = start_http_server(self.port, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(
                f"rank {self.rank}: cannot serve metrics on port {self.port} ({exc.strerror or exc}); "
                "choose another spec.monitoring.metricsPort or 0 to disable") from exc
        return self

    def observe_step(self, step_seconds: float, data_wait_seconds: float, samples: int, loss: float,
                     learning_rate: float, epoch: int, step: int, accuracy: float | None = None, *,
                     stage: str = FIRST_STAGE) -> None:
        """Record one optimizer step (or one logging window of steps: the counters add up either way).

        ``stage`` is the model being trained (``fused``, ``baseline-image``...): each stage's step and epoch
        start again from 0, so every per-step series carries it and the stages never overwrite each other.
        """
        if step_seconds < 0 or data_wait_seconds < 0 or samples < 0:
            raise ValueError(
                f"step_seconds, data_wait_seconds and samples must be >= 0 "
                f"(got {step_seconds}, {data_wait_seconds}, {samples})")
        labels = self._staged(stage, "observe_step")
        self._step_seconds.labels(*labels).observe(step_seconds)
        self._data_wait.labels(*labels).inc(data_wait_seconds)
        self._samples.labels(*labels).inc(samples)
        self._samples_per_second.labels(*labels).set(self._throughput(stage, step_seconds, samples))
        self._loss.labels(*labels).set(loss)
        self._learning_rate.labels(*labels).set(learning_rate)
        self._epoch.labels(*labels).set(epoch)
        self._step.labels(*labels).set(step)
        if accuracy is not None:
            self._accuracy.labels(*labels, "train").set(accuracy)
        self.observe_gpu_memory()
        self._last_step.labels(*labels).set(time.time())

    def observe_eval(self, split: str, accuracy: float, loss: float, *, stage: str = FIRST_STAGE) -> None:
        """Record the result of evaluating a split (``validation``, ``test``, ``ood``...) of a stage's model."""
        if not split:
            raise ValueError("observe_eval: split must be a non-empty name such as 'validation'")
        labels = self._staged(stage, "observe_eval")
        self._accuracy.labels(*labels, split).set(accuracy)
        self._eval_loss.labels(*labels, split).set(loss)
        self._last_eval.labels(*labels).set(time.time())

    def _staged(self, stage: str, caller: str) -> tuple[str, ...]:
        if not stage:
            raise ValueError(f"{caller}: stage must be a non-empty name such as 'fused' or 'baseline-image'")
        return (*self._values, stage)

    def observe_gpu_memory(self) -> None:
        """Record CUDA memory of the current device; a no-op without CUDA in use (``observe_step`` calls it).

        Only a process that has imported torch and initialised CUDA can have GPU memory: this never imports
        torch nor initialises CUDA itself (that would claim GPU memory on a CPU-only rank).
        """
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        device = torch.cuda.current_device()
        self._gpu_memory.labels(*self._values, "allocated").set(torch.cuda.memory_allocated(device))
        self._gpu_memory.labels(*self._values, "reserved").set(torch.cuda.memory_reserved(device))

    def close(self) -> None:
        """Stop serving and free the port (idempotent); the series stay readable in ``registry``."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "TrainerMetrics":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _throughput(self, stage: str, step_seconds: float, samples: int) -> float:
        if stage != self._window_stage:  # a new stage's model: its speed owes nothing to the previous one's
            self._window.clear()
            self._window_seconds, self._window_samples, self._window_stage = 0.0, 0, stage
        self._window.append((step_seconds, samples))
        self._window_seconds += step_seconds
        self._window_samples += samples
        # Drop the oldest entries while the rest still cover the window; the newest one always stays.
        while len(self._window) > 1 and self._window_seconds - self._window[0][0] >= THROUGHPUT_WINDOW_SECONDS:
            old_seconds, old_samples = self._window.popleft()
            self._window_seconds -= old_seconds
            self._window_samples -= old_samples
        if self._window_seconds <= 0 or not math.isfinite(self._window_seconds):
            return 0.0
        return self._window_samples / self._window_seconds
