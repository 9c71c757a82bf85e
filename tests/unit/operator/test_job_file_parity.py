"""A job file means the same on a laptop and on a cluster: the local reader (``kubefusion run``, ``kubefusion
train``) accepts exactly the documents ``kubectl apply`` gets past the API server, no more, no less.

The cluster side here: YAML read as sigs.k8s.io/yaml reads it (the scalar table below was produced by it), then
the CRD from manifests/crd.yaml as the API server applies it on create (null pruning and defaults, the
structural schema with unknown fields refused as kubectl's default strict validation refuses them, every CEL
rule without oldSelf, a name in metadata).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from kubefusion import config as trainer_config
from kubefusion import crd as trainer_crd

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# `v: <scalar>` through sigs.k8s.io/yaml v1.4.0's YAMLToJSON (go-yaml v2 resolution), as kubectl converts a job
# file; produced with a 15-line Go program (`yaml.YAMLToJSON([]byte("v: " + line))` for each line of stdin).
# None below: kubectl refuses the value ("json: unsupported value: +Inf").
KUBECTL_SCALARS = [
    ("2e-3", 0.002), ("2E-3", 0.002), ("2.0e-3", 0.002), ("1e3", 1000), ("+1", 1), ("-1", -1), ("1_000", 1000),
    ("0x1F", 31), ("-0x1F", -31), ("0o17", 15), ("017", 15), ("0777", 511), ("08", 8), ("0999", 999),
    ("0b101", 5), ("0B101", 5), ("-0b11", -3), ("1.", 1), (".5", 0.5), ("-.5", -0.5), ("+.5", 0.5), ("0.", 0),
    ("-0", 0), ("00", 0), ("3.0", 3), ("1.5e+3", 1500), ("1.5E3", 1500), ("0.1_5", 0.15), ("1__0", 10), ("1_", 1),
    ("1e-3_0", 1e-30), ("9223372036854775808", 9223372036854775808),
    (".inf", None), ("-.Inf", None), ("+.inf", None), (".nan", None),
    ("1e400", "1e400"), ("_1", "_1"), ("0x", "0x"), ("1e", "1e"), ("=", "="), ("1,000", "1,000"), ("NaN", "NaN"),
    ("Infinity", "Infinity"), ("12:30", "12:30"), ("1:20:30", "1:20:30"), ("2001-12-14", "2001-12-14"),
    ("2001-12-14T21:59:43.10-05:00", "2001-12-14T21:59:43.10-05:00"),
    ("yes", True), ("no", False), ("y", True), ("n", False), ("on", True), ("off", False), ("True", True),
    ("TRUE", True), ("null", None), ("~", None), ("Null", None), ("'2e-3'", "2e-3"), ("!!str 1", "1"),
    ("!!float 3", 3), ('!!int "3"', 3), ("3 # note", 3),
]


@pytest.mark.parametrize("text, expected", KUBECTL_SCALARS, ids=[t for t, _ in KUBECTL_SCALARS])
def test_scalars_read_as_kubectl_reads_them(text, expected):
    value = trainer_crd.load_yaml(f"v: {text}")["v"]
    if expected is None and text.strip(".+-").lower() in ("inf", "nan"):
        assert math.isinf(value) or math.isnan(value)  # read, then refused as no JSON number can carry it
    else:
        assert value == expected and type(value) is type(expected) or (
            isinstance(expected, int) and isinstance(value, float) and value == expected)


BASE = """\
apiVersion: kubefusion.io/v1alpha1
kind: MultimodalTrainJob
metadata: {name: products}
spec:
  image: registry.example.com/kubefusion-trainer:0.1.0
