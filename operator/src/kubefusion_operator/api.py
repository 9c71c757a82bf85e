"""Names shared by the CRD, the operator and the pods: API identity, labels, paths, phases and conditions.

Everything here is a constant or a pure helper. The cluster contract itself (paths, commands, environment) is
fixed in ``docs/architecture.md``; this module spells it once so builders, handlers and tests agree.

Conditions follow the Kubernetes conventions (``metav1.Condition``): ``type`` in CamelCase with positive
polarity, ``status`` one of ``"True"``, ``"False"``, ``"Unknown"``, a CamelCase ``reason``, a human
``message``, ``lastTransitionTime`` (RFC 3339) that moves only when ``status`` changes, and
``observedGeneration``.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

# ------------------------------------------------------------------------------------------ our API

GROUP = "kubefusion.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MultimodalTrainJob"
PLURAL = "multimodaltrainjobs"
SINGULAR = "multimodaltrainjob"
SHORT_NAME = "mmtj"
CATEGORIES = ("kubefusion",)
"""``kubectl get kubefusion``. Not ``all``: a training job is not a workload primitive, and joining ``all``
makes ``kubectl delete all --all`` delete training runs by surprise."""
CRD_NAME = f"{PLURAL}.{GROUP}"

# ------------------------------------------------------------------------------- the Kubeflow backends


class BackendName(str, Enum):
    """``spec.backend`` and ``status.backend``: which Kubeflow API runs the job.

    ``Auto`` (spec only) takes what the cluster serves; where both are served, the operator's preference
    (``KUBEFUSION_OPERATOR_PREFERRED_BACKEND``, the chart's ``operator.preferredBackend``) decides.
    ``status.backend`` records the choice, which never changes for the job afterwards.
    """

    AUTO = "Auto"
    PYTORCHJOB = "PyTorchJob"
    TRAINJOB = "TrainJob"

    def __str__(self) -> str:
        return self.value


BACKEND_CHOICES = tuple(b.value for b in BackendName)
CONCRETE_BACKENDS = (BackendName.PYTORCHJOB.value, BackendName.TRAINJOB.value)

# Kubeflow's training operator v1 (maintenance only).
PYTORCHJOB_GROUP = "kubeflow.org"
PYTORCHJOB_VERSION = "v1"
PYTORCHJOB_API_VERSION = f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}"
PYTORCHJOB_KIND = "PyTorchJob"
PYTORCHJOB_PLURAL = "pytorchjobs"
PYTORCHJOB_CRD_NAME = f"{PYTORCHJOB_PLURAL}.{PYTORCHJOB_GROUP}"
PYTORCHJOB_DEFAULT_PORT = 23456
"""The rendezvous port Kubeflow's training operator defaults to (``pytorchjob-port``); spelled out so the
rendered manifest is complete without the training operator's defaulting webhook."""
PYTORCHJOB_PORT_NAME = "pytorchjob-port"
GPU_RESOURCE = "nvidia.com/gpu"
REPLICA_MASTER = "Master"
REPLICA_WORKER = "Worker"

# Kubeflow Trainer v2 (TrainJob on JobSet), v2.2 and newer (runtimePatches, integer numProcPerNode).
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINER_API_VERSION = f"{TRAINER_GROUP}/{TRAINER_VERSION}"
TRAINJOB_KIND = "TrainJob"
TRAINJOB_PLURAL = "trainjobs"
CLUSTER_TRAINING_RUNTIME_KIND = "ClusterTrainingRuntime"
CLUSTER_TRAINING_RUNTIMES = "clustertrainingruntimes"
DEFAULT_TRAINING_RUNTIME = "kubefusion"
"""Name of the ClusterTrainingRuntime the chart (and ``manifests/trainjob/``) installs."""
RUNTIME_PATCH_MANAGER = "kubefusion.io/operator"
"""``spec.runtimePatches[].manager`` of the operator's one patch (Kueue adds its own, ``kueue.x-k8s.io/manager``)."""
TRAINER_REPLICATED_JOB = "node"
"""The runtime's replicated job with ``trainer.kubeflow.org/trainjob-ancestor-step: trainer``."""
TRAINER_NODE_CONTAINER = "node"
"""Trainer v2 gives ``trainer.image``/``command``/``env``/``resourcesPerNode`` and the ``PET_*`` variables to the
container of this exact name."""
TRAINER_ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"

# --------------------------------------------------------------------------------------- labels

LABEL_PREFIX = "kubefusion.io/"
LABEL_JOB_NAME = LABEL_PREFIX + "job-name"
"""On every child object and pod: the owning MultimodalTrainJob's name (selectors, PodMonitors, metrics)."""
LABEL_COMPONENT = LABEL_PREFIX + "component"
"""``training`` on the PyTorchJob and its pods, ``job-config`` on the ConfigMap."""

LABEL_APP_NAME = "app.kubernetes.io/name"
LABEL_APP_INSTANCE = "app.kubernetes.io/instance"
LABEL_APP_COMPONENT = "app.kubernetes.io/component"
LABEL_APP_PART_OF = "app.kubernetes.io/part-of"
LABEL_APP_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "kubefusion"
MANAGER_NAME = "kubefusion-operator"
"""``app.kubernetes.io/managed-by`` value and the field manager name for server-side apply."""
COMPONENT_TRAINING = "training"
COMPONENT_CONFIG = "job-config"

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Kueue admits a job (PyTorchJob or TrainJob) carrying this label through the named LocalQueue."""
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
"""Kueue's Workload API versions, newest first: Kueue 0.19 stores v1beta2 and still serves v1beta1 (deprecated);
older releases serve v1beta1 only."""
KUEUE_WORKLOADS = "workloads"
"""Kueue's Workload: one per queued job, owned by it; ``spec.active: false`` keeps the job out (suspended)."""

# --------------------------------------------------------------------------- inside the pods

CONFIG_MAP_SUFFIX = "-config"
CONFIG_KEY = "job.yaml"
CONFIG_DIR = "/etc/kubefusion"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
DATA_DIR = "/data"
ARTIFACTS_DIR = "/artifacts"
CHECKPOINTS_DIR = "/checkpoints"
SHM_DIR = "/dev/shm"
TRAINER_CONTAINER = "pytorch"
"""Kubeflow's training operator finds the training container of a PyTorchJob by this exact name."""
PREPROCESS_CONTAINER = "preprocess"
PREPROCESS_COMMAND = ("kubefusion", "preprocess", "--config", CONFIG_PATH, "--out", ARTIFACTS_DIR)
TRAIN_COMMAND = ("torchrun", "-m", "kubefusion", "train", "--config", CONFIG_PATH,
                 "--artifacts", ARTIFACTS_DIR, "--output", CHECKPOINTS_DIR)
ENV_NAMESPACE = "KUBEFUSION_NAMESPACE"
ENV_JOB_NAME = "KUBEFUSION_JOB_NAME"
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
"""``gs://``, ``s3://``, ``hdfs://``, ...: read by tf.io.gfile in the pod, never rewritten to a mount path."""
BUILTIN_PREFIX = "builtin:"
"""``builtin:demo``: data the trainer synthesises itself, never rewritten to a mount path."""
RUN_AS_USER = 1000
"""Pods run as this non-root uid/gid; ``fsGroup`` makes mounted volumes writable for it."""


def config_map_name(job_name: str) -> str:
    """``<job>-config``: the ConfigMap holding the trainer's ``job.yaml``."""
    return job_name + CONFIG_MAP_SUFFIX


# ----------------------------------------------------------------------------------------- phases


class Phase(str, Enum):
    """``status.phase`` of a MultimodalTrainJob.

    ``Pending``: accepted, no child (PyTorchJob or TrainJob) yet, or Kubeflow has not picked it up.
    ``Created``: the child exists; pods are being scheduled (gang scheduling or a queue may hold them).
    ``Running``: training. ``Restarting``: a pod failed and is being restarted within ``backoffLimit``
    (reported by the PyTorchJob backend; a TrainJob does not say).
    ``Suspended``: ``runPolicy.suspend`` is true or a queue (Kueue) holds the job.
    ``Succeeded`` / ``Failed``: terminal; a terminal phase never changes again.

    Values are plain strings; use ``.value`` (or ``str``) when writing YAML, which cannot dump enums.
    """

    PENDING = "Pending"
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)

    def __str__(self) -> str:
        return self.value


