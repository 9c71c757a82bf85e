"""The CRD is the API: it must describe exactly the trainer's fields, defaults and bounds, and refuse what the
trainer and the operator refuse, with its CEL rules doing what their messages say."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from kubefusion import config as trainer_config
from kubefusion_operator import api
from kubefusion_operator.builders import with_defaults, with_image
from kubefusion_operator.builders.fields import SPEC_FIELDS, Field, walk
from kubefusion_operator.validation import MULTI_NODE_CHECKPOINTS, immutable_changes, validate_spec

BASE = {"image": "registry.example.com/kubefusion-trainer:0.1.0"}
OPERATOR_ONLY = ("scheduling", "runPolicy", "storage")
"""Sections the trainer carries through unvalidated (config.JobConfig says the CRD validates them)."""


def crd_schema_at(spec_schema, path):
    node = spec_schema
    for key in path.split("."):
        node = node["properties"][key]
    return node


def set_path(spec, path, value):
    spec = with_defaults(spec)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def leaves():
    return [(path, node) for path, node in walk() if isinstance(node, Field)]


# --------------------------------------------------------------------------------------- identity, shape


def test_crd_names_match_the_api_module(crd):
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "multimodaltrainjobs.kubefusion.io" == api.CRD_NAME
    spec = crd["spec"]
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": api.KIND, "listKind": "MultimodalTrainJobList", "plural": api.PLURAL,
                             "singular": api.SINGULAR, "shortNames": [api.SHORT_NAME],
                             "categories": list(api.CATEGORIES)}
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (api.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_crd_is_a_valid_kubernetes_object(crd):
    kubernetes_validate.validate(crd, "1.37.0", strict=True)


def test_printer_columns_show_phase_progress_nodes_gpus_reason_and_age(crd):
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert [name for name, c in columns.items() if not c.get("priority")] == [
        "Phase", "Progress", "ETA", "Val-Top1", "Nodes", "GPUs/Node", "Reason", "Age"]
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Nodes"]["jsonPath"] == ".spec.resources.nodes"
    assert columns["GPUs/Node"]["jsonPath"] == ".spec.resources.gpusPerNode"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _structural_problems(schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    forbidden = {"$ref", "oneOf", "allOf", "not", "definitions", "patternProperties", "dependencies",
                 "additionalItems"}
    problems += [f"{path}: {key} is not allowed in a structural schema" for key in forbidden & set(schema)]
    int_or_string = schema.get("x-kubernetes-int-or-string")
    if "type" not in schema and not int_or_string and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if "anyOf" in schema and not (int_or_string and schema["anyOf"] == [{"type": "integer"}, {"type": "string"}]):
        problems.append(f"{path}: anyOf only in the int-or-string form")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties are exclusive")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{path}: array without items")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        if not keys or not set(keys) <= set(schema["items"].get("required", ())):
            problems.append(f"{path}: a map list needs list-map-keys that its items require")
    if "default" in schema:
        try:
            jsonschema.Draft4Validator(_json(schema)).validate(schema["default"])
        except jsonschema.ValidationError as exc:
            problems.append(f"{path}: default {schema['default']!r} is invalid: {exc.message}")
    for key, sub in (schema.get("properties") or {}).items():
        problems += _structural_problems(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += _structural_problems(schema[key], f"{path}[{key}]")
    return problems


def _json(schema):
    return {k: v for k, v in schema.items() if not k.startswith("x-") and k not in ("default", "nullable")}


def test_schema_is_structural(root_schema):
    assert _structural_problems(root_schema, "") == []
    assert root_schema["properties"]["metadata"] == {"type": "object"}  # only name rules, via CEL
    assert root_schema["required"] == ["spec"]
    # image may be left to the operator's default trainer image; the operator refuses a job with neither
    assert "required" not in root_schema["properties"]["spec"]


def test_every_field_has_a_description_for_kubectl_explain(root_schema):
    missing = []

    def visit(schema, path):
        if path != ".metadata" and not schema.get("description", "").strip():
            missing.append(path or "<root>")
        for key, sub in (schema.get("properties") or {}).items():
            visit(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict) and "properties" in schema[key]:
                visit(schema[key], f"{path}[]")

    visit(root_schema, "")
    assert missing == []


def test_status_describes_what_the_operator_writes(root_schema):
    status = root_schema["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf keeps handler results there
    assert status["properties"]["phase"]["enum"] == [p.value for p in api.Phase]
    for key in ("reason", "message", "observedGeneration", "pytorchJob", "startTime", "completionTime", "nodes",
                "gpusPerNode", "gpus", "active", "succeeded", "failed", "replicaStatuses", "conditions"):
        assert key in status["properties"], key
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                                      "observedGeneration"}


# ------------------------------------------------------------------- the same fields as the trainer's config


def _config_defaults() -> dict[str, Any]:
    """Every spec field the trainer knows, as a dotted camelCase path -> its dataclass default."""
    out: dict[str, Any] = {}

    def visit(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("name", "namespace", "base_dir"):
                continue
            path = prefix + trainer_config.snake_to_camel(f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(hints[f.name]):
                visit(hints[f.name], path + ".")
            else:
                out[path] = list(default) if isinstance(default, tuple) else default

    visit(trainer_config.JobConfig, "")
    return out


def test_crd_fields_are_the_operator_table_fields(spec_schema):
    def shape(schema):
        return {key: shape(sub) if sub.get("type") == "object" and "properties" in sub
                and not sub.get("x-kubernetes-preserve-unknown-fields") and key not in ("tolerations",)
                else None for key, sub in schema["properties"].items()}

    def table_shape(table):
        return {key: table_shape(node) if isinstance(node, dict) else None for key, node in table.items()}

    assert shape(spec_schema) == table_shape(SPEC_FIELDS)


def test_trainer_fields_are_the_crd_fields():
    config_paths = set(_config_defaults())
    table_paths = {path for path, node in walk() if isinstance(node, Field)}
    # the trainer keeps scheduling, runPolicy and storage as free-form mappings
    table_trainer_paths = {p for p in table_paths if p.split(".")[0] not in OPERATOR_ONLY}
    assert config_paths - set(OPERATOR_ONLY) == table_trainer_paths


@pytest.mark.parametrize("path", sorted(p for p in _config_defaults() if p not in OPERATOR_ONLY))
def test_defaults_agree_between_trainer_operator_and_crd(path, spec_schema):
    trainer_default = _config_defaults()[path]
    node = dict(walk())[path]
    crd_node = crd_schema_at(spec_schema, path)
    if trainer_default is None:
        assert not node.has_default and "default" not in crd_node, f"{path}: the trainer has no default"
        assert node.required or node.nullable or node.kind == "quantity"
    else:
        assert node.default == trainer_default, f"{path}: operator {node.default!r} != trainer {trainer_default!r}"
        assert crd_node["default"] == trainer_default, f"{path}: CRD {crd_node['default']!r} != trainer"


def test_crd_defaulting_equals_with_defaults(crd_defaults):
    assert crd_defaults(dict(BASE)) == with_defaults(BASE)
    partial = {**BASE, "data": {"path": "gs://b/p", "numClasses": None}, "model": {"fusion": {"type": "attention"}},
               "training": {"maxStepsPerEpoch": None, "epochs": None}}
    assert crd_defaults(partial) == with_defaults(partial)


@pytest.mark.parametrize("path, node", [(p, n) for p, n in leaves()], ids=[p for p, _ in leaves()])
def test_bounds_and_enums_agree_between_operator_and_crd(path, node, spec_schema):
    crd_node = crd_schema_at(spec_schema, path)
    expected_type = {"quantity": None}.get(node.kind, node.kind)
    assert crd_node.get("type") == expected_type
    assert crd_node.get("minimum") == node.minimum and crd_node.get("maximum") == node.maximum
    assert crd_node.get("exclusiveMinimum", False) == node.exclusive_minimum
    assert crd_node.get("exclusiveMaximum", False) == node.exclusive_maximum
    assert tuple(crd_node.get("enum", ())) == node.enum
    assert crd_node.get("nullable", False) == node.nullable
    assert crd_node.get("minLength") == node.min_length
    assert crd_node.get("pattern") == node.pattern
    assert (crd_node.get("minItems"), crd_node.get("maxItems")) == (node.min_items, node.max_items)


# --------------------------------------------- what the trainer refuses, the CRD and the operator refuse too

PROBES = [
    # (path, value, accepted)
    ("data.validationFraction", 0.0, True), ("data.validationFraction", 1.0, False),
    ("data.validationFraction", -0.1, False), ("data.testFraction", 0.3, True),
    ("data.onBadRecord", "skip", True), ("data.onBadRecord", "ignore", False),
    ("data.missingModality", "keep", True), ("data.missingModality", "fill", False),
    ("data.path", "", False),
    ("preprocessing.imageSize", 8, True), ("preprocessing.imageSize", 1024, True),
    ("preprocessing.imageSize", 7, False), ("preprocessing.imageSize", 1025, False),
    ("preprocessing.maxTokens", 4, True), ("preprocessing.maxTokens", 4097, False),
    ("preprocessing.backend", "tf", True), ("preprocessing.backend", "torch", False),
    ("preprocessing.tokenizer", "", False),
    ("preprocessing.imageStd", [0.2, 0.2, 0.2], True), ("preprocessing.imageStd", [0.2, 0.0, 0.2], False),
    ("preprocessing.imageMean", [0.5, 0.5], False),
    ("model.vision.pooling", "mean", True), ("model.vision.pooling", "max", False),
    ("model.vision.backbone", "", False),
    ("model.text.pooling", "mean", True), ("model.text.pooling", "attention", False),
    ("model.numeric.hidden", [], False), ("model.numeric.hidden", [64, 0], False), ("model.numeric.hidden", [8], True),
    ("model.numeric.dropout", 1.0, False),
    ("model.fusion.type", "concat", True), ("model.fusion.type", "sum", False),
    ("model.fusion.hidden", 0, False), ("model.fusion.heads", 0, False), ("model.fusion.layers", 0, False),
    ("model.fusion.modalityDropout", 0.99, True), ("model.fusion.modalityDropout", 1.0, False),
    ("model.embedDim", 0, False), ("model.numClasses", 2, True), ("model.numClasses", 1, False),
    ("model.numClasses", None, True),
    ("training.epochs", 0, False), ("training.batchSizePerGPU", 0, False), ("training.batchSizePerGPU", 1, True),
    ("training.learningRate", 0.0, False), ("training.learningRate", 1e-6, True),
    ("training.encoderLrMultiplier", 0.0, True), ("training.encoderLrMultiplier", -0.1, False),
    ("training.weightDecay", -0.01, False), ("training.warmupFraction", 1.0, False),
    ("training.precision", "fp32", True), ("training.precision", "fp8", False),
    ("training.gradAccumulation", 0, False), ("training.gradClip", 0.0, True), ("training.gradClip", -1.0, False),
    ("training.checkpointEverySteps", 0, False), ("training.keepCheckpoints", 0, False),
    ("training.maxStepsPerEpoch", 0, False), ("training.maxStepsPerEpoch", 5, True),
    ("training.logEverySteps", 0, False), ("training.epochs", "ten", False),
    ("resources.nodes", 0, False), ("resources.nodes", 64, True),
    ("resources.gpusPerNode", 0, True), ("resources.gpusPerNode", -1, False),
    ("resources.sharedMemory", "1.5Gi", True), ("resources.sharedMemory", 1073741824, True),
    ("resources.sharedMemory", "lots", False),
    ("monitoring.metricsPort", 0, True), ("monitoring.metricsPort", 1024, True),
    ("monitoring.metricsPort", 65000, True), ("monitoring.metricsPort", 1023, False),
    ("monitoring.metricsPort", 65001, False),
]


def _trainer_accepts(spec, path):
    try:
        trainer_config.job_from_dict({"apiVersion": trainer_config.API_VERSION, "kind": trainer_config.KIND,
                                      "metadata": {"name": "products"}, "spec": spec})
    except trainer_config.ConfigError as exc:
        # the trainer may name the section (spec.preprocessing), the field or an item of it (hidden[1])
        where = re.sub(r"\[\d+\]$", "", str(exc).split(":")[0])
        return not f"spec.{path}.".startswith(where + ".")
    return True


@pytest.mark.parametrize("path, value, accepted", PROBES, ids=[f"{p}={v!r}" for p, v, _ in PROBES])
def test_trainer_crd_and_operator_agree_on_bounds(path, value, accepted, crd_errors):
    spec = set_path(BASE, path, value)
    crd = [e for e in crd_errors(spec) if e.startswith(f"spec.{path}")]
    operator = [e for e in validate_spec(spec) if e.startswith(f"spec.{path}")]
    assert _trainer_accepts(spec, path) is accepted
    assert (crd == []) is accepted, crd
    assert (operator == []) is accepted, operator


@pytest.mark.parametrize("spec, where", [
    ({"data": {"validationFraction": 0.6, "testFraction": 0.4}}, "spec.data"),
    ({"model": {"fusion": {"type": "attention", "hidden": 10, "heads": 3}}}, "spec.model.fusion"),
])
def test_cross_field_rules_agree(spec, where, crd_errors):
    spec = {**BASE, **spec}
    assert any(e.startswith(where) for e in crd_errors(spec))
    assert any(e.startswith(where) for e in validate_spec(spec))
    with pytest.raises(trainer_config.ConfigError, match=where.replace(".", r"\.")):
        trainer_config.job_from_dict({"apiVersion": trainer_config.API_VERSION, "kind": trainer_config.KIND,
                                      "metadata": {"name": "products"}, "spec": spec})


def test_attention_fusion_with_divisible_heads_passes(crd_errors):
    spec = {**BASE, "model": {"fusion": {"type": "attention", "hidden": 12, "heads": 3}}}
    assert crd_errors(spec) == [] and validate_spec(spec) == []


def test_example_job_passes_the_crd_the_operator_and_the_trainer(example_job, crd_errors, root_schema, cel):
    assert example_job["apiVersion"] == api.API_VERSION and example_job["kind"] == api.KIND
    assert crd_errors(example_job["spec"]) == []
    assert validate_spec(with_image(example_job["spec"], "registry.example.com/trainer:1"),
                         name=example_job["metadata"]["name"]) == []
    # It names no image: it runs the operator's default trainer image (the chart sets one), on either backend.
    assert "image" not in example_job["spec"]
    trainer_config.job_from_dict(example_job)
    (name_rule,) = root_schema["x-kubernetes-validations"]
    assert cel(name_rule["rule"], root_schema, {"metadata": example_job["metadata"]})


def test_data_source_refuses_emptydir_and_two_volume_types(crd_errors):
    both = {**BASE, "data": {"path": "p", "source": {"persistentVolumeClaim": {"claimName": "a"},
                                                     "nfs": {"server": "s", "path": "/x"}}}}
    empty = {**BASE, "data": {"path": "p", "source": {"emptyDir": {}}}}
    for spec in (both, empty):
        assert any(e.startswith("spec.data.source") for e in crd_errors(spec))
        assert any(e.startswith("spec.data.source") for e in validate_spec(spec))


MULTI_NODE = {**BASE, "resources": {"nodes": 2}}


@pytest.mark.parametrize("checkpoints, accepted", [
    (None, False),
    ({"emptyDir": {}}, False),
    ({"hostPath": {"path": "/mnt/runs"}}, False),
    ({"persistentVolumeClaim": {"claimName": "runs"}}, True),
    ({"nfs": {"server": "nfs.example.com", "path": "/exports/runs"}}, True),
    ({"csi": {"driver": "efs.csi.aws.com"}}, True),
])
def test_multi_node_jobs_need_shared_checkpoints_in_crd_and_operator(checkpoints, accepted, crd_errors):
    spec = {**MULTI_NODE, "storage": {"checkpoints": checkpoints}} if checkpoints else MULTI_NODE
    crd = [e for e in crd_errors(spec) if MULTI_NODE_CHECKPOINTS in e]
    operator = [e for e in validate_spec(spec) if e.startswith("spec.storage.checkpoints")]
    assert (crd == []) is accepted, crd
    assert (operator == []) is accepted, operator
    if not accepted:
        assert MULTI_NODE_CHECKPOINTS in operator[0] and "ReadWriteMany" in operator[0]


def test_one_node_may_keep_checkpoints_in_an_emptydir(crd_errors):
    assert crd_errors(BASE) == [] and validate_spec(BASE) == []
    one = {**BASE, "storage": {"checkpoints": {"emptyDir": {}}}}
    assert crd_errors(one) == [] and validate_spec(one) == []


def test_pod_local_volume_types_the_crd_cannot_see_are_refused_by_the_operator():
    spec = {**MULTI_NODE, "storage": {"checkpoints": {"ephemeral": {"volumeClaimTemplate": {"spec": {}}}}}}
    assert any("got ephemeral" in e for e in validate_spec(spec))


@pytest.mark.parametrize("name, ok", [
    ("products", True), ("a", True), ("resnet50-bert-base", True), ("x" * 50, True), ("x" * 51, False),
    ("1products", False), ("Products", False), ("products-", False), ("prod.ucts", False),
])
def test_name_rule_agrees_with_the_operator(name, ok, root_schema, cel):
    (rule,) = root_schema["x-kubernetes-validations"]
    assert cel(rule["rule"], root_schema, {"metadata": {"name": name}}) is ok
    assert (validate_spec(BASE, name=name) == []) is ok


# ------------------------------------------------------------------------------------------- immutability


def _changed_value(path: str, node: Field, current: Any) -> Any:
    if path in ("data.source", "storage.checkpoints", "storage.artifacts"):
        return {"persistentVolumeClaim": {"claimName": "other"}}
    if path == "scheduling.nodeSelector":
        return {"gpu": "a100"}
    if path == "scheduling.tolerations":
        return [{"key": "gpu", "operator": "Exists"}]
    if node.enum:
        return next(v for v in node.enum if v != current)
    return {
        "integer": lambda: (current or 0) + 2 if (node.maximum is None or (current or 0) + 2 <= node.maximum)
        else current - 2,
        "number": lambda: (current or 0.5) / 2,
        "string": lambda: f"{current or 'x'}-changed",
        "boolean": lambda: not current,
        "quantity": lambda: "3Gi",
        "array": lambda: [*current, current[-1]] if node.max_items is None else [0.3, 0.3, 0.3],
    }[node.kind]()


IMAGE_PRESENCE_RULE = "has(self.image) == has(oldSelf.image)"
"""On spec: ``self == oldSelf`` on ``spec.image`` only runs when both sides have an image, so adding or removing
one needs a rule a level up."""


def _transition_rules(root_schema, all_cel_rules):
    return [(path.removeprefix(".spec."), schema, rule) for path, schema, rule in all_cel_rules
            if "oldSelf" in rule["rule"] and rule["rule"] != IMAGE_PRESENCE_RULE]


@pytest.mark.parametrize("path, node", leaves(), ids=[p for p, _ in leaves()])
def test_crd_and_operator_agree_on_what_may_change(path, node, root_schema, all_cel_rules, cel):
    old = with_defaults({**BASE, "data": {"path": "p", "source": {"persistentVolumeClaim": {"claimName": "d"}}},
                         "storage": {"checkpoints": {"persistentVolumeClaim": {"claimName": "runs"}}}})
    current = _get(old, path)
    new = set_path(old, path, _changed_value(path, node, current))
    assert validate_spec(new) == [], f"probe value for {path} must be valid"

    operator_refuses = immutable_changes(old, new)
    crd_refuses = []
    for rule_path, schema, rule in _transition_rules(root_schema, all_cel_rules):
        old_value, new_value = _get(old, rule_path), _get(new, rule_path)
        if old_value is not None and new_value is not None and not cel(rule["rule"], schema, new_value, old_value):
            crd_refuses.append(rule["message"])
    if node.mutable:
        assert operator_refuses == [] and crd_refuses == []
    else:
        assert operator_refuses == [f"spec.{path}"]
        assert len(crd_refuses) == 1 and "immutable" in crd_refuses[0]


def _get(document, path):
    for key in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def test_transition_rules_sit_on_every_immutable_section(root_schema, all_cel_rules):
    with_rule = {path for path, _, _ in _transition_rules(root_schema, all_cel_rules)}
    immutable_sections = {key for key in SPEC_FIELDS if key != "runPolicy"} | {"runPolicy.cleanPodPolicy"}
    assert with_rule == immutable_sections
    for _, _, rule in _transition_rules(root_schema, all_cel_rules):
        assert rule["rule"] == "self == oldSelf" and "immutable" in rule["message"]


@pytest.mark.parametrize("old, new, allowed", [
    ({}, {}, True),
    (BASE, BASE, True),
    ({}, BASE, False),  # adding an image to a job running the operator's default would change its image
    (BASE, {}, False),
])
def test_image_cannot_be_added_or_removed_after_creation(old, new, allowed, spec_schema, cel):
    (rule,) = [r for r in spec_schema["x-kubernetes-validations"] if r["rule"] == IMAGE_PRESENCE_RULE]
    assert cel(rule["rule"], spec_schema, new, old) is allowed
    assert rule["fieldPath"] == ".image" and "immutable" in rule["message"]


def test_a_spec_without_image_passes_the_crd(crd_errors):
    assert crd_errors({"data": {"path": "gs://datasets/products"}}) == []
    assert any(e.startswith("spec.image") for e in crd_errors({"image": ""}))


def test_every_spec_field_is_in_the_reference_docs():
    text = (Path(__file__).resolve().parents[3] / "docs" / "operator.md").read_text()
    missing = [path for path, node in walk() if isinstance(node, Field) and f"`{path}`" not in text]
    assert missing == [], "document these fields in docs/operator.md's spec reference"
