"""The training loop: one model (the fused one, or a single-modality baseline) from start or checkpoint to end.

How it is launched (``kubefusion train`` does the whole recipe around this loop)::

    # one machine, 4 GPUs (NCCL) or 4 CPU processes (gloo):
    torchrun --standalone --nproc-per-node 4 -m kubefusion train \\
        --config job.yaml --artifacts ARTIFACTS --output OUT
    # on a cluster the Kubeflow PyTorchJob sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_*:
    torchrun -m kubefusion train --config /etc/kubefusion/job.yaml --artifacts /artifacts --output /checkpoints
    # a single process, no torchrun at all:
    kubefusion train --config job.yaml --artifacts ARTIFACTS --output OUT

What one optimizer step does: ``grad_accumulation`` micro-batches, each run under autocast (bf16, fp16 with a
GradScaler, or plain fp32); gradients are all-reduced by DDP on the last micro-batch only (``no_sync`` on the
others); the scaled gradients are unscaled, clipped, and AdamW steps with the warm-up + cosine schedule.

Reproducibility: model init is seeded from ``(seed, stage)``; dropout and modality dropout are reseeded from
``(seed, stage, rank, step)`` before every step, and the data order comes from ``(seed, epoch)``, so a run that
resumes from a checkpoint (position = epoch + batches consumed) continues with exactly the losses an
uninterrupted run would have had (CPU, ``deterministic: true``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from kubefusion.config import ConfigError, JobConfig, job_to_dict
from kubefusion.errors import ArtifactError
from kubefusion.model import MultimodalClassifier, build_model
from kubefusion.train import checkpoint as ckpt
from kubefusion.train.data import TrainingData
from kubefusion.train.distributed import (Runtime, all_reduce_sum, barrier, broadcast_object, distributed,
                                         sync_buffers)
from kubefusion.train.evaluate import evaluate
from kubefusion.train.optim import build_optimizer, build_scheduler, freeze_backbones, warmup_frozen_encoders
from kubefusion.train.prefetch import BatchPreparer
from kubefusion.train.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One model the recipe trains: ``fused`` (all modalities) or ``baseline-<modality>``."""

    name: str
    modalities: tuple[str, ...]
    index: int
    """Position in the recipe; part of every seed, so baselines do not share the fused model's init."""


@dataclass
class Session:
    """What every stage of one ``kubefusion train`` run shares."""

    job: JobConfig
    runtime: Runtime
    data: TrainingData
    prepare: BatchPreparer
    """Data batches -> model inputs on the device (applies the exported preprocessing, a batch or two ahead)."""
    output: Path
    artifact_info: dict[str, Any]
    """``content_key``, ``classes``, ``numeric_columns``: stored with every checkpoint."""
    metrics: Any = None
    tensorboard: Callable[[str, int], Any] | None = None
    """(stage name, first step) -> a SummaryWriter that drops events after that step (rank 0 only)."""
    progress: Progress | None = None
    """Rank 0's live progress (status.json, the operator's endpoint); None on the other ranks."""


# ------------------------------------------------------------------------------------- precision, seeds



