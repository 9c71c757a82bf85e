"""A `MultimodalTrainJob` document read the way a cluster reads it, so a job file means the same on a laptop.

On a cluster, ``kubectl apply -f job.yaml`` turns the YAML into JSON (sigs.k8s.io/yaml, which resolves plain
scalars with go-yaml v2's rules) and the API server checks that JSON against the CRD's structural schema
(types, bounds, enums, patterns, unknown fields) before the CRD's CEL rules run. The local reader does the
same two steps here, from the same CRD: ``kubefusion/crd.yaml`` is a copy of ``manifests/crd.yaml`` (kept
equal by ``charts/sync_deploy.py``, checked by a test). The CEL rules that apply to a new object are mirrored by
the dataclasses' ``__post_init__`` in :mod:`kubefusion.config` (a test runs every rule through both).

What that means for a job file, where PyYAML alone (YAML 1.1) would differ:

- ``2e-3``, ``1e3``, ``1_000``, ``0x1F``, ``.5`` are numbers; ``y``/``n`` are booleans (as ``yes``/``no``);
  dates and ``1:20`` stay strings; ``.inf`` and ``.nan`` are refused (JSON has no such numbers);
- an integer field takes a whole number written as a float (``epochs: 3.0``), as the API server does;
- a string field takes only a string (``tokenizer: 123`` is refused; quote it);
- a field set to ``null`` (or left empty) counts as not set, unless the CRD makes it nullable;
- an unknown field, snake_case spellings included (``learning_rate``), is refused, as kubectl's default
  strict field validation refuses it.
"""

from __future__ import annotations

import functools
import math
import re
from importlib import resources
from typing import Any

import yaml

from kubefusion.errors import UserError

CRD_RESOURCE = "crd.yaml"

# ------------------------------------------------------------------------------------ YAML as kubectl reads it


class KubectlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with go-yaml v2's plain-scalar rules (what sigs.k8s.io/yaml hands to JSON)."""


_REPLACED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
             "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

_BOOLS = {**dict.fromkeys("y Y yes Yes YES true True TRUE on On ON".split(), True),
          **dict.fromkeys("n N no No NO false False FALSE off Off OFF".split(), False)}
_PLAIN_NUMBER = "tag:kubefusion.io,2026:plain-number"
"""Any plain scalar that starts like a number; its constructor decides, as go-yaml does, what it is."""

KubectlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile("^(?:" + "|".join(_BOOLS) + ")$"),
                                    list("yYnNtTfFoO"))
KubectlLoader.add_implicit_resolver(_PLAIN_NUMBER, re.compile(r"^[-+0-9.]"), list("-+0123456789."))

_SPECIAL_FLOATS = {**dict.fromkeys(".inf .Inf .INF +.inf +.Inf +.INF".split(), math.inf),
                   **dict.fromkeys("-.inf -.Inf -.INF".split(), -math.inf),
                   **dict.fromkeys(".nan .NaN .NAN".split(), math.nan)}
# Go's strconv.ParseInt(s, 0, 64) after go-yaml removed every underscore: a sign, then a base prefix or a
# leading 0 (octal).
_GO_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_GO_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")


def _go_int(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    lowered = digits.lower()
    if lowered.startswith(("0x", "0o", "0b")):
        value = int(digits[2:], {"x": 16, "o": 8, "b": 2}[lowered[1]])
    elif len(digits) > 1 and digits.startswith("0"):
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    return sign * value


def plain_scalar(text: str) -> Any:
    """A plain (unquoted) scalar that starts with a sign, a digit or a dot, as go-yaml v2 resolves it."""
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text.startswith("."):
        return float(text) if _GO_DOT_FLOAT.fullmatch(text) else text
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain):
        value = _go_int(plain)
        if -(2**63) <= value < 2**64:  # ParseInt, then ParseUint
            return value
    if _GO_YAML_FLOAT.fullmatch(plain):
        value = float(plain)
        if math.isfinite(value):  # ParseFloat fails on overflow: go-yaml keeps the text
            return value
    return text


KubectlLoader.add_constructor(_PLAIN_NUMBER, lambda loader, node: plain_scalar(loader.construct_scalar(node)))
KubectlLoader.add_constructor("tag:yaml.org,2002:bool", lambda loader, node: _BOOLS[loader.construct_scalar(node)])


def load_yaml(text: str) -> Any:
    """One YAML document as kubectl sends it to the API server: go-yaml's scalars, encoded as JSON by Go (string
    keys; a whole float such as ``3.0`` or ``1e3`` written as ``3``/``1000``, which the server reads as an integer)."""
    return _as_json(yaml.load(text, Loader=KubectlLoader))  # noqa: S506 (a SafeLoader subclass)


