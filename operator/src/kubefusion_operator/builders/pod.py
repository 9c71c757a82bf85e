"""The pod a MultimodalTrainJob runs on every node, in parts both backends assemble (pure).

Every pod runs the preprocessing export as an init container, then ``torchrun`` with one process per GPU. The
parts here are the cluster contract of docs/architecture.md: volumes and where they are mounted, the
environment, compute resources and the security settings. A PyTorchJob carries them in its pod templates; a
TrainJob carries them in ``trainer`` and in its runtime patch (Trainer v2 defines the containers in the
ClusterTrainingRuntime and lets a TrainJob add only mounts, environment and security settings to them).
"""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator import api
from kubefusion_operator.builders.common import job_name, job_namespace
from kubefusion_operator.builders.defaults import with_defaults
from kubefusion_operator.progress import ENV_TOKEN_FILE, ENV_URL, TOKEN_DIR, TOKEN_FILE, TOKEN_SECONDS, audience, \
    report_path

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
VOLUME_PROGRESS_TOKEN = "progress-token"


def processes_per_node(spec: dict[str, Any]) -> int:
    """torchrun processes per pod: one per GPU, and one (gloo on CPU) when the job asks for no GPU."""
    return max(int(with_defaults(spec)["resources"]["gpusPerNode"]), 1)


def world_size(spec: dict[str, Any]) -> int:
    """Processes in the whole job (``WORLD_SIZE``): nodes times processes per node, on either backend."""
    return int(with_defaults(spec)["resources"]["nodes"]) * processes_per_node(spec)


def env(meta: dict[str, Any], *, progress_url: str = "") -> list[dict[str, Any]]:
    """What every container is told besides the job file: the metric labels and the NCCL settings. With
    ``progress_url`` (the operator's progress endpoint, for the training container only): where rank 0 reports
    its progress, and the projected token it reports with (:func:`progress_volumes`)."""
    values = [{"name": api.ENV_NAMESPACE, "value": job_namespace(meta)},
              {"name": api.ENV_JOB_NAME, "value": job_name(meta)}]
    values += [{"name": key, "value": value} for key, value in NCCL_ENV]
    if progress_url:
        values += [{"name": ENV_URL, "value": progress_url.rstrip("/") + report_path(job_namespace(meta),
                                                                                     job_name(meta))},
                   {"name": ENV_TOKEN_FILE, "value": f"{TOKEN_DIR}/{TOKEN_FILE}"}]
    return values


def progress_volumes(meta: dict[str, Any], progress_url: str) -> list[dict[str, Any]]:
    """The token rank 0 reports progress with: the pod's service-account token projected with the job's own
    audience. The API server accepts no token with a foreign audience, so it opens nothing on the API; the
    operator's progress endpoint accepts it for this job only. None without a progress endpoint."""
    if not progress_url:
        return []
    token = {"audience": audience(job_namespace(meta), job_name(meta)), "expirationSeconds": TOKEN_SECONDS,
             "path": TOKEN_FILE}
    return [{"name": VOLUME_PROGRESS_TOKEN, "projected": {"sources": [{"serviceAccountToken": token}]}}]


def progress_mounts(progress_url: str) -> list[dict[str, Any]]:
    return [{"name": VOLUME_PROGRESS_TOKEN, "mountPath": TOKEN_DIR, "readOnly": True}] if progress_url else []


def _volume(name: str, source: dict[str, Any] | None) -> dict[str, Any]:
    # copied: pod templates built from one spec must not share sub-objects (a later edit of one would leak)
    return {"name": name, **copy.deepcopy(source or {"emptyDir": {}})}


def volumes(spec: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The job file, the data (with a source), artifacts, checkpoints (emptyDir when absent) and /dev/shm."""
    spec = with_defaults(spec)
    storage = spec["storage"]
    found = [{"name": VOLUME_CONFIG, "configMap": {"name": api.config_map_name(job_name(meta))}}]
    if spec["data"]["source"]:
        found.append(_volume(VOLUME_DATA, spec["data"]["source"]))
    found += [
        _volume(VOLUME_ARTIFACTS, storage.get("artifacts")),
        _volume(VOLUME_CHECKPOINTS, storage.get("checkpoints")),
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": str(spec["resources"]["sharedMemory"])}},
    ]
    return found


def mounts(spec: dict[str, Any], *, training: bool) -> list[dict[str, Any]]:
    """Mounts of the training container (``training``) or of the preprocessing init container."""
    spec = with_defaults(spec)
    found = [{"name": VOLUME_CONFIG, "mountPath": api.CONFIG_DIR, "readOnly": True}]
    if spec["data"]["source"]:
        found.append({"name": VOLUME_DATA, "mountPath": api.DATA_DIR, "readOnly": True})
    if not training:
        return found + [{"name": VOLUME_ARTIFACTS, "mountPath": api.ARTIFACTS_DIR}]
    # the trainer only reads the exported preprocessing; only the init container writes it
    return found + [{"name": VOLUME_ARTIFACTS, "mountPath": api.ARTIFACTS_DIR, "readOnly": True},
                    {"name": VOLUME_CHECKPOINTS, "mountPath": api.CHECKPOINTS_DIR},
                    {"name": VOLUME_SHM, "mountPath": api.SHM_DIR}]


def compute(spec: dict[str, Any], *, gpus: int) -> dict[str, Any]:
    """Requests and limits of one container: the job's cpu and memory (both), ``gpus`` as a limit."""
    resources = with_defaults(spec)["resources"]
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


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict[str, Any]:
    """Non-root uid/gid 1000; ``fsGroup`` makes mounted volumes writable for it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": api.RUN_AS_USER,
        "runAsGroup": api.RUN_AS_USER,
        "fsGroup": api.RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def metrics_ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """``metrics-<rank>`` = ``metricsPort + rank`` for each local rank; none when metrics are off (0)."""
    port = int(with_defaults(spec)["monitoring"]["metricsPort"])
    if not port:
        return []
    return [{"name": f"metrics-{rank}", "containerPort": port + rank, "protocol": "TCP"}
            for rank in range(processes_per_node(spec))]


def placement(spec: dict[str, Any]) -> dict[str, Any]:
    """The pods' ``nodeSelector`` and ``tolerations`` (only those the job sets)."""
    scheduling = with_defaults(spec)["scheduling"]
    out: dict[str, Any] = {}
    if scheduling.get("nodeSelector"):
        out["nodeSelector"] = dict(scheduling["nodeSelector"])
    if scheduling.get("tolerations"):
        out["tolerations"] = copy.deepcopy(scheduling["tolerations"])
    return out
