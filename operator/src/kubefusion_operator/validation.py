"""What the operator refuses before it creates anything, and which spec changes it refuses later (pure).

The CRD's schema and CEL rules make the API server refuse the same things, so on a real cluster a bad spec
rarely gets this far. These checks exist for when that validation is absent (the API emulator, a CRD applied
without its schema, an older served version) and for the cluster-only rules the trainer does not know
(volume sources, the job name Kubeflow's Services are derived from). Messages name the YAML path.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from typing import Any

from kubefusion_operator.api import BUILTIN_PREFIX, URI_RE
from kubefusion_operator.builders.defaults import with_defaults
from kubefusion_operator.builders.fields import SPEC_FIELDS, VOLUME_FIELDS, Field
from kubefusion_operator.options import ENV_PREFIX

MAX_NAME_LENGTH = 50
"""Kubeflow names each replica's Service ``<job>-worker-<index>``; a Service name is a DNS-1035 label of at
most 63 characters, so the job name leaves room for ``-worker-`` and five digits."""
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

VOLUME_TYPES = frozenset({
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi", "downwardAPI",
    "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs",
    "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim", "photonPersistentDisk", "portworxVolume",
    "projected", "quobyte", "rbd", "scaleIO", "secret", "storageos", "vsphereVolume",
})
"""The volume source fields of a core/v1 ``Volume`` (a typo such as ``persistentVolumeClam`` is refused)."""
POD_LOCAL_VOLUME_TYPES = frozenset({
    "emptyDir", "hostPath", "ephemeral", "gitRepo", "configMap", "secret", "downwardAPI", "projected"})
"""Volume types whose contents one pod (or node) sees alone: no place for checkpoints that several nodes share."""
MULTI_NODE_CHECKPOINTS = (
    "a job with more than one node needs a volume all its pods share (a ReadWriteMany persistentVolumeClaim, nfs, "
    "csi, ...), not emptyDir or hostPath: rank 0 writes the checkpoints and after a restart every rank reads "
    "them from there")
"""Also the CRD's CEL message (manifests/crd.yaml): the two are kept equal by a test."""

HOW_TO_PROVIDE = {
    "spec.image": ("name the trainer image in the job, or give the operator a default trainer image: Helm values "
                   "trainer.image.repository and trainer.image.tag, or the operator's "
                   f"{ENV_PREFIX}DEFAULT_TRAINER_IMAGE environment variable (--default-trainer-image)"),
}
"""What a user can do about a required field that is missing, beyond writing it (appended to the message)."""

TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def validate_spec(spec: Any, *, name: str | None = None) -> list[str]:
    """Problems with a MultimodalTrainJob spec, one message per problem (empty when it can run).

    ``spec.image`` is checked as given: resolve the operator's default first
    (:func:`kubefusion_operator.builders.with_image`); a missing image's message says how to set that default.

    Checks types, required fields, bounds, enums and unknown fields against the same table the defaults come
    from, then the cross-field rules: ``validationFraction + testFraction < 1``, attention fusion's
    ``hidden`` divisible by ``heads``, ``metricsPort`` 0 or >= 1024, volume sources with exactly one known
    type, and a local ``data.path`` only with a data volume. Give ``name`` (``metadata.name``) to check it too.
    """
    if not isinstance(spec, dict):
        return [f"spec: must be a mapping (got {type(spec).__name__})"]
    problems: list[str] = []
    if name is not None:
        problems += _check_name(name)
    spec = with_defaults(spec)
    _check_object(SPEC_FIELDS, spec, "spec", problems)
    if not problems:  # the cross-field rules assume well-typed values
        problems += _cross_field(spec)
    return problems


def immutable_changes(old_spec: dict[str, Any] | None, new_spec: dict[str, Any] | None, *,
                      mutable: Collection[str] | None = None) -> list[str]:
    """Paths (``spec.resources.nodes``) that differ between two specs among the fields fixed at creation.

    Everything is fixed except ``runPolicy.suspend``, ``runPolicy.backoffLimit``,
    ``runPolicy.activeDeadlineSeconds`` and ``runPolicy.ttlSecondsAfterFinished``; ``mutable`` (names of those
    fields) narrows that to what a backend can carry to its child (a TrainJob takes only ``suspend``). Both specs
    are defaulted first, so writing out a default value explicitly is not a change.
    """
    changes: list[str] = []
    _diff(SPEC_FIELDS, with_defaults(old_spec), with_defaults(new_spec), "spec", changes, mutable)
    return changes


