"""The Kubeflow ``PyTorchJob`` backend (training operator v1, maintenance only) (pure).

One pod per node: ``Master`` (1 replica) and ``Worker`` (``nodes - 1``, left out for one node). Each pod runs
the preprocessing export as an init container, then ``torchrun`` with one process per GPU. Kubeflow's
training operator sets ``PET_NNODES``, ``PET_NPROC_PER_NODE`` (from ``nprocPerNode``), ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which torchrun reads, and ``WORLD_SIZE = replicas *
nprocPerNode``. Status: the PyTorchJob's own conditions, copied with Kubeflow's reasons and messages. See
docs/architecture.md for the contract and docs/operator.md for the field mapping.
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator import api
from kubefusion_operator.backends.base import Backend, Observed, suspend_changed
from kubefusion_operator.builders import pod
from kubefusion_operator.builders.common import child_labels, child_metadata, job_name
from kubefusion_operator.builders.defaults import with_defaults

_COUNTS = ("active", "succeeded", "failed")


def build_pytorchjob(spec: dict[str, Any], meta: dict[str, Any], *, progress_url: str = "") -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob named like the MultimodalTrainJob and owned by it.

    ``spec`` is the MultimodalTrainJob spec (defaulted here with :func:`with_defaults`), ``meta`` its metadata
    (``name``, ``namespace``, ``uid``); ``progress_url``: the operator's progress endpoint, told to the training
    container with a token to report with (none when empty). Gang scheduling asks for all ``nodes`` pods at once
    (``schedulingPolicy.minAvailable``); a ``scheduling.queue`` becomes Kueue's queue label. The spec is expected
    to have passed :func:`kubefusion_operator.validation.validate_spec`.
    """
    spec = with_defaults(spec)
    resources, scheduling, run_policy = spec["resources"], spec["scheduling"], spec["runPolicy"]
    nodes = int(resources["nodes"])

    metadata = child_metadata(meta, job_name(meta), api.COMPONENT_TRAINING)
    if scheduling.get("queue"):
        metadata["labels"][api.KUEUE_QUEUE_LABEL] = scheduling["queue"]

    replica_specs: dict[str, Any] = {
        api.REPLICA_MASTER: {"replicas": 1, "restartPolicy": "OnFailure",
                             "template": _pod_template(spec, meta, progress_url)},
    }
    if nodes > 1:
        replica_specs[api.REPLICA_WORKER] = {"replicas": nodes - 1, "restartPolicy": "OnFailure",
                                             "template": _pod_template(spec, meta, progress_url)}

    scheduling_policy: dict[str, Any] = {"minAvailable": nodes}
    if scheduling.get("queue"):
        scheduling_policy["queue"] = scheduling["queue"]
    if scheduling.get("priorityClassName"):
        scheduling_policy["priorityClass"] = scheduling["priorityClassName"]

    policy: dict[str, Any] = {"cleanPodPolicy": run_policy["cleanPodPolicy"],
                              "backoffLimit": run_policy["backoffLimit"]}
    for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if run_policy.get(key) is not None:
            policy[key] = run_policy[key]
    policy["suspend"] = bool(run_policy["suspend"])
    policy["schedulingPolicy"] = scheduling_policy

    return {
        "apiVersion": api.PYTORCHJOB_API_VERSION,
        "kind": api.PYTORCHJOB_KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(pod.processes_per_node(spec)),
            "runPolicy": policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def run_policy_patch(spec: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings an existing PyTorchJob's mutable run-policy fields in line with ``spec``
    (``suspend`` and the limits); everything else is fixed once the job is created."""
    policy = with_defaults(spec)["runPolicy"]
    return {"spec": {"runPolicy": {
        "suspend": bool(policy["suspend"]),
        "backoffLimit": policy["backoffLimit"],
        "activeDeadlineSeconds": policy.get("activeDeadlineSeconds"),  # None removes it in a merge patch
        "ttlSecondsAfterFinished": policy.get("ttlSecondsAfterFinished"),
    }}}


def _pod_template(spec: dict[str, Any], meta: dict[str, Any], progress_url: str) -> dict[str, Any]:
    resources, scheduling = spec["resources"], spec["scheduling"]
    image = spec["image"]
    ports = [{"name": api.PYTORCHJOB_PORT_NAME, "containerPort": api.PYTORCHJOB_DEFAULT_PORT, "protocol": "TCP"}]
    preprocess = {
        "name": api.PREPROCESS_CONTAINER,
        "image": image,
        "command": list(api.PREPROCESS_COMMAND),
        "env": pod.env(meta),
        "volumeMounts": pod.mounts(spec, training=False),
        "securityContext": pod.container_security(),
    }
    trainer = {
        "name": api.TRAINER_CONTAINER,
        "image": image,
        "command": list(api.TRAIN_COMMAND),
        "env": pod.env(meta, progress_url=progress_url),
        "ports": ports + pod.metrics_ports(spec),
        "volumeMounts": pod.mounts(spec, training=True) + pod.progress_mounts(progress_url),
        "securityContext": pod.container_security(),
    }
    for container, gpus in ((preprocess, 0), (trainer, int(resources["gpusPerNode"]))):
        compute = pod.compute(spec, gpus=gpus)
        if compute:
            container["resources"] = compute
    template: dict[str, Any] = {
        "securityContext": pod.pod_security(),
        "initContainers": [preprocess],
        "containers": [trainer],
        "volumes": pod.volumes(spec, meta) + pod.progress_volumes(meta, progress_url),
    }
    if scheduling.get("priorityClassName"):
        template["priorityClassName"] = scheduling["priorityClassName"]
    template.update(pod.placement(spec))
    return {"metadata": {"labels": child_labels(meta, api.COMPONENT_TRAINING)}, "spec": template}


class PyTorchJobBackend(Backend):
    name = api.BackendName.PYTORCHJOB.value
    group, version, plural, kind = (api.PYTORCHJOB_GROUP, api.PYTORCHJOB_VERSION, api.PYTORCHJOB_PLURAL,
                                    api.PYTORCHJOB_KIND)
    status_key = "pytorchJob"
    install = ("Kubeflow's training operator: kubectl apply --server-side -k "
               '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.2"')
    pending_reason = "PyTorchJobPending"
    lost_reason = "PyTorchJobLost"
    waiting_reason = "WaitingForTrainingOperator"
    waiting_message = "PyTorchJob {name} has no status yet; is Kubeflow's training operator running?"
    mutable = frozenset({"suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"})

    def build(self, spec: dict[str, Any], meta: dict[str, Any], *, runtime: str,
              progress_url: str = "") -> dict[str, Any]:
        return build_pytorchjob(spec, meta, progress_url=progress_url)

    def observe(self, child: dict[str, Any]) -> Observed:
        status = child.get("status") or {}
        conditions = [
            {"type": c["type"], "status": c.get("status", api.CONDITION_UNKNOWN),
             "reason": c.get("reason") or c["type"], "message": c.get("message") or "",
             "lastTransitionTime": c.get("lastTransitionTime")}
            for c in status.get("conditions") or () if c.get("type") in api.MIRRORED_CONDITION_TYPES]
        nodes, gpus_per_node = _shape(child)
        replica_statuses = {
            replica_type: {key: int((counts or {}).get(key) or 0) for key in _COUNTS}
            for replica_type, counts in sorted((status.get("replicaStatuses") or {}).items())}
        return Observed(conditions, status.get("startTime"), status.get("completionTime"), nodes, gpus_per_node,
                        replica_statuses)

    def update_patch(self, applied: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any] | None:
        patch = run_policy_patch(spec)
        if not suspend_changed(applied, spec):
            del patch["spec"]["runPolicy"]["suspend"]
        return patch


def _shape(pytorchjob: dict[str, Any]) -> tuple[int, int]:
    """Nodes and GPUs per node as the PyTorchJob asks for them (what runs, not what the spec asks for now)."""
    replica_specs = (pytorchjob.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    nodes = sum(int(s.get("replicas", 1)) for s in replica_specs.values())
    gpus_per_node = 0
    master = replica_specs.get(api.REPLICA_MASTER) or next(iter(replica_specs.values()), {})
    for container in ((master.get("template") or {}).get("spec") or {}).get("containers") or ():
        if container.get("name") == api.TRAINER_CONTAINER:
            limits = (container.get("resources") or {}).get("limits") or {}
            gpus_per_node = int(limits.get(api.GPU_RESOURCE, 0))
    return nodes, gpus_per_node


PYTORCHJOB = PyTorchJobBackend()
