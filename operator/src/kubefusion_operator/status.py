"""A MultimodalTrainJob's status, computed from its PyTorchJob (pure).

The PyTorchJob's conditions are mirrored with Kubeflow's own reasons and messages; ``phase`` is the most
decisive condition that is ``True`` (Failed > Succeeded > Suspended > Restarting > Running > Created), and
``Pending`` before the PyTorchJob exists or before Kubeflow's training operator has written its status. A
terminal phase (Succeeded, Failed) never changes again, also when the PyTorchJob is deleted afterwards by
``ttlSecondsAfterFinished``. A PyTorchJob that existed and is gone before it reported an end fails the job
(reason ``PyTorchJobLost``) instead of being started again. A mirrored condition the PyTorchJob no longer
reports is set ``False``. Conditions the operator writes itself (``SpecValid``, ``BackendAvailable``,
``ChildrenReady``) are carried over untouched.
"""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator import api
from kubefusion_operator.api import CONDITION_TRUE, ConditionType, Phase, Reason

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


def status_from_pytorchjob(
    pytorchjob: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    *,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """The new ``status`` of a MultimodalTrainJob.

    ``pytorchjob``: the child as read from the API (``None`` when it does not exist). ``previous``: the current
    status (``{}`` for a new job). ``generation``: ``metadata.generation`` when the spec of that generation was
just applied, recorded as ``observedGeneration``; ``None`` (a mere PyTorchJob event) keeps the recorded one.
    ``now``: an RFC 3339 timestamp for conditions that change without a time of their own.

    Returns ``phase``, ``reason``, ``message`` (why the job is in that phase), ``observedGeneration``,
    ``conditions``, ``pytorchJob`` (the child's name), ``startTime``, ``completionTime``, ``nodes``,
    ``gpusPerNode``, ``gpus`` (in the whole job), ``replicaStatuses`` (per replica type: active, succeeded,
    failed) and the totals ``active``, ``succeeded``, ``failed``. Values are plain JSON types.
    """
    previous = copy.deepcopy(previous or {})
    before = phase_of(previous)
    status: dict[str, Any] = {key: value for key, value in previous.items() if value is not None}
    if generation is not None:
        status["observedGeneration"] = generation
    if pytorchjob is None:
        if before is not None and before.is_terminal:
            return _ordered(status)
        if status.get("pytorchJob"):
            return _ordered(_lost(status, now))
        status.update(phase=Phase.PENDING.value, reason=Reason.CHILD_PENDING,
                      message=f"{api.PYTORCHJOB_KIND} not created yet")
        return _ordered(status)

    # A mere PyTorchJob event stamps mirrored conditions with the generation last applied, as a reconcile would
    # (else the next resync rewrites them only to add it).
    observed = status.get("observedGeneration")
    child_status = pytorchjob.get("status") or {}
    child_name = (pytorchjob.get("metadata") or {}).get("name", status.get("pytorchJob"))
    conditions = list(status.get("conditions") or [])
    reported = set()
    for condition in child_status.get("conditions") or ():
        if condition.get("type") not in api.MIRRORED_CONDITION_TYPES:
            continue
        reported.add(condition["type"])
        conditions = api.set_condition(
            conditions, condition["type"], condition.get("status", api.CONDITION_UNKNOWN),
            condition.get("reason") or condition["type"], condition.get("message") or "",
            condition.get("lastTransitionTime") or now, observed_generation=observed,
        )
    for type_ in api.MIRRORED_CONDITION_TYPES:
        # Kubeflow drops a condition as well as setting it False (Running goes when Restarting comes): a copy it
        # no longer reports must not stay True beside the one that replaced it.
        if type_ not in reported and api.is_condition_true(conditions, type_):
            conditions = api.set_condition(conditions, type_, False, Reason.CONDITION_CLEARED,
                                           f"{api.PYTORCHJOB_KIND} {child_name} no longer reports {type_}", now,
                                           observed_generation=observed)
    status["conditions"] = conditions
    status["pytorchJob"] = child_name

    phase, deciding = _phase(child_status.get("conditions") or ())
    if before is not None and before.is_terminal:
        phase, deciding = before, None  # terminal sticks; the conditions above still show what Kubeflow says
    if deciding is not None:
        status["reason"] = deciding.get("reason") or deciding["type"]
        status["message"] = deciding.get("message") or ""
    elif phase is Phase.PENDING:
        status["reason"] = Reason.WAITING_FOR_BACKEND
        status["message"] = (f"{api.PYTORCHJOB_KIND} {status['pytorchJob']} has no status yet; is Kubeflow's "
                             "training operator running?")
    status["phase"] = phase.value

    for key in ("startTime", "completionTime"):
        if child_status.get(key):
            status[key] = child_status[key]
    if phase.is_terminal and not status.get("completionTime"):
        terminal = api.get_condition(conditions, phase.value)
        status["completionTime"] = (terminal or {}).get("lastTransitionTime") or now

    status.update(_shape(pytorchjob))
    status.update(_replica_counts(child_status.get("replicaStatuses") or {}))
    return _ordered(status)


def _lost(status: dict[str, Any], now: str) -> dict[str, Any]:
    """The run's PyTorchJob is gone before it reported an end (deleted by hand, or while nobody watched): the
    run is over. Re-creating it would silently train again, possibly a run that had already succeeded."""
    name = status["pytorchJob"]
    was = status.get("phase") or Phase.PENDING.value
    message = (f"{api.PYTORCHJOB_KIND} {name} was deleted before it reported an end (last seen: {was}); this "
               f"job will not start it again. To train again, delete this {api.KIND} and create it again")
    conditions = list(status.get("conditions") or [])
    for type_ in api.MIRRORED_CONDITION_TYPES:
        if type_ != ConditionType.FAILED and api.is_condition_true(conditions, type_):
            conditions = api.set_condition(conditions, type_, False, Reason.CHILD_LOST, message, now)
    conditions = api.set_condition(conditions, ConditionType.FAILED, True, Reason.CHILD_LOST, message, now)
    status.update(phase=Phase.FAILED.value, reason=Reason.CHILD_LOST, message=message, conditions=conditions,
                  completionTime=now)
    return status


_KEY_ORDER = ("phase", "reason", "message", "observedGeneration", "pytorchJob", "startTime", "completionTime",
              "nodes", "gpusPerNode", "gpus", "active", "succeeded", "failed", "replicaStatuses", "conditions")


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


def _shape(pytorchjob: dict[str, Any]) -> dict[str, int]:
    """Nodes and GPUs as the PyTorchJob asks for them (what runs, not what the spec asks for now)."""
    replica_specs = (pytorchjob.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    nodes = sum(int(s.get("replicas", 1)) for s in replica_specs.values())
    gpus_per_node = 0
    master = replica_specs.get(api.REPLICA_MASTER) or next(iter(replica_specs.values()), {})
    for container in ((master.get("template") or {}).get("spec") or {}).get("containers") or ():
        if container.get("name") == api.TRAINER_CONTAINER:
            limits = (container.get("resources") or {}).get("limits") or {}
            gpus_per_node = int(limits.get(api.GPU_RESOURCE, 0))
    return {"nodes": nodes, "gpusPerNode": gpus_per_node, "gpus": nodes * gpus_per_node}


def _replica_counts(replica_statuses: dict[str, Any]) -> dict[str, Any]:
    per_type = {
        replica_type: {key: int((counts or {}).get(key) or 0) for key in _COUNTS}
        for replica_type, counts in sorted(replica_statuses.items())
    }
    totals = {key: sum(counts[key] for counts in per_type.values()) for key in _COUNTS}
    return {"replicaStatuses": per_type, **totals}