# ------------------------------------------------------------------------------------------- internals


def _check_name(name: str) -> list[str]:
    if not _NAME_RE.fullmatch(name or "") or len(name) > MAX_NAME_LENGTH:
        return [f"metadata.name: must be a lowercase DNS-1035 label (letters, digits, '-', starting with a "
                f"letter) of at most {MAX_NAME_LENGTH} characters, as Kubeflow derives Service names from it "
                f"(got {name!r})"]
    return []


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_object(table: dict[str, Any], obj: dict[str, Any], path: str, problems: list[str]) -> None:
    for key in obj:
        if key not in table:
            problems.append(f"{path}.{key}: unknown field (known: {', '.join(sorted(table))})")
    for key, node in table.items():
        where = f"{path}.{key}"
        if isinstance(node, dict):
            value = obj.get(key)
            if not isinstance(value, dict):
                problems.append(f"{where}: must be a mapping (got {_type_name(value)})")
            else:
                _check_object(node, value, where, problems)
        elif key not in obj:
            if node.required:
                how = HOW_TO_PROVIDE.get(where)
                problems.append(f"{where}: is required" + (f"; {how}" if how else ""))
        else:
            _check_value(node, obj[key], where, problems)


def _check_value(node: Field, value: Any, where: str, problems: list[str]) -> None:
    if value is None:
        if not node.nullable:
            problems.append(f"{where}: must not be null")
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": is_number,
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "quantity": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[node.kind]
    if not expected:
        problems.append(f"{where}: must be {_KIND_WORDS[node.kind]} (got {value!r})")
        return
    if node.enum and value not in node.enum:
        problems.append(f"{where}: must be one of {', '.join(node.enum)} (got {value!r})")
    if is_number and node.kind != "quantity":
        _check_bounds(node, value, where, problems)
    if node.min_length is not None and isinstance(value, str) and len(value) < node.min_length:
        problems.append(f"{where}: must not be empty")
    if node.pattern and not re.search(node.pattern, str(value)):
        problems.append(f"{where}: not a Kubernetes quantity (got {value!r})")
    if node.kind == "array":
        if node.min_items is not None and len(value) < node.min_items:
            problems.append(f"{where}: needs at least {node.min_items} item(s) (got {len(value)})")
        if node.max_items is not None and len(value) > node.max_items:
            problems.append(f"{where}: takes at most {node.max_items} item(s) (got {len(value)})")
        for index, item in enumerate(value):
            if node.items is not None:
                _check_value(node.items, item, f"{where}[{index}]", problems)


_KIND_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "quantity": "a Kubernetes quantity", "array": "a list", "object": "a mapping"}


