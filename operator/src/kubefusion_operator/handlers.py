"""kopf handlers: a MultimodalTrainJob becomes a ConfigMap and a Kubeflow PyTorchJob; the PyTorchJob's state
becomes the MultimodalTrainJob's status.

Reconciliation is level-based and idempotent: every run reads the children, adopts those it finds by name
(adding the owner reference when missing), creates what is missing and patches only what differs, so an
operator restart, a resume or a repeated event never duplicates or clobbers anything. The spec a PyTorchJob
was built from is kept in its ``kubefusion.io/applied-spec`` annotation: that is what immutable fields are
compared against (it survives restarts, unlike an in-memory diff) and what tells a user's ``suspend`` change
from a queue's (Kueue suspends the PyTorchJob itself; the operator does not fight it). It holds the image
resolved: a job without ``spec.image`` keeps the operator's default trainer image of the day it was built.

Handlers are plain functions: kopf runs them in its thread pool, so the blocking client calls in
:mod:`kubefusion_operator.kube` never block the event loop. Builders, validation and the status mapping are
pure modules; this file only wires them to the API.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
from collections.abc import Callable
from typing import Any, NoReturn

import kopf
from kubernetes.client.rest import ApiException

from kubefusion_operator import api, kube, metrics
from kubefusion_operator import progress_handlers  # noqa: F401  (registers the progress endpoint with kopf)
from kubefusion_operator.api import ConditionType, Phase, Reason
from kubefusion_operator.builders import build_configmap, build_pytorchjob, run_policy_patch, with_image
from kubefusion_operator.builders.common import owner_reference
from kubefusion_operator.options import Options
from kubefusion_operator.status import phase_of, status_from_pytorchjob
from kubefusion_operator.validation import immutable_changes, validate_spec

MTJ = (api.GROUP, api.VERSION, api.PLURAL)
PYTORCHJOBS = (api.PYTORCHJOB_GROUP, api.PYTORCHJOB_VERSION, api.PYTORCHJOB_PLURAL)
APPLIED_SPEC = api.LABEL_PREFIX + "applied-spec"
INSTALL_TRAINING_OPERATOR = ('kubectl apply --server-side -k '
                             '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.8.1"')
BACKEND_MISSING = (f"{api.PYTORCHJOB_API_VERSION} {api.PYTORCHJOB_KIND} is not served by this cluster: install "
                   f"Kubeflow's training operator ({INSTALL_TRAINING_OPERATOR}); retrying with back-off")
STATUS_WRITE_ATTEMPTS = 8
CHILD_REJECTED = "ChildRejected"
"""SpecValid=False reason: the API refused a child object the spec produced (422 from a webhook or schema)."""

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
    # kopf's bookkeeping lives in annotations under our prefix, not in status (which the CRD schema owns).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubefusion.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubefusion.io", key="last-handled-configuration")
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


def _spread_first_resync(**_: Any) -> float:
    """The first resync of each job at a random point of the period, so that a restarted operator with many
    jobs (all resumed at once) does not reconcile them all in the same second every period after."""
    return OPTIONS.resync_seconds * random.uniform(0.5, 1.5)


@kopf.timer(*MTJ, interval=OPTIONS.resync_seconds, initial_delay=_spread_first_resync, idle=0, when=_unfinished)
def resync(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """The level-based safety net: the same reconciliation, periodically, whatever events were missed."""
    with metrics.reconciling():
        try:
            _reconcile(_plain(body), retry=0, logger=logger)
        except (kopf.TemporaryError, kopf.PermanentError) as e:
            logger.info(f"Resync deferred: {e}")  # the change handlers own retries and reporting


def _reconcile(job: dict[str, Any], *, retry: int, logger: logging.Logger) -> None:
    meta, spec = job["metadata"], job.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    try:
        # A PyTorchJob of this name that is not this job's (an earlier job's, still being deleted) must not lend
        # us its applied spec or its status: _claim waits for it to go, or adopts an orphan made for this job.
        pytorchjob = _read_or_none(kube.get_pytorchjob, namespace, name)
        if pytorchjob is not None:
            pytorchjob = _claim(pytorchjob, job, api.PYTORCHJOB_KIND, kube.patch_pytorchjob)
        # Without a PyTorchJob, whether one was ever made is read from the job as it is now: the body this
        # handler got may predate the status write that recorded it.
        latest = (_read_or_none(kube.get_job, namespace, name) or job) if pytorchjob is None else job
        status = latest.get("status") or {}
        if pytorchjob is None and (status.get("pytorchJob") or phase_of(status) in (Phase.SUCCEEDED, Phase.FAILED)):
            # Finished and removed (ttlSecondsAfterFinished), or lost before the end: never train again. A
            # PyTorchJob once created for this job is not made a second time (it may have succeeded unseen).
            _write_status(namespace, name, lambda current: _status(current, None))
            return
        applied = _applied_spec(pytorchjob)
        # Without spec.image a job runs the operator's default trainer image as it was when the PyTorchJob was
        # built (recorded in the applied spec): changing the default later must not change a job's image.
        spec = with_image(spec, (applied or {}).get("image") or OPTIONS.default_trainer_image)
        problems = validate_spec(spec, name=name)
        if problems:
            _refuse(job, Reason.INVALID_SPEC, "; ".join(problems), pytorchjob)
        if pytorchjob is None and not kube.pytorchjobs_served():
            _backend_unavailable(job, retry=retry)

        if applied is not None:
            changed = immutable_changes(applied, spec)
            if changed:
                _refuse(job, Reason.IMMUTABLE_FIELD_CHANGED,
                        f"{', '.join(changed)} cannot change after the job is created; revert the change, or "
                        f"delete the job and create it again", pytorchjob)

        created = []
        # A job whose PyTorchJob exists runs from the ConfigMap as first written: rendered from the applied spec
        # and never rewritten (an operator upgrade that renders job.yaml differently must not change what a
        # running or restarting pod reads).
        if _ensure_configmap(job, applied if applied is not None else spec, keep_data=pytorchjob is not None):
            created.append(f"ConfigMap {api.config_map_name(name)}")
        pytorchjob, made = _ensure_pytorchjob(job, spec, pytorchjob, retry=retry)
        if made:
            created.append(f"{api.PYTORCHJOB_KIND} {name}")
        _ensure_workload_active(spec, pytorchjob)
        fresh = _fresh(pytorchjob, job)
        _write_status(namespace, name, lambda current: _status(current, fresh, applied=meta.get("generation") or 1))
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
            _refuse(job, CHILD_REJECTED, str(outcome), None)
        raise outcome from e


def _applied_spec(pytorchjob: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec a PyTorchJob was built from (image resolved), or None without a PyTorchJob or record."""
    if pytorchjob is None:
        return None
    recorded = json.loads((pytorchjob["metadata"].get("annotations") or {}).get(APPLIED_SPEC) or "null")
    return recorded if isinstance(recorded, dict) else None


