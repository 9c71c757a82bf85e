"""kopf handlers: a MultimodalTrainJob becomes a ConfigMap and a Kubeflow training job (a PyTorchJob or a
TrainJob: :mod:`kubefusion_operator.backends`); the child's state becomes the MultimodalTrainJob's status.

Reconciliation is level-based and idempotent: every run reads the children, adopts those it finds by name
(adding the owner reference when missing), creates what is missing and patches only what differs, so an
operator restart, a resume or a repeated event never duplicates or clobbers anything. The backend is chosen
once, when the child is created (``spec.backend``, or for ``Auto`` what the cluster serves and the operator
prefers), and recorded in ``status.backend``; an existing child of either kind is found before anything is
chosen, so a lost status write never leads to a second child. The spec a child was built from is kept in its
``kubefusion.io/applied-spec`` annotation: that is what immutable fields are compared against (it survives
restarts, unlike an in-memory diff) and what tells a user's ``suspend`` change from a queue's (Kueue suspends
the child itself; the operator does not fight it). It holds the image resolved: a job without ``spec.image``
keeps the operator's default trainer image of the day it was built.

Handlers are plain functions: kopf runs them in its thread pool, so the blocking client calls in
:mod:`kubefusion_operator.kube` never block the event loop. Builders, backends, validation and the status
mapping are pure modules; this file only wires them to the API and never branches on the child's kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import datetime
import functools
import json
import logging
import random
from collections.abc import Callable
from typing import Any, NoReturn

import kopf
from kubernetes.client.rest import ApiException

from kubefusion_operator import api, kopf_storage, kube, metrics
from kubefusion_operator import progress_handlers
from kubefusion_operator.api import ConditionType, Phase, Reason
from kubefusion_operator.backends import BACKENDS, Backend, choose, unavailable_message
from kubefusion_operator.builders import build_configmap, with_image
from kubefusion_operator.builders.common import owner_reference
from kubefusion_operator.options import Options
from kubefusion_operator.status import phase_of, status_from_child, with_admission
from kubefusion_operator.validation import immutable_changes, validate_spec

MTJ = (api.GROUP, api.VERSION, api.PLURAL)
APPLIED_SPEC = api.LABEL_PREFIX + "applied-spec"
STATUS_WRITE_ATTEMPTS = 8
CHILD_REJECTED = "ChildRejected"
"""SpecValid=False reason: the API refused a child object the spec produced (422 from a webhook or schema)."""

DIFFBASE = kopf_storage.MemoryDiffBaseStorage()
PROGRESS = kopf_storage.MemoryProgressStorage()
"""kopf's memory of each job (last handled spec, handler progress): in this process, not in annotations."""

OPTIONS = Options.from_env()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """kopf's body views as plain JSON data (the builders and the client take dicts)."""
    return json.loads(json.dumps(value, default=dict))


def _fail(reason: str, error: Exception) -> Exception:
    metrics.RECONCILE_ERRORS.labels(reason=reason).inc()
    return error


# -------------------------------------------------------------------------------------------- startup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    """All kopf settings in one place, and the metrics endpoint."""
    # Handler log lines stay logs; Kubernetes Events are only the ones posted on purpose (kopf.info/warn/event).
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = api.MANAGER_NAME
    settings.posting.event_name_prefix = "kubefusion-"
    # kopf's bookkeeping stays in this process: no annotation write per handled change (kopf_storage).
    settings.persistence.progress_storage = PROGRESS
    settings.persistence.diffbase_storage = DIFFBASE
    settings.persistence.finalizer = "kubefusion.io/finalizer"
    # A watch that silently stalls is ended by the server, or by the client a little later, and reopened.
    settings.watching.server_timeout = OPTIONS.watch_timeout_seconds
    settings.watching.client_timeout = OPTIONS.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = OPTIONS.workers
    metrics.serve(OPTIONS.metrics_port, OPTIONS.metrics_address)
    logger.info(f"Serving metrics on {OPTIONS.metrics_address}:{OPTIONS.metrics_port}/metrics")
    logger.info(f"Jobs without spec.image run {OPTIONS.default_trainer_image}" if OPTIONS.default_trainer_image
                else "No default trainer image: jobs without spec.image are refused")


# ------------------------------------------------------------------------------------------ reconcile


