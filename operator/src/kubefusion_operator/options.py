"""Operator options: environment variables (the Deployment sets them), overridden by ``kubefusion-operator`` flags.

Every option is ``KUBEFUSION_OPERATOR_<NAME>`` in the environment, so ``kopf run -m kubefusion_operator.handlers``
honours the same settings as the console script.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kubefusion_operator.api import CONCRETE_BACKENDS

ENV_PREFIX = "KUBEFUSION_OPERATOR_"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass
class Options:
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (kopf's liveness endpoint is separate, 8081 by default)."""
    metrics_address: str = "0.0.0.0"
    """Address the /metrics endpoint binds (all interfaces in a pod; 127.0.0.1 for local runs)."""
    backend_retry_seconds: float = 15.0
    """First retry delay while no backend the job may use is installed; doubles on each retry."""
    backend_retry_max_seconds: float = 300.0
    """Upper bound of that back-off: the job is picked up at most this long after the backend appears."""
    preferred_backend: str = "PyTorchJob"
    """What ``spec.backend: Auto`` takes where the cluster serves both PyTorchJob and TrainJob (the Helm value
    ``operator.preferredBackend``)."""
    training_runtime: str = "kubefusion"
    """The ClusterTrainingRuntime TrainJobs run on (the chart's ``trainJob.runtime.name``)."""
    resync_seconds: float = 60.0
    """Every job is reconciled again this often (level-based safety net for missed watch events)."""
    watch_timeout_seconds: int = 300
    """Server-side timeout of kopf's watch requests; kopf reconnects after it (a stuck watch heals)."""
    workers: int = 10
    """Threads for the blocking API calls of the handlers (kopf's sync-handler executor)."""
    progress_port: int = 8082
    """Port of the progress endpoint trainers post their reports to (0: no endpoint)."""
    progress_address: str = "0.0.0.0"
    """Address the progress endpoint binds."""
    progress_url: str = ""
    """Base URL under which the training pods reach the progress endpoint (the chart sets it to its Service,
    ``http://<release>-progress.<namespace>.svc:8082``). Empty: the pods are not told of any endpoint and report
    no progress (a job's run folder still gets status.json)."""
    progress_write_seconds: float = 12.0
    """A job's status is written with its newest progress report at most this often."""
    progress_stale_seconds: float = 60.0
    """A job that is not finished and sent no report for this long is marked stale (progress.stale)."""
    default_trainer_image: str = ""
    """Trainer image for jobs that leave ``spec.image`` out (the Helm chart sets it from ``trainer.image``).
    Empty: no default, and such jobs are refused. A job keeps the image it was first built with; changing this
    later only affects jobs created afterwards."""

    def __post_init__(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"{ENV_PREFIX}METRICS_PORT: must be a port number (got {self.metrics_port})")
        if not 0 <= self.progress_port <= 65535:
            raise ValueError(f"{ENV_PREFIX}PROGRESS_PORT: must be a port number or 0 (got {self.progress_port})")
        if self.progress_url and not self.progress_url.startswith(("http://", "https://")):
            raise ValueError(f"{ENV_PREFIX}PROGRESS_URL: must be an http:// or https:// URL (got "
                             f"{self.progress_url!r})")
        for name in ("backend_retry_seconds", "backend_retry_max_seconds", "resync_seconds",
                     "watch_timeout_seconds", "workers", "progress_write_seconds", "progress_stale_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: must be > 0 (got {getattr(self, name)})")
        if self.preferred_backend not in CONCRETE_BACKENDS:
            raise ValueError(f"{ENV_PREFIX}PREFERRED_BACKEND: must be one of {', '.join(CONCRETE_BACKENDS)} "
                             f"(got {self.preferred_backend!r})")
        if not _DNS_SUBDOMAIN.fullmatch(self.training_runtime) or len(self.training_runtime) > 253:
            raise ValueError(f"{ENV_PREFIX}TRAINING_RUNTIME: must be the name of a ClusterTrainingRuntime (a DNS "
                             f"subdomain) (got {self.training_runtime!r})")
        if any(c.isspace() for c in self.default_trainer_image):
            raise ValueError(f"{ENV_PREFIX}DEFAULT_TRAINER_IMAGE: an image reference has no whitespace "
                             f"(got {self.default_trainer_image!r})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Options:
        values = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{field.name.upper()}: not a valid {kind.__name__}: {raw!r}") from None
        return cls(**values)

    def backend_retry_delay(self, retry: int) -> float:
        """Exponential back-off for a missing backend: base, 2x base, 4x base... up to the cap."""
        return min(self.backend_retry_seconds * 2 ** min(retry, 20), self.backend_retry_max_seconds)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}