def _fresh(pytorchjob: dict[str, Any] | None, job: dict[str, Any]) -> dict[str, Any] | None:
    """The PyTorchJob as it is now. Status is computed from a read made after the job's own read, so that a
    status write racing the mirror handler fails on the job's resourceVersion instead of going stale."""
    if pytorchjob is None:
        return None
    now = _read_or_none(kube.get_pytorchjob, pytorchjob["metadata"]["namespace"], pytorchjob["metadata"]["name"])
    if now is not None and _controller_uid(now) != job["metadata"]["uid"]:
        # Replaced between two reads: another job's object must never show on this job's status.
        raise kopf.TemporaryError(f"{api.PYTORCHJOB_KIND} {pytorchjob['metadata']['name']} changed owner", delay=1)
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


def _refuse(job: dict[str, Any], reason: str, message: str, pytorchjob: dict[str, Any] | None = None) -> NoReturn:
    """Record why the spec cannot be applied (condition SpecValid=False, an Event) and stop retrying. A
    PyTorchJob that runs anyway (from the spec accepted before) keeps being mirrored into the status."""
    meta = job["metadata"]
    before = api.get_condition((job.get("status") or {}).get("conditions"), ConditionType.SPEC_VALID) or {}
    transition = before.get("status") != api.CONDITION_FALSE or before.get("message") != message

    fresh = _fresh(pytorchjob, job)

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        status = _status(current, fresh) if fresh is not None else dict(current.get("status") or {})
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


