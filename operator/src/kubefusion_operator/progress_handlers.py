"""kopf wiring of the progress endpoint: started and stopped with the operator, fed by the jobs' watch.

The endpoint runs on kopf's event loop (aiohttp); its blocking calls (TokenReview, pod reads, status writes)
run on a thread pool of its own, so neither the event loop nor kopf's handler threads wait for them.
See :mod:`kubefusion_operator.progress_server`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubefusion_operator.options import Options
from kubefusion_operator.progress_server import ProgressServer, ProgressStore, TokenAuthenticator

OPTIONS = Options.from_env()
SERVER: ProgressServer | None = None


class _StaleJobs(Collector):
    """``kubefusion_operator_progress_stale_jobs``: unfinished jobs whose progress reports stopped."""

    def collect(self) -> Any:
        family = GaugeMetricFamily("kubefusion_operator_progress_stale_jobs",
                                   "Unfinished MultimodalTrainJobs whose progress is marked stale.")
        family.add_metric([], SERVER.store.stale_jobs() if SERVER is not None else 0)
        yield family


REGISTRY.register(_StaleJobs())


@kopf.on.startup()
async def start_progress_endpoint(logger: logging.Logger, **_: Any) -> None:
    global SERVER
    if not OPTIONS.progress_port:
        logger.info("No progress endpoint (progress port 0): jobs show no live progress")
        return
    store = ProgressStore(write_seconds=OPTIONS.progress_write_seconds, stale_seconds=OPTIONS.progress_stale_seconds)
    server = ProgressServer(store, TokenAuthenticator())
    await server.start(OPTIONS.progress_port, OPTIONS.progress_address)
    SERVER = server
    logger.info(f"Serving progress reports on {OPTIONS.progress_address}:{server.port}; pods are told "
                f"{OPTIONS.progress_url or '(nothing: no progress URL set)'}")


@kopf.on.cleanup()
async def stop_progress_endpoint(**_: Any) -> None:
    global SERVER
    if SERVER is not None:
        await SERVER.stop()
        SERVER = None


def observe(key: tuple[str, str], body: kopf.Body | None) -> None:
    """What the resource shows (phase, progress, spec) feeds the stale check; a deleted job (None) is forgotten.
    Called for every event of every job (:func:`kubefusion_operator.handlers.observe_job`)."""
    if SERVER is None:
        return
    if body is None:
        SERVER.store.observe(key, None)
    elif SERVER.store.wants(key, body.get("status") or {}):
        SERVER.store.observe(key, json.loads(json.dumps({"status": body.get("status") or {},
                                                          "spec": body.get("spec") or {}}, default=dict)))
