"""The Kubeflow ``PyTorchJob`` that runs a MultimodalTrainJob (pure).

One pod per node: ``Master`` (1 replica) and ``Worker`` (``nodes - 1``, left out for one node). Each pod runs
the preprocessing export as an init container, then ``torchrun`` with one process per GPU. Kubeflow's
training operator sets ``PET_NNODES``, ``PET_NPROC_PER_NODE`` (from ``nprocPerNode``), ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which torchrun reads, and ``WORLD_SIZE = replicas *
nprocPerNode``. See docs/architecture.md for the contract and docs/operator.md for the field mapping.
"""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator import api
from kubefusion_operator.builders.common import child_labels, child_metadata, job_name, job_namespace
from kubefusion_operator.builders.defaults import with_defaults

NCCL_ENV = (
    ("NCCL_DEBUG", "WARN"),
    # A hung collective (one rank dead) raises after the timeout instead of blocking forever, so the pod
    # fails and Kubeflow restarts it; the old and new names cover torch before and after 2.2.
    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    ("NCCL_ASYNC_ERROR_HANDLING", "1"),
    ("PYTHONUNBUFFERED", "1"),
)

VOLUME_CONFIG = "job-config"
VOLUME_DATA = "data"
VOLUME_ARTIFACTS = "artifacts"
VOLUME_CHECKPOINTS = "checkpoints"
VOLUME_SHM = "dshm"


def processes_per_node(spec: dict[str, Any]) -> int:
    """torchrun processes per pod: one per GPU, and one (gloo on CPU) when the job asks for no GPU."""
    return max(int(with_defaults(spec)["resources"]["gpusPerNode"]), 1)


def world_size(spec: dict[str, Any]) -> int:
    """Processes in the whole job, as Kubeflow computes ``WORLD_SIZE``."""
    return int(with_defaults(spec)["resources"]["nodes"]) * processes_per_node(spec)


