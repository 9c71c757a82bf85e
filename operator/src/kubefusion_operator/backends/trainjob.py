"""The Kubeflow Trainer v2 ``TrainJob`` backend (on JobSet), for Trainer v2.2 and newer (pure).

The containers live in a ClusterTrainingRuntime (``kubefusion`` by default; the chart and
``manifests/trainjob/`` install it): the ``preprocess`` init container and the ``node`` trainer container of the
replicated job ``node``, with the torch ML policy, so Trainer sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` for torchrun. The TrainJob says what differs per
job: ``trainer`` (image, command, environment, nodes, processes and resources per node) and one runtime patch,
owned by the manager ``kubefusion.io/operator``, with the pods' labels, volumes, mounts, environment of the
init container, security settings, node selector and tolerations. Its spec is written once, at creation:
Trainer refuses most changes to it and Kueue adds a runtime patch of its own; only ``spec.suspend`` is patched
afterwards.

What a TrainJob cannot set per job (the init container's image, the pods' priority class, the Jobs'
``backoffLimit``, the JobSet's ``ttlSecondsAfterFinished``, the metrics ports) comes from the runtime:
:meth:`TrainJobBackend.conflicts` refuses a job that asks for something else, so nothing is silently dropped.

Status: Trainer's ``Complete`` and ``Failed`` conditions (JobSet's reasons and messages) become ``Succeeded`` and
``Failed``, ``Suspended`` is copied, ``Created`` is the TrainJob reporting anything at all and ``Running`` is
the trainer Job having every pod ready (``jobsStatus``).
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator import api
from kubefusion_operator.backends.base import Backend, Observed, suspend_changed
from kubefusion_operator.builders import pod
from kubefusion_operator.builders.common import child_labels, child_metadata, job_name
from kubefusion_operator.builders.defaults import with_defaults

_JOB_COUNTS = ("active", "succeeded", "failed")
KUBERNETES_JOB_BACKOFF_LIMIT = 6
"""A Job's ``backoffLimit`` when its template leaves it out (Kubernetes' default)."""
_TRAINER_CONDITIONS = {"Complete": api.ConditionType.SUCCEEDED, "Failed": api.ConditionType.FAILED,
                       "Suspended": api.ConditionType.SUSPENDED}
"""Trainer's condition types and the MultimodalTrainJob condition each becomes."""


def build_trainjob(spec: dict[str, Any], meta: dict[str, Any], *,
                   runtime: str = api.DEFAULT_TRAINING_RUNTIME, progress_url: str = "") -> dict[str, Any]:
    """A ``trainer.kubeflow.org/v1alpha1`` TrainJob named like the MultimodalTrainJob and owned by it, running
    on the ClusterTrainingRuntime ``runtime``.

    ``spec`` is the MultimodalTrainJob spec (defaulted here), ``meta`` its metadata (``name``, ``namespace``,
    ``uid``); ``progress_url``: the operator's progress endpoint, told to the training container with a token to
    report with (none when empty). A ``scheduling.queue`` becomes Kueue's queue label; ``runPolicy.activeDeadlineSeconds`` and
    ``suspend`` are the TrainJob's own fields. The spec is expected to have passed validation and
    :meth:`TrainJobBackend.conflicts`.
    """
    spec = with_defaults(spec)
    resources, scheduling, run_policy = spec["resources"], spec["scheduling"], spec["runPolicy"]

    metadata = child_metadata(meta, job_name(meta), api.COMPONENT_TRAINING)
    if scheduling.get("queue"):
        metadata["labels"][api.KUEUE_QUEUE_LABEL] = scheduling["queue"]

    trainer: dict[str, Any] = {
        "image": spec["image"],
        "command": list(api.TRAIN_COMMAND),
        "env": pod.env(meta, progress_url=progress_url),
        "numNodes": int(resources["nodes"]),
        "numProcPerNode": pod.processes_per_node(spec),
    }
    compute = pod.compute(spec, gpus=int(resources["gpusPerNode"]))
    if compute:
        trainer["resourcesPerNode"] = compute

    pod_patch: dict[str, Any] = {
        "securityContext": pod.pod_security(),
        "volumes": pod.volumes(spec, meta) + pod.progress_volumes(meta, progress_url),
        # The init container's environment can only come from a patch (trainer.env is the node container's);
        # Trainer refuses patched environment for the node container itself.
        "initContainers": [{"name": api.PREPROCESS_CONTAINER, "env": pod.env(meta),
                            "volumeMounts": pod.mounts(spec, training=False),
                            "securityContext": pod.container_security()}],
        "containers": [{"name": api.TRAINER_NODE_CONTAINER,
                        "volumeMounts": pod.mounts(spec, training=True) + pod.progress_mounts(progress_url),
                        "securityContext": pod.container_security()}],
        **pod.placement(spec),
    }
    patch = {
        "manager": api.RUNTIME_PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": api.TRAINER_REPLICATED_JOB,
            "template": {"spec": {"template": {
                "metadata": {"labels": child_labels(meta, api.COMPONENT_TRAINING)},
                "spec": pod_patch,
            }}},
        }]}}},
    }

    body: dict[str, Any] = {
        "runtimeRef": {"apiGroup": api.TRAINER_GROUP, "kind": api.CLUSTER_TRAINING_RUNTIME_KIND, "name": runtime},
        "trainer": trainer,
        "runtimePatches": [patch],
        "suspend": bool(run_policy["suspend"]),
    }
    if run_policy.get("activeDeadlineSeconds") is not None:
        body["activeDeadlineSeconds"] = run_policy["activeDeadlineSeconds"]
    return {"apiVersion": api.TRAINER_API_VERSION, "kind": api.TRAINJOB_KIND, "metadata": metadata, "spec": body}


