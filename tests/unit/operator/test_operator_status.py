"""What `kubectl get mmtj` shows: the phase and conditions mirrored from the PyTorchJob, and a final phase
that stays final."""

from __future__ import annotations

import copy

import pytest

from kubefusion_operator import api
from kubefusion_operator.api import Phase
from kubefusion_operator.backends import PYTORCHJOB, build_pytorchjob
from kubefusion_operator.status import phase_of, status_from_child, with_admission

META = {"name": "products", "namespace": "ml-team", "uid": "u-1"}
SPEC = {"image": "x", "resources": {"nodes": 2, "gpusPerNode": 4}}
NOW = "2026-11-26T23:00:00Z"


def status_from_pytorchjob(child, previous, **kwargs):
    return status_from_child(PYTORCHJOB, child, previous, **kwargs)


def cond(type_, status="True", reason=None, message="", at="2026-11-26T22:00:00Z"):
    return {"type": type_, "status": status, "reason": reason or f"PyTorchJob{type_}", "message": message,
            "lastUpdateTime": at, "lastTransitionTime": at}


def child(*conditions, replica_statuses=None, **status):
    job = build_pytorchjob(SPEC, META)
    job["status"] = {"conditions": list(conditions), "replicaStatuses": replica_statuses or {}, **status}
    return job


CREATED = cond("Created", message="PyTorchJob products is created.")
RUNNING = cond("Running", message="PyTorchJob products is running.", at="2026-11-26T22:05:00Z")


@pytest.mark.parametrize("conditions, phase", [
    ([], Phase.PENDING),
    ([CREATED], Phase.CREATED),
    ([CREATED, RUNNING], Phase.RUNNING),
    ([CREATED, cond("Running", "False"), cond("Restarting", reason="PyTorchJobRestarting")], Phase.RESTARTING),
    ([CREATED, cond("Running", "False"), cond("Suspended", reason="PyTorchJobSuspended")], Phase.SUSPENDED),
    ([CREATED, cond("Running", "False"), cond("Succeeded")], Phase.SUCCEEDED),
    ([CREATED, cond("Running", "False"), cond("Failed", reason="BackoffLimitExceeded")], Phase.FAILED),
    ([CREATED, RUNNING, cond("Failed", message="deadline")], Phase.FAILED),
])
def test_phase_follows_the_most_decisive_true_condition(conditions, phase):
    status = status_from_pytorchjob(child(*conditions), {}, generation=1, now=NOW)
    assert status["phase"] == phase.value
    assert isinstance(status["phase"], str) and type(status["phase"]) is str  # YAML/JSON-safe, not the enum


def test_no_pytorchjob_yet_is_pending():
    status = status_from_pytorchjob(None, {}, generation=1, now=NOW)
    assert status["phase"] == "Pending"
    assert status["reason"] == PYTORCHJOB.pending_reason
    assert status["observedGeneration"] == 1


def test_pytorchjob_without_status_points_at_the_training_operator():
    job = build_pytorchjob(SPEC, META)
    status = status_from_pytorchjob(job, {}, generation=1, now=NOW)
    assert status["phase"] == "Pending"
    assert status["reason"] == PYTORCHJOB.waiting_reason
    assert "training operator" in status["message"]
    assert status["pytorchJob"] == "products"


def test_conditions_are_mirrored_with_their_reasons_and_messages():
    failed = cond("Failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit",
                  at="2026-11-26T22:30:00Z")
    status = status_from_pytorchjob(child(CREATED, cond("Running", "False", at="2026-11-26T22:30:00Z"), failed),
                                    {}, generation=3, now=NOW)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert set(by_type) == {"Created", "Running", "Failed"}
    assert by_type["Failed"] == {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                 "message": "Job has reached the specified backoff limit",
                                 "lastTransitionTime": "2026-11-26T22:30:00Z", "observedGeneration": 3}
    assert by_type["Running"]["status"] == "False"
    assert (status["reason"], status["message"]) == ("BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")
    assert status["completionTime"] == "2026-11-26T22:30:00Z"  # no completionTime from Kubeflow: the condition's


def test_operator_conditions_survive_mirroring():
    previous = {"conditions": api.set_condition([], api.ConditionType.SPEC_VALID, True, api.Reason.VALID, "ok",
                                                "2026-11-26T21:00:00Z")}
    status = status_from_pytorchjob(child(CREATED, RUNNING), previous, generation=1, now=NOW)
    types = [c["type"] for c in status["conditions"]]
    assert types == ["SpecValid", "Created", "Running"]


