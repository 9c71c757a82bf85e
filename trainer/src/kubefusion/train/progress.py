"""Live progress of a training run: the numbers ``kubectl get mmtj`` shows, and ``<output>/status.json``.

Rank 0 alone keeps a :class:`ProgressTracker`: the loop tells it what happened (a stage started, a logging
window of steps ended, a validation, a checkpoint, the results) and it turns that into a *report*, a small dict
shaped exactly like the MultimodalTrainJob's status fields (``progress``, ``metrics``, ``checkpoint``,
``results``, ``summary``; docs/operator.md, "Progress and results"). Every new report goes to a
:class:`ProgressPublisher`, whose background threads deliver it; the training loop never waits for them:

- ``<output>/status.json`` (always; the same fields a cluster job shows on its resource, written atomically);
- the kubefusion operator (``KUBEFUSION_PROGRESS_URL``, authenticated with the projected service-account token
  in ``KUBEFUSION_PROGRESS_TOKEN_FILE``), which writes them into the resource's status;
- Kubeflow Trainer's status server, where Trainer v2 injects ``KUBEFLOW_TRAINER_SERVER_URL`` (its
  ``TrainJobStatus`` feature), in Trainer's own ``trainerStatus`` payload.

A sink that fails (refused, timed out, answered an error) drops that report and backs off; only the newest
report is ever kept, so a dead endpoint costs nothing but a log line. :meth:`ProgressPublisher.close` gives the
last report (the results) a bounded time to get through, then gives up.

What the numbers mean: ``percent`` is optimizer steps done over the steps of every stage (the fused model, then
one baseline per modality), held below 100 until the results exist. ``etaSeconds`` is the steps left times the
current stage's wall-clock seconds per step since it (re)started, validation and checkpoint pauses included;
stages not started yet are assumed as slow as the current one (the baselines are smaller, so before they run
the estimate errs long), and a stage goes at the previous one's pace until its first step. ``samplesPerSecond`` counts every rank's samples over the last logging window.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from kubefusion.train.atomic import atomic_write_text

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
SCHEMA = "kubefusion.io/progress/v1"

ENV_URL = "KUBEFUSION_PROGRESS_URL"
ENV_TOKEN_FILE = "KUBEFUSION_PROGRESS_TOKEN_FILE"
ENV_CA_FILE = "KUBEFUSION_PROGRESS_CA_FILE"
ENV_INTERVAL = "KUBEFUSION_PROGRESS_INTERVAL_SECONDS"
ENV_FINAL_TIMEOUT = "KUBEFUSION_PROGRESS_FINAL_TIMEOUT_SECONDS"
TRAINER_ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
TRAINER_ENV_CA = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TRAINER_ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"

SEND_INTERVAL_SECONDS = 10.0
"""How often a report goes over the network at most. The operator writes a job's status at most every ~12 s,
so sending more often would only be dropped there."""
FILE_INTERVAL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 5.0
"""One attempt's limit (connect and each read): a blackholed endpoint costs the sender thread this, never the loop."""
BACKOFF_SECONDS = (2.0, 4.0, 8.0, 16.0, 30.0)
"""Waits after 1, 2, 3... failures in a row; the last repeats. Below the operator's staleness threshold (60 s),
so a path that heals clears the stale mark within one interval."""
FINAL_TIMEOUT_SECONDS = 10.0
"""How long the end of a run waits for its last report (the results) to get through."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------- formatting


def format_duration(seconds: float | None) -> str | None:
    """``3m10s``, ``1h02m``, ``2d03h``, ``45s``: short enough for a ``kubectl get`` column."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_top1(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The short texts of ``status.summary`` (the ``kubectl get mmtj`` columns) from a report's numbers."""
    progress = report.get("progress") or {}
    results = report.get("results") or {}
    summary: dict[str, Any] = {}
    if "percent" in progress:
        summary["progress"] = f"{int(progress['percent'])}%"
    eta = format_duration(progress.get("etaSeconds"))
    if eta is not None:
        summary["eta"] = eta
    if progress.get("stage"):
        summary["stage"] = (f"{progress['stage']} {progress.get('stageNumber', '?')}/{progress.get('stages', '?')}"
                            f", epoch {progress.get('epoch', '?')}/{progress.get('epochs', '?')}")
    fused = next((m for m in (report.get("metrics") or {}).get("validation") or () if m.get("stage") == "fused"),
                 None)
    if fused is not None:
        summary["valTop1"] = format_top1(fused.get("top1"))
    for key, field in (("testTop1", "fusedTestTop1"), ("oodTop1", "fusedOodTop1")):
        if results.get(field) is not None:
            summary[key] = format_top1(results[field])
    return summary