def _backend_unavailable(job: dict[str, Any], *, retry: int) -> NoReturn:
    meta = job["metadata"]
    transition = not api.get_condition((job.get("status") or {}).get("conditions"), ConditionType.BACKEND_AVAILABLE) \
        or api.is_condition_true((job.get("status") or {}).get("conditions"), ConditionType.BACKEND_AVAILABLE)

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        status = _status(current, None)
        status["conditions"] = api.set_condition(
            status.get("conditions"), ConditionType.BACKEND_AVAILABLE, False, Reason.BACKEND_UNAVAILABLE,
            BACKEND_MISSING, _now(), observed_generation=current["metadata"].get("generation"))
        if not phase_of(status) or not phase_of(status).is_terminal:
            status.update(phase=Phase.PENDING.value, reason=Reason.BACKEND_UNAVAILABLE, message=BACKEND_MISSING)
        return status

    _write_status(meta["namespace"], meta["name"], compute)
    if transition:
        kopf.warn(job, reason=Reason.BACKEND_UNAVAILABLE, message=BACKEND_MISSING)
    raise _fail(Reason.BACKEND_UNAVAILABLE,
                kopf.TemporaryError(BACKEND_MISSING, delay=OPTIONS.backend_retry_delay(retry)))


def _status(current: dict[str, Any], pytorchjob: dict[str, Any] | None, *, applied: int | None = None
            ) -> dict[str, Any]:
    """The status for the job as it is now. A PyTorchJob proves the backend is there; ``applied`` (the
    generation whose spec was just applied) clears an earlier SpecValid=False or ChildrenReady=False and becomes
    ``observedGeneration``, which a mere PyTorchJob event must not touch."""
    status = status_from_pytorchjob(pytorchjob, current.get("status") or {}, generation=applied, now=_now())
    own = [(ConditionType.BACKEND_AVAILABLE, Reason.BACKEND_AVAILABLE)] if pytorchjob is not None else []
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
           patch: Callable[[str, str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """``child`` when it is this job's: controlled by it already, or an orphan made for it (labelled with its
    name; a PyTorchJob also with its applied-spec annotation), adopted by adding our owner reference. Anything
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
    if kind == api.PYTORCHJOB_KIND:
        made_for_us = made_for_us and _applied_spec(child) is not None
    if not made_for_us:
        _hold(job, Reason.CHILD_CONFLICT,
              f"{what} exists but was not made for this job (it lacks the label {api.LABEL_JOB_NAME}={meta['name']}"
              f"{' and the annotation ' + APPLIED_SPEC if kind == api.PYTORCHJOB_KIND else ''}); it is left "
              "untouched: delete it, or give the job another name", delay=30)
    adopted = owners + [owner_reference(meta)]
    return patch(meta["namespace"], child_meta["name"], {"metadata": {"ownerReferences": adopted}})


def _ensure_configmap(job: dict[str, Any], spec: dict[str, Any], *, keep_data: bool) -> bool:
    """Create the ConfigMap from ``spec`` (image resolved), or adopt and update it (its data only when not
    ``keep_data``). True when it was created."""
    desired = build_configmap(spec, job["metadata"])
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    existing = _read_or_none(kube.get_configmap, namespace, name)
    if existing is None:
        try:
            kube.create_configmap(desired)
            metrics.CHILDREN_CREATED.labels(kind="ConfigMap").inc()
            return True
        except ApiException as e:
            if e.status != 409:
                raise
            existing = kube.get_configmap(namespace, name)  # created meanwhile (another run): adopt it
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


def _ensure_pytorchjob(job: dict[str, Any], spec: dict[str, Any], existing: dict[str, Any] | None, *,
                       retry: int) -> tuple[dict[str, Any], bool]:
    """Create the PyTorchJob from ``spec`` (the job's, image resolved), or adopt it and apply changes of the
    mutable run policy. The applied-spec annotation records ``spec`` with its resolved image."""
    meta = job["metadata"]
    applied = json.dumps(spec, sort_keys=True)
    if existing is None:
        desired = build_pytorchjob(spec, meta)
        desired["metadata"].setdefault("annotations", {})[APPLIED_SPEC] = applied
        try:
            created = kube.create_pytorchjob(desired)
            metrics.CHILDREN_CREATED.labels(kind=api.PYTORCHJOB_KIND).inc()
            return created, True
        except ApiException as e:
            if e.status == 404:  # the CRD went away between the read and the create
                _backend_unavailable(job, retry=retry)
            if e.status != 409:
                raise
            existing = _claim(kube.get_pytorchjob(meta["namespace"], meta["name"]), job, api.PYTORCHJOB_KIND,
                              kube.patch_pytorchjob)
    previous = _applied_spec(existing)
    if previous == spec:
        return existing, False
    patch = run_policy_patch(spec)
    was_suspended = ((previous or {}).get("runPolicy") or {}).get("suspend", False)
    if previous is not None and bool(was_suspended) == bool((spec.get("runPolicy") or {}).get("suspend", False)):
        # The user did not touch suspend: whatever the PyTorchJob says now is a queue's (Kueue's) decision.
        del patch["spec"]["runPolicy"]["suspend"]
    patch["metadata"] = {"annotations": {APPLIED_SPEC: applied}}
    return kube.patch_pytorchjob(meta["namespace"], meta["name"], patch), False


def _ensure_workload_active(spec: dict[str, Any], pytorchjob: dict[str, Any]) -> None:
    """With a Kueue queue, ``runPolicy.suspend`` also goes through the job's Workload: Kueue un-suspends any job
    whose Workload is admitted, so a suspended PyTorchJob alone would be started again. ``spec.active: false``
    makes Kueue evict it and keep it suspended; ``true`` puts it back in the queue. Level-based: a Workload that
    Kueue creates after the user suspended the job is deactivated at the next reconcile."""
    if not (spec.get("scheduling") or {}).get("queue"):
        return
    active = not (spec.get("runPolicy") or {}).get("suspend", False)
    meta = pytorchjob["metadata"]
    for workload in kube.workloads_owned_by(meta["namespace"], meta["uid"]):
        if (workload.get("spec") or {}).get("active", True) != active:
            kube.patch_workload(meta["namespace"], workload["metadata"]["name"], {"spec": {"active": active}})


# ------------------------------------------------------------------------------------------- status


def _write_status(namespace: str, name: str, compute: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Read the job, compute its new status, write what changed; on a concurrent write (409), again."""
    for _ in range(STATUS_WRITE_ATTEMPTS):
        try:
            current = kube.get_job(namespace, name)
        except kube.NotFound:
            return  # deleted meanwhile: nothing to report on
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
            if new.get("phase") != old.get("phase") and new.get("phase"):
                kopf.event(current, type="Warning" if new["phase"] == Phase.FAILED.value else "Normal",
                           reason=new["phase"], message=new.get("message") or f"Job is {new['phase']}")
        metrics.JOBS.record(namespace, name, new.get("phase"))
        return
    raise _fail("Conflict", kopf.TemporaryError(f"{api.KIND} {namespace}/{name} kept changing while its status "
                                                "was written", delay=1))


@kopf.on.event(*PYTORCHJOBS, labels={api.LABEL_JOB_NAME: kopf.PRESENT})
def mirror_pytorchjob(event: kopf.RawEvent, body: kopf.Body, namespace: str, labels: kopf.Labels,
                      logger: logging.Logger, **_: Any) -> None:
    """Every change of a PyTorchJob (Kubeflow's controller, Kueue, TTL deletion) shows on its owner's status.
    A deletion's event carries the object as it was last: its final conditions are what the run ended with."""
    pytorchjob = _plain(body)
    controller = _controller_uid(pytorchjob)
    name = labels[api.LABEL_JOB_NAME]

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        if current["metadata"].get("uid") != controller or current["metadata"].get("deletionTimestamp"):
            return current.get("status") or {}  # another (earlier) job's PyTorchJob, or this job is going away
        status = _status(current, pytorchjob)
        if event.get("type") == "DELETED" and not (phase_of(status) or Phase.PENDING).is_terminal:
            status = _status({**current, "status": status}, None)  # gone before the end: PyTorchJobLost
        return status

    with metrics.reconciling():
        try:
            _write_status(namespace, name, compute)
        except kube.API_FAILURES as e:
            # Not lost: the resync timer reconciles this job again; the metric and log say it happened.
            metrics.RECONCILE_ERRORS.labels(reason=kube.error_reason(e)).inc()
            logger.warning(f"Could not mirror {api.PYTORCHJOB_KIND} {namespace}/{pytorchjob['metadata']['name']}: {e}")


@kopf.on.event(*MTJ)
def count_phase(event: kopf.RawEvent, name: str, namespace: str, status: kopf.Status, **_: Any) -> None:
    """Keep ``kubefusion_operator_jobs{phase}`` true to what the API says (also for deletions)."""
    deleted = event.get("type") == "DELETED"
    metrics.JOBS.record(namespace, name, None if deleted else status.get("phase") or Phase.PENDING.value)
