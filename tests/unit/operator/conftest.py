"""Shared fixtures for the operator's pure parts: the CRD, its schema as JSON Schema and CEL, goldens.

No module here is importable by name from the tests (this folder has no ``__init__.py``: a package named
``operator`` would shadow the standard library), so helpers are handed out as fixtures.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import celpy
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "manifests" / "crd.yaml"
EXAMPLE_JOB = REPO / "examples" / "job.yaml"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"

META = {"name": "products", "namespace": "ml-team", "uid": "0b7e9a52-3c1d-4f6e-9a8b-2d5c7e1f4a90"}


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1, "manifests/crd.yaml holds exactly one CRD"
    return docs[0]


@pytest.fixture(scope="session")
def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def spec_schema(root_schema: dict[str, Any]) -> dict[str, Any]:
    return root_schema["properties"]["spec"]


@pytest.fixture
def meta() -> dict[str, Any]:
    return dict(META)


CHART_TRAINER_IMAGE = "registry.example.com/kubefusion-trainer:0.1.0"
"""The operator's default trainer image in these tests (the chart's trainer.image): examples/job.yaml names none."""


@pytest.fixture
def example_job() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_JOB.read_text())


@pytest.fixture
def example_spec(example_job: dict[str, Any]) -> dict[str, Any]:
    """examples/job.yaml's spec as the operator builds from it: the image filled in from its default."""
    from kubefusion_operator.builders import with_image

    return with_image(example_job["spec"], CHART_TRAINER_IMAGE)


# ---------------------------------------------------------------------- the API server's view of a spec


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (structural) -> JSON Schema draft 4: ``nullable`` becomes a null type; x- keys dropped."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "anyOf":
            out[key] = [to_json_schema(v) for v in value]
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and schema.get(
            "type") == "object":
        out["additionalProperties"] = False  # the API server prunes unknown fields; here they are errors
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting, as the API server does it before validation: a null in a field that is not
    nullable is dropped when the field has no default (PruneNonNullableNullsWithoutDefaults), else defaulted."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    value = copy.deepcopy(value)
    for key, sub in schema["properties"].items():
        if key in value and value[key] is None and not sub.get("nullable") and "default" not in sub:
            del value[key]
        if value.get(key) is None and not (key in value and sub.get("nullable")) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = apply_defaults(sub, value[key])
    return value


# kube-openapi takes a whole float (JSON 3.0) as an integer; JSON Schema draft 4 does not.
_API_SERVER_TYPES = jsonschema.Draft4Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())))
ApiServerValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, type_checker=_API_SERVER_TYPES)


@pytest.fixture(scope="session")
def crd_defaults(spec_schema: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The spec as the API server stores it after applying the CRD's defaults."""
    return lambda spec: apply_defaults(spec_schema, spec)


@pytest.fixture(scope="session")
def crd_errors(spec_schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """Schema errors the API server would report for a spec (after defaulting), CEL rules included."""
    validator = ApiServerValidator(to_json_schema(spec_schema))
    rules = cel_rules(spec_schema, "spec")

    def errors(spec: dict[str, Any]) -> list[str]:
        spec = apply_defaults(spec_schema, spec)
        found = [f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)]
        if found:
            return found
        for path, schema, rule in rules:
            if "oldSelf" in rule["rule"]:
                continue
            value = lookup(spec, path)
            if value is not None and not eval_cel(rule["rule"], schema, value):
                found.append(f"{path}: {rule['message']}")
        return found

    return errors


@pytest.fixture(scope="session")
def status_errors(root_schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """Schema errors the API server would report for a status the operator writes."""
    validator = jsonschema.Draft4Validator(to_json_schema(root_schema["properties"]["status"]))
    return lambda status: [f"status.{'.'.join(map(str, e.absolute_path))}: {e.message}"
                           for e in validator.iter_errors(status)]


@pytest.fixture(scope="session")
def crd_document_errors(root_schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """What the API server refuses in a whole MultimodalTrainJob on create: the schema from the root (unknown
    top-level fields, required spec), every CEL rule that does not compare with an old object, and a name."""
    validator = ApiServerValidator(to_json_schema(root_schema))
    rules = cel_rules(root_schema, "")

    def errors(document: dict[str, Any]) -> list[str]:
        document = apply_defaults(root_schema, document)
        found = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in validator.iter_errors(document)]
        if not (document.get("metadata") or {}).get("name"):
            found.append("metadata.name: required")
        if found:
            return found
        for path, schema, rule in rules:
            if "oldSelf" in rule["rule"]:
                continue
            value = document if path == "" else lookup(document, path)
            if value is not None and not eval_cel(rule["rule"], schema, value):
                found.append(f"{path or '<root>'}: {rule['message']}")
        return found

    return errors


def cel_rules(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every ``x-kubernetes-validations`` rule under ``schema`` as (dotted path, schema, rule)."""
    found = [(path, schema, rule) for rule in schema.get("x-kubernetes-validations", ())]
    for key, sub in (schema.get("properties") or {}).items():
        found += cel_rules(sub, f"{path}.{key}")
    return found


def lookup(document: Any, path: str) -> Any:
    for key in path.split(".")[1:]:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def _typed(schema: dict[str, Any], value: Any) -> Any:
    """JSON as the API server hands it to CEL: ``type: number`` values are doubles even when written 1."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: _typed(props.get(k, schema.get("additionalProperties") or {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(schema.get("items") or {}, v) for v in value]
    return value


_CEL = celpy.Environment()


def eval_cel(rule: str, schema: dict[str, Any], value: Any, old: Any = None) -> bool:
    """Evaluate one CRD rule with ``self`` (and ``oldSelf``) bound as the API server binds them."""
    program = _CEL.program(_CEL.compile(rule))
    activation = {"self": celpy.json_to_cel(_typed(schema, value))}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(_typed(schema, old))
    result = program.evaluate(activation)
    if isinstance(result, Exception):
        raise result
    return bool(result)


@pytest.fixture(scope="session")
def cel() -> Callable[..., bool]:
    return eval_cel


@pytest.fixture(scope="session")
def all_cel_rules(root_schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return cel_rules(root_schema, "")


# ------------------------------------------------------------------------------------------------ goldens


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's job.yaml) as literal blocks, so golden diffs read line by line."""


_GoldenDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value
                                                       else None))


def _check_golden(name: str, document: Any) -> None:
    text = yaml.dump(document, Dumper=_GoldenDumper, sort_keys=False, default_flow_style=False, width=120)
    path = GOLDEN_DIR / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), (
        f"{name} differs from the golden file; if the change is intended, rerun with UPDATE_GOLDEN=1 and review "
        "the diff in git")


@pytest.fixture(scope="session")
def golden() -> Callable[[str, Any], None]:
    """``golden(name, document)``: compare the YAML rendering with ``golden/<name>`` (UPDATE_GOLDEN=1 rewrites)."""
    return _check_golden
