"""A trainer's progress report and the status fields it becomes (pure: no API calls, no clocks).

Rank 0 of a job's trainer sends reports shaped exactly like the status fields ``progress``, ``metrics``,
``checkpoint``, ``results`` and ``summary`` (``kubefusion.train.progress`` builds them; docs/operator.md,
"Progress and results", describes every field). :data:`FIELDS` is the one table of those fields, their types
and bounds: :func:`parse_report` checks a report against it, and the CRD's schema for them
(``manifests/crd.yaml``) is checked against it by tests/unit/operator/test_operator_progress.py, so that a
report the operator accepts is one the API server accepts too.

The operator adds what only it knows: ``progress.updateTime`` (when it received the report, by its clock),
``progress.stale`` (no report for a while: :func:`stale_fields`) and ``results.volume`` (the volume the
output paths are on, from the spec).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

SCHEMA = "kubefusion.io/progress/v1"
ROUTE = "/apis/kubefusion.io/v1alpha1/namespaces/{namespace}/multimodaltrainjobs/{name}/progress"
"""Where a job's trainer posts its reports (on the operator's progress port)."""
ENV_URL = "KUBEFUSION_PROGRESS_URL"
ENV_TOKEN_FILE = "KUBEFUSION_PROGRESS_TOKEN_FILE"
TOKEN_DIR = "/var/run/secrets/kubefusion.io/progress"
TOKEN_FILE = "token"
TOKEN_SECONDS = 3600
"""Lifetime of the projected token; the kubelet renews it at 80% of that, and the trainer reads it at every send."""
SECTIONS = ("progress", "metrics", "checkpoint", "results", "summary")
MAX_REPORT_BYTES = 16 * 1024
"""A real report is about 2 KiB; anything larger is not one."""
MAX_INT = 2**53 - 1
"""Larger integers do not survive JSON readers that use doubles (JavaScript, jq)."""


class ReportError(ValueError):
    """The report is not one: the message names the field and what is wrong with it."""


@dataclass(frozen=True)
class Field:
    kind: str
    """``string``, ``integer``, ``number``, ``boolean``, ``date-time`` or ``list`` (of :attr:`items`)."""
    description: str
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    items: dict[str, "Field"] | None = None
    max_items: int | None = None
    operator_only: bool = False
    """Written by the operator alone; a report's value is ignored."""


def _str(description: str, max_length: int) -> Field:
    return Field("string", description, max_length=max_length)


def _int(description: str, minimum: int = 0, maximum: int = MAX_INT) -> Field:
    return Field("integer", description, minimum=minimum, maximum=maximum)


def _fraction(description: str) -> Field:
    return Field("number", description, minimum=0, maximum=1)


STAGE = _str("The model trained: fused, or baseline-<modality> (one per modality, after the fused one).", 63)
PATH = 1024
TIME = Field("date-time", "RFC 3339 time.")

