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
differs by more than 1e-4. DIR is written under a temporary name beside it and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

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
    parser.add_argument("--out", required=True, type=Path, help="folder to write (replaced atomically)")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="preprocessing ARTIFACTS folder (default: the one recorded in the checkpoint's job, "
                             "/artifacts)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    result = export_model(args.checkpoint, args.out, artifacts=args.artifacts)
    if args.json:
        print(json.dumps(result))
    else:
        print(args.out)
    return 0


def export_model(checkpoint: Path, out: Path, *, artifacts: Path | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` into ``out`` (see the module docstring); returns model.json's contents."""
    started = time.perf_counter()
    import torch

    from kubefusion.model import load_model_from_checkpoint

    model, info = load_model_from_checkpoint(Path(checkpoint))
    pre_dir = _preprocessing_for(info, artifacts)
    pre_manifest = artifact.verify(pre_dir)
    _check_agreement(info, pre_manifest, pre_dir)

    out = Path(out).absolute()
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


def _preprocessing_for(info: dict[str, Any], artifacts: Path | None) -> Path:
    key = info.get("content_key")
    if artifacts is None:
        artifacts = Path("/artifacts")
        if not artifacts.exists():
            raise ArtifactError("--artifacts: needed (the preprocessing ARTIFACTS folder the model was trained with)")
    if (Path(artifacts) / artifact.MANIFEST).is_file():
        return Path(artifacts)
    return artifact.resolve(Path(artifacts), key if key and (Path(artifacts) / key).is_dir() else None)


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=list(MODEL_INPUTS),
                              output_names=[MODEL_OUTPUT], dynamic_shapes=dynamic, opset_version=MODEL_OPSET,
                              external_data=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs the message either way
        raise ArtifactError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc


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


def _replace_dir(temp: Path, out: Path) -> None:
    """Put ``temp`` at ``out``. An existing export there is swapped out (renamed aside, then removed); any other
    non-empty folder is left alone and refused."""
    if out.exists() and any(out.iterdir()) and not (out / MODEL_INFO).is_file():
        raise ArtifactError(f"{out}: exists and is not a kubefusion export; choose another --out")
    aside = None
    if out.exists():
        aside = out.with_name(f"{artifact.TEMP_PREFIX}{out.name}-old-{os.getpid()}")
        os.rename(out, aside)
    os.rename(temp, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
