"""A MultimodalTrainJob's status, computed from its child (a PyTorchJob or a TrainJob) (pure).

The backend module says what its child reports (:meth:`~kubefusion_operator.backends.base.Backend.observe`):
the mirrored conditions keep Kubeflow's reasons and messages; ``phase`` is the most decisive condition that is
``True`` (Failed > Succeeded > Suspended > Restarting > Running > Created), and ``Pending`` before the child
exists or before Kubeflow has written its status. A terminal phase (Succeeded, Failed) never changes again,
also when the child is deleted afterwards (``ttlSecondsAfterFinished``). A child that existed and is gone
before it reported an end fails the job (reason ``PyTorchJobLost`` / ``TrainJobLost``) instead of being started
again. A mirrored condition the child no longer reports is set ``False``. Conditions the operator writes itself
(``SpecValid``, ``BackendAvailable``, ``ChildrenReady``) are carried over untouched.
"""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator import api
from kubefusion_operator.api import CONDITION_TRUE, ConditionType, Phase, Reason
from kubefusion_operator.backends import BACKENDS, Backend

_PHASE_ORDER = (
    (ConditionType.FAILED, Phase.FAILED),
    (ConditionType.SUCCEEDED, Phase.SUCCEEDED),
    (ConditionType.SUSPENDED, Phase.SUSPENDED),
    (ConditionType.RESTARTING, Phase.RESTARTING),
    (ConditionType.RUNNING, Phase.RUNNING),
    (ConditionType.CREATED, Phase.CREATED),
)
_COUNTS = ("active", "succeeded", "failed")


def phase_of(previous: dict[str, Any] | None) -> Phase | None:
    """The phase recorded in a status dict, or ``None`` when absent or unknown."""
    try:
        return Phase((previous or {}).get("phase"))
    except ValueError:
        return None


def backend_of(status: dict[str, Any] | None) -> Backend | None:
    """The backend recorded in a status dict (``status.backend``), or ``None`` before one was chosen."""
    return BACKENDS.get((status or {}).get("backend") or "")


