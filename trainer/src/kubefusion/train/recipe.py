"""The full recipe of ``kubefusion train``: fused model, single-modality baselines, evaluation, results.

1. Load the preprocessing artifact (``spec.preprocessing.backend``) and make sure every rank has the same one
   (all-gather of the manifest's content key).
2. Scan, split and tokenize the data (the artifact's tokenizer), check it matches the artifact.
3. Train the fused model (:func:`kubefusion.train.loop.train_stage`), then, with ``training.baselines``, one
   model per modality with the same recipe. Each stage resumes from its own checkpoints.
4. Evaluate every model on validation, test and OOD; ablate the fused model (each modality masked in turn).
5. Rank 0 writes ``results.json`` + ``results.md`` atomically and prints the table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from kubefusion.config import MODALITIES, JobConfig
from kubefusion.errors import ArtifactError
from kubefusion.train.data import EVAL_SPLITS, TrainingData, load_training_data
from kubefusion.train import runfolder
from kubefusion.train.distributed import Runtime, all_gather_object, barrier, broadcast_object
from kubefusion.train.evaluate import evaluate
from kubefusion.train.loop import Session, Stage, precision_setup, stage_steps, train_stage
from kubefusion.train.prefetch import BatchPreparer, available_cpus, preprocess_threads
from kubefusion.train.progress import Progress, results_fields, start_progress
from kubefusion.train.results import summarize, write_results

log = logging.getLogger(__name__)


def stages_for(job: JobConfig) -> list[Stage]:
    stages = [Stage("fused", MODALITIES, 0)]
    if job.training.baselines:
        stages += [Stage(f"baseline-{m}", (m,), i + 1) for i, m in enumerate(MODALITIES)]
    return stages


def check_same_artifact(content_key: str, rank: int) -> None:
    """Every rank must preprocess with the same artifact, or the ranks would train on different inputs."""
    keys = all_gather_object(content_key)
    if len(set(keys)) > 1:
        listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(keys))
        raise ArtifactError(f"ranks loaded different preprocessing artifacts ({listing}); every pod must mount "
                            "the same artifacts folder (rerun `kubefusion preprocess` once, then train)")


def make_prepare(preprocessor: Any, device: torch.device) -> BatchPreparer:
    """Data batches (CPU torch tensors, raw uint8 images and numbers) -> model inputs on ``device``, the
    exported preprocessing applied a batch or two ahead on a background thread."""
    return BatchPreparer(preprocessor, device)


def tensorboard_writers(output: Path) -> tuple[Callable[[str, int], Any], dict[str, Any]]:
    """(stage name, resumed step -> that stage's SummaryWriter, the writers made so far). A stage resumed from
    the checkpoint of step S purges the events after S that the interrupted run left behind, so the resumed
    curves do not overlap them."""
    writers: dict[str, Any] = {}

    def writer(stage: str, step: int = 0) -> Any:
        if stage not in writers:
            from torch.utils.tensorboard import SummaryWriter

            writers[stage] = SummaryWriter(log_dir=str(output / "tensorboard" / stage),
                                           purge_step=step + 1 if step > 0 else None)  # drops >= it
        return writers[stage]

    return writer, writers


def data_root(job: JobConfig, artifacts: Path, explicit: str | Path | None) -> str | Path:
    """``--data`` when given, else the job's dataset root (a local folder or a URI; the demo data beside the
    artifacts)."""
    if explicit is not None:
        return explicit
    from kubefusion.preprocess.export import data_root_for

    return data_root_for(job, artifacts)


def claim_run_folder(job: JobConfig, output: Path, manifest: dict[str, Any], *, is_main: bool,
                     restart: bool) -> dict[str, Any]:
    """Rank 0 makes ``output`` this configuration's run folder (:func:`runfolder.claim`, with the data now
    known) or refuses; every rank gets the verdict, so all of them stop together on a refusal."""
    verdict: dict[str, Any] = {}
    if is_main:
        try:
            verdict = {"record": runfolder.claim(output, job, data=runfolder.data_identity(manifest),
                                                 restart=restart)}
        except runfolder.RunFolderError as exc:
            verdict = {"error": str(exc)}
    verdict = broadcast_object(verdict)
    if "error" in verdict:
        raise runfolder.RunFolderError(verdict["error"])
    return verdict["record"]


def run_recipe(job: JobConfig, *, artifacts: Path, output: Path, runtime: Runtime,
               data_dir: str | Path | None = None, restart: bool = False) -> dict[str, Any]:
    from kubefusion.data.tokenizer import load_tokenizer
    from kubefusion.preprocess.artifact import TOKENIZER_DIR, job_content_key
    from kubefusion.preprocess.runtime import Preprocessor

    # Not torch.get_num_threads(): torchrun sets that to 1, and preprocessing now runs beside the step.
    threads = preprocess_threads(available_cpus(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    # This job's own pointer, not latest.json: another job exporting into a shared ARTIFACTS volume moves that.
    own_key = job_content_key(Path(artifacts), job.namespace, job.name)
    preprocessor = Preprocessor.load(artifacts, backend=job.preprocessing.backend, threads=threads,
                                     content_key=own_key)
    check_same_artifact(preprocessor.content_key, runtime.rank)
    manifest = preprocessor.manifest
    run = claim_run_folder(job, Path(output), manifest, is_main=runtime.is_main, restart=restart)
    tokenizer = load_tokenizer(str(preprocessor.artifact_dir / TOKENIZER_DIR))
    root = data_root(job, artifacts, data_dir)
    data = load_training_data(job, root, manifest=manifest, tokenizer=tokenizer, rank=runtime.rank,
                              world_size=runtime.world_size, artifact_dir=preprocessor.artifact_dir)
    if runtime.is_main:
        log.info("data %s: %s; %d classes; %d process(es), backend %s, device %s, precision %s", root,
                 ", ".join(f"{k} {v}" for k, v in data.sizes().items()), len(data.classes), runtime.world_size,
                 runtime.backend or "none", runtime.device, job.training.precision)

    metrics = _start_metrics(job, runtime)
    tensorboard, writers = tensorboard_writers(output)
    stages = stages_for(job)
    progress: Progress | None = None
    if runtime.is_main:
        progress = start_progress([s.name for s in stages], stage_steps(data, job.training)[2],
                                  job.training.epochs, output)

    session = Session(job=job, runtime=runtime, data=data, prepare=make_prepare(preprocessor, runtime.device),
                      output=output, metrics=metrics, tensorboard=tensorboard, progress=progress,
                      artifact_info={"content_key": preprocessor.content_key, "classes": data.classes,
                                     "numeric_columns": data.numeric_columns, "run": run})
    autocast, _ = precision_setup(job.training.precision, runtime.device)
    results: dict[str, Any] = {"job": job.name, "fusion_type": job.model.fusion.type, "modalities": list(MODALITIES),
                               "classes": data.classes, "sizes": data.sizes(), "precision": job.training.precision,
                               "processes": runtime.world_size, "content_key": preprocessor.content_key,
                               "configuration": run, "baselines": {}, "ablation": {}}
    try:
        for stage in stages:
            model = train_stage(session, stage)
            scores = _evaluate_splits(model, session, autocast)
            if stage.name == "fused":
                results["fused"] = scores
                for column, modality in enumerate(MODALITIES):
                    results["ablation"][f"without_{modality}"] = _evaluate_splits(
                        model, session, autocast, splits=("test", "ood"), drop_modality=column)
            else:
                results["baselines"][stage.modalities[0]] = scores
            if metrics:
                for split, s in scores.items():
                    if s.get("top1") is not None:
                        metrics.observe_eval(split=split, accuracy=s["top1"], loss=s["loss"], stage=stage.name)
            del model

        facts = data.dataset_facts
        if "best_achievable" in facts:
            results["best_achievable"] = dict(facts["best_achievable"])
            results["ceilings"] = facts.get("ceilings")
        results["summary"] = summarize(results)
        if runtime.is_main:
            markdown = write_results(output, results)
            print("\n" + markdown, flush=True)
            log.info("results written to %s and %s", output / "results.json", output / "results.md")
            progress.finished(results_fields(results, output=output))
        barrier()  # the other ranks are done; rank 0 alone exports
        if runtime.is_main and job.training.export_onnx:
            onnx = export_onnx(output, artifacts)
            if onnx is not None:
                progress.finished(results_fields(results, output=output, onnx=onnx))
    finally:
        for writer in writers.values():
            writer.close()
        if metrics:
            metrics.close()
        if progress is not None:
            progress.close()  # the last report (the results, or where a failed run stopped), bounded in time
    return results


ONNX_FOLDER = "onnx"


def export_onnx(output: Path, artifacts: Path) -> Path | None:
    """``spec.training.exportOnnx``: the fused model (``output/model.pt``) as ONNX in ``output/onnx``, checked
    against torch (:func:`kubefusion.serve.export.export_model`). An export of this very model (same step and
    preprocessing) is kept as it is. A failed export is a warning, not a failed run: the model is trained, and
    ``kubefusion export`` can be run on it by hand."""
    import json

    from kubefusion.serve.export import MODEL_INFO, export_model
    from kubefusion.train.checkpoint import MODEL_FILE, read_checkpoint

    target = output / ONNX_FOLDER
    try:
        model = read_checkpoint(output / MODEL_FILE)
        done = json.loads((target / MODEL_INFO).read_text()) if (target / MODEL_INFO).is_file() else {}
        if done.get("checkpoint", {}).get("step") == model["step"] and \
                done.get("content_key") == model["model_info"].get("content_key"):
            log.info("ONNX export of this model already in %s", target)
            return target
        del model
        export_model(output / MODEL_FILE, target, artifacts=artifacts)
    except Exception as exc:  # noqa: BLE001 - the training itself succeeded; say what failed and how to redo it
        log.warning("warning: ONNX export failed (%s: %s); the trained model is %s, export it with `kubefusion "
                    "export --checkpoint %s --out %s`", type(exc).__name__, exc, output / MODEL_FILE,
                    output / MODEL_FILE, target)
        return None
    log.info("model exported to ONNX in %s", target)
    return target


def _evaluate_splits(model, session: Session, autocast, *, splits=EVAL_SPLITS,
                     drop_modality: int | None = None) -> dict[str, Any]:
    data: TrainingData = session.data
    return {split: evaluate(model, data.batches(split), session.prepare, num_classes=len(data.classes),
                            autocast=autocast, drop_modality=drop_modality)
            for split in splits if split in data.splits}


def _start_metrics(job: JobConfig, runtime: Runtime):
    """Prometheus metrics of this rank (``spec.monitoring.metricsPort + LOCAL_RANK``; 0 disables)."""
    try:
        from kubefusion.train.metrics import MetricsPortError, TrainerMetrics
    except ImportError:  # the metrics module is optional for a bare trainer checkout
        return None
    port = job.monitoring.metrics_port
    metrics = TrainerMetrics(namespace=os.environ.get("KUBEFUSION_NAMESPACE", job.namespace),
                             job_name=os.environ.get("KUBEFUSION_JOB_NAME", job.name), rank=runtime.rank,
                             port=port + runtime.local_rank if port else None)
    try:
        return metrics.start()
    except MetricsPortError as exc:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise  # on a cluster a missing scrape target is a deployment bug: say so
        log.warning("warning: %s; training goes on without a metrics endpoint", exc)
        return metrics
