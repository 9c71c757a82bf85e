"""A run folder belongs to one training configuration: a rerun with a changed job is refused, naming what
changed and the two ways out; settings that do not change the model never block a resume; --restart starts over
without touching the data; a folder that is not a run's is never written into."""

import json

import pytest

from kubefusion import config as cfg
from kubefusion.train import runfolder
from kubefusion.train.recipe import claim_run_folder
from kubefusion.train.runfolder import RunFolderError, claim

DATA = {runfolder.DATA_FILES: "a" * 64, runfolder.ARTIFACT: "key1"}


def trained(folder, job=None):
    """A folder as a finished run leaves it."""
    claim(folder, job or cfg.demo(), data=DATA)
    for name in ("checkpoints/fused", "baselines", "tensorboard/fused", "onnx", "data", "artifacts/key1", "logs"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "results.json", "results.md", "status.json", "checkpoints/fused/step-000000010.pt",
                 "logs/fused.steps.jsonl", "logs/torchrun.log", "data/text.csv"):
        (folder / name).write_text("x")
    return folder


def test_the_same_job_resumes_and_the_record_names_the_configuration(tmp_path):
    run = trained(tmp_path / "run")
    again = claim(run, cfg.demo())  # `kubefusion run`, before preprocessing: the spec part
    assert again == claim(run, cfg.demo(), data=DATA)  # `kubefusion train` after a pod restart
    assert again["configuration"]["spec.training.learningRate"] == 0.002
    assert again["configuration"]["spec.training.epochs"] == 3
    assert again["data"] == DATA and len(again["fingerprint"]) == 16
    assert json.loads((run / runfolder.RUN_FILE).read_text()) == again


def test_a_changed_configuration_is_refused_naming_the_fields_and_the_ways_out(tmp_path):
    run = trained(tmp_path / "run")
    job = cfg.demo()
    job.training.learning_rate, job.training.epochs = 5e-3, 4
    with pytest.raises(RunFolderError) as refused:
        claim(run, job)
    message = str(refused.value)
    assert f"--output {run} was trained with another configuration (spec.training.epochs 3 -> 4; " \
           "spec.training.learningRate 0.002 -> 0.005)" in message
    assert "Give a new --output" in message and "--restart" in message
    assert (run / "model.pt").exists() and json.loads((run / "run.json").read_text())["configuration"][
        "spec.training.epochs"] == 3


def test_changed_data_is_refused_naming_it(tmp_path):
    run = trained(tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"\(data files \(sha256\) aaaaaaaaaaaa -> bbbbbbbbbbbb\)"):
        claim(run, cfg.demo(), data={**DATA, runfolder.DATA_FILES: "b" * 64})


@pytest.mark.parametrize("change", [
    lambda j: setattr(j.monitoring, "metrics_port", 0),
    lambda j: setattr(j.training, "checkpoint_every_steps", 7),
    lambda j: setattr(j.training, "log_every_steps", 1),
    lambda j: setattr(j.training, "keep_checkpoints", 9),
    lambda j: setattr(j.training, "baselines", False),
    lambda j: setattr(j.training, "precision", "bf16"),
    lambda j: setattr(j.resources, "gpus_per_node", 1),
    lambda j: setattr(j.preprocessing, "backend", "tf"),
    lambda j: setattr(j.data, "ood_path", "elsewhere/ood"),
    lambda j: setattr(j.training, "export_onnx", False),
    lambda j: setattr(j, "scheduling", {"queue": "team-b"}),
], ids=["metricsPort", "checkpointEverySteps", "logEverySteps", "keepCheckpoints", "baselines", "precision",
        "gpusPerNode", "backend", "oodPath", "exportOnnx", "scheduling"])
def test_settings_that_do_not_change_the_model_do_not_block_a_resume(tmp_path, change):
    run = trained(tmp_path / "run")
    job = cfg.demo()
    change(job)
    claim(run, job, data=DATA)