def test_transition_time_moves_only_when_status_changes():
    first = status_from_pytorchjob(child(CREATED, RUNNING), {}, generation=1, now=NOW)
    again = status_from_pytorchjob(child(CREATED, cond("Running", message="still running",
                                                       at="2026-11-26T22:50:00Z")), first, generation=1, now=NOW)
    running = api.get_condition(again["conditions"], "Running")
    assert running["lastTransitionTime"] == "2026-11-26T22:05:00Z" and running["message"] == "still running"


def test_times_and_counts_come_from_the_pytorchjob():
    job = child(CREATED, RUNNING, startTime="2026-11-26T22:01:00Z", replica_statuses={
        "Master": {"active": 1, "selector": "x"}, "Worker": {"active": 2, "failed": 1, "succeeded": 0}})
    status = status_from_pytorchjob(job, {}, generation=1, now=NOW)
    assert status["startTime"] == "2026-11-26T22:01:00Z"
    assert "completionTime" not in status
    assert status["replicaStatuses"] == {"Master": {"active": 1, "succeeded": 0, "failed": 0},
                                         "Worker": {"active": 2, "succeeded": 0, "failed": 1}}
    assert (status["active"], status["succeeded"], status["failed"]) == (3, 0, 1)
    assert (status["nodes"], status["gpusPerNode"], status["gpus"]) == (2, 4, 8)
    assert status["pytorchJob"] == "products"


