"""Training pieces a user relies on: checkpoints that survive crashes, exact metrics, schedules, precision."""

import logging
import threading

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kubefusion import config as cfg
from kubefusion.errors import ArtifactError
from kubefusion.model import build_model
from kubefusion.train import checkpoint as ckpt
from kubefusion.train.evaluate import SplitStats
from kubefusion.train.loop import masked_cross_entropy
from kubefusion.train.optim import build_optimizer, freeze_backbones, warmup_cosine
from kubefusion.train.results import render_markdown, summarize


def payload(step):
    return {"model": {"w": torch.full((2,), float(step))}, "optimizer": {}, "scaler": {}, "scheduler": {},
            "step": step, "epoch": 0, "batch_in_epoch": step, "config": {"kind": "x"}, "model_info": {}}


def test_checkpoints_keep_the_newest_and_leave_no_temporary_files(tmp_path):
    for step in (5, 10, 15, 20):
        ckpt.save_checkpoint(tmp_path, payload(step), keep=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step-000000020.pt", "step-000000015.pt", "step-000000010.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    killed_writer = tmp_path / ".step-000000025.pt.x1y2.tmp"
    killed_writer.write_bytes(b"half a checkpoint")
    assert ckpt.remove_partial_writes(tmp_path) == [killed_writer] and not killed_writer.exists()
    state, path = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 20 and path.name == "step-000000020.pt"


def test_a_background_write_saves_the_state_as_it_was_when_submitted(tmp_path, monkeypatch):
    release, save = threading.Event(), ckpt.save_checkpoint

    def slow_disk(directory, state, *, keep):
        assert release.wait(10)
        return save(directory, state, keep=keep)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_disk)
    writer = ckpt.BackgroundWriter()
    state = payload(7)
    assert writer.submit(tmp_path, state, keep=3) is None
    state["model"]["w"].add_(100.0)  # training goes on while the checkpoint is being written
    assert writer.poll() is None and not ckpt.list_checkpoints(tmp_path)
    release.set()
    assert writer.close() == 7 and writer.poll() is None  # reported once
    saved, _ = ckpt.load_latest_checkpoint(tmp_path)
    assert saved["model"]["w"].tolist() == [7.0, 7.0]


def test_the_final_model_file_is_written_after_its_checkpoint_from_the_state_as_submitted(tmp_path, monkeypatch):
    release, write_model = threading.Event(), ckpt.write_model_file
    seen = []

    def slow_disk(path, state):
        assert release.wait(10)
        seen.append([p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")])
        return write_model(path, state)

    monkeypatch.setattr(ckpt, "write_model_file", slow_disk)
    writer = ckpt.BackgroundWriter()
    state = payload(9)
    writer.submit(tmp_path / "checkpoints", state, keep=3, model_file=tmp_path / "model.pt")
    state["model"]["w"].add_(100.0)
    release.set()
    assert writer.close() == 9
    assert seen == [["step-000000009.pt"]]  # the checkpoint was on disk before the model file was started
    model, _ = ckpt.read_model_file(tmp_path)
    assert model["model"]["w"].tolist() == [9.0, 9.0] and model["step"] == 9
    assert not {"optimizer", "scaler", "scheduler"} & set(model)


def test_checkpoints_load_and_leave_torchs_process_wide_save_settings_as_they_were(tmp_path):
    from torch.utils.serialization import config

    assert config.save.compute_crc32
    ckpt.save_checkpoint(tmp_path, payload(3), keep=3)
    ckpt.write_model_file(tmp_path / "model.pt", payload(3))
    assert config.save.compute_crc32  # another torch.save in the process still gets its CRC-32
    assert ckpt.read_model_file(tmp_path)[0]["model"]["w"].tolist() == [3.0, 3.0]
    assert ckpt.load_latest_checkpoint(tmp_path)[0]["step"] == 3


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path, monkeypatch):
    def full_disk(directory, state, *, keep):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk)
    writer = ckpt.BackgroundWriter()
    writer.submit(tmp_path, payload(1), keep=3)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(tmp_path, payload(2), keep=3)


