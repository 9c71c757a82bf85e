"""The spec's fields, their defaults and bounds, as one table the operator reads without the trainer package.

``manifests/crd.yaml`` (what the API server enforces) and ``kubefusion.config`` (what the trainer enforces)
describe the same fields; ``tests/unit/operator/test_operator_crd.py`` checks that this table, the CRD and the
trainer's dataclasses agree on every field, default and bound. The operator needs its own copy because it must
not import the trainer, and because an API server without the CRD's validation (the emulator, an old
cluster) would otherwise let anything through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_NO_DEFAULT: Any = object()


@dataclass(frozen=True)
class Field:
    """One leaf of the spec. ``kind``: integer, number, string, boolean, quantity (Kubernetes quantity, int or
    string), array (of ``items``), or ``object`` (free-form: volume sources, node selectors, tolerations)."""

    kind: str
    default: Any = _NO_DEFAULT
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    enum: tuple[str, ...] = ()
    nullable: bool = False
    required: bool = False
    """The job cannot run without it. Not the CRD's ``required``: ``image`` may be left out of a job and still
    be present by validation time, filled in from the operator's default trainer image (``with_image``)."""
    min_length: int | None = None
    pattern: str | None = None
    items: Field | None = None
    min_items: int | None = None
    max_items: int | None = None
    mutable: bool = False
    """May change after the job is created (``runPolicy`` limits and ``suspend``), where the backend can carry the
    change to a running child (a TrainJob only takes ``suspend``)."""

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


def _int(default: Any = _NO_DEFAULT, minimum: int | None = None, maximum: int | None = None, **kw: Any) -> Field:
    return Field("integer", default, minimum=minimum, maximum=maximum, **kw)


def _fraction(default: float) -> Field:
    return Field("number", default, minimum=0.0, maximum=1.0, exclusive_maximum=True)


def _str(default: Any = _NO_DEFAULT, **kw: Any) -> Field:
    return Field("string", default, **kw)


def _bool(default: bool) -> Field:
    return Field("boolean", default)


_SHARED_MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$"
"""The trainer's own rule for ``sharedMemory`` (config.ResourcesConfig)."""
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
"""Kubernetes' own ``resource.Quantity`` syntax (the pattern its OpenAPI schema publishes)."""