# ------------------------------------------------------------------------------------- the runtime's part


def trainer_job(runtime: dict[str, Any]) -> dict[str, Any] | None:
    """The runtime's replicated job that Trainer runs the trainer in (labelled ancestor ``trainer``)."""
    replicated = ((((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")
                  or [])
    return next((job for job in replicated
                 if ((job.get("template") or {}).get("metadata") or {}).get("labels", {}).get(
                     api.TRAINER_ANCESTOR_LABEL) == "trainer"), None)


def _pod_spec(replicated_job: dict[str, Any]) -> dict[str, Any]:
    return (((replicated_job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}


def _named(containers: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    return next((c for c in containers or () if c.get("name") == name), None)


def runtime_conflicts(spec: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """What in ``spec`` a TrainJob on ``runtime`` (a ClusterTrainingRuntime as read from the API) would not do
    as asked, one message per field: the runtime decides it and a TrainJob cannot override it. Empty when the
    job can run. A runtime without kubefusion's containers is reported too."""
    spec = with_defaults(spec)
    name = (runtime.get("metadata") or {}).get("name", "?")
    what = f"the ClusterTrainingRuntime {name}"
    job = trainer_job(runtime)
    if job is None or job.get("name") != api.TRAINER_REPLICATED_JOB:
        return [f"{what} has no replicated job {api.TRAINER_REPLICATED_JOB!r} labelled "
                f"{api.TRAINER_ANCESTOR_LABEL}: trainer, so it is not kubefusion's runtime; reinstall it from the "
                "chart (or manifests/trainjob/)"]
    pod_spec = _pod_spec(job)
    init = _named(pod_spec.get("initContainers"), api.PREPROCESS_CONTAINER)
    node = _named(pod_spec.get("containers"), api.TRAINER_NODE_CONTAINER)
    if init is None or node is None:
        return [f"{what} lacks the init container {api.PREPROCESS_CONTAINER!r} or the container "
                f"{api.TRAINER_NODE_CONTAINER!r}, so it is not kubefusion's runtime; reinstall it from the chart "
                "(or manifests/trainjob/)"]
    instead = "or set spec.backend: PyTorchJob where Kubeflow's training operator is installed"
    problems = []

    def differs(path: str, asked: Any, runs: Any, how: str) -> None:
        if asked != runs:
            problems.append(f"spec.{path}: {asked!r} cannot be applied on the TrainJob backend: a TrainJob takes it "
                            f"from {what}, which has {runs!r}; {how}, {instead}")

    differs("image", spec["image"], init.get("image"),
            "the preprocess init container runs the runtime's image and a TrainJob cannot change an init "
            "container's image: leave spec.image out (the operator's default trainer image is the chart's "
            "trainer.image, as the runtime's) or name the runtime's image, install the runtime with this image "
            "(chart value trainer.image)")
    differs("scheduling.priorityClassName", spec["scheduling"].get("priorityClassName"),
            pod_spec.get("priorityClassName"),
            "a TrainJob cannot set its pods' priority class: leave it out, give the runtime this priority class "
            "(chart value trainJob.runtime.priorityClassName)")
    differs("runPolicy.backoffLimit", spec["runPolicy"]["backoffLimit"],
            ((job.get("template") or {}).get("spec") or {}).get("backoffLimit", KUBERNETES_JOB_BACKOFF_LIMIT),
            "use the runtime's value, change the runtime's (chart value trainJob.runtime.backoffLimit)")
    differs("runPolicy.ttlSecondsAfterFinished", spec["runPolicy"].get("ttlSecondsAfterFinished"),
            (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("ttlSecondsAfterFinished"),
            "use the runtime's value, change the runtime's (chart value trainJob.runtime.ttlSecondsAfterFinished)")
    differs("runPolicy.cleanPodPolicy", spec["runPolicy"]["cleanPodPolicy"], "Running",
            "a JobSet's Jobs end their running pods and keep the finished ones (cleanPodPolicy Running): use "
            "Running")
    port = int(spec["monitoring"]["metricsPort"])
    declared = {p.get("name"): p.get("containerPort") for p in node.get("ports") or ()}
    if port and declared.get("metrics-0") != port:
        differs("monitoring.metricsPort", port, declared.get("metrics-0"),
                "the runtime declares the trainer's metrics ports (metrics-<rank>, scraped by the PodMonitor) and a "
                "TrainJob cannot add ports: use the runtime's port, change the runtime's (chart value "
                "trainJob.runtime.metricsPort)")
    return problems


# ------------------------------------------------------------------------------------------- the backend


class TrainJobBackend(Backend):
    name = api.BackendName.TRAINJOB.value
    group, version, plural, kind = api.TRAINER_GROUP, api.TRAINER_VERSION, api.TRAINJOB_PLURAL, api.TRAINJOB_KIND
    status_key = "trainJob"
    install = ("Kubeflow Trainer v2 (v2.2 or newer) with JobSet: kubectl apply --server-side -k "
               '"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0", then kubefusion\'s '
               "ClusterTrainingRuntime: helm upgrade with the chart (it installs the runtime once Trainer is "
               "there) or kubectl apply -k manifests/trainjob/")
    pending_reason = "TrainJobPending"
    lost_reason = "TrainJobLost"
    waiting_reason = "WaitingForTrainer"
    waiting_message = "TrainJob {name} has no status yet; is the Kubeflow Trainer controller manager running?"
    mutable = frozenset({"suspend"})

    def build(self, spec: dict[str, Any], meta: dict[str, Any], *, runtime: str,
              progress_url: str = "") -> dict[str, Any]:
        return build_trainjob(spec, meta, runtime=runtime, progress_url=progress_url)

    def observe(self, child: dict[str, Any]) -> Observed:
        meta, status = child.get("metadata") or {}, child.get("status") or {}
        name = meta.get("name", "")
        trainer = (child.get("spec") or {}).get("trainer") or {}
        nodes = int(trainer.get("numNodes") or 1)
        limits = (trainer.get("resourcesPerNode") or {}).get("limits") or {}
        jobs = {entry.get("name"): entry for entry in status.get("jobsStatus") or ()}
        reported = status.get("conditions") or []

        conditions = []
        if jobs or reported:
            conditions.append({"type": api.ConditionType.CREATED, "status": api.CONDITION_TRUE,
                               "reason": "TrainJobCreated", "message": f"TrainJob {name} is created."})
        trainer_job = jobs.get(api.TRAINER_REPLICATED_JOB) or {}
        finished = any(c.get("type") in ("Complete", "Failed") and c.get("status") == api.CONDITION_TRUE
                       for c in reported)
        if int(trainer_job.get("ready") or 0) >= 1 and not finished:
            conditions.append({"type": api.ConditionType.RUNNING, "status": api.CONDITION_TRUE,
                               "reason": "TrainJobRunning",
                               "message": f"TrainJob {name} is running: the pods of all {nodes} nodes are ready."})
        for condition in reported:
            ours = _TRAINER_CONDITIONS.get(condition.get("type"))
            if ours is not None:
                conditions.append({"type": ours, "status": condition.get("status", api.CONDITION_UNKNOWN),
                                   "reason": condition.get("reason") or condition["type"],
                                   "message": condition.get("message") or "",
                                   "lastTransitionTime": condition.get("lastTransitionTime")})
        replica_statuses = {
            job: {key: int(entry.get(key) or 0) for key in _JOB_COUNTS} for job, entry in sorted(jobs.items())}
        return Observed(conditions, None, None, nodes, int(limits.get(api.GPU_RESOURCE, 0)), replica_statuses)

    def update_patch(self, applied: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any] | None:
        if not suspend_changed(applied, spec):
            return None
        return {"spec": {"suspend": bool((spec.get("runPolicy") or {}).get("suspend", False))}}

    def conflicts(self, spec: dict[str, Any], runtime: dict[str, Any] | None) -> list[str]:
        return runtime_conflicts(spec, runtime) if runtime is not None else []


TRAINJOB = TrainJobBackend()
