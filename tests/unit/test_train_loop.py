"""The training loop as a user runs it (train_stage, one CPU process, a tiny model): every precision trains
and checkpoints its loss scale, a resume restores it, changed settings are handled, batches are prepared
ahead of the step, and statistics stay on the device between logging windows."""

import json
import threading
import warnings

import numpy as np
import pytest
import torch

from kubefusion import config as cfg
from kubefusion.errors import ArtifactError
from kubefusion.train import checkpoint as ckpt
from kubefusion.train import loop
from kubefusion.train.distributed import Runtime
from kubefusion.train.prefetch import BatchPreparer, available_cpus, preprocess_threads

CLASSES, FEATURES, BATCH, BATCHES = ["a", "b", "c"], 4, 4, 4


class TinyData:
    """The TrainingData interface over a few fixed synthetic batches (raw uint8 images, raw numbers)."""

    classes, numeric_columns, splits = CLASSES, [f"f{i}" for i in range(FEATURES)], {"train": None}

    def __init__(self, poison_first_numeric: float | None = None):
        self.poison = poison_first_numeric

    def batches_per_epoch(self, split="train"):
        return BATCHES

    def _batch(self, epoch, index):
        rng = np.random.default_rng(epoch * 100 + index)
        numeric = torch.from_numpy(rng.normal(size=(BATCH, FEATURES)).astype(np.float32))
        if self.poison is not None and epoch == 0 and index == 0:
            numeric[0, 0] = self.poison
        return {"image": torch.from_numpy(rng.integers(0, 255, (BATCH, 32, 32, 3), dtype=np.uint8)),
                "input_ids": torch.from_numpy(rng.integers(1000, 2000, (BATCH, 8))),  # < the 2000-token vocabulary
                "attention_mask": torch.ones(BATCH, 8, dtype=torch.long), "numeric": numeric,
                "label": torch.from_numpy(rng.integers(0, 3, BATCH)), "valid": torch.ones(BATCH, dtype=torch.bool),
                "modality_mask": torch.ones(BATCH, 3, dtype=torch.bool)}

    def batches(self, split, *, epoch=0, skip=0, limit=None):
        return (self._batch(epoch, i) for i in range(skip, BATCHES if limit is None else limit))


def to_pixels(image, numeric):
    return image.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, numeric