def test_a_failing_stage_lets_the_pending_write_finish_and_keeps_its_own_error(tmp_path, monkeypatch, caplog):
    writer = ckpt.BackgroundWriter()
    writer.submit(tmp_path, payload(3), keep=3)
    writer.drain()  # what the loop does when a step raises
    assert ckpt.load_latest_checkpoint(tmp_path)[0]["step"] == 3

    def full_disk(directory, state, *, keep):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk)
    writer = ckpt.BackgroundWriter()
    writer.submit(tmp_path, payload(4), keep=3)
    with caplog.at_level(logging.WARNING):
        writer.drain()  # does not replace the training error with the write's
    assert "was not written" in caplog.text and "No space left" in caplog.text


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog):
    for step in (10, 20):
        ckpt.save_checkpoint(tmp_path, payload(step), keep=3)
    newest = ckpt.checkpoint_path(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[:100])  # a disk that lost the tail
    with caplog.at_level(logging.WARNING):
        state, path = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 10
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"warning: skipping corrupt checkpoint {newest} (not a readable checkpoint")
    assert warning.count(str(newest)) == 1 and "\n" not in warning


def test_no_checkpoint_means_a_fresh_start_and_a_missing_model_is_named(tmp_path):
    assert ckpt.load_latest_checkpoint(tmp_path / "none") is None
    with pytest.raises(ArtifactError, match="no model.pt"):
        ckpt.read_model_file(tmp_path)


def test_split_metrics_match_scikit_learn_and_ignore_padding():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 6, 300))
    logits = torch.from_numpy(rng.normal(size=(300, 6))).float()
    logits[torch.arange(300), labels] += 1.0
    stats = SplitStats.empty(6)
    stats.add(logits[:150], labels[:150])
    stats.add(logits[150:], labels[150:])
    s = stats.summary()
    predictions = logits.argmax(1).numpy()
    assert s["samples"] == 300
    assert s["top1"] == pytest.approx((predictions == labels.numpy()).mean())
    assert s["macro_f1"] == pytest.approx(f1_score(labels.numpy(), predictions, average="macro"))
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean()
    assert s["top5"] == pytest.approx(float(top5))
    assert SplitStats.empty(3).summary()["top1"] is None
    few = SplitStats.empty(3)
    few.add(logits[:10, :3], labels[:10] % 3)
    assert few.summary()["top5"] is None  # below 5 classes top-5 means nothing


def test_padding_rows_do_not_change_the_loss():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, -1])
    valid = torch.tensor([True, True, True, False])
    assert masked_cross_entropy(logits, labels, valid) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[:3], labels[:3])))


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5, abs=0.01)
    assert factor(100) == pytest.approx(0.0, abs=1e-9)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


def small_model(spec=None):
    spec = spec or cfg.demo().model
    return build_model(spec, num_classes=3, num_numeric_features=4)


def test_pretrained_encoders_train_slower_and_frozen_ones_not_at_all():
    spec = cfg.demo().model
    spec.text.pretrained = True
    spec.text.backbone = "builtin:minilm"
    spec.vision.freeze = True
    model = small_model(spec)
    freeze_backbones(model, spec)
    training = cfg.TrainingConfig(learning_rate=1e-3, encoder_lr_multiplier=0.1)
    optimizer = build_optimizer(model, spec, training)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    text_param = next(model.encoders["text"].backbone.parameters())
    assert lr_of[id(text_param)] == pytest.approx(1e-4)
    assert lr_of[id(model.head[1].weight)] == pytest.approx(1e-3)
    assert not any(id(p) in lr_of for p in model.encoders["image"].backbone.parameters())