def _check_bounds(node: Field, value: float, where: str, problems: list[str]) -> None:
    low, high = node.minimum, node.maximum
    too_low = low is not None and (value < low or (node.exclusive_minimum and value == low))
    too_high = high is not None and (value > high or (node.exclusive_maximum and value == high))
    if too_low or too_high:
        left = "" if low is None else f"{'(' if node.exclusive_minimum else '['}{_num(low)}"
        right = "" if high is None else f"{_num(high)}{')' if node.exclusive_maximum else ']'}"
        if low is not None and high is not None:
            rule = f"be in {left}, {right}"
        elif low is not None:
            rule = f"be {'>' if node.exclusive_minimum else '>='} {_num(low)}"
        else:
            rule = f"be {'<' if node.exclusive_maximum else '<='} {_num(high)}"
        problems.append(f"{where}: must {rule} (got {value!r})")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _cross_field(spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    data, fusion = spec["data"], spec["model"]["fusion"]
    if data["validationFraction"] + data["testFraction"] >= 1.0:
        problems.append("spec.data: validationFraction + testFraction must be < 1 to leave records for "
                        f"training (got {data['validationFraction']} + {data['testFraction']})")
    if fusion["type"] == "attention" and fusion["hidden"] % fusion["heads"]:
        problems.append(f"spec.model.fusion.heads: must divide hidden={fusion['hidden']} for attention fusion "
                        f"(got {fusion['heads']})")
    training = spec["training"]
    if training["frozenBackboneEpochs"] >= training["epochs"]:
        problems.append(f"spec.training.frozenBackboneEpochs: must be below epochs={training['epochs']} (got "
                        f"{training['frozenBackboneEpochs']}); for backbones frozen throughout set model.*.freeze")
    port = spec["monitoring"]["metricsPort"]
    if 0 < port < 1024:
        problems.append(f"spec.monitoring.metricsPort: must be 0 (off) or in [1024, 65000] (got {port})")
    for path in VOLUME_FIELDS:
        section, key = path.split(".")
        problems += _check_volume(spec[section].get(key), f"spec.{path}")
    source = data["source"]
    local = not (URI_RE.match(data["path"]) or data["path"].startswith(BUILTIN_PREFIX))
    if local and not source:
        problems.append(f"spec.data.path: {data['path']!r} is a local path but spec.data.source names no "
                        "volume; mount the dataset (e.g. source: {persistentVolumeClaim: {claimName: ...}}) "
                        "or use a URI such as gs://bucket/path")
    if source and "emptyDir" in source:
        problems.append("spec.data.source: an emptyDir holds no data; name the volume the dataset is on")
    checkpoints = spec["storage"].get("checkpoints") or {}
    if spec["resources"]["nodes"] > 1 and (not checkpoints or set(checkpoints) & POD_LOCAL_VOLUME_TYPES):
        got = f"got {next(iter(checkpoints))}" if checkpoints else "got none: an emptyDir per pod"
        problems.append(f"spec.storage.checkpoints: {MULTI_NODE_CHECKPOINTS} ({got})")
    for key in ("path", "oodPath"):
        value = data.get(key)
        if source and value and not URI_RE.match(value) and ".." in posixpath.normpath(value).split("/"):
            problems.append(f"spec.data.{key}: must stay inside the data volume (got {value!r})")
    scheduling = spec["scheduling"]
    for key, value in (scheduling.get("nodeSelector") or {}).items():
        if not isinstance(value, str):
            problems.append(f"spec.scheduling.nodeSelector.{key}: must be a string (got {value!r})")
    for index, toleration in enumerate(scheduling.get("tolerations") or ()):
        problems += _check_toleration(toleration, f"spec.scheduling.tolerations[{index}]")
    return problems


def _check_volume(source: Any, where: str) -> list[str]:
    if source is None or source == {}:
        return []
    if len(source) != 1:
        return [f"{where}: must name exactly one volume type (got {', '.join(sorted(source))})"]
    (kind, body), = source.items()
    if kind not in VOLUME_TYPES:
        return [f"{where}.{kind}: not a Kubernetes volume type (e.g. persistentVolumeClaim, nfs, hostPath, csi)"]
    if not isinstance(body, dict):
        return [f"{where}.{kind}: must be a mapping (got {body!r})"]
    if kind == "persistentVolumeClaim" and not body.get("claimName"):
        return [f"{where}.persistentVolumeClaim.claimName: is required"]
    return []


def _check_toleration(toleration: Any, where: str) -> list[str]:
    if not isinstance(toleration, dict):
        return [f"{where}: must be a mapping (got {toleration!r})"]
    known = ("key", "operator", "value", "effect", "tolerationSeconds")
    problems = [f"{where}.{key}: unknown field (known: {', '.join(known)})" for key in toleration
                if key not in known]
    operator = toleration.get("operator", "Equal")
    if operator not in TOLERATION_OPERATORS:
        problems.append(f"{where}.operator: must be one of {', '.join(TOLERATION_OPERATORS)} (got {operator!r})")
    effect = toleration.get("effect")
    if effect not in (None, "", *TOLERATION_EFFECTS):
        problems.append(f"{where}.effect: must be one of {', '.join(TOLERATION_EFFECTS)} (got {effect!r})")
    if operator == "Exists" and toleration.get("value"):
        problems.append(f"{where}.value: must be empty when operator is Exists")
    return problems


def _diff(table: dict[str, Any], old: Any, new: Any, path: str, changes: list[str],
          mutable: Collection[str] | None) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            changes.append(path)
        return
    for key in sorted(set(old) | set(new), key=lambda k: (k not in table, list(table).index(k) if k in table
                                                           else 0, k)):
        node = table.get(key)
        where = f"{path}.{key}"
        if isinstance(node, dict):
            _diff(node, old.get(key), new.get(key), where, changes, mutable)
        elif old.get(key) != new.get(key) and not (
                isinstance(node, Field) and node.mutable and (mutable is None or key in mutable)):
            changes.append(where)