def _as_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {_json_key(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


# ------------------------------------------------------------------------ the CRD's structural schema


@functools.cache
def root_schema() -> dict[str, Any]:
    """The CRD's ``openAPIV3Schema`` (its one version)."""
    text = resources.files("kubefusion").joinpath(CRD_RESOURCE).read_text(encoding="utf-8")
    (version,) = yaml.safe_load(text)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


class SchemaError(UserError, ValueError):
    """The document breaks the CRD's schema: what the API server would refuse. Names the field."""


def check_document(document: Any) -> Any:
    """``document`` checked against the CRD's schema, with ``null`` dropped from fields that are not nullable
    (the API server then applies the field's default, as the dataclasses do for a field left out). Raises
    :class:`SchemaError` naming the first offending field."""
    errors: list[str] = []
    checked = _check(root_schema(), document, "", errors)
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SchemaError(errors[0] + more)
    return checked


_KINDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false"}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "integer":  # the API server takes a whole float (JSON 3.0) as an integer
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float))
    return isinstance(value, {"object": dict, "array": list, "string": str}[kind])


def _check(schema: dict[str, Any], value: Any, path: str, errors: list[str]) -> Any:
    where = path.lstrip(".") or "the document"
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{where}: must be a finite number (got {value}; kubectl cannot send it either)")
        return value
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{where}: must not be null")
        return value
    kinds = ["integer", "string"] if schema.get("x-kubernetes-int-or-string") else \
        [schema["type"]] if "type" in schema else []
    if kinds and not any(_type_ok(kind, value) for kind in kinds):
        errors.append(f"{where}: must be {' or '.join(_KINDS[k] for k in kinds)} (got {value!r})")
        return value
    _check_bounds(schema, value, where, errors)
    if isinstance(value, dict):
        return _check_object(schema, value, path, errors)
    if isinstance(value, list) and "items" in schema:
        return [_check(schema["items"], item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
    return value


def _check_object(schema: dict[str, Any], value: dict[str, Any], path: str, errors: list[str]) -> dict[str, Any]:
    where = path.lstrip(".") or "the document"
    properties = schema.get("properties", {})
    out: dict[str, Any] = {}
    for key, item in value.items():
        sub = properties.get(key, schema.get("additionalProperties") if isinstance(
            schema.get("additionalProperties"), dict) else None)
        if sub is None:
            if not schema.get("x-kubernetes-preserve-unknown-fields") and properties:
                errors.append(f"{path.lstrip('.') + '.' if path else ''}{key}: unknown field"
                              f"{_spelling_hint(key, properties)} (known: {', '.join(sorted(properties))})")
            out[key] = item
            continue
        if item is None and not sub.get("nullable"):
            continue  # the API server drops it, then defaults the field
        out[key] = _check(sub, item, f"{path}.{key}", errors)
    for key in schema.get("required", ()):
        if key not in out:
            errors.append(f"{path.lstrip('.') + '.' if path else ''}{key}: required (in {where})")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{where}: at most {schema['maxProperties']} field(s) (got {', '.join(value)})")
    return out


def _spelling_hint(key: str, properties: dict[str, Any]) -> str:
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
    matches = [name for name in properties if name.lower() == camel.lower() and name != key]
    return f"; did you mean {matches[0]}? (job files use the CRD's camelCase names)" if matches else ""


def _go_regexp(pattern: str) -> str:
    """The API server's ``$`` ends the text; Python's also matches before a final newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


def _check_bounds(schema: dict[str, Any], value: Any, where: str, errors: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {', '.join(map(str, schema['enum']))} (got {value!r})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            errors.append(f"{where}: must be {'>' if schema.get('exclusiveMinimum') else '>='} {low} (got {value!r})")
        if high is not None and (value > high or (schema.get("exclusiveMaximum") and value == high)):
            errors.append(f"{where}: must be {'<' if schema.get('exclusiveMaximum') else '<='} {high} "
                          f"(got {value!r})")
        bits = {"int32": 31, "int64": 63}.get(schema.get("format", ""))
        if bits and not -(2**bits) <= value < 2**bits:
            errors.append(f"{where}: out of the {schema['format']} range (got {value!r})")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: must not be empty" if schema["minLength"] == 1 else
                          f"{where}: needs at least {schema['minLength']} characters (got {value!r})")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: at most {schema['maxLength']} characters (got {len(value)})")
        if "pattern" in schema and not re.search(_go_regexp(schema["pattern"]), value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: needs at least {schema['minItems']} item(s) (got {len(value)})")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: at most {schema['maxItems']} item(s) (got {len(value)})")
