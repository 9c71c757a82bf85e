"""The operator's Prometheus metrics (port 8080, path /metrics; see docs/architecture.md).

``kubefusion_operator_jobs{phase}`` is computed at scrape time from the phases the handlers last saw, so a
deleted job disappears from the count without bookkeeping of increments and decrements, and every phase is
exported (zero included) so that dashboards and alerts never see a series vanish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubefusion_operator.api import Phase

RECONCILE_DURATION = Histogram(
    "kubefusion_operator_reconcile_duration_seconds",
    "Wall time of one reconciliation of a MultimodalTrainJob (children and status), errors included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_ERRORS = Counter(
    "kubefusion_operator_reconcile_errors",
    "Reconciliations that did not finish, by reason (InvalidSpec, ImmutableFieldChanged, BackendUnavailable, "
    "ApiError<code>, Unreachable, ...).",
    ["reason"],
)
CHILDREN_CREATED = Counter(
    "kubefusion_operator_children_created",
    "Child objects the operator created, by kind (ConfigMap, PyTorchJob); adopted children are not counted.",
    ["kind"],
)
JOB_FAILURES = Counter(
    "kubefusion_operator_job_failures",
    "MultimodalTrainJobs that became Failed, counted once at the transition, by job and reason (Kubeflow's, "
    "such as BackoffLimitExceeded, or PyTorchJobLost).",
    ["namespace", "job_name", "reason"],
)

PROGRESS_RECEIVED = Counter(
    "kubefusion_operator_progress_reports_received",
    "Progress reports that reached the operator's progress endpoint, accepted or not.",
)
PROGRESS_REJECTED = Counter(
    "kubefusion_operator_progress_reports_rejected",
    "Progress reports refused, by reason: Unauthenticated (no token, or not one for the job's audience), "
    "Forbidden (not a pod of the job), Invalid (not a report), TooLarge, Busy, Unavailable (TokenReview failed).",
    ["reason"],
)
PROGRESS_WRITES = Counter(
    "kubefusion_operator_progress_status_writes",
    "Status writes of the progress writer, by kind: progress (a report) or stale (reports stopped).",
    ["kind"],
)
PROGRESS_WRITE_ERRORS = Counter(
    "kubefusion_operator_progress_status_write_errors",
    "Progress status writes that failed, by reason (ApiError<code>, Unreachable); retried with the next report.",
    ["reason"],
)


class JobPhases(Collector):
    """``kubefusion_operator_jobs{phase}``: how many MultimodalTrainJobs are in each phase right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def record(self, namespace: str, name: str, phase: str | None) -> None:
        """The job's current phase; ``None`` forgets the job (it was deleted)."""
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def counts(self) -> dict[str, int]:
        with self._lock:
            phases = list(self._phases.values())
        counts = {phase.value: 0 for phase in Phase}
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubefusion_operator_jobs", "MultimodalTrainJobs by status.phase.",
                                   labels=["phase"])
        for phase, count in sorted(self.counts().items()):
            family.add_metric([phase], count)
        yield family


JOBS = JobPhases()
REGISTRY.register(JOBS)

_server_lock = threading.Lock()
_server_started = False


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a daemon thread (once per process; later calls do nothing)."""
    global _server_started
    with _server_lock:
        if not _server_started:
            start_http_server(port, addr=address)
            _server_started = True


@contextmanager
def reconciling() -> Iterator[None]:
    """Time one reconciliation into the duration histogram, whatever its outcome."""
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_DURATION.observe(time.perf_counter() - started)