# ------------------------------------------------------------------------------------------ the tracker


@dataclass
class _StageClock:
    name: str
    first_step: int
    started: float


class ProgressTracker:
    """What the run has done so far, as a report shaped like the status fields (pure: the clocks are injected).

    ``stages``: the stage names in training order. ``steps_per_stage``: optimizer steps of every stage (they
    all train on the same data with the same recipe). ``epochs``: epochs per stage.
    """

    def __init__(self, stages: list[str], steps_per_stage: int, epochs: int, *,
                 monotonic: Callable[[], float] = time.monotonic, now: Callable[[], str] = utc_now) -> None:
        self.stages = list(stages)
        self.steps_per_stage = max(1, int(steps_per_stage))
        self.epochs = int(epochs)
        self._monotonic, self._now = monotonic, now
        self._stage = self.stages[0]
        self._step, self._epoch = 0, 1
        self._clock: _StageClock | None = None
        self._pace: float | None = None
        """Seconds per step of the last stage that measured one (the ETA of a stage before its first step)."""
        self._samples_per_second: float | None = None
        self._validation: dict[str, dict[str, Any]] = {}
        self._checkpoint: dict[str, Any] | None = None
        self._results: dict[str, Any] | None = None

    # ---- what happened
    def restore(self, previous: dict[str, Any] | None) -> None:
        """Carry validation scores and the newest checkpoint over from the ``status.json`` of an interrupted run
        in the same output folder: the resumed run continues that run, and they are facts about it."""
        for entry in ((previous or {}).get("metrics") or {}).get("validation") or ():
            if isinstance(entry, dict) and entry.get("stage") in self.stages:
                self._validation[entry["stage"]] = dict(entry)
        checkpoint = (previous or {}).get("checkpoint")
        if isinstance(checkpoint, dict) and checkpoint.get("stage") in self.stages:
            self._checkpoint = dict(checkpoint)

    def stage_started(self, stage: str, step: int, epoch: int) -> None:
        """``stage`` (re)starts at optimizer step ``step`` (not 0 when resumed) in 0-based ``epoch``."""
        self._pace = self._measured_pace() or self._pace
        self._stage, self._step = stage, int(step)
        self._epoch = min(self.epochs, int(epoch) + 1)
        self._clock = _StageClock(stage, int(step), self._monotonic())
        self._samples_per_second = None

    def steps_done(self, step: int, epoch: int, samples_per_second: float | None) -> None:
        """A logging window ended at optimizer ``step``, in 0-based ``epoch``; ``samples_per_second`` over
        every rank in that window."""
        self._step, self._epoch = int(step), min(self.epochs, int(epoch) + 1)
        if samples_per_second is not None and math.isfinite(samples_per_second):
            self._samples_per_second = samples_per_second

    def validation(self, stage: str, top1: float, step: int) -> None:
        top1 = round(float(top1), 6)
        entry = self._validation.get(stage) or {"stage": stage}
        entry.update(top1=top1, step=int(step))
        if entry.get("bestTop1") is None or top1 > entry["bestTop1"] or entry.get("bestStep") == step:
            entry.update(bestTop1=top1, bestStep=int(step))
        self._validation[stage] = entry

    def checkpoint(self, stage: str, step: int) -> None:
        self._checkpoint = {"stage": stage, "step": int(step), "time": self._now()}

    def finished(self, results: dict[str, Any]) -> None:
        """The run's results (the ``status.results`` fields, :func:`results_fields`)."""
        self._results = dict(results)

    # ---- the numbers
    def percent(self) -> float:
        if self._results is not None:
            return 100.0
        done = self._stage_position() * self.steps_per_stage + min(self._step, self.steps_per_stage)
        # The last stage's final step is not the end: evaluation and the results are still to come.
        return min(99.0, round(100.0 * done / (len(self.stages) * self.steps_per_stage), 1))

    def _measured_pace(self) -> float | None:
        """Wall-clock seconds per optimizer step of the current stage since it (re)started, once it has one."""
        clock = self._clock
        if clock is None or clock.name != self._stage or self._step <= clock.first_step:
            return None
        return (self._monotonic() - clock.started) / (self._step - clock.first_step)

    def eta_seconds(self) -> int | None:
        if self._results is not None:
            return 0
        # A stage that has not finished a step yet goes at the previous stage's pace until it has its own.
        per_step = self._measured_pace() or self._pace
        if per_step is None:
            return None
        left = (len(self.stages) - self._stage_position()) * self.steps_per_stage - self._step
        return int(round(max(0, left) * per_step))

    def _stage_position(self) -> int:
        return self.stages.index(self._stage) if self._stage in self.stages else 0

    def report(self) -> dict[str, Any]:
        """The report: the status fields as the trainer knows them (``updateTime`` is when it was made)."""
        progress: dict[str, Any] = {
            "stage": self._stage, "stageNumber": self._stage_position() + 1, "stages": len(self.stages),
            "epoch": self._epoch, "epochs": self.epochs, "step": self._step, "steps": self.steps_per_stage,
            "percent": self.percent(), "updateTime": self._now(),
        }
        if self._samples_per_second is not None:
            progress["samplesPerSecond"] = round(self._samples_per_second, 1)
        eta = self.eta_seconds()
        if eta is not None:
            progress["etaSeconds"] = eta
        report: dict[str, Any] = {"progress": progress}
        if self._validation:
            report["metrics"] = {"validation": [self._validation[s] for s in self.stages if s in self._validation]}
        if self._checkpoint is not None:
            report["checkpoint"] = dict(self._checkpoint)
        if self._results is not None:
            report["results"] = dict(self._results)
        report["summary"] = summarize(report)
        return report