def test_results_table_answers_whether_fusion_helps():
    results = {"job": "demo", "fusion_type": "gated",
               "fused": {"validation": {"top1": 0.95}, "test": {"top1": 0.96, "top5": 1.0, "macro_f1": 0.96,
                                                                   "loss": 0.2}, "ood": {"top1": 0.9}},
               "ablation": {"without_image": {"test": {"top1": 0.48}}},
               "baselines": {m: {"test": {"top1": t}, "ood": {"top1": t - 0.01}}
                             for m, t in (("image", 0.24), ("text", 0.25), ("numeric", 0.245))},
               "best_achievable": {"top1": 0.97375}}
    results["summary"] = summarize(results)
    assert results["summary"]["best_single_modality_test"] == "text"
    assert results["summary"]["fusion_gain_test_points"] == pytest.approx(71.0)
    assert results["summary"]["gap_to_best_achievable_test_points"] == pytest.approx(1.38)
    table = render_markdown(results)
    assert "| **fused** (gated" in table and "| 96.00 |" in table
    assert "image masked" in table and "text only" in table and "97.38" in table
    assert "+71.00 points" in table


def test_ranks_with_different_preprocessing_artifacts_refuse_to_train(monkeypatch):
    from kubefusion.train import recipe

    monkeypatch.setattr(recipe, "all_gather_object", lambda key: ["aaa", key])
    with pytest.raises(ArtifactError, match="rank 0: aaa, rank 1: bbb"):
        recipe.check_same_artifact("bbb", rank=1)
    monkeypatch.setattr(recipe, "all_gather_object", lambda key: [key, key])
    recipe.check_same_artifact("bbb", rank=1)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    from kubefusion.train.loop import _check_compatible

    info = {"content_key": "k", "classes": ["a", "b"], "modalities": ["image"], "model_spec": {},
            "num_numeric_features": 3}
    _check_compatible(tmp_path / "c.pt", {"model_info": dict(info)}, info)
    with pytest.raises(ArtifactError, match=r'another configuration \(classes \["a", "c"\] -> \["a", "b"\]\)'):
        _check_compatible(tmp_path / "c.pt", {"model_info": {**info, "classes": ["a", "c"]}}, info)
    spec = {**info, "model_spec": {"fusion": {"type": "gated", "hidden": 8}}}
    with pytest.raises(ArtifactError, match=r"model spec.fusion.type \"gated\" -> \"concat\"\)"):
        _check_compatible(tmp_path / "c.pt", {"model_info": spec},
                          {**info, "model_spec": {"fusion": {"type": "concat", "hidden": 8}}})


def test_a_checkpoint_of_another_training_configuration_names_the_fields(tmp_path):
    from kubefusion.train import runfolder
    from kubefusion.train.loop import _check_compatible

    job = cfg.demo()
    before = runfolder.record(job, {runfolder.DATA_FILES: "a" * 64, runfolder.ARTIFACT: "k1"})
    job.training.learning_rate, job.training.epochs = 5e-3, 4
    after = runfolder.record(job, {runfolder.DATA_FILES: "a" * 64, runfolder.ARTIFACT: "k1"})
    info = {"content_key": "k1", "classes": ["a"], "modalities": ["image"], "model_spec": {},
            "num_numeric_features": 3}
    with pytest.raises(ArtifactError, match=r"\(spec.training.epochs 3 -> 4; spec.training.learningRate 0.002 -> "
                                            r"0.005\)"):
        _check_compatible(tmp_path / "c.pt", {"model_info": {**info, "run": before}}, {**info, "run": after})


def test_without_an_ood_split_the_table_says_why_its_column_is_empty():
    results = {"job": "mine", "fusion_type": "concat", "sizes": {"train": 80, "validation": 10, "test": 10},
               "fused": {"validation": {"top1": 0.9}, "test": {"top1": 0.9}},
               "configuration": {"fingerprint": "0123456789abcdef"}}
    table = render_markdown(results)
    assert "| 90.00 | 90.00 | – | – | – | – |" in table
    assert "No out-of-distribution split (hence the empty OOD column)" in table
    assert "spec.data.oodPath" in table and "Training configuration 0123456789abcdef" in table
    with_ood = render_markdown({**results, "sizes": {**results["sizes"], "ood": 5}})
    assert "No out-of-distribution split" not in with_ood
