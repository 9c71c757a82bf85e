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