def results_fields(results: dict[str, Any], *, output: Path, onnx: Path | None = None) -> dict[str, Any]:
    """``status.results`` from the recipe's results (results.json's contents) and where things were written."""
    fields: dict[str, Any] = {}
    fused = results.get("fused") or {}
    for split, key in (("test", "fusedTestTop1"), ("ood", "fusedOodTop1")):
        if (fused.get(split) or {}).get("top1") is not None:
            fields[key] = round(float(fused[split]["top1"]), 6)
    best = (results.get("summary") or {}).get("best_single_modality_test")
    if best:
        baseline = (results.get("baselines") or {}).get(best) or {}
        fields["bestSingleModality"] = best
        for split, key in (("test", "bestSingleModalityTestTop1"), ("ood", "bestSingleModalityOodTop1")):
            if (baseline.get(split) or {}).get("top1") is not None:
                fields[key] = round(float(baseline[split]["top1"]), 6)
    achievable = (results.get("best_achievable") or {}).get("top1")
    if achievable is not None:
        fields["bestAchievableTop1"] = round(float(achievable), 6)
    fields["model"] = str(output / "model.pt")
    if onnx is not None:
        fields["onnx"] = str(onnx)
    fields["resultsFile"] = str(output / "results.json")
    return fields


def read_status_file(output: Path) -> dict[str, Any] | None:
    """The ``status.json`` an earlier run left in ``output``, or None (absent or unreadable: start afresh)."""
    try:
        found = json.loads((output / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


# ---------------------------------------------------------------------------------------------- sinks


class Sink:
    """Where reports go. ``deliver`` may block (it runs on the sink's own thread) and raises on failure."""

    name = "sink"
    interval = SEND_INTERVAL_SECONDS

    def deliver(self, report: dict[str, Any]) -> None:
        raise NotImplementedError


class StatusFile(Sink):
    """``<output>/status.json``: the report as the resource's status would show it, replaced atomically."""

    interval = FILE_INTERVAL_SECONDS

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def deliver(self, report: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(report, indent=2) + "\n")


class ReportRejected(Exception):
    """The endpoint answered with an error status; the message has the code and the server's reason."""


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


def _post_json(url: str, body: dict[str, Any], *, token_file: str | None, ca_file: str | None, rank: int,
               timeout: float) -> int:
    headers = {"Content-Type": "application/json", "User-Agent": f"kubefusion-trainer rank/{rank}"}
    if token_file:
        # Read at every send: the kubelet rotates a projected token well before it expires.
        headers["Authorization"] = "Bearer " + Path(token_file).read_text().strip()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context(ca_file)) as response:
            return response.status
    except urllib.error.HTTPError as e:
        detail = e.read(512).decode(errors="replace").strip()
        try:
            detail = json.loads(detail).get("message") or detail
        except (ValueError, AttributeError):
            pass
        raise ReportRejected(f"HTTP {e.code}: {detail}") from None


class OperatorEndpoint(Sink):
    """The kubefusion operator's progress endpoint (the report as it is)."""

    def __init__(self, url: str, token_file: str | None, ca_file: str | None = None, *, rank: int = 0,
                 interval: float = SEND_INTERVAL_SECONDS) -> None:
        self.url, self.token_file, self.ca_file, self.rank, self.interval = url, token_file, ca_file, rank, interval
        self.name = url

    def deliver(self, report: dict[str, Any]) -> None:
        _post_json(self.url, {"schema": SCHEMA, **report}, token_file=self.token_file, ca_file=self.ca_file,
                   rank=self.rank, timeout=REQUEST_TIMEOUT_SECONDS)


def trainer_status(report: dict[str, Any]) -> dict[str, Any]:
    """Kubeflow Trainer v2's ``UpdateTrainJobStatusRequest`` (pkg/apis/trainer/v1alpha1, v2.3.0) for a report:
    ``progressPercentage`` and ``estimatedRemainingSeconds`` (int32), ``metrics`` (name/value strings of at
    most 64 characters) and ``lastUpdatedTime``."""
    progress = report.get("progress") or {}
    status: dict[str, Any] = {"lastUpdatedTime": progress.get("updateTime") or utc_now()}
    if "percent" in progress:
        status["progressPercentage"] = int(progress["percent"])
    if progress.get("etaSeconds") is not None:
        status["estimatedRemainingSeconds"] = min(int(progress["etaSeconds"]), 2**31 - 1)
    metrics = [("stage", progress.get("stage")), ("epoch", progress.get("epoch")), ("step", progress.get("step")),
               ("samples_per_second", progress.get("samplesPerSecond"))]
    for entry in (report.get("metrics") or {}).get("validation") or ():
        metrics += [(f"{entry['stage']}_validation_top1", entry.get("top1")),
                    (f"{entry['stage']}_best_validation_top1", entry.get("bestTop1"))]
    checkpoint = report.get("checkpoint") or {}
    metrics.append(("checkpoint_step", checkpoint.get("step")))
    results = report.get("results") or {}
    metrics += [("test_top1", results.get("fusedTestTop1")), ("ood_top1", results.get("fusedOodTop1"))]
    status["metrics"] = [{"name": name, "value": str(round(value, 4) if isinstance(value, float) else value)[:64]}
                         for name, value in metrics if value is not None]
    return {"trainerStatus": status}


class KubeflowTrainerEndpoint(Sink):
    """Kubeflow Trainer's status server (HTTPS with its CA, its own audience-bound token)."""

    def __init__(self, url: str, token_file: str | None, ca_file: str | None, *, rank: int = 0,
                 interval: float = SEND_INTERVAL_SECONDS) -> None:
        self.url, self.token_file, self.ca_file, self.rank, self.interval = url, token_file, ca_file, rank, interval
        self.name = url

    def deliver(self, report: dict[str, Any]) -> None:
        _post_json(self.url, trainer_status(report), token_file=self.token_file, ca_file=self.ca_file,
                   rank=self.rank, timeout=REQUEST_TIMEOUT_SECONDS)


def sinks_from_environment(output: Path, env: Mapping[str, str] = os.environ, *,
                           rank: int = 0) -> list[Sink]:
    """The status file, plus the endpoints the pod's environment names."""
    interval = float(env.get(ENV_INTERVAL) or SEND_INTERVAL_SECONDS)
    sinks: list[Sink] = [StatusFile(output / STATUS_FILE)]
    if env.get(ENV_URL):
        sinks.append(OperatorEndpoint(env[ENV_URL], env.get(ENV_TOKEN_FILE), env.get(ENV_CA_FILE), rank=rank,
                                      interval=interval))
    if env.get(TRAINER_ENV_URL):
        sinks.append(KubeflowTrainerEndpoint(env[TRAINER_ENV_URL], env.get(TRAINER_ENV_TOKEN),
                                             env.get(TRAINER_ENV_CA), rank=rank, interval=interval))
    return sinks


# ------------------------------------------------------------------------------------------ delivering


class _SinkThread(threading.Thread):
    """Delivers the newest report to one sink: at most once per ``sink.interval``, never an old one after a
    newer arrived, with back-off after failures. A slow sink holds up only its own thread."""

    def __init__(self, sink: Sink, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=f"progress-{sink.name}"[:60], daemon=True)
        self.sink, self._monotonic = sink, monotonic
        self._wake = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._deadline: float | None = None
        """Set by :meth:`stop`: deliver what is pending until then, then end."""
        self._next_send = 0.0
        self.failures = 0
        self.delivered = 0
        self.last_error: str | None = None

    def offer(self, report: dict[str, Any]) -> None:
        with self._wake:
            self._pending = report
            self._wake.notify()

    def stop(self, deadline: float) -> None:
        """Deliver what is pending right away (the interval waived), retrying until ``deadline``, then end."""
        with self._wake:
            self._deadline, self._next_send = deadline, 0.0
            self._wake.notify()

    def run(self) -> None:
        while (report := self._next()) is not None:
            self._send(report)

    def _next(self) -> dict[str, Any] | None:
        """The report to send now; None when stopped and nothing more can be sent in time."""
        with self._wake:
            while True:
                now = self._monotonic()
                if self._deadline is not None and (self._pending is None or now >= self._deadline):
                    return None
                if self._pending is not None and now >= self._next_send:
                    report, self._pending = self._pending, None
                    return report
                wait = self._next_send - now if self._pending is not None else None
                if self._deadline is not None:
                    wait = min(math.inf if wait is None else wait, self._deadline - now)
                self._wake.wait(timeout=wait)

    def _send(self, report: dict[str, Any]) -> None:
        try:
            self.sink.deliver(report)
        except Exception as e:  # noqa: BLE001 - a sink's failure is reported and survived, never raised
            reason = str(e) if isinstance(e, ReportRejected) else f"{type(e).__name__}: {e}"
            with self._wake:
                self.failures += 1
                if self.failures == 1 or reason != self.last_error:
                    log.warning("warning: progress report to %s failed (%s); training goes on, retrying with "
                                "back-off", self.sink.name, reason)
                self.last_error = reason
                self._next_send = self._monotonic() + BACKOFF_SECONDS[min(self.failures, len(BACKOFF_SECONDS)) - 1]
                if self._pending is None:
                    self._pending = report  # retried unless a newer one comes first
            return
        with self._wake:
            if self.failures:
                log.info("progress reports to %s get through again", self.sink.name)
            self.failures, self.last_error = 0, None
            self.delivered += 1
            self._next_send = self._monotonic() + self.sink.interval


class ProgressPublisher:
    """Hands reports to every sink's thread; ``publish`` takes a lock and returns (no I/O on the caller)."""

    def __init__(self, sinks: list[Sink], *, final_timeout: float = FINAL_TIMEOUT_SECONDS) -> None:
        self.final_timeout = final_timeout
        self.threads = [_SinkThread(sink) for sink in sinks]
        for thread in self.threads:
            thread.start()

    def publish(self, report: dict[str, Any]) -> None:
        for thread in self.threads:
            thread.offer(report)

    def close(self) -> None:
        """Give the last report ``final_timeout`` seconds in all to get through, then leave it."""
        deadline = time.monotonic() + self.final_timeout
        for thread in self.threads:
            thread.stop(deadline)
        for thread in self.threads:
            # A request under way when the deadline passes ends by its own timeout at the latest.
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_SECONDS)
        for thread in self.threads:
            if thread.is_alive() or thread.failures:
                log.warning("warning: the last progress report to %s did not get through (%s)", thread.sink.name,
                            thread.last_error or "timed out")