def test_succeeded_sticks_after_the_pytorchjob_is_deleted_by_its_ttl():
    done = status_from_pytorchjob(child(CREATED, cond("Running", "False"), cond("Succeeded"),
                                        completionTime="2026-11-26T23:30:00Z",
                                        replica_statuses={"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}}),
                                  {}, generation=1, now=NOW)
    later = status_from_pytorchjob(None, copy.deepcopy(done), generation=1, now="2026-11-27T01:00:00Z")
    assert later == done
    assert later["phase"] == "Succeeded" and later["completionTime"] == "2026-11-26T23:30:00Z"
    assert later["succeeded"] == 2


@pytest.mark.parametrize("final", [Phase.SUCCEEDED, Phase.FAILED])
def test_a_final_phase_never_regresses(final):
    previous = {"phase": final.value, "reason": "X", "message": "done", "completionTime": "2026-11-26T23:30:00Z"}
    for job in (child(CREATED, RUNNING), child(CREATED), child()):
        status = status_from_pytorchjob(job, previous, generation=2, now=NOW)
        assert status["phase"] == final.value
        assert (status["reason"], status["message"]) == ("X", "done")
        assert status["completionTime"] == "2026-11-26T23:30:00Z"
        assert status["observedGeneration"] == 2


def test_a_pytorchjob_lost_before_the_end_fails_the_job_instead_of_running_again():
    running = status_from_pytorchjob(child(CREATED, RUNNING), {}, generation=1, now=NOW)
    status = status_from_pytorchjob(None, running, generation=None, now="2026-11-27T01:00:00Z")
    assert (status["phase"], status["reason"]) == ("Failed", "PyTorchJobLost")
    assert "last seen: Running" in status["message"] and "delete this MultimodalTrainJob" in status["message"]
    assert status["completionTime"] == "2026-11-27T01:00:00Z" and status["pytorchJob"] == "products"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Failed"] == ("True", "PyTorchJobLost")
    assert conditions["Running"] == ("False", "PyTorchJobLost")
    assert conditions["Created"] == ("False", "PyTorchJobLost")
    # Final: a later resync without the PyTorchJob changes nothing.
    assert status_from_pytorchjob(None, status, generation=None, now="2026-11-27T02:00:00Z") == status


def test_never_created_is_pending_not_lost():
    status = status_from_pytorchjob(None, {}, generation=1, now=NOW)
    assert (status["phase"], status["reason"]) == ("Pending", "PyTorchJobPending")


def test_a_condition_kubeflow_no_longer_reports_is_set_false():
    running = status_from_pytorchjob(child(CREATED, RUNNING), {}, generation=1, now=NOW)
    restarting = status_from_pytorchjob(child(CREATED, cond("Restarting", at="2026-11-26T22:10:00Z")), running,
                                        generation=None, now="2026-11-26T22:10:05Z")
    assert restarting["phase"] == "Restarting"
    by_type = {c["type"]: c for c in restarting["conditions"]}
    assert by_type["Running"]["status"] == "False" and by_type["Running"]["reason"] == "ConditionCleared"
    assert by_type["Running"]["lastTransitionTime"] == "2026-11-26T22:10:05Z"
    again = status_from_pytorchjob(child(CREATED, cond("Running", at="2026-11-26T22:12:00Z")), restarting,
                                   generation=None, now="2026-11-26T22:12:05Z")
    true = sorted(c["type"] for c in again["conditions"] if c["status"] == "True")
    assert again["phase"] == "Running" and true == ["Created", "Running"]


def test_a_pytorchjob_event_does_not_claim_a_generation_it_did_not_apply():
    applied = status_from_pytorchjob(child(CREATED), {}, generation=1, now=NOW)
    mirrored = status_from_pytorchjob(child(CREATED, RUNNING), applied, generation=None, now=NOW)
    assert mirrored["observedGeneration"] == 1
    # Stamped with the generation last applied, so the next reconcile has nothing to rewrite.
    assert {c["type"]: c["observedGeneration"] for c in mirrored["conditions"]} == {"Created": 1, "Running": 1}
    assert status_from_pytorchjob(child(CREATED, RUNNING), {}, generation=None, now=NOW).get("observedGeneration") is None


def test_status_mapping_does_not_modify_its_inputs():
    job = child(CREATED, RUNNING)
    previous = {"phase": "Created", "conditions": [dict(CREATED)]}
    job_copy, previous_copy = copy.deepcopy(job), copy.deepcopy(previous)
    status_from_pytorchjob(job, previous, generation=1, now=NOW)
    assert (job, previous) == (job_copy, previous_copy)


def test_phase_of_reads_unknown_values_as_none():
    assert phase_of({"phase": "Running"}) is Phase.RUNNING
    assert phase_of({"phase": "Exploded"}) is None and phase_of({}) is None and phase_of(None) is None


# --------------------------------------------------------------------------------------------------- Kueue

QUEUED_SPEC = {"scheduling": {"queue": "team-a"}}
WAITING_WORKLOAD = {"status": {"conditions": [{
    "type": "QuotaReserved", "status": "False", "reason": "Pending",
    "message": "couldn't assign flavors to pod set node: insufficient quota for nvidia.com/gpu in flavor gpu, "
               "request > maximum capacity (8 > 4)"}]}}


def test_a_job_kueue_holds_says_it_is_queued_and_why():
    held = status_from_pytorchjob(child(CREATED, cond("Suspended")), {}, generation=1, now=NOW)
    status = with_admission(held, QUEUED_SPEC, WAITING_WORKLOAD, NOW)
    assert (status["phase"], status["reason"]) == ("Suspended", "Queued")
    assert status["message"].startswith("waiting for Kueue to admit it through LocalQueue team-a (Pending: ")
    assert "insufficient quota for nvidia.com/gpu" in status["message"]
    admitted = api.get_condition(status["conditions"], "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["message"]) == ("False", "Queued", status["message"])

    running = with_admission(status_from_pytorchjob(child(CREATED, RUNNING), status, generation=None, now=NOW),
                             QUEUED_SPEC, None, "2026-11-26T23:05:00Z")
    admitted = api.get_condition(running["conditions"], "Admitted")
    assert (running["phase"], admitted["status"], admitted["reason"]) == ("Running", "True", "Admitted")
    assert admitted["lastTransitionTime"] == "2026-11-26T23:05:00Z"


def test_a_queued_job_the_user_suspended_is_deactivated_not_queued():
    held = status_from_pytorchjob(child(CREATED, cond("Suspended")), {}, generation=1, now=NOW)
    status = with_admission(held, {**QUEUED_SPEC, "runPolicy": {"suspend": True}}, WAITING_WORKLOAD, NOW)
    assert status["reason"] == "PyTorchJobSuspended"
    assert api.get_condition(status["conditions"], "Admitted")["reason"] == "Deactivated"


def test_jobs_without_a_queue_and_finished_jobs_have_no_admission_to_show():
    held = status_from_pytorchjob(child(CREATED, cond("Suspended")), {}, generation=1, now=NOW)
    assert with_admission(held, {}, WAITING_WORKLOAD, NOW) == held
    done = status_from_pytorchjob(child(CREATED, cond("Succeeded")), {}, generation=1, now=NOW)
    assert with_admission(done, QUEUED_SPEC, None, NOW) == done