# ------------------------------------------------------------------------------------- conditions


class ConditionType:
    """Condition types on ``status.conditions``.

    The first six mirror the child's state: a PyTorchJob's own conditions (same names, reasons and messages),
    or a TrainJob's (``Complete`` as ``Succeeded``, ``Failed``, ``Suspended``; ``Created`` and ``Running`` from
    its existence and its ``jobsStatus``). The last three are the operator's: ``SpecValid`` (``False`` with
    reason ``InvalidSpec``, ``ImmutableFieldChanged`` or ``NotSupportedByBackend``), ``BackendAvailable``
    (``False`` with reason ``BackendUnavailable`` when no backend the job may use is installed), ``Admitted`` (a
    queued job: ``False`` with reason ``Queued`` until Kueue admits it) and
    ``ChildrenReady`` (``False`` while a child of that name cannot be ours yet: ``WaitingForPreviousRun``,
    ``ChildConflict``).
    """

    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_VALID = "SpecValid"
    BACKEND_AVAILABLE = "BackendAvailable"
    CHILDREN_READY = "ChildrenReady"
    ADMITTED = "Admitted"
    """Jobs with ``scheduling.queue`` only: ``False`` (reason ``Queued``, Kueue's own words in the message) while
    Kueue holds the child suspended, ``True`` once it admitted the job."""


