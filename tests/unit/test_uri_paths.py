"""`spec.data.path` may be a URI that tf.io.gfile reads: the job keeps it as written (pathlib would fold
`gs://bucket/x` into `gs:/bucket/x`), while a relative local path still resolves against the job file's folder."""

from pathlib import Path

import yaml

from kubefusion import config as cfg
from kubefusion.config import job_from_dict, load_job_file


def job_with(data: dict, base_dir: str | Path = "/jobs") -> cfg.JobConfig:
    doc = {"apiVersion": cfg.API_VERSION, "kind": cfg.KIND, "metadata": {"name": "products"}, "spec": {"data": data}}
    return job_from_dict(doc, base_dir=base_dir)


def test_a_uri_dataset_root_stands_as_written():
    job = job_with({"path": "gs://bucket/x", "oodPath": "s3://other/ood-set"})
    assert job.data_dir == "gs://bucket/x"
    assert job.resolve("hdfs://namenode:8020/data/products") == "hdfs://namenode:8020/data/products"
    assert job.ood_dir == "s3://other/ood-set"


def test_a_relative_path_resolves_against_the_job_files_folder(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "products" / "ood").mkdir(parents=True)
    job_file = tmp_path / "jobs" / "job.yaml"
    job_file.write_text(yaml.safe_dump({"apiVersion": cfg.API_VERSION, "kind": cfg.KIND,
                                        "metadata": {"name": "products"}, "spec": {"data": {"path": "products/"}}}))
    job = load_job_file(job_file)
    assert job.data_dir == tmp_path / "jobs" / "products"
    assert job.ood_dir == tmp_path / "jobs" / "products" / "ood"  # the default <path>/ood, found because it exists


def test_absolute_local_paths_stand_and_a_missing_default_ood_folder_is_none(tmp_path):
    job = job_with({"path": str(tmp_path)}, base_dir="/elsewhere")
    assert job.data_dir == tmp_path
    assert job.ood_dir is None



def test_backbone_and_tokenizer_folders_resolve_against_the_job_files_folder_too(tmp_path, monkeypatch):
    from transformers import BertConfig

    from kubefusion.model import check_model_sources

    jobs = tmp_path / "jobs"
    BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(jobs / "models" / "bert-small")
    job_file = jobs / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "apiVersion": cfg.API_VERSION, "kind": cfg.KIND, "metadata": {"name": "products"},
        "spec": {"model": {"text": {"backbone": "models/bert-small", "pretrained": False},
                           "vision": {"backbone": "microsoft/resnet-50", "pretrained": False}},
                 "preprocessing": {"tokenizer": "./tokenizers/mine"}}}))
    monkeypatch.chdir(tmp_path)  # not the job file's folder: a path relative to here would not be found
    job = load_job_file(job_file)
    assert job.model.text.backbone == str(jobs / "models" / "bert-small")
    assert job.model.vision.backbone == "microsoft/resnet-50"  # a hub name stays a name
    assert job.preprocessing.tokenizer == str(jobs / "tokenizers" / "mine")  # named where it was looked for
    check_model_sources(job.model)
