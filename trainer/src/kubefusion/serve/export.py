"""``kubefusion export --checkpoint CKPT --out DIR``: the trained model as ONNX, proven equal to torch.

DIR alone serves (``kubefusion predict --artifacts DIR``)::

    DIR/
      model.onnx, model.onnx.data   the fused classifier (the dynamo exporter keeps weights in the .data file;
                                    the two travel together), dynamic batch and sequence length
      model.json                    classes, inputs/outputs, opset, parity, checkpoint, sha256 of the model files
      manifest.json, preprocess.onnx, saved_model/, tokenizer/
                                    a copy of the preprocessing artifact the model was trained with

The export runs torch and onnxruntime on fresh inputs with a different batch size and sequence length than
the ones traced (so the dynamic axes are exercised), including absent modalities, and fails if any logit
differs by more than 1e-4.

Replacing DIR (:func:`_replace_dir`): the new export is written completely under a temporary name beside DIR
(``model.json`` last), then the previous export is renamed to ``.DIR.previous``, the new one renamed to DIR,
and the previous one deleted. Renames within one folder are atomic, so at every moment DIR or
``.DIR.previous`` holds a complete export and nothing is ever half-written; between the two renames (a few
microseconds) DIR does not exist, and a reader opening it then fails. If the process dies in that window, the
next ``kubefusion export`` to DIR renames ``.DIR.previous`` back first (or do it by hand with ``mv``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kubefusion import __version__
from kubefusion.errors import ArtifactError
from kubefusion.preprocess import artifact

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MODEL_INFO = "model.json"
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "numeric", "modality_mask")
MODEL_OUTPUT = "logits"
MODEL_OPSET = 18
PARITY_TOLERANCE = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="model.pt, a training checkpoint, or a folder holding them")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder to write; a previous export there is replaced by two renames (DIR or "
                             ".DIR.previous always holds a complete export; see `kubefusion export` in "
                             "docs/onnx.md); any other non-empty folder is refused")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="preprocessing ARTIFACTS folder (default: the nearest `artifacts` folder beside "
                             "the checkpoint or above it that holds the checkpoint's content key, as `kubefusion "
                             "run --local` lays out OUT/artifacts and OUT/model.pt; else /artifacts, the "
                             "cluster's mount)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    result = export_model(args.checkpoint, args.out, artifacts=args.artifacts)
    # export_model has logged where the preprocessing came from and the parity: stdout is the folder alone
    print(json.dumps(result) if args.json else args.out)
    return 0


def export_model(checkpoint: Path, out: Path, *, artifacts: Path | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` into ``out`` (see the module docstring); returns model.json's contents."""
    started = time.perf_counter()
    out = Path(out).absolute()
    recover_interrupted_replace(out)
    check_out_dir(out)  # before the minutes of work, not after

    import torch

    from kubefusion.model import load_model_from_checkpoint

    model, info = load_model_from_checkpoint(Path(checkpoint))
    pre_dir, chosen = find_preprocessing(Path(info.get("path") or checkpoint), info.get("content_key"), artifacts)
    pre_manifest = artifact.verify(pre_dir)
    _check_agreement(info, pre_manifest, pre_dir)
    log.info("preprocessing %s from %s (%s)", pre_manifest["content_key"], pre_dir, chosen)

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = artifact.new_temp_dir(out.parent, out.name)
    try:
        shutil.copytree(pre_dir, temp, dirs_exist_ok=True)
        t0 = time.perf_counter()
        _torch_export(torch, model, pre_manifest, temp / MODEL_FILE)
        export_s = time.perf_counter() - t0
        parity = check_model_parity(torch, model, pre_manifest, temp / MODEL_FILE)
        model_files = {p.name: artifact.sha256_file(p) for p in sorted(temp.glob(MODEL_FILE + "*"))}
        doc = {
            "format_version": 1,
            "content_key": pre_manifest["content_key"],
            "classes": pre_manifest["classes"],
            "num_classes": pre_manifest["num_classes"],
            "numeric_columns": pre_manifest["numeric_columns"],
            "modalities": list(info.get("modalities", [])),
            "inputs": _model_io(temp / MODEL_FILE, "input"),
            "outputs": _model_io(temp / MODEL_FILE, "output"),
            "opset": MODEL_OPSET,
            "checkpoint": {"path": str(info.get("path")), "step": info.get("step")},
            "preprocessing": {"content_key": pre_manifest["content_key"], "path": str(pre_dir), "chosen": chosen},
            "parity": parity,
            "versions": {"kubefusion": __version__,
                         **artifact.package_versions(("torch", "onnx", "onnxruntime", "onnxscript"))},
            "timings_seconds": {"torch_onnx_export": round(export_s, 3),
                                "total": round(time.perf_counter() - started, 3)},
            "files": model_files,
        }
        artifact.write_json_atomic(temp / MODEL_INFO, doc)
        _replace_dir(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    log.info("exported %s to %s in %.1f s (max |torch - onnxruntime| %.2g)", info.get("path"), out,
             time.perf_counter() - started, parity["max_abs_diff"])
    return doc


CLUSTER_ARTIFACTS = Path("/artifacts")
ARTIFACTS_FOLDER = "artifacts"


def find_preprocessing(checkpoint: Path, content_key: str | None, artifacts: Path | None) -> tuple[Path, str]:
    """The preprocessing artifact folder the model was trained with, and how it was chosen.

    ``artifacts`` given: that folder (one artifact, or an ARTIFACTS folder: the checkpoint's content key in it,
    else its ``latest.json``). Otherwise the nearest folder named ``artifacts`` in the checkpoint's folder or
    any folder above it that holds the checkpoint's content key (``kubefusion run --local`` writes
    OUT/artifacts beside OUT/model.pt), then the cluster's /artifacts. A checkpoint without a content key
    (none is recorded) takes the nearest ``artifacts`` folder's ``latest.json``; the export still refuses
    preprocessing whose classes or numeric columns differ from the model's.
    """
    if artifacts is not None:
        artifacts = Path(artifacts)
        if (artifacts / artifact.MANIFEST).is_file():
            return artifacts, "--artifacts"
        keyed = bool(content_key) and (artifacts / str(content_key) / artifact.MANIFEST).is_file()
        return artifact.resolve(artifacts, content_key if keyed else None), \
            "--artifacts, the checkpoint's content key" if keyed else f"--artifacts, its {artifact.POINTER}"
    searched = [folder / ARTIFACTS_FOLDER for folder in Path(checkpoint).absolute().parents] + [CLUSTER_ARTIFACTS]
    candidates = [folder for folder in dict.fromkeys(searched) if folder.is_dir()]
    for folder in candidates:
        if content_key and (folder / content_key / artifact.MANIFEST).is_file():
            return folder / content_key, f"found by the checkpoint's content key in {folder}"
        if content_key and _manifest_key(folder) == content_key:
            return folder, "found by the checkpoint's content key"
    if not content_key:
        for folder in candidates:
            if (folder / artifact.POINTER).is_file() or (folder / artifact.MANIFEST).is_file():
                return artifact.resolve(folder), f"the checkpoint records no content key: {folder}'s newest"
    where = ", ".join(str(f) for f in dict.fromkeys(searched))
    raise ArtifactError(f"--artifacts: needed; no preprocessing artifact "
                        f"{'with content key ' + content_key + ' ' if content_key else ''}in {where} "
                        f"(give the ARTIFACTS folder the model was trained with)")


def _manifest_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / artifact.MANIFEST).read_text()).get("content_key")
    except (OSError, ValueError, AttributeError):
        return None


