"""What the operator refuses when no API server validation stands in front of it, and which edits it refuses
once a job exists. Every message names the field."""

from __future__ import annotations

import pytest

from kubefusion_operator.builders import with_defaults, with_image
from kubefusion_operator.validation import immutable_changes, validate_spec

BASE = {"image": "registry.example.com/kubefusion-trainer:0.1.0"}
PVC = {"persistentVolumeClaim": {"claimName": "datasets"}}


def test_a_minimal_spec_is_valid():
    assert validate_spec(BASE) == []


@pytest.mark.parametrize("spec, message", [
    ({}, "spec.image: is required"),
    ({"image": ""}, "spec.image: must not be empty"),
    ({**BASE, "resources": {"nodes": 0}}, "spec.resources.nodes: must be >= 1 (got 0)"),
    ({**BASE, "resources": {"gpusPerNode": -1}}, "spec.resources.gpusPerNode: must be >= 0 (got -1)"),
    ({**BASE, "resources": {"nodes": True}}, "spec.resources.nodes: must be an integer (got True)"),
    ({**BASE, "data": {"testFraction": 1.5}}, "spec.data.testFraction: must be in [0, 1) (got 1.5)"),
    ({**BASE, "training": {"precision": "fp8"}}, "spec.training.precision: must be one of bf16, fp16, fp32 (got 'fp8')"),
    ({**BASE, "training": {"learningRate": 0}}, "spec.training.learningRate: must be > 0 (got 0)"),
    ({**BASE, "training": {"epochs": None}}, None),  # null counts as absent: defaulted
    ({**BASE, "model": {"numClasses": None}}, None),  # nullable
    ({**BASE, "model": {"vision": {"backbon": "x"}}}, "spec.model.vision.backbon: unknown field"),
    ({**BASE, "bogus": 1}, "spec.bogus: unknown field"),
    ({**BASE, "data": "products/"}, "spec.data: must be a mapping (got str)"),
    ({**BASE, "resources": {"sharedMemory": "lots"}}, "spec.resources.sharedMemory: not a Kubernetes quantity"),
    ({**BASE, "resources": {"memory": "64 GB"}}, "spec.resources.memory: not a Kubernetes quantity"),
    ({**BASE, "preprocessing": {"imageMean": [0.5]}}, "spec.preprocessing.imageMean: needs at least 3 item(s)"),
    ({**BASE, "model": {"numeric": {"hidden": [64, 0]}}}, "spec.model.numeric.hidden[1]: must be >= 1 (got 0)"),
    ({**BASE, "monitoring": {"metricsPort": 80}}, "spec.monitoring.metricsPort: must be 0 (off) or in [1024, 65000]"),
    ({**BASE, "data": {"validationFraction": 0.5, "testFraction": 0.5}},
     "spec.data: validationFraction + testFraction must be < 1"),
    ({**BASE, "model": {"fusion": {"type": "attention", "hidden": 100, "heads": 3}}},
     "spec.model.fusion.heads: must divide hidden=100"),
    ({**BASE, "data": {"path": "products/"}}, "spec.data.path: 'products/' is a local path but spec.data.source"),
    ({**BASE, "data": {"path": "p", "source": {"persistentVolumeClam": {"claimName": "d"}}}},
     "spec.data.source.persistentVolumeClam: not a Kubernetes volume type"),
    ({**BASE, "data": {"path": "p", "source": {**PVC, "nfs": {"server": "s", "path": "/"}}}},
     "spec.data.source: must name exactly one volume type"),
    ({**BASE, "data": {"path": "p", "source": {"persistentVolumeClaim": {}}}},
     "spec.data.source.persistentVolumeClaim.claimName: is required"),
    ({**BASE, "data": {"path": "p", "source": {"emptyDir": {}}}}, "spec.data.source: an emptyDir holds no data"),
    ({**BASE, "data": {"path": "../etc", "source": PVC}}, "spec.data.path: must stay inside the data volume"),
    ({**BASE, "storage": {"checkpoints": {"pvc": {"claimName": "r"}}}},
     "spec.storage.checkpoints.pvc: not a Kubernetes volume type"),
    ({**BASE, "scheduling": {"tolerations": [{"key": "gpu", "operator": "Matches"}]}},
     "spec.scheduling.tolerations[0].operator: must be one of Exists, Equal"),
    ({**BASE, "scheduling": {"nodeSelector": {"gpu": 1}}}, "spec.scheduling.nodeSelector.gpu: must be a string"),
    ({**BASE, "scheduling": {"queue": ""}}, "spec.scheduling.queue: must not be empty"),
    ({**BASE, "runPolicy": {"cleanPodPolicy": "Some"}}, "spec.runPolicy.cleanPodPolicy: must be one of None"),
    ({**BASE, "runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit: must be >= 0"),
])
def test_bad_specs_are_refused_naming_the_field(spec, message):
    problems = validate_spec(spec)
    if message is None:
        assert problems == []
    else:
        assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize("path", ["gs://bucket/products", "s3://b/p", "builtin:demo"])
def test_uris_and_builtin_data_need_no_volume(path):
    assert validate_spec({**BASE, "data": {"path": path}}) == []


def test_a_local_path_on_a_volume_is_fine():
    assert validate_spec({**BASE, "data": {"path": "products/", "source": PVC}}) == []


def test_a_missing_image_says_how_to_give_the_operator_a_default():
    (problem,) = validate_spec({"data": {"path": "gs://datasets/products"}})
    assert problem.startswith("spec.image: is required")
    for how in ("trainer.image.repository", "trainer.image.tag", "KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE",
                "--default-trainer-image"):
        assert how in problem


def test_the_operators_default_image_makes_a_job_without_image_valid():
    spec = {"data": {"path": "gs://datasets/products"}}
    assert validate_spec(with_image(spec, "registry.example.com/ml/kubefusion-trainer:0.1.0")) == []
    assert validate_spec(with_image(spec, None)) != []


def test_a_changed_default_is_no_change_for_a_job_that_recorded_its_image():
    """The handler resolves a job's missing image from the applied spec first, so the job stays as built."""
    applied = with_image({}, "trainer:1")
    assert immutable_changes(applied, with_image({}, applied["image"])) == []
    assert immutable_changes(applied, with_image({"image": "trainer:2"}, "trainer:1")) == ["spec.image"]


def test_all_problems_are_reported_at_once():
    problems = validate_spec({"resources": {"nodes": 0, "gpusPerNode": -1}, "training": {"epochs": 0}})
    assert len(problems) == 4  # image, nodes, gpusPerNode, epochs


def test_not_a_mapping():
    assert validate_spec(["image"]) == ["spec: must be a mapping (got list)"]


@pytest.mark.parametrize("name, ok", [("products", True), ("a" * 50, True), ("a" * 51, False),
                                      ("9lives", False), ("UPPER", False), ("", False)])
def test_job_names_leave_room_for_kubeflow_service_names(name, ok):
    problems = validate_spec(BASE, name=name)
    assert (problems == []) is ok
    if not ok:
        assert problems[0].startswith("metadata.name:")


# ------------------------------------------------------------------------------------------- immutability


def test_suspend_and_run_limits_may_change():
    old = {**BASE, "runPolicy": {"suspend": False, "backoffLimit": 3}}
    new = {**BASE, "runPolicy": {"suspend": True, "backoffLimit": 10, "activeDeadlineSeconds": 3600,
                                 "ttlSecondsAfterFinished": 60}}
    assert immutable_changes(old, new) == []


@pytest.mark.parametrize("change, paths", [
    ({"image": "other:1"}, ["spec.image"]),
    ({"resources": {"nodes": 4}}, ["spec.resources.nodes"]),
    ({"resources": {"gpusPerNode": 8, "cpu": "8"}}, ["spec.resources.gpusPerNode", "spec.resources.cpu"]),
    ({"training": {"learningRate": 1e-3}}, ["spec.training.learningRate"]),
    ({"scheduling": {"queue": "team-b"}}, ["spec.scheduling.queue"]),
    ({"runPolicy": {"cleanPodPolicy": "All"}}, ["spec.runPolicy.cleanPodPolicy"]),
    ({"data": {"source": PVC, "path": "p"}}, ["spec.data.path", "spec.data.source"]),
    ({"storage": {"checkpoints": PVC}}, ["spec.storage.checkpoints"]),
    ({"extra": 1}, ["spec.extra"]),
])
def test_everything_else_is_fixed_once_created(change, paths):
    assert immutable_changes(BASE, {**BASE, **change}) == paths


def test_spelling_out_a_default_is_not_a_change():
    assert immutable_changes(BASE, with_defaults(BASE)) == []
    assert immutable_changes(BASE, {**BASE, "training": {"epochs": 10}}) == []


def test_inputs_are_not_modified():
    old, new = {**BASE, "resources": {"nodes": 1}}, {**BASE, "resources": {"nodes": 2}}
    immutable_changes(old, new)
    validate_spec(new)
    assert old == {**BASE, "resources": {"nodes": 1}} and new == {**BASE, "resources": {"nodes": 2}}