def build_pytorchjob(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob named like the MultimodalTrainJob and owned by it.

    ``spec`` is the MultimodalTrainJob spec (defaulted here with :func:`with_defaults`), ``meta`` its metadata
    (``name``, ``namespace``, ``uid``). Gang scheduling asks for all ``nodes`` pods at once
    (``schedulingPolicy.minAvailable``); a ``scheduling.queue`` becomes Kueue's queue label. The spec is expected
    to have passed :func:`kubefusion_operator.validation.validate_spec`.
    """
    spec = with_defaults(spec)
    resources, scheduling, run_policy = spec["resources"], spec["scheduling"], spec["runPolicy"]
    nodes = int(resources["nodes"])
    name = job_name(meta)

    metadata = child_metadata(meta, name, api.COMPONENT_TRAINING)
    if scheduling.get("queue"):
        metadata["labels"][api.KUEUE_QUEUE_LABEL] = scheduling["queue"]

    replica_specs: dict[str, Any] = {
        api.REPLICA_MASTER: {"replicas": 1, "restartPolicy": "OnFailure", "template": _pod_template(spec, meta)},
    }
    if nodes > 1:
        replica_specs[api.REPLICA_WORKER] = {"replicas": nodes - 1, "restartPolicy": "OnFailure",
                                             "template": _pod_template(spec, meta)}

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
            "nprocPerNode": str(processes_per_node(spec)),
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


# ------------------------------------------------------------------------------------------- pod parts


def _env(meta: dict[str, Any]) -> list[dict[str, Any]]:
    env = [{"name": api.ENV_NAMESPACE, "value": job_namespace(meta)},
           {"name": api.ENV_JOB_NAME, "value": job_name(meta)}]
    return env + [{"name": key, "value": value} for key, value in NCCL_ENV]


def _volume(name: str, source: dict[str, Any] | None) -> dict[str, Any]:
    # copied: the Master and Worker templates must not share sub-objects (a later edit of one would leak)
    return {"name": name, **copy.deepcopy(source or {"emptyDir": {}})}


def _volumes(spec: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    storage = spec["storage"]
    volumes = [{"name": VOLUME_CONFIG, "configMap": {"name": api.config_map_name(job_name(meta))}}]
    if spec["data"]["source"]:
        volumes.append(_volume(VOLUME_DATA, spec["data"]["source"]))
    volumes += [
        _volume(VOLUME_ARTIFACTS, storage.get("artifacts")),
        _volume(VOLUME_CHECKPOINTS, storage.get("checkpoints")),
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": str(spec["resources"]["sharedMemory"])}},
    ]
    return volumes


def _mounts(spec: dict[str, Any], *, training: bool) -> list[dict[str, Any]]:
    mounts = [{"name": VOLUME_CONFIG, "mountPath": api.CONFIG_DIR, "readOnly": True}]
    if spec["data"]["source"]:
        mounts.append({"name": VOLUME_DATA, "mountPath": api.DATA_DIR, "readOnly": True})
    if not training:
        return mounts + [{"name": VOLUME_ARTIFACTS, "mountPath": api.ARTIFACTS_DIR}]
    # the trainer only reads the exported preprocessing; only the init container writes it
    return mounts + [{"name": VOLUME_ARTIFACTS, "mountPath": api.ARTIFACTS_DIR, "readOnly": True},
                     {"name": VOLUME_CHECKPOINTS, "mountPath": api.CHECKPOINTS_DIR},
                     {"name": VOLUME_SHM, "mountPath": api.SHM_DIR}]


def _compute(resources: dict[str, Any], *, gpus: int) -> dict[str, Any]:
    amounts = {key: str(resources[key]) for key in ("cpu", "memory") if resources.get(key) is not None}
    limits: dict[str, Any] = dict(amounts)
    if gpus:
        limits[api.GPU_RESOURCE] = gpus
    out: dict[str, Any] = {}
    if amounts:
        out["requests"] = dict(amounts)
    if limits:
        out["limits"] = limits
    return out


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_template(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    resources, scheduling = spec["resources"], spec["scheduling"]
    image = spec["image"]
    ports = [{"name": api.PYTORCHJOB_PORT_NAME, "containerPort": api.PYTORCHJOB_DEFAULT_PORT, "protocol": "TCP"}]
    metrics_port = int(spec["monitoring"]["metricsPort"])
    if metrics_port:
        ports += [{"name": f"metrics-{rank}", "containerPort": metrics_port + rank, "protocol": "TCP"}
                  for rank in range(processes_per_node(spec))]
    preprocess = {
        "name": api.PREPROCESS_CONTAINER,
        "image": image,
        "command": list(api.PREPROCESS_COMMAND),
        "env": _env(meta),
        "volumeMounts": _mounts(spec, training=False),
        "securityContext": _container_security(),
    }
    trainer = {
        "name": api.TRAINER_CONTAINER,
        "image": image,
        "command": list(api.TRAIN_COMMAND),
        "env": _env(meta),
        "ports": ports,
        "volumeMounts": _mounts(spec, training=True),
        "securityContext": _container_security(),
    }
    for container, gpus in ((preprocess, 0), (trainer, int(resources["gpusPerNode"]))):
        compute = _compute(resources, gpus=gpus)
        if compute:
            container["resources"] = compute
    pod: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": api.RUN_AS_USER,
            "runAsGroup": api.RUN_AS_USER,
            "fsGroup": api.RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [preprocess],
        "containers": [trainer],
        "volumes": _volumes(spec, meta),
    }
    if scheduling.get("priorityClassName"):
        pod["priorityClassName"] = scheduling["priorityClassName"]
    if scheduling.get("nodeSelector"):
        pod["nodeSelector"] = dict(scheduling["nodeSelector"])
    if scheduling.get("tolerations"):
        pod["tolerations"] = copy.deepcopy(scheduling["tolerations"])
    return {"metadata": {"labels": child_labels(meta, api.COMPONENT_TRAINING)}, "spec": pod}