def _check_agreement(info: dict[str, Any], manifest: dict[str, Any], pre_dir: Path) -> None:
    """The model must have been trained on exactly this preprocessing (same key, classes and columns)."""
    where = f"{info.get('path')} vs {pre_dir}"
    if info.get("content_key") and info["content_key"] != manifest["content_key"]:
        raise ArtifactError(f"{where}: the model was trained with preprocessing {info['content_key']}, "
                            f"not {manifest['content_key']}")
    if info.get("num_classes") is not None and int(info["num_classes"]) != int(manifest["num_classes"]):
        raise ArtifactError(f"{where}: {info['num_classes']} model classes but {manifest['num_classes']} in "
                            "the preprocessing manifest")
    if info.get("classes") is not None and list(info["classes"]) != list(manifest["classes"]):
        raise ArtifactError(f"{where}: classes differ ({info['classes']} vs {manifest['classes']})")
    features = info.get("num_numeric_features")
    if features is not None and int(features) != len(manifest["numeric_columns"]):
        raise ArtifactError(f"{where}: the model takes {features} numeric columns, the preprocessing "
                            f"{len(manifest['numeric_columns'])}")


def example_inputs(torch: Any, manifest: dict[str, Any], batch: int, tokens: int, seed: int,
                   vocab: int) -> tuple[Any, ...]:
    """Model inputs shaped as the preprocessing produces them; some modalities absent, some padding."""
    generator = torch.Generator().manual_seed(seed)
    size = int(manifest["image_size"])
    features = len(manifest["numeric_columns"])
    attention = torch.ones(batch, tokens, dtype=torch.int64)
    attention[0, tokens // 2:] = 0
    mask = torch.ones(batch, 3, dtype=torch.bool)
    mask[-1, 0] = False
    if batch > 2:
        mask[1, 1:] = False
    return (torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(0, vocab, (batch, tokens), generator=generator) * attention,
            attention,
            torch.randn(batch, features, generator=generator),
            mask)


def _torch_export(torch: Any, model: Any, manifest: dict[str, Any], path: Path) -> None:
    max_tokens = int(manifest["max_tokens"])
    # Traced with two samples and a sequence shorter than maxTokens: a size of 1, or equal sizes, would let
    # torch.export specialise the axis to a constant.
    args = example_inputs(torch, manifest, batch=2, tokens=max(2, max_tokens - 1), seed=0, vocab=_vocab(model))
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    dynamic = {"pixel_values": {0: batch}, "input_ids": {0: batch, 1: sequence},
               "attention_mask": {0: batch, 1: sequence}, "numeric": {0: batch}, "modality_mask": {0: batch}}
    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "torch.utils.flop_counter"):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=list(MODEL_INPUTS),
                              output_names=[MODEL_OUTPUT], dynamic_shapes=dynamic, opset_version=MODEL_OPSET,
                              external_data=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs the message either way
        raise ArtifactError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The exporter warns about what this model never uses (torchvision's detection ops, Triton's flop
    counting): errors only, while it runs. A failed export still raises with its message."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_model_parity(torch: Any, model: Any, manifest: dict[str, Any], path: Path,
                       tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """torch vs onnxruntime on inputs the export did not trace (other batch size and sequence length)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ArtifactError(f"{path}: onnxruntime cannot load the exported model ({exc})") from None
    max_tokens = int(manifest["max_tokens"])
    worst = 0.0
    cases = [(3, max_tokens, 1), (5, max(2, max_tokens // 2), 2), (1, max_tokens, 3)]
    for batch, tokens, seed in cases:
        inputs = example_inputs(torch, manifest, batch=batch, tokens=tokens, seed=seed, vocab=_vocab(model))
        with torch.no_grad():
            expected = model(*inputs).float().numpy()
        feed = session_feed(session, dict(zip(MODEL_INPUTS, (t.numpy() for t in inputs))))
        got = session.run([MODEL_OUTPUT], feed)[0]
        if got.shape != expected.shape:
            raise ArtifactError(f"{path}: logits shape {got.shape} in onnxruntime but {expected.shape} in torch "
                                f"(batch {batch}, sequence {tokens})")
        diff = float(np.max(np.abs(got - expected)))
        worst = max(worst, diff)
        if diff > tolerance:
            raise ArtifactError(f"{path}: onnxruntime and torch logits differ by {diff:.3g} (tolerance "
                                f"{tolerance:g}; batch {batch}, sequence {tokens})")
    return {"tolerance": tolerance, "max_abs_diff": worst,
            "cases": [{"batch": b, "sequence": t} for b, t, _ in cases]}


def session_feed(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs the exported graph kept: a single-modality model's export drops the inputs it ignores."""
    return {i.name: inputs[i.name] for i in session.get_inputs()}


