"""A shared ARTIFACTS volume: each job trains on the artifact its own preprocessing produced."""

import pytest
import yaml

from kubefusion.cli import main
from kubefusion.preprocess import artifact


def test_each_job_keeps_its_own_pointer_when_another_job_exports(tmp_path):
    artifact.write_pointer(tmp_path, "aaaa", job=("team-a", "products"))
    artifact.write_pointer(tmp_path, "bbbb", job=("team-b", "reviews"))  # moves latest.json
    assert artifact.job_content_key(tmp_path, "team-a", "products") == "aaaa"
    assert artifact.job_content_key(tmp_path, "team-b", "reviews") == "bbbb"
    assert artifact.job_content_key(tmp_path, "team-a", "never-ran") is None


def test_an_unreadable_job_pointer_says_what_to_do(tmp_path):
    path = artifact.job_pointer_path(tmp_path, "ns", "job")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(artifact.ArtifactError, match="rerun `kubefusion preprocess`"):
        artifact.job_content_key(tmp_path, "ns", "job")


def test_preprocess_fails_fast_on_a_missing_pretrained_backbone(tmp_path, capsys):
    job = {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": "x"},
           "spec": {"model": {"vision": {"backbone": str(tmp_path / "no-such-resnet"), "pretrained": True}}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code = main(["preprocess", "--config", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "artifacts")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no-such-resnet" in err and "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()  # refused before the data scan and the export