@kopf.on.resume(*MTJ)
@kopf.on.create(*MTJ)
@kopf.on.update(*MTJ, field="spec")
def reconcile(body: kopf.Body, retry: int, logger: logging.Logger, **_: Any) -> None:
    """Bring the children in line with the spec and record the status."""
    with metrics.reconciling():
        _reconcile(_plain(body), retry=retry, logger=logger)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    """Finished jobs need no resync: their phase is final and nothing is created for them again."""
    phase = phase_of(dict(status))
    return phase is None or not phase.is_terminal


# One loop for all jobs rather than a kopf timer per job: a kopf timer puts a finalizer on its object (so
# `kubectl delete` of a job, or of its namespace, hangs while no operator runs) and costs an asyncio task per
# job; this loop costs one task and adds no finalizer.
_RESYNC: dict[str, Any] = {}
RESYNC_LOG = logging.getLogger("kubefusion_operator.resync")
UNFINISHED: dict[tuple[str, str], str] = {}
"""The jobs the resync loop visits, by (namespace, name), each with its latest body from the watch as compact
JSON (a tenth of the memory of the parsed body; the resync parses it once a period), less ``managedFields``,
which a reconciliation never reads."""


# Every event of every job passes here, so it is one handler (kopf's per-handler overhead is paid once) and async:
# kopf runs it on its event loop, never queued for a worker thread behind the reconciliations.
@kopf.on.event(*MTJ)
async def observe_job(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str, uid: str,
                      status: kopf.Status, **_: Any) -> None:
    """Keep what the operator knows of every job true to the API: ``kubefusion_operator_jobs{phase}``, the
    unfinished jobs the resync visits, what the progress endpoint knows, and (once deleted) nothing."""
    # The context kopf handles jobs in: the resync loop posts its Events through it (startup handlers have none).
    if "context" not in _RESYNC:
        _RESYNC["context"] = contextvars.copy_context()
    key, deleted = (namespace, name), event.get("type") == "DELETED"
    if deleted:
        DIFFBASE.forget(uid)
        PROGRESS.forget(uid)
    if not deleted and _unfinished(status):
        raw = dict(body)
        UNFINISHED[key] = json.dumps({**raw, "metadata": {k: v for k, v in raw["metadata"].items()
                                                          if k != "managedFields"}}, separators=(",", ":"))
    else:
        UNFINISHED.pop(key, None)
    metrics.JOBS.record(namespace, name, None if deleted else status.get("phase") or Phase.PENDING.value)
    progress_handlers.observe(key, None if deleted else body)


