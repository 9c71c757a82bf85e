"""The TrainJob backend: the TrainJob a MultimodalTrainJob becomes (golden files), the pod Kubeflow Trainer makes
from it and kubefusion's ClusterTrainingRuntime (the same pod as the PyTorchJob's), what only the runtime decides,
and the status Trainer's conditions and jobsStatus map to."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kubefusion_operator import api
from kubefusion_operator.api import Phase
from kubefusion_operator.backends import (BACKENDS, PYTORCHJOB, TRAINJOB, build_pytorchjob, build_trainjob, choose,
                                          runtime_conflicts, unavailable_message)
from kubefusion_operator.builders import with_defaults, with_image
from kubefusion_operator.status import status_from_child
from kubefusion_operator.validation import immutable_changes, validate_spec

REPO = Path(__file__).resolve().parents[3]
CHART_IMAGE = "registry.example.com/kubefusion-trainer:0.1.0"
"""The chart's trainer.image here (conftest's example_spec resolves to it too)."""


def _chart_runtime(image: str) -> dict:
    """kubefusion's ClusterTrainingRuntime as the chart renders it (manifests/trainjob/runtime.yaml, kept current
    by charts/sync_deploy.py), installed with trainer.image = ``image``."""
    runtime = yaml.safe_load((REPO / "manifests" / "trainjob" / "runtime.yaml").read_text())
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod_spec = job["template"]["spec"]["template"]["spec"]
    for container_ in pod_spec["initContainers"] + pod_spec["containers"]:
        container_["image"] = image
    return runtime


RUNTIME = _chart_runtime(CHART_IMAGE)
K8S_VERSION = "1.37.0"
NOW = "2026-11-26T23:00:00Z"

ONE_NODE = {"data": {"path": "gs://datasets/products"}}
SUSPENDED_CPU = {"resources": {"gpusPerNode": 0, "sharedMemory": "1Gi"}, "monitoring": {"metricsPort": 0},
                 "runPolicy": {"suspend": True}}


def cases(example_spec):
    return {"one-node": ONE_NODE, "two-nodes-pvc": example_spec, "suspended-cpu": SUSPENDED_CPU}


def resolved(spec):
    """The spec as the operator builds from it: image filled in from its default (the chart's trainer image)."""
    return with_image(spec, CHART_IMAGE)


# ------------------------------------------------------------------------- the pod Trainer makes (merge)


def _merge(base, patch):
    """Strategic-merge as Trainer applies a runtime patch to the runtime's JobSet template: maps merged key by
    key, lists of named items (containers, volumes, env, mounts) merged by name, other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                   for i in base + patch):
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = _merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return copy.deepcopy(patch)


def trainer_pod(trainjob, runtime=RUNTIME):
    """The pod template of the replicated job ``node`` as Kubeflow Trainer v2 builds it from the runtime and the
    TrainJob: the runtime patches merged in, then ``trainer`` applied to the container ``node`` (image,
    command, environment, resources) with the PET_* variables of the torch ML policy."""
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    template = copy.deepcopy(job["template"]["spec"]["template"])
    for patch in trainjob["spec"]["runtimePatches"]:
        for replicated in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            assert replicated["name"] == job["name"], "Trainer refuses patches of replicated jobs it does not have"
            template = _merge(template, replicated["template"]["spec"]["template"])
    trainer = trainjob["spec"]["trainer"]
    (node,) = [c for c in template["spec"]["containers"] if c["name"] == "node"]
    node.update(image=trainer["image"], command=trainer["command"])
    if "resourcesPerNode" in trainer:
        node["resources"] = trainer["resourcesPerNode"]
    node["env"] = trainer["env"] + [{"name": name, "value": "x"} for name in
                                    ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                                     "PET_MASTER_PORT")]
    return template


def container(template, name):
    spec = template["spec"]
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


# -------------------------------------------------------------------------------------------- builder


@pytest.mark.parametrize("case", ["one-node", "two-nodes-pvc", "suspended-cpu"])
def test_trainjob_matches_golden_files(case, example_spec, meta, golden):
    spec = resolved(cases(example_spec)[case])
    assert validate_spec(spec, name=meta["name"]) == []
    golden(f"{case}.trainjob.yaml", build_trainjob(spec, meta))


@pytest.mark.parametrize("progress_url", ["", "http://kubefusion-operator-progress.kubefusion-system.svc:8082"])
@pytest.mark.parametrize("case", ["one-node", "two-nodes-pvc", "suspended-cpu"])
def test_the_pod_trainer_makes_is_the_pytorchjobs_pod_with_trainers_names(case, progress_url, example_spec, meta):
    """Nothing the PyTorchJob path gives a pod is lost on the TrainJob path: volumes, mounts, environment,
    images, commands, resources, security, placement, the progress endpoint and its token. Only what each
    backend names itself differs."""
    spec = resolved(cases(example_spec)[case])
    from_trainjob = trainer_pod(build_trainjob(spec, meta, progress_url=progress_url))
    from_pytorchjob = build_pytorchjob(spec, meta, progress_url=progress_url)["spec"]["pytorchReplicaSpecs"][
        "Master"]["template"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x",
                                                                                 **from_trainjob["metadata"]},
                                  "spec": from_trainjob["spec"]}, K8S_VERSION, strict=True)

    ours, theirs = from_trainjob["spec"], from_pytorchjob["spec"]
    assert from_trainjob["metadata"]["labels"] == from_pytorchjob["metadata"]["labels"]
    for key in ("volumes", "securityContext", "nodeSelector", "tolerations"):
        assert ours.get(key) == theirs.get(key), key
    node, pytorch = container(from_trainjob, "node"), container(from_pytorchjob, "pytorch")
    for key in ("image", "command", "volumeMounts", "securityContext", "resources"):
        assert node.get(key) == pytorch.get(key), key
    assert [e for e in node["env"] if not e["name"].startswith("PET_")] == pytorch["env"]
    init, preprocess = container(from_trainjob, "preprocess"), container(from_pytorchjob, "preprocess")
    for key in ("image", "command", "env", "volumeMounts", "securityContext"):
        assert init.get(key) == preprocess.get(key), key
    # The one difference: a TrainJob cannot give the init container resources, so it has none of its own (the
    # pod's requests are the node container's, which are no smaller).
    assert "resources" not in init
    # The runtime declares the metrics ports (a TrainJob cannot add ports): those of the PyTorchJob's ranks.
    metrics = [p for p in pytorch["ports"] if p["name"].startswith("metrics-")]
    assert node["ports"][:len(metrics)] == metrics


def test_trainjob_carries_trainer_nodes_processes_queue_deadline_and_suspend(example_spec, meta):
    spec = resolved({**example_spec, "runPolicy": {**example_spec["runPolicy"],
                                                          "activeDeadlineSeconds": 600, "suspend": True}})
    trainjob = build_trainjob(spec, meta, runtime="team-runtime")
    assert (trainjob["apiVersion"], trainjob["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert trainjob["metadata"]["ownerReferences"][0]["uid"] == meta["uid"]
    assert trainjob["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                              "name": "team-runtime"}
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert isinstance(trainer["numProcPerNode"], int)  # Trainer v2.2+: an integer, not "4"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # Trainer's own; its webhook refuses them
    assert (trainjob["spec"]["activeDeadlineSeconds"], trainjob["spec"]["suspend"]) == (600, True)
    (patch,) = trainjob["spec"]["runtimePatches"]
    assert patch["manager"] == "kubefusion.io/operator" and "time" not in patch  # Trainer's webhook stamps it
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    containers = node["template"]["spec"]["template"]["spec"]["containers"]
    assert all("env" not in c for c in containers)  # Trainer refuses patched env on the node container


def test_a_cpu_job_runs_one_process_and_asks_for_no_gpu(meta):
    trainer = build_trainjob(resolved(SUSPENDED_CPU), meta)["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1 and "resourcesPerNode" not in trainer


def test_no_queue_means_no_queue_label(meta):
    assert "kueue.x-k8s.io/queue-name" not in build_trainjob(resolved(ONE_NODE), meta)["metadata"]["labels"]


def test_builder_is_deterministic_and_leaves_its_input_alone(example_spec, meta):
    spec = resolved(example_spec)
    before = copy.deepcopy(spec)
    assert build_trainjob(spec, meta) == build_trainjob(spec, meta)
    assert spec == before
    assert "&id" not in yaml.safe_dump(build_trainjob(spec, meta))  # no shared sub-objects


# ------------------------------------------------------------------------------------ only the runtime's


def test_the_chart_runtime_runs_every_default_job(example_spec):
    assert runtime_conflicts(resolved(ONE_NODE), RUNTIME) == []
    assert runtime_conflicts(resolved(example_spec), RUNTIME) == []
    assert runtime_conflicts(resolved(SUSPENDED_CPU), RUNTIME) == []  # metrics off: the declared ports idle


@pytest.mark.parametrize("change, field", [
    ({"image": "registry.example.com/mine:1"}, "spec.image"),
    ({"scheduling": {"priorityClassName": "high"}}, "spec.scheduling.priorityClassName"),
    ({"runPolicy": {"backoffLimit": 5}}, "spec.runPolicy.backoffLimit"),
    ({"runPolicy": {"ttlSecondsAfterFinished": 3600}}, "spec.runPolicy.ttlSecondsAfterFinished"),
    ({"runPolicy": {"cleanPodPolicy": "All"}}, "spec.runPolicy.cleanPodPolicy"),
    ({"monitoring": {"metricsPort": 9500}}, "spec.monitoring.metricsPort"),
])
def test_what_only_the_runtime_decides_is_refused_naming_field_values_and_ways_out(change, field):
    (problem,) = runtime_conflicts({**resolved(ONE_NODE), **change}, RUNTIME)
    assert problem.startswith(f"{field}: ") and "ClusterTrainingRuntime kubefusion" in problem
    assert "spec.backend: PyTorchJob" in problem
    assert TRAINJOB.conflicts({**resolved(ONE_NODE), **change}, RUNTIME) == [problem]
    assert PYTORCHJOB.conflicts({**resolved(ONE_NODE), **change}, RUNTIME) == []  # a PyTorchJob carries it all


def test_a_runtime_configured_like_the_job_runs_it():
    runtime = copy.deepcopy(RUNTIME)
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    job["template"]["spec"]["template"]["spec"]["priorityClassName"] = "high"
    job["template"]["spec"]["backoffLimit"] = 5
    runtime["spec"]["template"]["spec"]["ttlSecondsAfterFinished"] = 3600
    spec = {**resolved(ONE_NODE), "scheduling": {"priorityClassName": "high"},
            "runPolicy": {"backoffLimit": 5, "ttlSecondsAfterFinished": 3600}}
    assert runtime_conflicts(spec, runtime) == []


def test_a_runtime_that_is_not_kubefusions_is_named_as_such():
    upstream = {"metadata": {"name": "torch-distributed"}, "spec": {"template": {"spec": {"replicatedJobs": [{
        "name": "node", "template": {"metadata": {"labels": {api.TRAINER_ANCESTOR_LABEL: "trainer"}},
                                     "spec": {"template": {"spec": {"containers": [{"name": "node"}]}}}}}]}}}}
    (problem,) = runtime_conflicts(resolved(ONE_NODE), upstream)
    assert "torch-distributed" in problem and "not kubefusion's runtime" in problem
    (problem,) = runtime_conflicts(resolved(ONE_NODE), {"metadata": {"name": "empty"}, "spec": {}})
    assert "no replicated job 'node'" in problem


# ------------------------------------------------------------------------------------- choice and changes


@pytest.mark.parametrize("requested, available, preferred, chosen", [
    ("Auto", {"PyTorchJob": True, "TrainJob": True}, "PyTorchJob", "PyTorchJob"),
    ("Auto", {"PyTorchJob": True, "TrainJob": True}, "TrainJob", "TrainJob"),
    ("Auto", {"PyTorchJob": False, "TrainJob": True}, "PyTorchJob", "TrainJob"),
    ("Auto", {"PyTorchJob": True, "TrainJob": False}, "TrainJob", "PyTorchJob"),
    ("Auto", {"PyTorchJob": False, "TrainJob": False}, "PyTorchJob", None),
    (None, {"PyTorchJob": False, "TrainJob": True}, "PyTorchJob", "TrainJob"),
    ("TrainJob", {"TrainJob": True}, "PyTorchJob", "TrainJob"),
    ("TrainJob", {"TrainJob": False}, "PyTorchJob", None),  # never the other one instead
    ("PyTorchJob", {"PyTorchJob": False}, "TrainJob", None),
])
def test_backend_choice(requested, available, preferred, chosen):
    assert choose(requested, available, preferred) == chosen


def test_backend_unavailable_names_both_ways_to_install_one():
    neither = unavailable_message("Auto", {"PyTorchJob": False, "TrainJob": False}, "kubefusion")
    assert "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0" in neither
    assert "github.com/kubeflow/training-operator.git" in neither
    assert "manifests/trainjob/" in neither and neither.endswith("retrying with back-off")
    no_runtime = unavailable_message("TrainJob", {"TrainJob": True}, "team-runtime")
    assert no_runtime.startswith("spec.backend is TrainJob and ") and "ClusterTrainingRuntime team-runtime" in no_runtime
    assert "training-operator" not in no_runtime
    assert "trainer.git" not in unavailable_message("PyTorchJob", {"PyTorchJob": False}, "kubefusion")


def test_a_trainjob_takes_only_suspend_after_creation():
    applied = resolved(ONE_NODE)
    limits = {**applied, "runPolicy": {"backoffLimit": 7, "activeDeadlineSeconds": 60, "suspend": True}}
    assert immutable_changes(applied, limits, mutable=PYTORCHJOB.mutable) == []
    assert immutable_changes(applied, limits, mutable=TRAINJOB.mutable) == [
        "spec.runPolicy.backoffLimit", "spec.runPolicy.activeDeadlineSeconds"]
    assert TRAINJOB.update_patch(applied, limits) == {"spec": {"suspend": True}}
    assert TRAINJOB.update_patch(applied, applied) is None  # suspend untouched: whatever Kueue set stays
    assert PYTORCHJOB.update_patch(applied, {**applied, "runPolicy": {"backoffLimit": 7}}) == {
        "spec": {"runPolicy": {"backoffLimit": 7, "activeDeadlineSeconds": None, "ttlSecondsAfterFinished": None}}}


def test_backend_is_fixed_at_creation():
    assert immutable_changes({"backend": "Auto"}, {"backend": "TrainJob"}) == ["spec.backend"]
    assert immutable_changes({}, {"backend": "Auto"}) == []  # Auto is the default
    assert validate_spec({"image": "x", "backend": "Trainjob"}) == [
        "spec.backend: must be one of Auto, PyTorchJob, TrainJob (got 'Trainjob')"]
    assert with_defaults({})["backend"] == "Auto"
    assert list(BACKENDS) == ["PyTorchJob", "TrainJob"]


# ---------------------------------------------------------------------------------------------- status


def trainjob_status(*conditions, ready=0, active=0, succeeded=0, failed=0, jobs=True):
    child = build_trainjob(resolved({"resources": {"nodes": 2, "gpusPerNode": 4}}),
                           {"name": "products", "namespace": "ml-team", "uid": "u-1"})
    child["status"] = {"conditions": [
        {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": at} for t, s, r, m, at in conditions]}
    if jobs:
        child["status"]["jobsStatus"] = [{"name": "node", "ready": ready, "active": active, "succeeded": succeeded,
                                          "failed": failed, "suspended": 0}]
    return child


def mapped(child, previous=None, generation=1):
    return status_from_child(TRAINJOB, child, previous or {}, generation=generation, now=NOW)


COMPLETE = ("Complete", "True", "AllJobsCompleted", "jobset completed successfully", "2026-11-26T22:30:00Z")
FAILED = ("Failed", "True", "FailedJobs", "jobset failed due to one or more job failures (first failed job: "
          "products-node-0)", "2026-11-26T22:30:00Z")
SUSPENDED = ("Suspended", "True", "Suspended", "TrainJob is suspended", "2026-11-26T22:00:00Z")
RESUMED = ("Suspended", "False", "Resumed", "TrainJob is resumed", "2026-11-26T22:10:00Z")


@pytest.mark.parametrize("child, phase, reason", [
    (trainjob_status(jobs=False), Phase.PENDING, "WaitingForTrainer"),
    (trainjob_status(active=1), Phase.CREATED, "TrainJobCreated"),
    (trainjob_status(active=1, ready=1), Phase.RUNNING, "TrainJobRunning"),
    (trainjob_status(RESUMED, active=1, ready=1), Phase.RUNNING, "TrainJobRunning"),
    (trainjob_status(SUSPENDED), Phase.SUSPENDED, "Suspended"),
    (trainjob_status(COMPLETE, succeeded=1), Phase.SUCCEEDED, "AllJobsCompleted"),
    (trainjob_status(FAILED, failed=1, ready=1), Phase.FAILED, "FailedJobs"),
    (trainjob_status(("Failed", "True", "DeadlineExceeded", "TrainJob exceeded its active deadline",
                      "2026-11-26T22:30:00Z"), active=1, ready=1), Phase.FAILED, "DeadlineExceeded"),
])
def test_phase_from_trainers_conditions_and_jobs_status(child, phase, reason):
    status = mapped(child)
    assert (status["phase"], status["reason"]) == (phase.value, reason)
    assert (status["backend"], status["trainJob"]) == ("TrainJob", "products")
    assert "pytorchJob" not in status


def test_trainers_reasons_messages_and_times_are_carried_through():
    running = mapped(trainjob_status(active=1, ready=1))
    assert running["startTime"] == NOW and (running["nodes"], running["gpusPerNode"], running["gpus"]) == (2, 4, 8)
    failed = mapped(trainjob_status(FAILED, failed=1), running, generation=None)
    assert failed["message"] == FAILED[3] and failed["completionTime"] == "2026-11-26T22:30:00Z"
    by_type = {c["type"]: c for c in failed["conditions"]}
    assert by_type["Failed"]["reason"] == "FailedJobs" and by_type["Failed"]["lastTransitionTime"] == FAILED[4]
    assert by_type["Running"]["status"] == "False" and by_type["Running"]["reason"] == "ConditionCleared"
    assert failed["replicaStatuses"] == {"node": {"active": 0, "succeeded": 0, "failed": 1}}
    assert failed["startTime"] == NOW  # when it was first seen running; the TrainJob reports none


def test_terminal_phase_sticks_and_a_lost_trainjob_fails_the_job():
    done = mapped(trainjob_status(COMPLETE, succeeded=1))
    late = mapped(trainjob_status(active=1, ready=1), done, generation=None)  # a stale report never revives it
    assert {k: late[k] for k in ("phase", "reason", "message", "completionTime")} == {
        k: done[k] for k in ("phase", "reason", "message", "completionTime")}
    assert status_from_child(TRAINJOB, None, done, generation=None, now=NOW) == done  # JobSet TTL, kept
    running = mapped(trainjob_status(active=1, ready=1))
    lost = status_from_child(TRAINJOB, None, running, generation=None, now=NOW)
    assert (lost["phase"], lost["reason"]) == ("Failed", "TrainJobLost")
    assert "TrainJob products was deleted before it reported an end" in lost["message"]
    pending = status_from_child(TRAINJOB, None, {}, generation=1, now=NOW)
    assert (pending["phase"], pending["reason"]) == ("Pending", "TrainJobPending")


# ------------------------------------------------------------------------------------------- the example


def test_the_trainjob_example_runs_on_the_chart_runtime(crd_errors, meta):
    """examples/trainjob.yaml: valid for the CRD, the operator and the trainer, and on the TrainJob backend the
    chart's runtime runs it as written (image: the chart's default), on 2 nodes with one process each."""
    from kubefusion import config as trainer_config

    example = yaml.safe_load((REPO / "examples" / "trainjob.yaml").read_text())
    spec = example["spec"]
    assert crd_errors(spec) == []
    assert validate_spec(resolved(spec), name=example["metadata"]["name"]) == []
    assert trainer_config.job_from_dict(example).backend == "TrainJob"
    assert runtime_conflicts(resolved(spec), RUNTIME) == []
    trainjob = build_trainjob(resolved(spec), {**meta, "name": example["metadata"]["name"]})
    assert (trainjob["spec"]["trainer"]["numNodes"], trainjob["spec"]["trainer"]["numProcPerNode"]) == (2, 1)
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    pod = trainer_pod(trainjob)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "demo-runs"}
