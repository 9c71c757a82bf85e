"""A dataset root given as a URI (`spec.data.path: gs://...`) works end to end: validate, content key,
preprocess, train with the OOD split and `dataset.json`, all read through tf.io.gfile.

Two schemes TensorFlow serves without a network stand in for an object store: `ram://` (TF's in-memory file
system, visible only inside this process: in-process checks) and `file://` (visible to the subprocesses of
`kubefusion run --local`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubefusion import cli
from kubefusion.config import DataConfig, job_from_dict
from kubefusion.data import scan
from kubefusion.errors import DataError
from kubefusion.preprocess import artifact
from kubefusion.preprocess.export import expected_content_key


def copy_into_ram(local: Path, uri: str) -> str:
    """Copy a local folder into TF's in-memory file system, as an upload to a bucket would."""
    import tensorflow as tf

    for path in sorted(local.rglob("*")):
        target = f"{uri}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(target)
        else:
            with tf.io.gfile.GFile(target, "wb") as fh:
                fh.write(path.read_bytes())
    return uri


@pytest.fixture
def ram_dataset(tmp_path, id_dataset):
    """(local folder, the same files under ram://) with an OOD folder and a hidden file beside the data."""
    local = id_dataset(12, name="data")
    id_dataset(6, seed=1, name="data/ood")
    (local / ".cache").write_text("editor state")
    return local, copy_into_ram(local, f"ram://{tmp_path.name}/products")


def test_scan_reads_a_uri_root_like_the_local_folder(ram_dataset):
    local, uri = ram_dataset
    from_uri, from_disk = scan(DataConfig(), uri), scan(DataConfig(), local)
    assert [r.id for r in from_uri.records] == [r.id for r in from_disk.records]
    assert from_uri.classes == from_disk.classes and from_uri.records[0].image_path.startswith(uri + "/images/")


def test_the_content_key_of_a_uri_hashes_its_files_like_a_local_folder(ram_dataset):
    local, uri = ram_dataset
    remote = artifact.data_fingerprint(uri)
    assert remote == artifact.data_fingerprint(local)  # same files, same key, wherever they live
    assert remote["files"] == 14  # 12 images + 2 CSVs: ood/ and the hidden file are not part of it

    import tensorflow as tf

    with tf.io.gfile.GFile(f"{uri}/text.csv", "ab") as fh:
        fh.write(b"r999,one more,c0\n")
    changed = artifact.data_fingerprint(uri)
    assert changed["sha256"] != remote["sha256"] and changed["files"] == remote["files"]
    with tf.io.gfile.GFile(f"{uri}/ood/text.csv", "ab") as fh:
        fh.write(b"r998,ood row,c1\n")
    assert artifact.data_fingerprint(uri) == changed


def test_a_job_with_a_uri_root_gets_its_content_key_without_a_local_copy(ram_dataset, tmp_path):
    local, uri = ram_dataset
    doc = {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "uri"},
           "spec": {"data": {"path": uri}, "preprocessing": {"tokenizer": "builtin:minilm"}}}
    job = job_from_dict(doc, base_dir=tmp_path)
    assert job.ood_dir == f"{uri}/ood"
    key = expected_content_key(job, tmp_path / "artifacts")
    assert key == expected_content_key(job, tmp_path / "artifacts", data_root=local)


def test_the_ood_folder_of_a_uri_root_is_found_through_gfile(tmp_path):
    (tmp_path / "ood").mkdir()
    doc = {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "uri"}}
    assert job_from_dict({**doc, "spec": {"data": {"path": f"file://{tmp_path}"}}}).ood_dir == f"file://{tmp_path}/ood"
    assert job_from_dict({**doc, "spec": {"data": {"path": f"file://{tmp_path}/ood"}}}).ood_dir is None


def test_a_missing_uri_root_is_one_data_error(tmp_path):
    with pytest.raises(DataError, match=f"ram://{tmp_path.name}/nothing: no such dataset folder"):
        artifact.data_fingerprint(f"ram://{tmp_path.name}/nothing")


def test_a_scheme_this_tensorflow_does_not_serve_is_one_data_error_not_a_traceback(capsys):
    # tensorflow-cpu registers no s3:// file system (tensorflow-io would): the message names the path and why.
    with pytest.raises(DataError, match=r"s3://bucket/x: cannot read: File system scheme 's3' not implemented"):
        artifact.data_fingerprint("s3://bucket/x")
    assert cli.main(["data", "validate", "s3://bucket/x"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: s3://bucket/x") and "'s3' not implemented" in error and "\n" not in error


def test_data_validate_reads_a_uri_and_its_ood_folder(ram_dataset, capsys):
    _, uri = ram_dataset
    assert cli.main(["data", "validate", uri, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["joined"] == 12 and report["ood"]["joined"] == 6
    assert report["root"] == uri and report["ood"]["root"] == f"{uri}/ood"


@pytest.mark.slow
def test_preprocess_and_train_from_a_file_uri(tmp_path):
    """`kubefusion run --local` on a job whose data is a `file://` URI: preprocessing keys and scans it, the
    trainer reads the splits, the OOD folder and dataset.json through gfile."""
    from kubefusion.data.synth import ensure_demo_data

    data = ensure_demo_data(tmp_path / "bucket" / "demo", 240, 0)
    uri = f"file://{data}"
    doc = {
        "apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "uri-data"},
        "spec": {
            "data": {"path": uri, "validationFraction": 0.15, "testFraction": 0.15},
            "preprocessing": {"imageSize": 32, "tokenizer": "builtin:minilm", "maxTokens": 16},
            "model": {"vision": {"backbone": "builtin:resnet-tiny", "pretrained": False},
                      "text": {"backbone": "builtin:bert-tiny", "pretrained": False, "pooling": "mean"},
                      "numeric": {"hidden": [16]}, "fusion": {"type": "concat", "hidden": 32}, "embedDim": 16},
            "training": {"epochs": 1, "batchSizePerGPU": 32, "maxStepsPerEpoch": 2, "precision": "fp32",
                         "baselines": False},
            "resources": {"gpusPerNode": 1},
            "monitoring": {"metricsPort": 0},
        },
    }
    job_file = tmp_path / "jobs" / "job.yaml"
    job_file.parent.mkdir()
    job_file.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

    def kubefusion(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kubefusion", *args], env=env, capture_output=True, text=True,
                              timeout=400)

    validated = kubefusion("data", "validate", uri, "--json")
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert json.loads(validated.stdout)["ood"]["root"] == f"{uri}/ood"

    out = tmp_path / "run"
    done = kubefusion("run", str(job_file), "--local", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"data: {uri}" in done.stdout
    assert not (out / "data").exists()  # read in place, never copied or synthesised

    manifest = json.loads((out / "artifacts" / "latest.json").read_text())
    manifest = json.loads((out / "artifacts" / manifest["path"] / "manifest.json").read_text())
    assert manifest["key_material"]["data"] == artifact.data_fingerprint(data)
    assert manifest["scan"]["root"] == uri

    results = json.loads((out / "results.json").read_text())
    assert results["sizes"]["ood"] > 0 and 0.0 <= results["fused"]["ood"]["top1"] <= 1.0
    assert results["best_achievable"]["top1"] > 0.9  # from the dataset's own dataset.json, read through gfile