def status_from_child(
    backend: Backend,
    child: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    *,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """The new ``status`` of a MultimodalTrainJob that runs on ``backend``.

    ``child``: the backend's child as read from the API (``None`` when it does not exist). ``previous``: the
    current status (``{}`` for a new job). ``generation``: ``metadata.generation`` when the spec of that
    generation was just applied, recorded as ``observedGeneration``; ``None`` (a mere child event) keeps the
    recorded one. ``now``: an RFC 3339 timestamp for conditions that change without a time of their own.

    Returns ``phase``, ``reason``, ``message`` (why the job is in that phase), ``observedGeneration``, ``backend``
    and the child's name (``pytorchJob`` or ``trainJob``) once the child exists, ``conditions``,
    ``startTime``, ``completionTime``, ``nodes``, ``gpusPerNode``, ``gpus`` (in the whole job),
    ``replicaStatuses`` (per replica type: active, succeeded, failed) and the totals ``active``,
    ``succeeded``, ``failed``. Values are plain JSON types.
    """
    previous = copy.deepcopy(previous or {})
    before = phase_of(previous)
    status: dict[str, Any] = {key: value for key, value in previous.items() if value is not None}
    if generation is not None:
        status["observedGeneration"] = generation
    if child is None:
        if before is not None and before.is_terminal:
            return _ordered(status)
        if status.get(backend.status_key):
            return _ordered(_lost(backend, status, now))
        status.update(phase=Phase.PENDING.value, reason=backend.pending_reason,
                      message=f"{backend.kind} not created yet")
        return _ordered(status)

    # A mere child event stamps mirrored conditions with the generation last applied, as a reconcile would
    # (else the next resync rewrites them only to add it).
    observed_generation = status.get("observedGeneration")
    observed = backend.observe(child)
    child_name = (child.get("metadata") or {}).get("name", status.get(backend.status_key))
    conditions = list(status.get("conditions") or [])
    reported = set()
    for condition in observed.conditions:
        reported.add(condition["type"])
        conditions = api.set_condition(
            conditions, condition["type"], condition["status"], condition["reason"], condition["message"],
            condition.get("lastTransitionTime") or now, observed_generation=observed_generation,
        )
    for type_ in api.MIRRORED_CONDITION_TYPES:
        # Kubeflow drops a condition as well as setting it False (Running goes when Restarting comes): a copy it
        # no longer reports must not stay True beside the one that replaced it.
        if type_ not in reported and api.is_condition_true(conditions, type_):
            conditions = api.set_condition(conditions, type_, False, Reason.CONDITION_CLEARED,
                                           f"{backend.kind} {child_name} no longer reports {type_}", now,
                                           observed_generation=observed_generation)
    status["conditions"] = conditions
    status["backend"] = backend.name
    status[backend.status_key] = child_name

    phase, deciding = _phase(observed.conditions)
    if before is not None and before.is_terminal:
        phase, deciding = before, None  # terminal sticks; the conditions above still show what Kubeflow says
    if deciding is not None:
        status["reason"] = deciding.get("reason") or deciding["type"]
        status["message"] = deciding.get("message") or ""
    elif phase is Phase.PENDING:
        status["reason"] = backend.waiting_reason
        status["message"] = backend.waiting_message.format(name=child_name)
    status["phase"] = phase.value

    for key, value in (("startTime", observed.start_time), ("completionTime", observed.completion_time)):
        if value:
            status[key] = value
    if phase is Phase.RUNNING and not status.get("startTime"):
        # A child that reports no start time of its own (a TrainJob) started when it was first seen running.
        status["startTime"] = (api.get_condition(conditions, ConditionType.RUNNING) or {}).get(
            "lastTransitionTime") or now
    if phase.is_terminal and not status.get("completionTime"):
        terminal = api.get_condition(conditions, phase.value)
        status["completionTime"] = (terminal or {}).get("lastTransitionTime") or now

    status.update(nodes=observed.nodes, gpusPerNode=observed.gpus_per_node,
                  gpus=observed.nodes * observed.gpus_per_node)
    status.update(_replica_counts(observed.replica_statuses))
    return _ordered(status)


def with_admission(status: dict[str, Any], spec: dict[str, Any] | None, workload: dict[str, Any] | None,
                   now: str) -> dict[str, Any]:
    """``status`` (computed from the child) with what Kueue does to a job with ``spec.scheduling.queue``.

    While the child is suspended and the user did not ask for it (``runPolicy.suspend`` false), Kueue holds it:
    ``Admitted=False`` with reason ``Queued``, and the phase (``Suspended``) gives the same reason and message,
    which carries the Workload's own explanation (its ``QuotaReserved`` condition: "couldn't assign flavors ...:
    insufficient quota for nvidia.com/gpu ..."). Once the child runs, ``Admitted=True``; a queued job the user
    suspended is ``Admitted=False`` with reason ``Deactivated``. Jobs without a queue are left alone. Pure.
    """
    queue = ((spec or {}).get("scheduling") or {}).get("queue")
    phase = phase_of(status)
    if not queue or phase is None or phase.is_terminal or phase is Phase.PENDING:
        return status
    status = dict(status)
    if phase is Phase.SUSPENDED and ((spec or {}).get("runPolicy") or {}).get("suspend"):
        admitted, reason = False, Reason.DEACTIVATED
        message = f"spec.runPolicy.suspend is true: the job is out of Kueue's LocalQueue {queue} until resumed"
    elif phase is Phase.SUSPENDED:
        admitted, reason = False, Reason.QUEUED
        message = f"waiting for Kueue to admit it through LocalQueue {queue}"
        waiting = api.get_condition(((workload or {}).get("status") or {}).get("conditions"), "QuotaReserved")
        if waiting and waiting.get("status") != CONDITION_TRUE and waiting.get("message"):
            message += f" ({waiting.get('reason') or 'Pending'}: {waiting['message']})"
        status.update(reason=reason, message=message)
    else:
        admitted, reason, message = True, Reason.ADMITTED, f"Kueue admitted it through LocalQueue {queue}"
    status["conditions"] = api.set_condition(status.get("conditions"), ConditionType.ADMITTED, admitted, reason,
                                             message, now)
    return _ordered(status)


def _lost(backend: Backend, status: dict[str, Any], now: str) -> dict[str, Any]:
    """The run's child is gone before it reported an end (deleted by hand, or while nobody watched): the run is
    over. Re-creating it would silently train again, possibly a run that had already succeeded."""
    name = status[backend.status_key]
    was = status.get("phase") or Phase.PENDING.value
    message = (f"{backend.kind} {name} was deleted before it reported an end (last seen: {was}); this "
               f"job will not start it again. To train again, delete this {api.KIND} and create it again")
    conditions = list(status.get("conditions") or [])
    for type_ in api.MIRRORED_CONDITION_TYPES:
        if type_ != ConditionType.FAILED and api.is_condition_true(conditions, type_):
            conditions = api.set_condition(conditions, type_, False, backend.lost_reason, message, now)
    conditions = api.set_condition(conditions, ConditionType.FAILED, True, backend.lost_reason, message, now)
    status.update(phase=Phase.FAILED.value, reason=backend.lost_reason, message=message, conditions=conditions,
                  completionTime=now)
    return status


_KEY_ORDER = ("phase", "reason", "message", "observedGeneration", "backend", "pytorchJob", "trainJob", "startTime",
              "completionTime", "nodes", "gpusPerNode", "gpus", "active", "succeeded", "failed", "replicaStatuses", "conditions")


def _ordered(status: dict[str, Any]) -> dict[str, Any]:
    """Stable key order, so ``kubectl get -o yaml`` reads top-down (phase first, conditions last)."""
    known = {key: status[key] for key in _KEY_ORDER if key in status}
    return {**known, **{key: value for key, value in status.items() if key not in known}}


def _phase(conditions: Any) -> tuple[Phase, dict[str, Any] | None]:
    true = {c.get("type"): c for c in conditions if c.get("status") == CONDITION_TRUE}
    for type_, phase in _PHASE_ORDER:
        if type_ in true:
            return phase, true[type_]
    return Phase.PENDING, None


def _replica_counts(per_type: dict[str, dict[str, int]]) -> dict[str, Any]:
    totals = {key: sum(counts[key] for counts in per_type.values()) for key in _COUNTS}
    return {"replicaStatuses": per_type, **totals}