def _vocab(model: Any) -> int:
    """Token ids the text encoder accepts (random parity inputs must stay inside its embedding table)."""
    encoders = getattr(model, "encoders", None)
    text = encoders["text"] if encoders is not None and "text" in encoders else None
    config = getattr(getattr(text, "backbone", None), "config", None)
    return int(getattr(config, "vocab_size", 0) or 1000)


def _model_io(path: Path, kind: str) -> list[dict[str, Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.get_inputs() if kind == "input" else session.get_outputs()
    return [{"name": v.name, "dtype": v.type, "shape": list(v.shape)} for v in values]


def previous_dir(out: Path) -> Path:
    """Where :func:`_replace_dir` keeps the previous export while it swaps in the new one."""
    return out.with_name(f".{out.name}.previous")


def recover_interrupted_replace(out: Path) -> None:
    """Finish what an export that died while replacing ``out`` left: the previous export back at ``out`` if
    ``out`` is missing, or, when ``out`` holds the new export, the leftover previous one deleted."""
    previous = previous_dir(out)
    if not previous.is_dir():
        return
    if not out.exists():
        os.rename(previous, out)
        log.warning("%s was missing (an export died while replacing it): restored the previous export", out)
    elif (out / MODEL_INFO).is_file():
        shutil.rmtree(previous, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """``out`` may be absent, empty, or a previous export; anything else is refused, never overwritten."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MODEL_INFO).is_file():
        raise ArtifactError(f"{out}: exists and is not a kubefusion export (no {MODEL_INFO}); choose another --out")


def _replace_dir(temp: Path, out: Path) -> None:
    """Put the complete export ``temp`` at ``out`` (see the module docstring for what is guaranteed)."""
    check_out_dir(out)  # again: the folder may have changed during the export
    recover_interrupted_replace(out)  # again: another export may have died meanwhile
    previous = previous_dir(out)
    had_previous = out.exists()
    try:
        if had_previous:
            os.rename(out, previous)
        os.rename(temp, out)
    except OSError as exc:
        if had_previous and previous.is_dir() and not out.exists():
            os.rename(previous, out)
        raise ArtifactError(f"{out}: could not put the export in place ({exc}); was another export writing "
                            "it at the same time?") from None
    shutil.rmtree(previous, ignore_errors=True)
