"""The job file is the user's interface: bad values are reported with their YAML path."""

import pytest
import yaml

from kubefusion import config as cfg
from kubefusion.config import ConfigError, job_from_dict, job_to_dict


def doc(**spec):
    return {"apiVersion": cfg.API_VERSION, "kind": cfg.KIND, "metadata": {"name": "products"}, "spec": spec}


def test_design_example_parses_with_camel_case_fields():
    job = job_from_dict(doc(
        data={"path": "products/", "validationFraction": 0.1, "onBadRecord": "skip", "missingModality": "keep"},
        preprocessing={"imageSize": 224, "tokenizer": "bert-base-uncased", "maxTokens": 128},
        model={"vision": {"backbone": "microsoft/resnet-50", "pretrained": True},
               "fusion": {"type": "gated", "hidden": 1024, "dropout": 0.5, "modalityDropout": 0.1}},
        training={"epochs": 10, "batchSizePerGPU": 64, "learningRate": 3.0e-4, "precision": "bf16"},
        resources={"nodes": 2, "gpusPerNode": 4, "sharedMemory": "32Gi"},
        runPolicy={"backoffLimit": 3},
        storage={"checkpoints": {"persistentVolumeClaim": {"claimName": "runs"}}},
    ))
    assert job.name == "products"
    assert job.data.on_bad_record == "skip" and job.data.missing_modality == "keep"
    assert job.training.batch_size_per_gpu == 64
    assert job.resources.gpus_per_node == 4
    assert job.model.fusion.modality_dropout == 0.1
    assert job.run_policy == {"backoffLimit": 3}


@pytest.mark.parametrize("spec, where", [
    ({"training": {"precision": "fp8"}}, "spec.training.precision"),
    ({"training": {"batchSizePerGPU": 0}}, "spec.training.batchSizePerGPU"),
    ({"training": {"epochs": "ten"}}, "spec.training.epochs"),
    ({"data": {"onBadRecord": "ignore"}}, "spec.data.onBadRecord"),
    ({"data": {"validationFraction": 0.6, "testFraction": 0.5}}, "spec.data"),
    ({"model": {"fusion": {"type": "attention", "hidden": 10, "heads": 3}}}, "spec.model.fusion.heads"),
    ({"model": {"vision": {"backbon": "x"}}}, "spec.model.vision.backbon"),
    ({"resources": {"sharedMemory": "lots"}}, "spec.resources.sharedMemory"),
    ({"nonsense": 1}, "spec.nonsense"),
])
def test_invalid_values_name_their_path(spec, where):
    with pytest.raises(ConfigError) as err:
        job_from_dict(doc(**spec))
    assert where in str(err.value)


def test_wrong_kind_is_rejected():
    with pytest.raises(ConfigError, match="kind"):
        job_from_dict({"apiVersion": cfg.API_VERSION, "kind": "PyTorchJob", "spec": {}})


def test_round_trip_through_yaml(tmp_path):
    job = cfg.resnet50_bert_base()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_to_dict(job)))
    again = cfg.load_job_file(path)
    assert again.to_dict() == job.to_dict()


def test_presets_are_valid_and_distinct():
    assert cfg.demo().training.precision == "fp32"
    big = cfg.resnet50_bert_base()
    assert big.training.precision == "bf16" and big.resources.gpus_per_node == 4


def test_missing_job_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such job file"):
        cfg.load_job_file(tmp_path / "nope.yaml")