FIELDS: dict[str, dict[str, Field]] = {
    "progress": {
        "stage": STAGE,
        "stageNumber": _int("Position of the stage being trained (1 = fused).", 1, 16),
        "stages": _int("Stages in the whole job: 1, or 4 with training.baselines.", 1, 16),
        "epoch": _int("Epoch in progress within the stage (1-based; epochs once the stage is done).", 0, 10**6),
        "epochs": _int("Epochs per stage.", 0, 10**6),
        "step": _int("Optimizer steps done in the stage."),
        "steps": _int("Optimizer steps of the stage in all."),
        "percent": Field("number", "Optimizer steps done over those of every stage, in percent; 100 only once the "
                         "results exist.", minimum=0, maximum=100),
        "samplesPerSecond": Field("number", "Training samples per second over all ranks, last logging window.",
                                  minimum=0, maximum=1e12),
        "etaSeconds": _int("Estimated seconds left: the steps left at the current stage's pace."),
        "updateTime": Field("date-time", "When the operator received the last report (the run folder's "
                            "status.json: when it was written). Stale progress is as of this time."),
        "stale": Field("boolean", "True when no report came for longer than the operator's staleness threshold "
                       "(60 s by default) while the job is not finished: the numbers are as of updateTime.",
                       operator_only=True),
    },
    "metrics": {
        "validation": Field("list", "Validation top-1 of every stage evaluated so far, in stage order.",
                            max_items=16, items={
                                "stage": STAGE,
                                "top1": _fraction("Latest validation top-1 (fraction of 1)."),
                                "step": _int("Optimizer step of the stage top1 was measured at."),
                                "bestTop1": _fraction("Best validation top-1 so far (fraction of 1)."),
                                "bestStep": _int("Optimizer step of the stage bestTop1 was measured at."),
                            }),
    },
    "checkpoint": {
        "stage": STAGE,
        "step": _int("Optimizer step of the stage the newest valid checkpoint holds (a restart resumes there)."),
        "time": Field("date-time", "When that checkpoint was written."),
    },
    "results": {
        "fusedTestTop1": _fraction("Test top-1 of the fused model (fraction of 1)."),
        "fusedOodTop1": _fraction("Out-of-distribution top-1 of the fused model (fraction of 1)."),
        "bestSingleModality": _str("The single-modality baseline with the best test top-1 (with baselines).", 16),
        "bestSingleModalityTestTop1": _fraction("That baseline's test top-1."),
        "bestSingleModalityOodTop1": _fraction("That baseline's out-of-distribution top-1."),
        "bestAchievableTop1": _fraction("Bayes-optimal top-1 of the data, where known (the demo data)."),
        "model": _str("Path of the trained fused model (model.pt) in the training pods' filesystem.", PATH),
        "onnx": _str("Path of its ONNX export (the folder `kubefusion predict --artifacts` serves), when exported.",
                     PATH),
        "resultsFile": _str("Path of results.json (every score, the ablation, the baselines).", PATH),
        "volume": Field("string", "The volume those paths are on: spec.storage.checkpoints, mounted at "
                        "/checkpoints (an emptyDir is gone with the pods).", max_length=512, operator_only=True),
    },
    "summary": {
        "progress": _str("Percent done as kubectl get shows it (Progress), with ' stale' when stale.", 32),
        "eta": _str("Time left as kubectl get shows it (ETA); absent while stale or unknown.", 16),
        "stage": _str("Stage n/N and epoch e/E (Stage, -o wide).", 128),
        "valTop1": _str("The fused model's latest validation top-1 in percent (Val-Top1).", 16),
        "testTop1": _str("The fused model's test top-1 in percent (Test-Top1, -o wide).", 16),
        "oodTop1": _str("The fused model's out-of-distribution top-1 in percent (OOD-Top1, -o wide).", 16),
    },
}


def report_path(namespace: str, name: str) -> str:
    return ROUTE.format(namespace=namespace, name=name)


def audience(namespace: str, name: str) -> str:
    """The audience of the token a job's pods present: that job's endpoint, and nothing else. The API server
    accepts no token with a foreign audience, so this token gives the pods no access to the API at all, and a
    token of one job's pods is refused for another job's reports."""
    return report_path(namespace, name).removeprefix("/apis/")


# -------------------------------------------------------------------------------------------- checking


def _parse_time(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ReportError(f"{where}: must be an RFC 3339 time string")
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{where}: must be an RFC 3339 time (got {value!r})") from None
    return value


def _check(field: Field, value: Any, where: str) -> Any:
    if field.kind == "boolean":
        if not isinstance(value, bool):
            raise ReportError(f"{where}: must be true or false")
        return value
    if field.kind == "date-time":
        return _parse_time(value, where)
    if field.kind == "string":
        if not isinstance(value, str) or not value:
            raise ReportError(f"{where}: must be a non-empty string")
        if field.max_length is not None and len(value) > field.max_length:
            raise ReportError(f"{where}: at most {field.max_length} characters (got {len(value)})")
        return value
    if field.kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"{where}: must be a finite {field.kind}")
        if field.kind == "integer" and value != int(value):
            raise ReportError(f"{where}: must be an integer (got {value})")
        if (field.minimum is not None and value < field.minimum) or \
                (field.maximum is not None and value > field.maximum):
            raise ReportError(f"{where}: must be in [{field.minimum:g}, {field.maximum:g}] (got {value})")
        return int(value) if field.kind == "integer" else float(value)
    if not isinstance(value, list):  # a list of objects
        raise ReportError(f"{where}: must be a list")
    if field.max_items is not None and len(value) > field.max_items:
        raise ReportError(f"{where}: at most {field.max_items} entries (got {len(value)})")
    return [_check_object(field.items or {}, entry, f"{where}[{i}]") for i, entry in enumerate(value)]