@pytest.fixture(scope="module", autouse=True)
def small_text_backbone(tmp_path_factory):
    """bert-tiny with a 2000-token vocabulary: the 30522-token embedding would dominate every step's time."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("bert-small-vocab")
    BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    TEXT_BACKBONE.append(str(folder))


TEXT_BACKBONE: list[str] = []


def tiny_job(precision, epochs=1, grad_accumulation=2):
    job = cfg.demo()
    job.model.text.backbone = TEXT_BACKBONE[-1]
    job.model.embed_dim = 16
    job.model.fusion = cfg.FusionConfig(type="gated", hidden=16, dropout=0.1, modality_dropout=0.2)
    job.training = cfg.TrainingConfig(epochs=epochs, batch_size_per_gpu=BATCH, precision=precision,
                                      grad_accumulation=grad_accumulation, checkpoint_every_steps=1,
                                      log_every_steps=2, grad_clip=1.0, baselines=False, learning_rate=1e-3)
    return job


def run_stage(output, precision, *, epochs=1, grad_accumulation=2, world_size=1, data=None, progress=None):
    session = loop.Session(progress=progress, job=tiny_job(precision, epochs, grad_accumulation),
                           runtime=Runtime(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"),
                                           backend=None),
                           data=data or TinyData(), prepare=BatchPreparer(to_pixels, torch.device("cpu")),
                           output=output, artifact_info={"content_key": "k", "classes": CLASSES,
                                                         "numeric_columns": TinyData.numeric_columns})
    return loop.train_stage(session, loop.Stage("fused", cfg.MODALITIES, 0))


def newest(output):
    return ckpt.load_latest_checkpoint(output / "checkpoints" / "fused")[0]


def step_losses(output):
    lines = (output / "logs" / "fused.steps.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines)}


@pytest.fixture
def spy(monkeypatch):
    """Records every gradient norm the loop clips and every unscale_."""
    seen = {"norms": [], "unscaled": 0}
    clip, unscale = torch.nn.utils.clip_grad_norm_, torch.amp.GradScaler.unscale_

    def recording_clip(params, max_norm):
        norm = clip(params, max_norm)
        seen["norms"].append(float(norm))
        return norm

    def recording_unscale(self, optimizer):
        seen["unscaled"] += 1
        return unscale(self, optimizer)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", recording_unscale)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_checkpoints_its_scaler_and_resumes(tmp_path, precision, spy):
    # fp16: the first batch overflows float16, so the scaler must skip that step and halve its scale.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_stage(tmp_path, precision, data=TinyData(poison_first_numeric=1e30 if precision == "fp16" else None))
    # the skipped step is the scaler's normal start, not a mistake worth a warning about the schedule
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    state = newest(tmp_path)
    assert state["step"] == 2 and state["precision"] == precision
    assert spy["unscaled"] == 2 and len(spy["norms"]) == 2  # unscale_ then clip, every optimizer step
    losses = step_losses(tmp_path)
    assert sorted(losses) == [1, 2] and np.isfinite(losses[2])
    if precision == "fp16":
        assert not np.isfinite(spy["norms"][0])  # the overflow really happened
        assert state["scaler"]["scale"] == 2.0**15 and state["scaler"]["_growth_tracker"] == 1
        assert spy["norms"][1] < 1e3  # clipped after unscaling, not at the 32768x scaled norm
    else:
        assert state["scaler"] == {}

    run_stage(tmp_path, precision, epochs=2)  # resumes at step 2 and trains the second epoch
    state = newest(tmp_path)
    assert state["step"] == 4 and sorted(step_losses(tmp_path)) == [1, 2, 3, 4]
    if precision == "fp16":  # restored (a fresh scaler would be back at 65536 with a tracker of 2)
        assert state["scaler"]["scale"] == 2.0**15 and state["scaler"]["_growth_tracker"] == 3


@pytest.mark.parametrize("before, after", [("fp32", "fp16"), ("fp16", "bf16")])
def test_resuming_with_another_precision_continues_from_the_weights(tmp_path, before, after, caplog):
    run_stage(tmp_path, before)
    with caplog.at_level("INFO"):
        run_stage(tmp_path, after, epochs=2)
    state = newest(tmp_path)
    assert state["step"] == 4 and state["precision"] == after
    assert f"written with precision {before}, this run uses {after}" in caplog.text
    if after == "fp16":
        assert state["scaler"]["scale"] == 2.0**16  # a fresh loss scale


@pytest.mark.parametrize("change, message", [
    ({"grad_accumulation": 1}, "spec.training.gradAccumulation 2 -> 1"),
    ({"world_size": 2}, r"processes \(world size\) 1 -> 2"),
])
def test_a_half_trained_stage_refuses_other_world_size_or_accumulation(tmp_path, change, message):
    run_stage(tmp_path, "fp32")
    with pytest.raises(ArtifactError, match=message) as caught:
        run_stage(tmp_path, "fp32", epochs=2, **change)
    assert "start the stage afresh" in str(caught.value)
    run_stage(tmp_path, "fp32", **change)  # a finished stage only evaluates: any layout may do that


def test_step_statistics_stay_on_the_device():
    # Any host sync (float(), int(), .item()) on a meta tensor raises: accumulation must not need one.
    meta = torch.device("meta")
    result = loop.StepResult.zeros(meta)
    logits = torch.empty(4, 3, device=meta)
    result.add(torch.empty((), device=meta), logits, torch.zeros(4, dtype=torch.long, device=meta),
               torch.ones(4, dtype=torch.bool, device=meta))
    assert result.totals.device == meta


def test_bf16_on_a_gpu_without_bfloat16_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(cfg.ConfigError, match=r"spec.training.precision: bf16 is not supported by this GPU "
                                              r"\(Tesla T4\); use fp16"):
        loop.precision_setup("bf16", torch.device("cuda"))


def test_batches_are_preprocessed_ahead_on_another_thread():
    prepared, ahead = [], threading.Event()

    def preprocess(image, numeric):
        prepared.append(threading.current_thread().name)
        if len(prepared) == 3:
            ahead.set()
        return to_pixels(image, numeric)

    data = TinyData()
    stream = BatchPreparer(preprocess, torch.device("cpu"), depth=2).stream(data.batches("train"))
    first = next(stream)
    assert ahead.wait(5)  # while the step holds batch 0, batches 1 and 2 are already being prepared
    rest = list(stream)
    assert len(rest) == BATCHES - 1 and set(prepared) == {"kubefusion-prefetch"}
    inline = BatchPreparer(to_pixels, torch.device("cpu"))(data._batch(0, 0))
    assert all(torch.equal(first[k], inline[k]) for k in inline)


def test_a_preprocessing_failure_reaches_the_training_step():
    def broken(image, numeric):
        raise ValueError("corrupt batch")

    stream = BatchPreparer(broken, torch.device("cpu")).stream(TinyData().batches("train"))
    with pytest.raises(ValueError, match="corrupt batch"):
        next(stream)


def test_preprocessing_threads_share_the_pod_cpus_among_its_ranks(tmp_path):
    assert preprocess_threads(16, 4) == 4 and preprocess_threads(2, 4) == 1 and preprocess_threads(8, 1) == 8
    (tmp_path / "cpu.max").write_text("200000 100000\n")  # limits.cpu: 2
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))


def test_resumed_tensorboard_curves_do_not_overlap(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kubefusion.train.recipe import tensorboard_writers

    first, _ = tensorboard_writers(tmp_path)
    writer = first("fused", 0)
    for step in range(1, 7):  # the run was killed at step 6, its checkpoint is at step 3
        writer.add_scalar("train/loss", 1.0, step)
    writer.close()
    resumed, _ = tensorboard_writers(tmp_path)
    writer = resumed("fused", 3)
    for step in range(4, 6):
        writer.add_scalar("train/loss", 2.0, step)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "fused"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0)]


class KilledAt(TinyData):
    """TinyData whose stream dies (as a killed process would) when it reaches one batch of one epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.kill = (epoch, batch)

    def batches(self, split, *, epoch=0, skip=0, limit=None):
        for index, batch in zip(range(skip, BATCHES if limit is None else limit),
                                super().batches(split, epoch=epoch, skip=skip, limit=limit)):
            if (epoch, index) == self.kill:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.slow  # two stage runs, about 20 s