MIRRORED_CONDITION_TYPES = (
    ConditionType.CREATED, ConditionType.RUNNING, ConditionType.RESTARTING,
    ConditionType.SUSPENDED, ConditionType.SUCCEEDED, ConditionType.FAILED,
)
"""The condition types that describe the child, in their usual order of appearance."""


class Reason:
    """CamelCase ``reason`` values the operator itself writes (mirrored conditions keep Kubeflow's reasons)."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
    BACKEND_AVAILABLE = "BackendAvailable"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    NOT_SUPPORTED_BY_BACKEND = "NotSupportedByBackend"
    """The spec asks for something the chosen backend cannot carry out (a TrainJob takes it from its runtime)."""
    CONDITION_CLEARED = "ConditionCleared"
    """A mirrored condition the child no longer reports (Kubeflow dropped it): set False."""
    CHILDREN_READY = "ChildrenReady"
    QUEUED = "Queued"
    """Kueue holds the job (its child suspended) until its Workload is admitted; also the phase's reason then."""
    ADMITTED = "Admitted"
    """Kueue admitted the job through its LocalQueue."""
    DEACTIVATED = "Deactivated"
    """A queued job the user suspended: its Workload is deactivated and its quota released."""
    WAITING_FOR_PREVIOUS_RUN = "WaitingForPreviousRun"
    """A child of the same name still belongs to an earlier job of this name (being garbage-collected)."""
    CHILD_CREATION_FORBIDDEN = "ChildCreationForbidden"
    """The API answered 403 to a child's create or update (a full ResourceQuota, a missing permission): retried
    with back-off, as it can be fixed without changing the job."""
    CHILD_CONFLICT = "ChildConflict"
    """An object of the child's name exists and is not this job's to adopt (another owner, or not labelled
    for this job)."""


CONDITION_TRUE = "True"
CONDITION_FALSE = "False"
CONDITION_UNKNOWN = "Unknown"
_STATUSES = (CONDITION_TRUE, CONDITION_FALSE, CONDITION_UNKNOWN)


def _status_string(status: str | bool) -> str:
    if isinstance(status, bool):
        return CONDITION_TRUE if status else CONDITION_FALSE
    if status not in _STATUSES:
        raise ValueError(f"condition status must be one of {', '.join(_STATUSES)} (got {status!r})")
    return status


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of this type, or ``None``."""
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def is_condition_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.get("status") == CONDITION_TRUE


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type: str,  # noqa: A002 - the Kubernetes field name
    status: str | bool,
    reason: str,
    message: str,
    now: str,
    *,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type`` set; the input list and its dicts are not modified.

    ``lastTransitionTime`` becomes ``now`` only when the condition is new or its ``status`` changes; a new
    reason or message alone keeps the old time (that is what "transition" means in the conventions).
    ``status`` may be a bool. A new type is appended; existing conditions keep their order.
    """
    status = _status_string(status)
    updated: list[dict[str, Any]] = []
    found = False
    for condition in conditions or ():
        if condition.get("type") != type:
            updated.append(dict(condition))
            continue
        found = True
        changed = condition.get("status") != status
        new = {
            "type": type,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now if changed or not condition.get("lastTransitionTime")
            else condition["lastTransitionTime"],
        }
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        elif "observedGeneration" in condition:
            new["observedGeneration"] = condition["observedGeneration"]
        updated.append(new)
    if not found:
        new = {"type": type, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        updated.append(new)
    return updated
