"""The interface every backend module implements, and the choice between them (pure: no API calls).

A backend is one Kubeflow API a MultimodalTrainJob can run on. The handlers only ever talk to this interface:
whether the backend's API is served (its group, version and plural, looked up by :mod:`kubefusion_operator.kube`),
what child to create, what the child says about the run, and the patch that carries a change of a mutable
field (``runPolicy.suspend`` above all) to a child that already exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubefusion_operator.api import BackendName


@dataclass(frozen=True)
class Observed:
    """What a child says about the run, in the MultimodalTrainJob's terms.

    ``conditions``: the mirrored condition types (``api.MIRRORED_CONDITION_TYPES``) the child reports, each a
    dict with ``type``, ``status``, ``reason``, ``message`` and, when the child has one, ``lastTransitionTime``.
    ``nodes``/``gpus_per_node``: what the child runs. ``replica_statuses``: counts per replica type.
    """

    conditions: list[dict[str, Any]]
    start_time: str | None = None
    completion_time: str | None = None
    nodes: int = 0
    gpus_per_node: int = 0
    replica_statuses: dict[str, dict[str, int]] = field(default_factory=dict)


class Backend(ABC):
    """One Kubeflow API that runs a MultimodalTrainJob. Subclasses fill in the class attributes."""

    name: str
    """``spec.backend`` / ``status.backend`` value."""
    group: str
    version: str
    plural: str
    kind: str
    status_key: str
    """The status field that names the child (``pytorchJob``, ``trainJob``)."""
    install: str
    """How to install what this backend needs, for the BackendUnavailable message."""
    pending_reason: str
    """Phase reason while this backend's child is not created yet."""
    lost_reason: str
    """Failed reason when the child this job created is gone before it reported an end."""
    waiting_reason: str
    """Pending reason while the child exists but its controller has not reported anything yet."""
    waiting_message: str
    """The same, as a message; ``{name}`` is replaced by the child's name."""
    mutable: frozenset[str]
    """``runPolicy`` fields whose change reaches a child that already exists; any other change is refused."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @abstractmethod
    def build(self, spec: dict[str, Any], meta: dict[str, Any], *, runtime: str,
              progress_url: str = "") -> dict[str, Any]:
        """The child for ``spec`` (image resolved) and the job's ``meta`` (name, namespace, uid). ``runtime`` is
        the ClusterTrainingRuntime a TrainJob refers to (ignored by backends without one); ``progress_url`` the
        operator's progress endpoint the training container reports to (none when empty)."""

    @abstractmethod
    def observe(self, child: dict[str, Any]) -> Observed:
        """The run as the child (read from the API) reports it."""

    @abstractmethod
    def update_patch(self, applied: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The merge patch that carries the mutable fields of ``spec`` to a child built from ``applied`` (None
        when nothing is to change). ``suspend`` is only written when the user changed it: whatever the child
        says otherwise is a queue's (Kueue's) decision, which the operator must not undo."""

    def conflicts(self, spec: dict[str, Any], runtime: dict[str, Any] | None) -> list[str]:
        """What in ``spec`` (defaults applied) this backend cannot carry out with ``runtime``, one message each
        (empty: it can run). Checked once, before the child is created."""
        return []


def choose(requested: str | None, available: Mapping[str, bool], preferred: str) -> str | None:
    """The backend a job runs on: the one it names, or for ``Auto`` (and no value) the one the cluster offers,
    ``preferred`` when it offers both. ``None`` when the one needed is not available. ``available`` maps backend
    names to whether the cluster offers them."""
    if requested and requested != BackendName.AUTO.value:
        return requested if available.get(requested) else None
    offered = [name for name, ok in available.items() if ok]
    if preferred in offered:
        return preferred
    return offered[0] if offered else None


def suspend_changed(applied: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
    """Whether the user changed ``runPolicy.suspend`` since the child was built from ``applied`` (an unknown
    ``applied`` counts as changed: the spec is then the only word on it)."""
    if applied is None:
        return True
    before = bool((applied.get("runPolicy") or {}).get("suspend", False))
    return before != bool((spec.get("runPolicy") or {}).get("suspend", False))