class Progress:
    """Rank 0's progress: every event updates the tracker and publishes the new report. What the loop and the
    recipe call; other ranks have none."""

    def __init__(self, tracker: ProgressTracker, publisher: ProgressPublisher) -> None:
        self.tracker, self.publisher = tracker, publisher

    def _publish(self) -> None:
        self.publisher.publish(self.tracker.report())

    def stage_started(self, stage: str, step: int, epoch: int) -> None:
        self.tracker.stage_started(stage, step, epoch)
        self._publish()

    def steps_done(self, step: int, epoch: int, samples_per_second: float | None) -> None:
        self.tracker.steps_done(step, epoch, samples_per_second)
        self._publish()

    def validation(self, stage: str, top1: float, step: int) -> None:
        self.tracker.validation(stage, top1, step)
        self._publish()

    def checkpoint(self, stage: str, step: int) -> None:
        self.tracker.checkpoint(stage, step)
        self._publish()

    def finished(self, results: dict[str, Any]) -> None:
        self.tracker.finished(results)
        self._publish()

    def close(self) -> None:
        self.publisher.close()


def start_progress(stages: list[str], steps_per_stage: int, epochs: int, output: Path, *,
                   env: Mapping[str, str] = os.environ) -> Progress:
    """Rank 0's progress for a run writing to ``output``, continuing the status.json an interrupted run left."""
    tracker = ProgressTracker(stages, steps_per_stage, epochs)
    tracker.restore(read_status_file(output))
    sinks = sinks_from_environment(output, env)
    for sink in sinks[1:]:
        log.info("progress reports go to %s (at most every %g s)", sink.name, sink.interval)
    final_timeout = float(env.get(ENV_FINAL_TIMEOUT) or FINAL_TIMEOUT_SECONDS)
    return Progress(tracker, ProgressPublisher(sinks, final_timeout=final_timeout))