def _check_object(fields: dict[str, Field], value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{where}: must be an object")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ReportError(f"{where}.{unknown[0]}: not a field of {where} (known: {', '.join(fields)})")
    return {key: _check(fields[key], item, f"{where}.{key}") for key, item in value.items()
            if item is not None and not fields[key].operator_only}


def parse_report(body: Any) -> dict[str, Any]:
    """The report's sections, checked against :data:`FIELDS` (operator-only fields dropped); raises
    :class:`ReportError` naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise ReportError("the report must be a JSON object")
    if body.get("schema", SCHEMA) != SCHEMA:
        raise ReportError(f"schema: {body.get('schema')!r} is not {SCHEMA!r} (a trainer newer than this operator?)")
    unknown = sorted(set(body) - {"schema", *SECTIONS})
    if unknown:
        raise ReportError(f"{unknown[0]}: not a section of a report (known: {', '.join(SECTIONS)})")
    if not isinstance(body.get("progress"), dict):
        raise ReportError("progress: required")
    return {section: _check_object(FIELDS[section], body[section], section)
            for section in SECTIONS if body.get(section) is not None}


# ----------------------------------------------------------------------------------- to status fields


def volume_description(spec: dict[str, Any]) -> str:
    """Which volume ``/checkpoints`` is, in the words a user finds it by (``persistentVolumeClaim ckpts``)."""
    source = ((spec.get("storage") or {}).get("checkpoints")) or {}
    if not source or "emptyDir" in source:
        return "emptyDir: deleted with the pods (set spec.storage.checkpoints to keep the model)"
    kind = next(iter(source))
    detail = source[kind] if isinstance(source[kind], dict) else {}
    if kind == "nfs":
        name = f"{detail.get('server', '')}:{detail.get('path', '')}"
    else:
        name = detail.get("claimName") or detail.get("driver") or detail.get("path") or ""
    return f"{kind} {name}".strip()[:512]


def status_fields(report: dict[str, Any], *, received: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status fields a checked report becomes: every field of every section named, ``None`` where the
    report has none, so that one JSON merge patch replaces what the previous report left (and touches
    nothing else in the status)."""
    fields: dict[str, Any] = {}
    for section in SECTIONS:
        given = report.get(section)
        if given is None:
            fields[section] = None
            continue
        fields[section] = {key: given.get(key) for key in FIELDS[section]}
    fields["progress"].update(updateTime=received, stale=False)
    if fields["results"] is not None:
        fields["results"]["volume"] = volume_description(spec or {})
    return fields


def seconds_since(time: str | None, now: datetime.datetime) -> float | None:
    if not time:
        return None
    try:
        then = datetime.datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def stale_fields(status: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that marks a job's progress stale: the numbers stay (as of ``progress.updateTime``),
    the Progress column says so and the ETA column empties."""
    summary = status.get("summary") or {}
    shown = (summary.get("progress") or "").removesuffix(" stale")
    return {"progress": {"stale": True},
            "summary": {"progress": f"{shown or '?'} stale", "eta": None}}


def openapi(fields: dict[str, Field]) -> dict[str, Any]:
    """The CRD schema (``properties``) of one section: what manifests/crd.yaml must say, description aside."""
    properties: dict[str, Any] = {}
    for name, field in fields.items():
        if field.kind == "list":
            properties[name] = {"type": "array", "maxItems": field.max_items,
                                "items": {"type": "object", "properties": openapi(field.items or {})}}
            continue
        schema: dict[str, Any] = {"type": "string", "format": "date-time"} if field.kind == "date-time" \
            else {"type": field.kind}
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
        if field.kind == "integer":
            schema["format"] = "int64"
        for key, bound in (("minimum", field.minimum), ("maximum", field.maximum)):
            if bound is not None:
                schema[key] = bound
        properties[name] = schema
    return properties