def test_restart_discards_the_run_and_keeps_data_artifacts_and_logs(tmp_path):
    run = trained(tmp_path / "run")
    job = cfg.demo()
    job.training.learning_rate = 5e-3
    record = claim(run, job, restart=True)
    assert record["configuration"]["spec.training.learningRate"] == 0.005 and record["data"] is None
    for gone in ("model.pt", "results.json", "results.md", "status.json", "onnx", "checkpoints", "baselines",
                 "tensorboard",
                 "logs/fused.steps.jsonl"):
        assert not (run / gone).exists(), gone
    for kept in ("data/text.csv", "artifacts/key1", "logs/torchrun.log"):
        assert (run / kept).exists(), kept
    assert not list(run.glob(".discarded-*"))


def test_a_folder_that_is_not_a_run_is_never_written_into(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_text("x")
    for restart in (False, True):
        with pytest.raises(RunFolderError, match=r"is not empty and is not a kubefusion run folder \(it holds "
                                                 r"holiday.jpg\); give an empty or new folder"):
            claim(folder, cfg.demo(), restart=restart)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_a_fresh_volume_and_kubefusion_runs_own_first_steps_are_fine(tmp_path):
    volume = tmp_path / "checkpoints"
    (volume / "lost+found").mkdir(parents=True)
    (volume / "data").mkdir()
    (volume / ".hidden").write_text("")
    assert claim(volume, cfg.demo())["configuration"]


def test_a_run_without_its_record_is_not_resumed_blindly(tmp_path):
    run = trained(tmp_path / "run")
    (run / runfolder.RUN_FILE).unlink()
    with pytest.raises(RunFolderError, match=r"holds a run \(checkpoints, baselines, tensorboard, onnx, model.pt, "
                                             r"results.json, results.md, status.json\) without run.json"):
        claim(run, cfg.demo())
    claim(run, cfg.demo(), restart=True)
    assert not (run / "model.pt").exists()


def test_torchrun_train_refuses_on_every_rank_and_names_the_cluster_way_out(tmp_path, monkeypatch):
    run = trained(tmp_path / "checkpoints")
    manifest = {"content_key": "key1", "key_material": {"data": {"sha256": "a" * 64}}}
    assert claim_run_folder(cfg.demo(), run, manifest, is_main=True, restart=False)["data"] == DATA
    job = cfg.demo()
    job.model.fusion.hidden = 256
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(RunFolderError, match=r"spec.model.fusion.hidden 128 -> 256\).*On a cluster: give this job "
                                             r"a checkpoints volume of its own \(spec.storage.checkpoints\)"):
        claim_run_folder(job, run, manifest, is_main=True, restart=False)


def test_line_endings_and_a_byte_order_mark_are_not_other_data(tmp_path):
    from kubefusion.preprocess import artifact

    rows = ["id,text,label", "a,\"two\r\nlines\",x", "b,plain,y", ""]
    lf, crlf = tmp_path / "lf", tmp_path / "crlf"
    for folder, ending, bom in ((lf, "\n", b""), (crlf, "\r\n", artifact.UTF8_BOM)):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "a.png").write_bytes(b"\x89PNG\r\n")  # not a CSV: its bytes count as they are
        (folder / "text.csv").write_bytes(bom + ending.join(rows).encode())
    assert artifact.data_fingerprint(lf) == artifact.data_fingerprint(crlf)
    # ... and so is the preprocessing made from it: the same content key, no "different content key" refusal
    from kubefusion.preprocess.export import expected_content_key

    assert expected_content_key(cfg.demo(), tmp_path / "a", data_root=lf) == \
        expected_content_key(cfg.demo(), tmp_path / "b", data_root=crlf)
    (crlf / "text.csv").write_bytes(b"id,text,label\r\na,other,x\r\n")
    assert artifact.data_fingerprint(lf)["sha256"] != artifact.data_fingerprint(crlf)["sha256"]
    # a CRLF split across two reads is still one line ending
    assert artifact.digest_chunks([b"\xef\xbb", b"\xbfa\r", b"\nb\r\n"], csv=True)[0] == \
        artifact.digest_chunks([b"a\nb\n"], csv=True)[0]