SPEC_FIELDS: dict[str, Any] = {
    "image": _str(required=True, min_length=1),
    "backend": _str("Auto", enum=("Auto", "PyTorchJob", "TrainJob")),
    "data": {
        "path": _str("builtin:demo", min_length=1),
        "demoSamples": _int(4000),
        "demoSeed": _int(0),
        "manifest": _str(nullable=True),
        "oodPath": _str(nullable=True),
        "validationFraction": _fraction(0.1),
        "testFraction": _fraction(0.1),
        "onBadRecord": _str("fail", enum=("fail", "skip")),
        "missingModality": _str("drop", enum=("drop", "keep")),
        "splitSeed": _int(0),
        "source": Field("object", {}),
    },
    "preprocessing": {
        "imageSize": _int(224, 8, 1024),
        "tokenizer": _str("bert-base-uncased", min_length=1),
        "maxTokens": _int(128, 4, 4096),
        "backend": _str("onnx", enum=("onnx", "tf")),
        "imageMean": Field("array", [0.485, 0.456, 0.406], items=Field("number"), min_items=3, max_items=3),
        "imageStd": Field("array", [0.229, 0.224, 0.225], min_items=3, max_items=3,
                          items=Field("number", minimum=0.0, exclusive_minimum=True)),
    },
    "model": {
        "vision": {
            "backbone": _str("microsoft/resnet-50", min_length=1),
            "pretrained": _bool(True),
            "freeze": _bool(False),
            "pooling": _str("attention", enum=("attention", "mean")),
        },
        "text": {
            "backbone": _str("bert-base-uncased", min_length=1),
            "pretrained": _bool(True),
            "freeze": _bool(False),
            "pooling": _str("cls", enum=("cls", "mean")),
        },
        "numeric": {
            "hidden": Field("array", [128, 128], items=_int(minimum=1), min_items=1),
            "dropout": _fraction(0.1),
        },
        "fusion": {
            "type": _str("gated", enum=("concat", "gated", "attention")),
            "hidden": _int(1024, 1),
            "dropout": _fraction(0.5),
            "modalityDropout": _fraction(0.1),
            "layers": _int(2, 1),
            "heads": _int(4, 1),
            "unimodalLossWeight": Field("number", 0.0, minimum=0.0),
        },
        "embedDim": _int(256, 1),
        "numClasses": _int(minimum=2, nullable=True),
    },
    "training": {
        "epochs": _int(10, 1),
        "batchSizePerGPU": _int(64, 1),
        "learningRate": Field("number", 3.0e-4, minimum=0.0, exclusive_minimum=True),
        "encoderLrMultiplier": Field("number", 0.1, minimum=0.0),
        "frozenBackboneEpochs": _int(0, 0),
        "weightDecay": Field("number", 0.01, minimum=0.0),
        "warmupFraction": _fraction(0.05),
        "precision": _str("bf16", enum=("bf16", "fp16", "fp32")),
        "gradAccumulation": _int(1, 1),
        "gradClip": Field("number", 1.0, minimum=0.0),
        "seed": _int(0),
        "deterministic": _bool(False),
        "checkpointEverySteps": _int(500, 1),
        "keepCheckpoints": _int(3, 1),
        "baselines": _bool(True),
        "exportOnnx": _bool(True),
        "maxStepsPerEpoch": _int(minimum=1, nullable=True),
        "logEverySteps": _int(10, 1),
        "collectiveTimeoutSeconds": _int(900, 1),
    },
    "resources": {
        "nodes": _int(1, 1),
        "gpusPerNode": _int(4, 0),
        "sharedMemory": Field("quantity", "32Gi", pattern=_SHARED_MEMORY_PATTERN),
        "cpu": Field("quantity", pattern=QUANTITY_PATTERN),
        "memory": Field("quantity", pattern=QUANTITY_PATTERN),
    },
    "monitoring": {
        # 0 or [1024, 65000]: the gap is a cross-field rule (validation.py, CEL in the CRD)
        "metricsPort": _int(9402, 0, 65000),
    },
    "scheduling": {
        "queue": _str(min_length=1),
        "priorityClassName": _str(min_length=1),
        "nodeSelector": Field("object"),
        "tolerations": Field("array", items=Field("object")),
    },
    "runPolicy": {
        "backoffLimit": _int(3, 0, mutable=True),
        "activeDeadlineSeconds": _int(minimum=1, mutable=True),
        "ttlSecondsAfterFinished": _int(minimum=0, mutable=True),
        "cleanPodPolicy": _str("Running", enum=("None", "Running", "All")),
        "suspend": Field("boolean", False, mutable=True),
    },
    "storage": {
        "checkpoints": Field("object"),
        "artifacts": Field("object"),
    },
}
"""Nested: a dict is an object whose keys are known fields (defaulted to ``{}`` so its children default too);
a :class:`Field` is a leaf."""

VOLUME_FIELDS = ("data.source", "storage.checkpoints", "storage.artifacts")
"""Leaves holding one Kubernetes volume source (``persistentVolumeClaim``, ``nfs``, ``hostPath``, ...)."""


def walk(table: dict[str, Any] = SPEC_FIELDS, prefix: str = "") -> list[tuple[str, Any]]:
    """Every ``(dotted.path, Field | dict)`` in the table, parents before children."""
    out: list[tuple[str, Any]] = []
    for key, node in table.items():
        path = f"{prefix}{key}"
        out.append((path, node))
        if isinstance(node, dict):
            out.extend(walk(node, path + "."))
    return out


def lookup(path: str) -> Any:
    """The :class:`Field` (or nested dict) at a dotted path; ``KeyError`` if there is none."""
    node: Any = SPEC_FIELDS
    for key in path.split("."):
        if not isinstance(node, dict):
            raise KeyError(path)
        node = node[key]
    return node