@kopf.on.startup()
async def start_resync(settings: kopf.OperatorSettings, **_: Any) -> None:
    _RESYNC["task"] = asyncio.create_task(_resync_forever(UNFINISHED, settings))


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    task = _RESYNC.pop("task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _resync_forever(jobs: dict[tuple[str, str], str], settings: kopf.OperatorSettings) -> None:
    """Every ``--resync-seconds``, reconcile each unfinished job once, at evenly spread moments of the period
    in a random order (many jobs resumed together do not all resync in the same second). A job whose previous
    resync still runs is skipped, so a slow API server is not queued up on."""
    loop = asyncio.get_running_loop()
    running: set[Any] = set()
    trimmed = float("-inf")
    while True:
        keys = list(jobs)
        random.shuffle(keys)
        gap = OPTIONS.resync_seconds / max(len(keys), 1)
        if not keys:
            release_free_memory()
            await asyncio.sleep(gap)
        for key in keys:
            if loop.time() - trimmed >= TRIM_SECONDS:
                release_free_memory()
                trimmed = loop.time()
            await asyncio.sleep(gap)
            body = jobs.get(key)
            if body is None or key in running:
                continue
            job = json.loads(body)
            if not handled_by_kopf(job):
                continue
            running.add(key)
            # kopf's own thread pool for sync handlers (--workers), read each time: configure() may replace it;
            # in a copy of a handler's context, where kopf.info/event find kopf's Event queue.
            context = _RESYNC.get("context") or contextvars.copy_context()
            future = loop.run_in_executor(settings.execution.executor, context.copy().run, resync, job)
            future.add_done_callback(lambda _, key=key: running.discard(key))


TRIM_SECONDS = 10.0
"""How often the resync loop hands free heap pages back (a call takes about a millisecond)."""


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's ``malloc_trim``). A burst of new jobs briefly
    holds hundreds of events, bodies and responses at once; once they are freed, glibc keeps the pages for
    reuse, and the operator's resident memory, which is what a memory limit counts, stays at the burst's
    peak. Elsewhere (musl, macOS) there is nothing to do."""
    trim = _MALLOC_TRIM.get("trim")
    if trim is not None:
        trim(0)


def _malloc_trim() -> dict[str, Any]:
    try:
        return {"trim": ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim}
    except (OSError, AttributeError):
        return {}


_MALLOC_TRIM = _malloc_trim()


def handled_by_kopf(job: dict[str, Any]) -> bool:
    """Whether kopf has handled the job once: done with it, or to retry it. One it has not got to yet is its
    create handler's: a resync would only race that handler (both creating, one adopting) when many jobs arrive
    at once."""
    uid = job["metadata"].get("uid") or ""
    return DIFFBASE.handled(uid) or PROGRESS.known(uid)


def resync(job: dict[str, Any]) -> None:
    """The level-based safety net: the same reconciliation, periodically, whatever events were missed."""
    meta, logger = job["metadata"], RESYNC_LOG
    with metrics.reconciling():
        try:
            _reconcile(job, retry=0, logger=logger)
        except (kopf.TemporaryError, kopf.PermanentError) as e:
            logger.info(f"Resync of {meta['namespace']}/{meta['name']} deferred: {e}")  # the change handlers retry
        except Exception as e:  # noqa: BLE001 - the next period tries again; one job never stops the loop
            logger.warning(f"Resync of {meta['namespace']}/{meta['name']} failed: {e}")


class _MadeBefore(Exception):
    """A new job's ConfigMap or child already exists: an earlier run made it and its status write was lost."""


def _reconcile(job: dict[str, Any], *, retry: int, logger: logging.Logger) -> None:
    """A job without any status is new: nothing was recorded for it, so its children are created without
    reading first and its status is written from the event's body and the child just made (three requests,
    not seven: what a burst of new jobs waits on). Should anything turn out to exist already, the full
    reconciliation reads it all and adopts."""
    if not job.get("status"):
        try:
            return _reconcile_once(job, retry=retry, logger=logger, new=True)
        except _MadeBefore:
            pass
    _reconcile_once(job, retry=retry, logger=logger, new=False)


def _reconcile_once(job: dict[str, Any], *, retry: int, logger: logging.Logger, new: bool) -> None:
    meta, spec = job["metadata"], job.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    backend: Backend | None = None
    try:
        # A child of this name that is not this job's (an earlier job's, still being deleted) must not lend us
        # its applied spec or its status: _claim waits for it to go, or adopts an orphan made for this job.
        backend, child = _find_child(job, new=new)
        # Without a child, whether one was ever made is read from the job as it is now: the body this handler got
        # may predate the status write that recorded it (a new job's has nothing of the kind to predate).
        latest = (_read_or_none(kube.get_job, namespace, name) or job) if child is None and not new else job
        status = latest.get("status") or {}
        if child is None and (_recorded_backend(status) or phase_of(status) in (Phase.SUCCEEDED, Phase.FAILED)):
            # Finished and removed (ttlSecondsAfterFinished), or lost before the end: never train again. A child
            # once created for this job is not made a second time (it may have succeeded unseen).
            ran_on = _recorded_backend(status)
            _write_status(namespace, name, lambda current: _status(current, ran_on, None))
            return
        applied = _applied_spec(child)
        # Without spec.image a job runs the operator's default trainer image as it was when the child was built
        # (recorded in the applied spec): changing the default later must not change a job's image.
        spec = with_image(spec, (applied or {}).get("image") or OPTIONS.default_trainer_image)
        problems = validate_spec(spec, name=name)
        if problems:
            _refuse(job, Reason.INVALID_SPEC, "; ".join(problems), backend, child)
        if child is None:
            backend = _choose_backend(job, spec, retry=retry)

        if applied is not None:
            changed = immutable_changes(applied, spec, mutable=backend.mutable)
            if changed:
                _refuse(job, Reason.IMMUTABLE_FIELD_CHANGED, _immutable_message(backend, changed), backend, child)

        created = []
        # A job whose child exists runs from the ConfigMap as first written: rendered from the applied spec and
        # never rewritten (an operator upgrade that renders job.yaml differently must not change what a running
        # or restarting pod reads).
        if _ensure_configmap(job, applied if applied is not None else spec, keep_data=child is not None, new=new):
            created.append(f"ConfigMap {api.config_map_name(name)}")
        child, made = _ensure_child(job, backend, spec, child, retry=retry, new=new)
        if made:
            created.append(f"{backend.kind} {name}")
        workload = _ensure_workload_active(spec, child)
        # The child is read inside the write, after the job: a mirror write in between makes the patch a 409 (and
        # a new attempt), where a child read before the job would overwrite that newer status with an older one.
        # A new job's first attempt is written against the event's body, older than the child just made: any
        # mirror write since then makes it a 409 too, so that child is as fresh as it needs to be.
        just_made = [child] if new and made else []

        shown: list[dict[str, Any] | None] = [None]

        def compute(current: dict[str, Any]) -> dict[str, Any]:
            shown[0] = just_made.pop() if just_made else _fresh(backend, child, job)
            return _status(current, backend, shown[0], applied=meta.get("generation") or 1, workload=workload)

        if _write_status(namespace, name, compute, first=job if new else None):
            _shown(shown[0])
        if created:
            kopf.info(job, reason="Created", message=f"Created {' and '.join(created)}")
            logger.info(f"Created {' and '.join(created)}")
    except kube.API_FAILURES as e:
        if isinstance(e, ApiException) and e.status == 403:
            # Forbidden is no fault of the spec: a ResourceQuota is full or the operator lacks a permission.
            # Either can be fixed without touching the job, so keep trying, with back-off.
            _hold(job, Reason.CHILD_CREATION_FORBIDDEN, f"{kube.describe(e)}; retrying with back-off",
                  delay=OPTIONS.backend_retry_delay(retry))
        outcome = _fail(kube.error_reason(e), kube.retryable(e, delay=5))
        if isinstance(outcome, kopf.PermanentError):
            # The API will never accept what the spec makes (a webhook or schema says no): tell the user.
            _refuse(job, CHILD_REJECTED, str(outcome), backend, None)
        raise outcome from e


def _find_child(job: dict[str, Any], *, new: bool = False) -> tuple[Backend | None, dict[str, Any] | None]:
    """The backend this job runs on and its child, read from the API. The recorded backend (``status.backend``)
    when there is one; else every backend the job may use is looked at, so that a child whose creation was not
    recorded (a status write lost to a crash) is found and adopted instead of being made twice, possibly on the
    other backend. ``(None, None)`` before any child exists. A ``new`` job with a single possible backend is not
    looked up: creating its child answers 409 if it exists (:class:`_MadeBefore`)."""
    meta = job["metadata"]
    recorded = _recorded_backend(job.get("status") or {})
    requested = BACKENDS.get((job.get("spec") or {}).get("backend") or "")
    # Without a record, only a backend whose API is served can hold a child (kube.served answers from a cache
    # that lasts seconds, so a burst of new jobs costs no extra request).
    candidates = [recorded] if recorded else [requested] if requested else [
        backend for backend in BACKENDS.values() if kube.served(backend)]
    if new and len(candidates) <= 1:
        return None, None
    for backend in candidates:
        child = _read_or_none(functools.partial(kube.get_child, backend), meta["namespace"], meta["name"])
        if child is not None:
            return backend, _claim(child, job, backend.kind, functools.partial(kube.patch_child, backend),
                                   records_spec=True)
        if recorded:
            return backend, None
    return None, None


def _recorded_backend(status: dict[str, Any]) -> Backend | None:
    """The backend a status says the job's child was made on: ``status.backend``, or (a status written before
    there was a choice) the backend whose child it names."""
    return BACKENDS.get(status.get("backend") or "") or next(
        (backend for backend in BACKENDS.values() if status.get(backend.status_key)), None)


def _choose_backend(job: dict[str, Any], spec: dict[str, Any], *, retry: int) -> Backend:
    """The backend a job without a child is created on: what ``spec.backend`` names, or for ``Auto`` what the
    cluster offers (the operator's preference where it offers both). A TrainJob needs the ClusterTrainingRuntime
    too, and a job that asks for what the runtime does differently is refused (SpecValid=False)."""
    requested = spec.get("backend") or api.BackendName.AUTO.value
    candidates = [BACKENDS[requested]] if requested in BACKENDS else list(BACKENDS.values())
    served = {backend.name: kube.served(backend) for backend in candidates}
    runtime = None
    if served.get(api.BackendName.TRAINJOB.value):
        try:
            runtime = kube.get_training_runtime(OPTIONS.training_runtime)
        except kube.NotFound:
            pass
    available = {name: ok and (name != api.BackendName.TRAINJOB.value or runtime is not None)
                 for name, ok in served.items()}
    chosen = choose(requested, available, OPTIONS.preferred_backend)
    if chosen is None:
        _backend_unavailable(job, unavailable_message(requested, served, OPTIONS.training_runtime), retry=retry)
    backend = BACKENDS[chosen]
    conflicts = backend.conflicts(spec, runtime)
    if conflicts:
        _refuse(job, Reason.NOT_SUPPORTED_BY_BACKEND, "; ".join(conflicts), None, None)
    return backend


def _immutable_message(backend: Backend, changed: list[str]) -> str:
    message = (f"{', '.join(changed)} cannot change after the job is created; revert the change, or delete the job "
               "and create it again")
    mutable_in_crd = [path for path in changed if path.startswith("spec.runPolicy.")]
    if mutable_in_crd:
        message += (f" (on the {backend.name} backend only "
                    f"{', '.join(f'runPolicy.{f}' for f in sorted(backend.mutable))} may change)")
    return message


def _applied_spec(child: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec a child was built from (image resolved), or None without a child or record."""
    if child is None:
        return None
    recorded = json.loads((child["metadata"].get("annotations") or {}).get(APPLIED_SPEC) or "null")
    return recorded if isinstance(recorded, dict) else None


def _fresh(backend: Backend | None, child: dict[str, Any] | None, job: dict[str, Any]) -> dict[str, Any] | None:
    """The child as it is now. Called inside a status write's compute, after the job is read: a status write
    racing the mirror handler then fails on the job's resourceVersion instead of going stale."""
    if child is None or backend is None:
        return None
    now = _read_or_none(functools.partial(kube.get_child, backend), child["metadata"]["namespace"],
                        child["metadata"]["name"])
    if now is not None and _controller_uid(now) != job["metadata"]["uid"]:
        # Replaced between two reads: another job's object must never show on this job's status.
        raise kopf.TemporaryError(f"{backend.kind} {child['metadata']['name']} changed owner", delay=1)
    return now


def _controller_uid(child: dict[str, Any]) -> str | None:
    """The uid of the object that controls ``child`` (its ownerReference with ``controller: true``)."""
    return next((ref.get("uid") for ref in child["metadata"].get("ownerReferences") or [] if ref.get("controller")),
                None)


def _read_or_none(read: Callable[[str, str], dict[str, Any]], namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return read(namespace, name)
    except kube.NotFound:
        return None


def _refuse(job: dict[str, Any], reason: str, message: str, backend: Backend | None,
            child: dict[str, Any] | None) -> NoReturn:
    """Record why the spec cannot be applied (condition SpecValid=False, an Event) and stop retrying. A child
    that runs anyway (from the spec accepted before) keeps being mirrored into the status."""
    meta = job["metadata"]
    before = api.get_condition((job.get("status") or {}).get("conditions"), ConditionType.SPEC_VALID) or {}
    transition = before.get("status") != api.CONDITION_FALSE or before.get("message") != message

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        fresh = _fresh(backend, child, job)  # read after the job (see _reconcile)
        status = _status(current, backend, fresh) if fresh is not None else dict(current.get("status") or {})
        status["conditions"] = api.set_condition(
            status.get("conditions"), ConditionType.SPEC_VALID, False, reason, message, _now(),
            observed_generation=current["metadata"].get("generation"))
        if phase_of(status) in (None, Phase.PENDING):
            status.update(phase=Phase.PENDING.value, reason=reason, message=message)
        status["observedGeneration"] = current["metadata"].get("generation")
        return status

    _write_status(meta["namespace"], meta["name"], compute)
    error = kopf.PermanentError(f"{reason}: {message}")
    if transition:  # counted and announced once: the resync timer meets the same spec again every period
        kopf.warn(job, reason=reason, message=message)
        raise _fail(reason, error)
    raise error


def _backend_unavailable(job: dict[str, Any], message: str, *, retry: int) -> NoReturn:
    meta = job["metadata"]
    conditions = (job.get("status") or {}).get("conditions")
    before = api.get_condition(conditions, ConditionType.BACKEND_AVAILABLE) or {}
    transition = before.get("status") != api.CONDITION_FALSE or before.get("message") != message

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        status = dict(current.get("status") or {})
        status["conditions"] = api.set_condition(
            status.get("conditions"), ConditionType.BACKEND_AVAILABLE, False, Reason.BACKEND_UNAVAILABLE,
            message, _now(), observed_generation=current["metadata"].get("generation"))
        if not phase_of(status) or not phase_of(status).is_terminal:
            status.update(phase=Phase.PENDING.value, reason=Reason.BACKEND_UNAVAILABLE, message=message)
        return status

    _write_status(meta["namespace"], meta["name"], compute)
    if transition:
        kopf.warn(job, reason=Reason.BACKEND_UNAVAILABLE, message=message)
    raise _fail(Reason.BACKEND_UNAVAILABLE, kopf.TemporaryError(message, delay=OPTIONS.backend_retry_delay(retry)))


def _status(current: dict[str, Any], backend: Backend | None, child: dict[str, Any] | None, *,
            applied: int | None = None, workload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status for the job as it is now, on ``backend`` (None: not chosen yet, the status is kept). A child
    proves the backend is there; ``applied`` (the generation whose spec was just applied) clears an earlier
    SpecValid=False or ChildrenReady=False and becomes ``observedGeneration``, which a mere child event must not
    touch. ``workload``: the child's Kueue Workload, whose words explain a queued job."""
    if backend is None:
        return dict(current.get("status") or {})
    status = status_from_child(backend, child, current.get("status") or {}, generation=applied, now=_now())
    if child is not None:
        status = with_admission(status, current.get("spec"), workload, _now())
    own = [(ConditionType.BACKEND_AVAILABLE, Reason.BACKEND_AVAILABLE)] if child is not None else []
    if applied is not None:
        own += [(ConditionType.SPEC_VALID, Reason.VALID), (ConditionType.CHILDREN_READY, Reason.CHILDREN_READY)]
    for type_, reason in own:
        status["conditions"] = api.set_condition(status.get("conditions"), type_, True, reason, "", _now(),
                                                 observed_generation=applied)
    return status


def _hold(job: dict[str, Any], reason: str, message: str, *, delay: float) -> NoReturn:
    """A child cannot be ours yet: say why on ``ChildrenReady=False`` (and in an Event, once), retry later."""
    meta = job["metadata"]
    before = api.get_condition((job.get("status") or {}).get("conditions"), ConditionType.CHILDREN_READY) or {}
    transition = before.get("status") != api.CONDITION_FALSE or before.get("reason") != reason

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        status = dict(current.get("status") or {})
        status["conditions"] = api.set_condition(status.get("conditions"), ConditionType.CHILDREN_READY, False,
                                                 reason, message, _now())
        if phase_of(status) in (None, Phase.PENDING):
            status.update(phase=Phase.PENDING.value, reason=reason, message=message)
        return status

    _write_status(meta["namespace"], meta["name"], compute)
    if transition:
        kopf.warn(job, reason=reason, message=message)
    raise _fail(reason, kopf.TemporaryError(message, delay=delay))


# -------------------------------------------------------------------------------------------- children


def _claim(child: dict[str, Any], job: dict[str, Any], kind: str,
           patch: Callable[[str, str, dict[str, Any]], dict[str, Any]], *, records_spec: bool = False
           ) -> dict[str, Any]:
    """``child`` when it is this job's: controlled by it already, or an orphan made for it (labelled with its
    name; a training job, ``records_spec``, also with its applied-spec annotation), adopted by adding our owner
    reference. Anything
    else is left untouched and the job waits (``ChildrenReady=False``): for an earlier job's child of the same
    name to be garbage-collected, or for the user to remove an unrelated object."""
    meta, child_meta = job["metadata"], child["metadata"]
    owners = child_meta.get("ownerReferences") or []
    controller = next((ref for ref in owners if ref.get("controller")), None)
    what = f"{kind} {meta['namespace']}/{child_meta['name']}"
    if controller is not None and controller.get("uid") == meta["uid"]:
        return child
    # Names are unique, so a controller of our kind and name with another uid is an earlier job, now deleted.
    earlier = controller is not None and controller.get("kind") == api.KIND and controller.get("name") == meta["name"]
    if earlier or child_meta.get("deletionTimestamp"):
        _hold(job, Reason.WAITING_FOR_PREVIOUS_RUN,
              f"{what} belongs to an earlier run of this name (uid {(controller or {}).get('uid')}) and is being "
              "deleted; this job starts once it is gone", delay=5)
    if controller is not None:
        _hold(job, Reason.CHILD_CONFLICT,
              f"{what} is controlled by {controller.get('kind')} {controller.get('name')} (uid "
              f"{controller.get('uid')}), not by this job; it is left untouched: delete it, or give the job another "
              "name", delay=30)
    made_for_us = (child_meta.get("labels") or {}).get(api.LABEL_JOB_NAME) == meta["name"]
    if records_spec:
        made_for_us = made_for_us and _applied_spec(child) is not None
    if not made_for_us:
        _hold(job, Reason.CHILD_CONFLICT,
              f"{what} exists but was not made for this job (it lacks the label {api.LABEL_JOB_NAME}={meta['name']}"
              f"{' and the annotation ' + APPLIED_SPEC if records_spec else ''}); it is left "
              "untouched: delete it, or give the job another name", delay=30)
    adopted = owners + [owner_reference(meta)]
    return patch(meta["namespace"], child_meta["name"], {"metadata": {"ownerReferences": adopted}})


def _ensure_configmap(job: dict[str, Any], spec: dict[str, Any], *, keep_data: bool, new: bool = False) -> bool:
    """Create the ConfigMap from ``spec`` (image resolved), or adopt and update it (its data only when not
    ``keep_data``). True when it was created. For a ``new`` job an existing one raises :class:`_MadeBefore`."""
    desired = build_configmap(spec, job["metadata"])
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    # A job that has no child yet almost never has its ConfigMap either: create it straight away (one request,
    # not a read and a create), and read it only when it turns out to exist.
    existing = _read_or_none(kube.get_configmap, namespace, name) if keep_data else None
    if existing is None:
        try:
            kube.create_configmap(desired)
            metrics.CHILDREN_CREATED.labels(kind="ConfigMap").inc()
            return True
        except ApiException as e:
            if e.status != 409:
                raise
            if new:
                raise _MadeBefore from e
            existing = kube.get_configmap(namespace, name)  # made before (another run, or by hand): adopt it
    existing = _claim(existing, job, "ConfigMap", kube.patch_configmap)
    labels = existing["metadata"].get("labels") or {}
    patch: dict[str, Any] = {}
    if any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        patch["metadata"] = {"labels": desired["metadata"]["labels"]}
    if not keep_data and existing.get("data") != desired["data"]:
        patch["data"] = desired["data"]
    if patch:
        kube.patch_configmap(namespace, name, patch)
    return False


def _ensure_child(job: dict[str, Any], backend: Backend, spec: dict[str, Any], existing: dict[str, Any] | None, *,
                  retry: int, new: bool = False) -> tuple[dict[str, Any], bool]:
    """Create the backend's child from ``spec`` (the job's, image resolved), or bring an existing one's mutable
    fields in line (the backend's patch: ``suspend`` when the user changed it, the run-policy limits a PyTorchJob
    takes). The applied-spec annotation records ``spec`` with its resolved image."""
    meta = job["metadata"]
    applied = json.dumps(spec, sort_keys=True)
    if existing is None:
        desired = backend.build(spec, meta, runtime=OPTIONS.training_runtime, progress_url=OPTIONS.progress_url)
        desired["metadata"].setdefault("annotations", {})[APPLIED_SPEC] = applied
        try:
            created = kube.create_child(backend, desired)
            metrics.CHILDREN_CREATED.labels(kind=backend.kind).inc()
            return created, True
        except ApiException as e:
            if e.status == 404:  # the CRD went away between the read and the create
                kube.forget_discovery()
                _backend_unavailable(job, unavailable_message(backend.name, {backend.name: False},
                                                              OPTIONS.training_runtime), retry=retry)
            if e.status != 409:
                raise
            if new:
                raise _MadeBefore from e
            existing = _claim(kube.get_child(backend, meta["namespace"], meta["name"]), job, backend.kind,
                              functools.partial(kube.patch_child, backend), records_spec=True)
    previous = _applied_spec(existing)
    if previous == spec:
        return existing, False
    patch = backend.update_patch(previous, spec) or {}
    patch["metadata"] = {"annotations": {APPLIED_SPEC: applied}}
    return kube.patch_child(backend, meta["namespace"], meta["name"], patch), False


def _ensure_workload_active(spec: dict[str, Any], child: dict[str, Any]) -> dict[str, Any] | None:
    """With a Kueue queue, ``runPolicy.suspend`` also goes through the job's Workload: Kueue un-suspends any job
    whose Workload is admitted, so a suspended child alone would be started again. ``spec.active: false`` makes
    Kueue evict it and keep it suspended; ``true`` puts it back in the queue. Level-based: a Workload that Kueue
    creates after the user suspended the job is deactivated at the next reconcile. Returns the Workload (None
    without a queue, or before Kueue made one)."""
    if not (spec.get("scheduling") or {}).get("queue"):
        return None
    active = not (spec.get("runPolicy") or {}).get("suspend", False)
    meta = child["metadata"]
    found = None
    for version, workload in kube.workloads_owned_by(meta["namespace"], meta["uid"]):
        found = workload
        if (workload.get("spec") or {}).get("active", True) != active:
            found = kube.patch_workload(version, meta["namespace"], workload["metadata"]["name"],
                                        {"spec": {"active": active}})
    return found


# ------------------------------------------------------------------------------------------- status


def _write_status(namespace: str, name: str, compute: Callable[[dict[str, Any]], dict[str, Any]], *,
                  first: dict[str, Any] | None = None) -> bool:
    """Read the job, compute its new status, write what changed; on a concurrent write (409), again. ``first``:
    the job as the caller has it, for the first attempt instead of a read (its resourceVersion guards the
    write just as well). False when the job is gone."""
    for _ in range(STATUS_WRITE_ATTEMPTS):
        try:
            current, first = first or kube.get_job(namespace, name), None
        except kube.NotFound:
            return False  # deleted meanwhile: nothing to report on
        old, new = current.get("status") or {}, compute(current)
        if new != old:
            patch = {key: new.get(key) for key in {*old, *new}}  # None removes a key in a merge patch
            try:
                kube.patch_job_status(namespace, name, patch, current["metadata"]["resourceVersion"])
            except ApiException as e:
                if e.status == 409:
                    continue
                raise
            if new.get("phase") != old.get("phase") and new.get("phase") == Phase.FAILED.value:
                metrics.JOB_FAILURES.labels(namespace=namespace, job_name=name, reason=new.get("reason") or "").inc()
            if new.get("phase") != old.get("phase") and new.get("phase") and (
                    old.get("phase") or new["phase"] != Phase.PENDING.value):  # a new job's "Created" says it
                kopf.event(current, type="Warning" if new["phase"] == Phase.FAILED.value else "Normal",
                           reason=new["phase"], message=new.get("message") or f"Job is {new['phase']}")
        metrics.JOBS.record(namespace, name, new.get("phase"))
        return True
    raise _fail("Conflict", kopf.TemporaryError(f"{api.KIND} {namespace}/{name} kept changing while its status "
                                                "was written", delay=1))


SHOWN: dict[str, str] = {}
"""Child uid -> the resourceVersion of the child its owner's status was last computed from, and written (or found
true already). A child event at that version has nothing to show: the event of a child just created and shown by
its reconciliation, and every child again when a watch is re-listed."""


def _shown(child: dict[str, Any] | None) -> None:
    if child is not None:
        SHOWN[child["metadata"]["uid"]] = child["metadata"].get("resourceVersion") or ""


def mirror_child(backend: Backend, event: kopf.RawEvent, body: kopf.Body, namespace: str, labels: kopf.Labels,
                 logger: logging.Logger, **_: Any) -> None:
    """Every change of a child (Kubeflow's controllers, Kueue, TTL deletion) shows on its owner's status. A
    deletion's event carries the object as it was last: its final conditions are what the run ended with."""
    meta = body.get("metadata", {})
    if event.get("type") == "DELETED":
        SHOWN.pop(meta.get("uid"), None)
    elif SHOWN.get(meta.get("uid")) == meta.get("resourceVersion"):
        return
    child = _plain(body)
    controller = _controller_uid(child)
    name = labels[api.LABEL_JOB_NAME]
    workload: dict[str, Any] | None = None
    owned = [False]

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        nonlocal workload
        owned[0] = current["metadata"].get("uid") == controller and not current["metadata"].get("deletionTimestamp")
        if not owned[0]:
            return current.get("status") or {}  # another (earlier) job's child, or this job is going away
        status = _status(current, backend, child)
        if status.get("reason") == Reason.QUEUED and workload is None and event.get("type") != "DELETED":
            # Held by Kueue: its Workload says why (read only for queued jobs, once per event).
            workload = next((w for _, w in kube.workloads_owned_by(namespace, child["metadata"]["uid"])), {})
            status = _status(current, backend, child, workload=workload)
        if event.get("type") == "DELETED" and not (phase_of(status) or Phase.PENDING).is_terminal:
            status = _status({**current, "status": status}, backend, None)  # gone before the end: lost
        return status

    with metrics.reconciling():
        try:
            if _write_status(namespace, name, compute) and owned[0] and event.get("type") != "DELETED":
                _shown(child)
        except kube.API_FAILURES as e:
            # Not lost: the resync timer reconciles this job again; the metric and log say it happened.
            metrics.RECONCILE_ERRORS.labels(reason=kube.error_reason(e)).inc()
            logger.warning(f"Could not mirror {backend.kind} {namespace}/{child['metadata']['name']}: {e}")


for _backend in BACKENDS.values():
    # One watch per backend, each only on children labelled for a job; kopf starts it once the CRD exists.
    kopf.on.event(_backend.group, _backend.version, _backend.plural, labels={api.LABEL_JOB_NAME: kopf.PRESENT},
                  id=f"mirror_{_backend.plural}")(functools.partial(mirror_child, _backend))