@contextlib.contextmanager
def _scheduler_after_a_skipped_step() -> Any:
    """fp16's GradScaler skips the optimizer step of a batch whose gradients overflow (the first ones, while it
    finds its scale), and PyTorch then warns that the schedule stepped before the optimizer. The schedule is
    meant to follow the step count that checkpoints and resume use, skipped steps included; asking the scaler
    whether it skipped would cost a device sync on every step. So that one warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                                  r"`optimizer\.step\(\)`", category=UserWarning)
        yield


def precision_setup(precision: str, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler]:
    """The autocast context factory and the GradScaler for ``spec.training.precision``.

    bf16: autocast to bfloat16, no scaler (same exponent range as fp32). fp16: autocast to float16 with a
    GradScaler; on CPU too (torch's CPU autocast supports float16 and ``GradScaler("cpu")`` exists).
    fp32: neither. bf16 on a GPU without bfloat16 support (V100, T4) is refused, not silently emulated."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"spec.training.precision: bf16 is not supported by this GPU "
                          f"({torch.cuda.get_device_name(device)}); use fp16 (or fp32)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def step_seed(seed: int, stage: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + rank * 101 + step) % (2**63)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean loss over the valid rows; padding rows (``valid`` false) contribute nothing."""
    per_sample = F.cross_entropy(logits.float(), labels.where(valid, 0), reduction="none")
    return (per_sample * valid).sum() / valid.sum().clamp(min=1)


def unimodal_loss(unimodal_logits: torch.Tensor, in_data: torch.Tensor, labels: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """Mean over modalities of each unimodal head's loss on the rows where that modality is in the data."""
    losses = [masked_cross_entropy(unimodal_logits[:, i], labels, valid & in_data[:, i])
              for i in range(unimodal_logits.shape[1])]
    return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------ the stage


def stage_model_path(output: Path, stage: Stage) -> Path:
    """Where the trained model of a stage goes: ``model.pt`` for the fused one (what export reads)."""
    return output / ckpt.MODEL_FILE if stage.name == "fused" else output / "baselines" / f"{stage.name}.pt"


def stage_steps(data: TrainingData, training: Any) -> tuple[int, int, int]:
    """(batches per epoch, optimizer steps per epoch, optimizer steps in all) of one stage; every stage trains
    on the same data with the same recipe, so all have the same."""
    batches_per_epoch = data.batches_per_epoch("train")
    if training.max_steps_per_epoch is not None:
        batches_per_epoch = min(batches_per_epoch, training.max_steps_per_epoch * training.grad_accumulation)
    steps_per_epoch = math.ceil(batches_per_epoch / training.grad_accumulation)
    return batches_per_epoch, steps_per_epoch, training.epochs * steps_per_epoch


def train_stage(session: Session, stage: Stage) -> MultimodalClassifier:
    job, rt, data, training = session.job, session.runtime, session.data, session.job.training
    checkpoints = session.output / "checkpoints" / stage.name

    # ---- model, optimizer, schedule, precision: everything set up here, once ---------------------------
    torch.manual_seed(step_seed(training.seed, stage.index, 0, 0))
    model = build_model(job.model, num_classes=len(data.classes), num_numeric_features=len(data.numeric_columns),
                        modalities=stage.modalities)
    freeze_backbones(model, job.model)
    model.to(rt.device)
    # Built before the warm-up freezes anything, so the held-back backbones are in it from the start; AdamW
    # skips a parameter until it has a gradient.
    optimizer = build_optimizer(model, job.model, training)
    held_back = warmup_frozen_encoders(model, job.model, training)
    unimodal_weight = job.model.fusion.unimodal_loss_weight if model.unimodal_heads is not None else 0.0
    batches_per_epoch, _, total_steps = stage_steps(data, training)
    scheduler = build_scheduler(optimizer, total_steps, training)
    autocast, scaler = precision_setup(training.precision, rt.device)
    model_info = {**model.describe(), **session.artifact_info, "stage": stage.name}
    # What the data position and the schedule of a checkpoint mean; a half-trained stage needs the same.
    layout = {"world_size": rt.world_size, "batch_size_per_gpu": training.batch_size_per_gpu,
              "grad_accumulation": training.grad_accumulation}

    # ---- resume from the newest valid checkpoint, if any --------------------------------------------------
    step, epoch, batch_in_epoch = 0, 0, 0
    if rt.is_main:
        ckpt.remove_partial_writes(checkpoints)
    chosen = broadcast_object(_newest_valid(checkpoints) if rt.is_main else None)
    if chosen is not None:
        state = ckpt.read_checkpoint(Path(chosen))
        _check_compatible(Path(chosen), state, model_info)
        finished = state["epoch"] >= training.epochs
        if not finished:
            _check_same_layout(Path(chosen), state, layout, checkpoints)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _load_scaler(scaler, state, training.precision, Path(chosen), rt.is_main)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if rt.is_main and epoch >= training.epochs:
            log.info("[%s] already trained (%s, step %d of %d): evaluating only", stage.name, chosen, step,
                     total_steps)
        elif rt.is_main:
            log.info("[%s] resuming from %s (step %d of %d, epoch %d, batch %d)", stage.name, chosen, step,
                     total_steps, epoch + 1, batch_in_epoch)

    def wrap_for_epoch(epoch: int):
        """The model as this epoch trains it: backbones held back during the frozen warm-up, and a DDP wrapper
        made afresh when that changes (DDP only syncs the parameters that required gradients when it was made)."""
        frozen = epoch < training.frozen_backbone_epochs
        for encoder in held_back:
            encoder.freeze_backbone() if frozen else encoder.unfreeze_backbone()
        if held_back and rt.is_main and epoch == training.frozen_backbone_epochs and epoch > 0:
            log.info("[%s] epoch %d: pretrained backbones unfrozen after the warm-up", stage.name, epoch + 1)
        if not distributed():
            return model
        return DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)

    ddp = wrap_for_epoch(epoch)
    wrapped_frozen = epoch < training.frozen_backbone_epochs

    def snapshot(next_epoch: int, next_batch: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": next_epoch,
                "batch_in_epoch": next_batch, "config": job_to_dict(job), "model_info": model_info,
                "precision": training.precision, **layout,
                "samples_in_epoch": next_batch * training.batch_size_per_gpu * rt.world_size}

    # Rank 0 writes checkpoints on a background thread: the steps go on while one is serialised and synced.
    writer = ckpt.BackgroundWriter() if rt.is_main else None

    model_file = stage_model_path(session.output, stage)
    model_file_submitted = False

    def save(next_epoch: int, next_batch: int) -> None:
        nonlocal model_file_submitted
        report.flush(to_disk=True)  # every step logged so far is on disk before the checkpoint that resumes after it
        if writer is not None:
            # The last epoch's checkpoint holds the trained model: the model file is written from the same
            # host copy, after it, on the writer's thread (overlapping the validation below).
            last = next_epoch >= training.epochs
            report.checkpointed(writer.submit(checkpoints, snapshot(next_epoch, next_batch),
                                              keep=training.keep_checkpoints,
                                              model_file=model_file if last else None))
            model_file_submitted = last
        barrier()

    def optimizer_step(stream, micro_batches: int) -> StepResult:
        """Forward/backward over ``micro_batches`` batches (DDP syncs gradients on the last one only), then
        unscale, clip and step."""
        result = StepResult.zeros(rt.device)
        for micro in range(micro_batches):
            waited = time.perf_counter()
            inputs = next(stream)  # prepared ahead on the prefetch thread; blocking here is the data wait
            result.data_wait += time.perf_counter() - waited
            labels, valid = inputs.pop("label"), inputs.pop("valid")
            last = micro == micro_batches - 1
            with contextlib.nullcontext() if last or ddp is model else ddp.no_sync():
                with autocast():
                    if unimodal_weight:
                        logits, unimodal_logits, in_data = ddp(**inputs, return_unimodal=True)
                    else:
                        logits = ddp(**inputs)
                loss = masked_cross_entropy(logits, labels, valid)
                if unimodal_weight:
                    loss = loss + unimodal_weight * unimodal_loss(unimodal_logits, in_data, labels, valid)
                loss = loss / micro_batches
                scaler.scale(loss).backward()
            result.add(loss.detach(), logits.detach(), labels, valid)  # stays on the device: no sync
        if training.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with _scheduler_after_a_skipped_step() if scaler.is_enabled() else contextlib.nullcontext():
            scheduler.step()
        return result

    # ---- rank-0 reporting ------------------------------------------------------------------------------
    report = _Reporter(session, stage, total_steps, step, epoch)

    # ---- the loop ---------------------------------------------------------------------------------------
    model.train()
    try:
        while epoch < training.epochs:
            if (epoch < training.frozen_backbone_epochs) != wrapped_frozen:
                ddp, wrapped_frozen = wrap_for_epoch(epoch), not wrapped_frozen
            stream = session.prepare.stream(data.batches("train", epoch=epoch, skip=batch_in_epoch,
                                                        limit=batches_per_epoch))
            while batch_in_epoch < batches_per_epoch:
                started = time.perf_counter()
                torch.manual_seed(step_seed(training.seed, stage.index, rt.rank, step))
                micro_batches = min(training.grad_accumulation, batches_per_epoch - batch_in_epoch)
                result = optimizer_step(stream, micro_batches)
                step, batch_in_epoch = step + 1, batch_in_epoch + micro_batches
                lr = max(group["lr"] for group in optimizer.param_groups)
                report.step(result, step=step, epoch=epoch, lr=lr, seconds=time.perf_counter() - started,
                            window_ends=step % training.log_every_steps == 0 or batch_in_epoch >= batches_per_epoch)
                if writer is not None:
                    report.checkpointed(writer.poll())
                if step % training.checkpoint_every_steps == 0 and batch_in_epoch < batches_per_epoch:
                    sync_buffers(model)
                    save(epoch, batch_in_epoch)
            stream.close()

            # ---- end of epoch: checkpoint, validation -----------------------------------------------------
            epoch, batch_in_epoch = epoch + 1, 0
            sync_buffers(model)
            save(epoch, 0)
            if "validation" in data.splits:
                scores = evaluate(model, data.batches("validation"), session.prepare, num_classes=len(data.classes),
                                  autocast=autocast)
                report.validation(scores, step=step, epoch=epoch)
    except BaseException:
        if writer is not None:
            writer.drain()  # the checkpoint being written holds a valid state: let it reach the disk
        raise
    if writer is not None:
        report.checkpointed(writer.close())  # the last checkpoint, then the model file, are on disk on return
    report.close()

    if rt.is_main and not model_file_submitted:  # a stage that had finished before this run: its model file anew
        ckpt.write_model_file(model_file, snapshot(epoch, 0))
    barrier()
    model.eval()
    return model


@dataclass
class StepResult:
    """What one optimizer step saw on this rank. ``totals`` (loss, valid samples, correct) stays on the device
    so that a step never waits for the GPU; the reporter reads it back once per logging window."""

    totals: torch.Tensor
    data_wait: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device) -> "StepResult":
        return cls(torch.zeros(3, dtype=torch.float64, device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        correct = ((logits.argmax(1) == labels) & valid).sum()
        self.totals += torch.stack([loss.double(), valid.sum().double(), correct.double()])


@dataclass
class _Pending:
    step: int
    epoch: int
    lr: float
    seconds: float
    data_wait: float
    totals: torch.Tensor


class _Reporter:
    """Progress bar, per-step loss log and TensorBoard (rank 0), Prometheus metrics (every rank).

    Steps are buffered with their on-device totals and reported together at the end of each logging window
    (and before every checkpoint): one device-to-host copy per window instead of three syncs per micro-batch."""

    def __init__(self, session: Session, stage: Stage, total_steps: int, step: int, epoch: int):
        main = session.runtime.is_main
        self.name, self.epochs, self.metrics = stage.name, session.job.training.epochs, session.metrics
        self.live = session.progress
        if self.live is not None:
            self.live.stage_started(stage.name, step, epoch)
        self.window_started = time.monotonic()
        self.steps_log = _StepLog(session.output / "logs" / f"{stage.name}.steps.jsonl", keep_through=step) \
            if main else None
        self.writer = session.tensorboard(stage.name, step) if (main and session.tensorboard) else None
        self.progress = _progress(main, total_steps, step, stage.name)
        self.window = torch.zeros(3, dtype=torch.float64)  # loss x samples, correct, samples (all ranks summed)
        self.pending: list[_Pending] = []
        self.postfix: dict[str, str] = {}

    def step(self, result: StepResult, *, step: int, epoch: int, lr: float, seconds: float, window_ends: bool):
        self.pending.append(_Pending(step, epoch, lr, seconds, result.data_wait, result.totals))
        self.progress.update(1)
        if window_ends:  # a collective: every rank reaches it at the same steps
            self.flush()
            totals = all_reduce_sum(self.window.clone())
            if self.writer is not None and totals[2] > 0:
                self.writer.add_scalar("train/loss", totals[0] / totals[2], step)
                self.writer.add_scalar("train/accuracy", totals[1] / totals[2], step)
                self.writer.add_scalar("train/learning_rate", lr, step)
            self.window.zero_()
            now = time.monotonic()
            if self.live is not None:
                elapsed = now - self.window_started
                self.live.steps_done(step, epoch, float(totals[2]) / elapsed if elapsed > 0 else None)
                self._show_live()
            self.window_started = now
            if self.metrics:
                self.metrics.observe_gpu_memory()

    def flush(self, *, to_disk: bool = False) -> None:
        """Report the buffered steps (one device-to-host copy for all of them). ``to_disk``: also write out
        TensorBoard's buffered events; a resume purges what comes after its checkpoint, and keeps what is before
        it only if it reached the disk (the writer otherwise holds it for up to two minutes)."""
        if to_disk and self.writer is not None:
            self.flush()
            self.writer.flush()
            return
        if not self.pending:
            return
        values = torch.stack([p.totals for p in self.pending]).cpu().tolist()
        for entry, (loss, samples, correct) in zip(self.pending, values):
            if self.steps_log:
                self.steps_log.write(step=entry.step, epoch=entry.epoch, loss=loss, lr=entry.lr)
            if self.metrics:
                self.metrics.observe_step(step_seconds=entry.seconds, data_wait_seconds=entry.data_wait,
                                          samples=int(samples), loss=loss, learning_rate=entry.lr,
                                          epoch=entry.epoch, step=entry.step, accuracy=correct / max(1, samples),
                                          stage=self.name)
            self.window += torch.tensor([loss * samples, correct, samples], dtype=torch.float64)
        self.postfix.update(loss=f"{values[-1][0]:.4f}", lr=f"{self.pending[-1].lr:.2e}")
        self.progress.set_postfix(self.postfix, refresh=False)
        self.pending.clear()

    def _show_live(self) -> None:
        """The whole job's numbers beside the stage's bar: the same ones status.json and the resource show."""
        summary = self.live.tracker.report()["summary"]
        for key, label in (("progress", "job"), ("eta", "eta"), ("valTop1", "val")):
            if summary.get(key):
                self.postfix[label] = summary[key]
        self.progress.set_postfix(self.postfix, refresh=False)

    def checkpointed(self, step: int | None) -> None:
        """The checkpoint of ``step`` is on disk (None: no checkpoint finished since the last call)."""
        if step is not None and self.live is not None:
            self.live.checkpoint(self.name, step)

    def validation(self, scores: dict[str, Any], *, step: int, epoch: int) -> None:
        if self.live is not None:
            self.live.validation(self.name, scores["top1"], step)
            self._show_live()
        if not self.progress.disable:
            self.progress.write(f"[{self.name}] epoch {epoch}/{self.epochs}: validation top-1 "
                                f"{100 * scores['top1']:.2f}%, loss {scores['loss']:.4f}")
        if self.writer is not None:
            self.writer.add_scalar("validation/top1", scores["top1"], step)
            self.writer.add_scalar("validation/loss", scores["loss"], step)
        if self.metrics:
            self.metrics.observe_eval(split="validation", accuracy=scores["top1"], loss=scores["loss"],
                                      stage=self.name)

    def close(self) -> None:
        self.flush()
        self.progress.close()
        if self.steps_log:
            self.steps_log.close()
        if self.writer is not None:
            self.writer.flush()


# ---------------------------------------------------------------------------------------------- helpers


def _newest_valid(directory: Path) -> str | None:
    found = ckpt.load_latest_checkpoint(directory)
    return str(found[1]) if found else None


def _check_compatible(path: Path, state: dict[str, Any], model_info: dict[str, Any]) -> None:
    """A checkpoint of another training configuration, data set or architecture cannot continue this run; the
    refusal names what differs, old -> new."""
    from kubefusion.train.runfolder import differences

    saved = state["model_info"]
    changed = []
    if saved.get("run") and model_info.get("run"):
        changed = differences(saved["run"], model_info["run"])
    for key in ("content_key", "classes", "modalities", "num_numeric_features", "model_spec"):
        if not changed and saved.get(key) != model_info.get(key):
            changed += [f"{name} {old} -> {new}" for name, old, new in _leaf_changes(
                key.replace("_", " "), saved.get(key), model_info.get(key))]
    if changed:
        raise ArtifactError(
            f"{path}: written for another configuration ({'; '.join(changed)}); resume with the job and data it "
            "was trained with, or start over (a new --output, or --restart)")


def _leaf_changes(name: str, old: Any, new: Any) -> list[tuple[str, str, str]]:
    """(dotted name, old, new) of every leaf that differs between two nested values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new), key=str)
                for change in _leaf_changes(f"{name}.{key}", old.get(key), new.get(key))]
    return [] if old == new else [(name, json.dumps(old), json.dumps(new))]


def _check_same_layout(path: Path, state: dict[str, Any], layout: dict[str, int], checkpoints: Path) -> None:
    """A half-trained stage resumes only with the world size, per-GPU batch and accumulation it was written
    with: its data position counts per-rank batches and its learning-rate schedule counts steps of that size."""
    names = {"world_size": "processes (world size)", "batch_size_per_gpu": "spec.training.batchSizePerGPU",
             "grad_accumulation": "spec.training.gradAccumulation"}
    changed = [f"{names[k]} {state[k]} -> {v}" for k, v in layout.items() if k in state and state[k] != v]
    if changed:
        raise ArtifactError(
            f"{path}: this stage is half trained with other settings ({'; '.join(changed)}); resume with the "
            f"settings it was written with, or start the stage afresh (delete {checkpoints} or give a fresh --output)")


def _load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any], precision: str, path: Path,
                 main: bool) -> None:
    """The GradScaler's state, when both the checkpoint and this run use one. A run resumed with another
    precision goes on from the saved weights: an fp16 run starting from an fp32/bf16 checkpoint begins with a
    fresh loss scale (the checkpoint has none), and a scale saved by fp16 is dropped by fp32/bf16."""
    saved = state.get("scaler") or {}
    before = state.get("precision", precision)
    if main and before != precision:
        log.info("%s was written with precision %s, this run uses %s (spec.training.precision)%s", path, before,
                 precision, ": the fp16 loss scale starts fresh" if precision == "fp16" else "")
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)


class _StepLog:
    """``<output>/logs/<stage>.steps.jsonl``: one line per optimizer step (rank 0's loss, learning rate).
    On resume the lines after the checkpoint's step are dropped: they are about to be redone."""

    def __init__(self, path: Path, keep_through: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep_through]
        path.write_text("".join(line + "\n" for line in kept))
        self._file = path.open("a")

    def write(self, **entry: Any) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _progress(enabled: bool, total: int, initial: int, name: str):
    from tqdm import tqdm

    # In a pod's log (no terminal) every redraw becomes a line: redraw rarely there.
    interactive = sys.stdout.isatty()
    return tqdm(total=total, initial=initial, desc=name, unit="step", disable=not enabled, file=sys.stdout,
                dynamic_ncols=True, mininterval=1.0 if interactive else 30.0, leave=True)