def test_a_killed_run_keeps_its_tensorboard_curve_up_to_the_checkpoint_it_resumes_from(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kubefusion.train.recipe import tensorboard_writers

    def stage(data):
        job = tiny_job("fp32", epochs=3)
        job.training.log_every_steps = 1
        writer, writers = tensorboard_writers(tmp_path)
        session = loop.Session(job=job, runtime=Runtime(rank=0, local_rank=0, world_size=1,
                                                        device=torch.device("cpu"), backend=None),
                               data=data, prepare=BatchPreparer(to_pixels, torch.device("cpu")), output=tmp_path,
                               artifact_info={"content_key": "k", "classes": CLASSES,
                                              "numeric_columns": TinyData.numeric_columns}, tensorboard=writer)
        try:
            loop.train_stage(session, loop.Stage("fused", cfg.MODALITIES, 0))
        finally:
            killed.append(writers)  # like a killed process: never flushed or closed here

    def logged_steps():
        events = EventAccumulator(str(tmp_path / "tensorboard" / "fused"))
        events.Reload()
        return [e.step for e in events.Scalars("train/loss")] if "train/loss" in events.Tags()["scalars"] else []

    killed = []
    with pytest.raises(KeyboardInterrupt):  # dies in step 4 (epoch 2); the newest checkpoint is step 3
        stage(KilledAt(epoch=1, batch=2))
    assert newest(tmp_path)["step"] == 3
    assert logged_steps() == [1, 2, 3]
    stage(TinyData())
    for writer in killed[-1].values():
        writer.close()
    assert logged_steps() == [1, 2, 3, 4, 5, 6]
    assert sorted(step_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]


class RecordingProgress:
    def __init__(self):
        self.checkpoints = []
        self.tracker = type("Tracker", (), {"report": lambda self: {"summary": {}}})()

    def checkpoint(self, stage, step):
        self.checkpoints.append((stage, step))

    def __getattr__(self, name):  # the other events are not what this test is about
        return lambda *args, **kwargs: None


def test_checkpoints_are_written_beside_the_steps_and_each_is_reported(tmp_path, monkeypatch):
    writers, save = [], ckpt.save_checkpoint

    def recording_save(directory, state, *, keep):
        writers.append(threading.current_thread().name)
        return save(directory, state, keep=keep)

    monkeypatch.setattr(ckpt, "save_checkpoint", recording_save)
    progress = RecordingProgress()
    run_stage(tmp_path, "fp32", epochs=2, progress=progress)  # 2 steps per epoch, a checkpoint every step
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints" / "fused")] == [
        "step-000000004.pt", "step-000000003.pt", "step-000000002.pt"]  # on disk when train_stage returns
    assert progress.checkpoints == [("fused", 1), ("fused", 2), ("fused", 3), ("fused", 4)]
    assert len(writers) == 4 and all(name.startswith("kubefusion-checkpoint") for name in writers)


def test_the_model_file_holds_the_trained_weights_whether_trained_now_or_before(tmp_path, monkeypatch):
    writes, write = [], ckpt.write_model_file

    def recording_write(path, state):
        writes.append(threading.current_thread().name)
        return write(path, state)

    monkeypatch.setattr(ckpt, "write_model_file", recording_write)
    model = run_stage(tmp_path, "fp32")
    saved = ckpt.read_model_file(tmp_path)[0]
    assert saved["step"] == 2 and "optimizer" not in saved
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())
    assert len(writes) == 1 and writes[0].startswith("kubefusion-checkpoint")  # beside the last checkpoint

    (tmp_path / ckpt.MODEL_FILE).unlink()
    run_stage(tmp_path, "fp32")  # already trained: nothing to train, the model file is written again
    assert ckpt.read_model_file(tmp_path)[0]["step"] == 2 and len(writes) == 2