"""

# (spec lines, accepted by the cluster): numbers and booleans as people write them, spellings, nulls, types,
# every CEL rule's failure, unknown fields at each level.
EDGE_SPECS = [
    ("training: {learningRate: 2e-3}", True),
    ("training: {learningRate: 2E-3, weightDecay: 1e-2}", True),
    ("training: {learningRate: '2e-3'}", False),
    ("training: {learning_rate: 2.0e-3}", False),
    ("training: {learningRate: 1.0e-3, learning_rate: 2.0e-3}", False),
    ("training: {epochs: 3.0}", True),
    ("training: {epochs: 1e1}", True),
    ("training: {epochs: 2.5}", False),
    ("training: {epochs: 0x10}", True),
    ("training: {epochs: 1_0}", True),
    ("training: {epochs: '10'}", False),
    ("training: {epochs: }", True),
    ("training: {epochs: ~}", True),
    ("training: {learningRate: .inf}", False),
    ("training: {gradClip: .nan}", False),
    ("training: {baselines: yes}", True),
    ("training: {baselines: n}", True),
    ("training: {baselines: 'yes'}", False),
    ("training: {baselines: 1}", False),
    ("training: {maxStepsPerEpoch: null}", True),
    ("training: {maxStepsPerEpoch: 0}", False),
    ("training: {precision: fp8}", False),
    ("training: {epochs: 3, frozenBackboneEpochs: 3}", False),
    ("training: {epochs: 3.0, frozenBackboneEpochs: 2}", True),
    ("training:", True),
    ("model: {numClasses: 2.0}", True),
    ("model: {numClasses: null}", True),
    ("model: {fusion: {type: attention, hidden: 10, heads: 3}}", False),
    ("model: {fusion: {type: attention, hidden: 12, heads: 3}}", True),
    ("model: {numeric: {hidden: [64, 0]}}", False),
    ("model: {numeric: {hidden: [64, 6.4e1]}}", True),
    ("model: {vision: {backbon: x}}", False),
    ("model: {embed_dim: 64}", False),
    ("preprocessing: {tokenizer: 123}", False),
    ("preprocessing: {tokenizer: 2001-12-14}", True),
    ("preprocessing: {imageSize: 1_024}", True),
    ("preprocessing: {imageSize: 1025}", False),
    ("preprocessing: {imageMean: [0.5, 0.5]}", False),
    ("preprocessing: {imageStd: [.2, .2, .2]}", True),
    ("preprocessing: {imageStd: [.2, 0, .2]}", False),
    ("resources: {sharedMemory: 1073741824}", True),
    ("resources: {sharedMemory: 1.5}", False),
    ("resources: {sharedMemory: 1Gi, cpu: 500m, memory: 8Gi}", True),
    ("resources: {cpu: 2}", True),
    ("resources: {memory: lots}", False),
    ("resources: {gpusPerNode: -1}", False),
    ("trainig: {epochs: 3}", False),
    ("data: {path: ''}", False),
    ("data: {path: gs://bucket/products, manifest: ~, oodPath: null}", True),
    ("data: {path: products/, source: {emptyDir: {}}}", False),
    ("data: {path: products/, source: {persistentVolumeClaim: {claimName: d}}}", True),
    ("data: {path: products/, source: {persistentVolumeClaim: {claimName: d}, nfs: {server: s, path: /x}}}", False),
    ("data: {validationFraction: 0.5, testFraction: 0.5}", False),
    ("data: {onBadRecord: skip, missingModality: keep, splitSeed: 7}", True),
    ("monitoring: {metricsPort: 80}", False),
    ("monitoring: {metricsPort: 0}", True),
    ("runPolicy: {backoffLimit: three}", False),
    ("runPolicy: {backoffLimit: 2, suspend: on, cleanPodPolicy: All}", True),
    ("runPolicy: {cleanPodPolicy: Sometimes}", False),
    ("scheduling: {queue: team-a, priorityClassName: high, nodeSelector: {gpu: a100}}", True),
    ("scheduling: {nodeSelector: {gpu: 1}}", False),
    ("scheduling: {tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]}", True),
    ("scheduling: {tolerations: [{key: gpu, effect: Sometimes}]}", False),
    ("storage: {checkpoints: {persistentVolumeClaim: {claimName: runs}}}", True),
    ("storage: {checkpoints: {emptyDir: {}, hostPath: {path: /x}}}", False),
]

EDGE_DOCUMENTS = [
    ("no spec", "apiVersion: kubefusion.io/v1alpha1\nkind: MultimodalTrainJob\nmetadata: {name: products}\n", False),
    ("no name", "apiVersion: kubefusion.io/v1alpha1\nkind: MultimodalTrainJob\nmetadata: {}\nspec: {}\n", False),
    ("name starts with a digit", BASE.replace("name: products", "name: 1products"), False),
    ("name of 51 characters", BASE.replace("name: products", "name: " + "x" * 51), False),
    ("name of 50 characters", BASE.replace("name: products", "name: " + "x" * 50), True),
    ("unknown top-level field", BASE + "sepc: {}\n", False),
    ("status is kept", BASE + "status: {phase: Running}\n", True),
    ("a spec of nulls", BASE + "  data:\n  training:\n  model:\n", True),
]

CLUSTER_ONLY = {
    "resources: {nodes: 2}":
        "a multi-node job needs shared checkpoint storage (CEL on spec): the volume is the cluster's concern; "
        "locally every node is this machine and the checkpoints are in --output (kubefusion run notes it)",
}
"""Documents the cluster refuses and the local run accepts on purpose, with the reason."""


def _documents():
    cases = [(f"example {path.name}", path.read_text(), None) for path in EXAMPLES]
    cases += [(spec, BASE + textwrap.indent(spec, "  ") + "\n", accepted) for spec, accepted in EDGE_SPECS]
    cases += [(f"cluster-only: {spec}", BASE + textwrap.indent(spec, "  ") + "\n", "cluster-only")
              for spec in CLUSTER_ONLY]
    return cases + list(EDGE_DOCUMENTS)


def cluster_accepts(text: str, crd_document_errors) -> tuple[bool, list[str]]:
    document = trainer_crd.load_yaml(text)
    try:
        json.dumps(document, allow_nan=False)  # what kubectl sends is JSON
    except ValueError as exc:
        return False, [f"kubectl: {exc}"]
    errors = crd_document_errors(document)
    return not errors, errors


def local_accepts(text: str, tmp_path: Path) -> tuple[bool, str]:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    try:
        trainer_config.load_job_file(path)
    except trainer_config.ConfigError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("name, text, expected", _documents(), ids=[c[0] for c in _documents()])
def test_the_local_reader_accepts_exactly_what_the_cluster_accepts(name, text, expected, tmp_path,
                                                                    crd_document_errors):
    cluster, cluster_errors = cluster_accepts(text, crd_document_errors)
    local, local_error = local_accepts(text, tmp_path)
    if expected == "cluster-only":
        assert not cluster and local, (cluster_errors, local_error)
        return
    if expected is not None:
        assert cluster is expected, cluster_errors
    assert local is cluster, f"cluster: {cluster_errors or 'accepted'}; local: {local_error or 'accepted'}"


def test_every_cel_rule_on_create_has_an_edge_case_that_breaks_it(all_cel_rules, crd_document_errors):
    """A rule added to the CRD without a local mirror would otherwise slip past the test above."""
    create_rules = {rule["message"] for _, _, rule in all_cel_rules if "oldSelf" not in rule["rule"]}
    broken = set()
    for _, text, _ in _documents():
        document = trainer_crd.load_yaml(text)
        try:
            json.dumps(document, allow_nan=False)
        except ValueError:
            continue
        broken |= {m for m in create_rules if any(m in e for e in crd_document_errors(document))}
    assert broken == create_rules


def test_snake_case_and_typos_are_named_with_the_known_fields(tmp_path):
    _, error = local_accepts(BASE + "  training: {learning_rate: 2.0e-3}\n", tmp_path)
    assert "spec.training.learning_rate: unknown field; did you mean learningRate?" in error
    _, error = local_accepts(BASE + "  trainig: {epochs: 3}\n", tmp_path)
    assert error.startswith(f"{tmp_path / 'job.yaml'}: spec.trainig: unknown field") and "training" in error


def test_the_trainer_checks_against_the_crd_it_ships_which_is_manifests_crd():
    shipped = Path(trainer_crd.__file__).with_name(trainer_crd.CRD_RESOURCE)
    assert shipped.read_text() == (REPO / "manifests" / "crd.yaml").read_text(), (
        "trainer/src/kubefusion/crd.yaml is stale: run .venv/bin/python charts/sync_deploy.py")


def test_a_job_written_by_the_trainer_reads_back_the_same():
    for preset in trainer_config.PRESETS.values():
        job = preset()
        text = yaml.safe_dump(trainer_config.job_to_dict(job))
        assert trainer_config.job_from_dict(trainer_crd.load_yaml(text)).to_dict() == job.to_dict()
