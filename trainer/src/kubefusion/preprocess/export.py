"""SavedModel -> ONNX, proven equal, published as one content-addressed artifact.

:func:`prepare` is what ``kubefusion preprocess`` runs. It computes the content key first (data file
contents + preprocessing config + split settings + versions; no TensorFlow needed) and returns at once when
``ARTIFACTS/<key>/`` already exists. Otherwise it scans the data, computes the statistics on the training
split only, builds the graph (:mod:`kubefusion.preprocess.graph`), saves the SavedModel, converts it with
tf2onnx, loads the ONNX file in onnxruntime and compares it with TensorFlow on real images and numeric rows,
saves the tokenizer and the record index (:mod:`kubefusion.data.index`), writes the manifest and renames the folder into place (:mod:`.artifact`).

tf2onnx exits successfully even when it could not convert an op (it logs "Unsupported ops" and leaves the
TensorFlow node in the graph), so :func:`convert_saved_model` checks every node against the ONNX operator
schemas and onnxruntime must load the result before the artifact is trusted.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kubefusion import __version__
from kubefusion.config import JobConfig
from kubefusion.errors import ArtifactError
from kubefusion.preprocess import artifact
from kubefusion.preprocess.artifact import (INPUT_IMAGE, INPUT_NUMERIC, MANIFEST, ONNX_FILE, OPSET,
                                            OUTPUT_NUMERIC, OUTPUT_PIXELS, RECORD_INDEX, SAVED_MODEL_DIR,
                                            TOKENIZER_DIR)
from kubefusion.preprocess.stats import compute_numeric_statistics

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest absolute difference allowed between TensorFlow and onnxruntime on any output value."""
PARITY_IMAGES = 4
"""Real images (at their own size, and at the training size) the export compares on."""
PARITY_NUMERIC_ROWS = 256
VERSIONED_PACKAGES = ("tf2onnx", "onnx", "onnxruntime", "tokenizers", "transformers")
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class PrepareResult:
    artifact_dir: Path
    content_key: str
    reused: bool
    """True when the artifact already existed (or another process published it while this one exported)."""
    seconds: float


# ------------------------------------------------------------------------------------------- the key


def key_material(job: JobConfig, data_root: str | Path, *, fingerprint_cache: Path | None = None,
                 rehash: bool = False) -> dict[str, Any]:
    """Everything the artifact depends on; its hash is the content key. ``fingerprint_cache`` and ``rehash``:
    see :func:`artifact.data_fingerprint` (they never change the result)."""
    pre = job.preprocessing
    data = job.data
    return {
        "format": artifact.FORMAT_VERSION,
        "data": artifact.data_fingerprint(data_root, cache=fingerprint_cache, rehash=rehash),
        "preprocessing": {
            "image_size": pre.image_size,
            "image_mean": list(pre.image_mean),
            "image_std": list(pre.image_std),
            "max_tokens": pre.max_tokens,
            "tokenizer": artifact.tokenizer_fingerprint(pre.tokenizer, Path(job.base_dir)),
        },
        "split": {
            "validation_fraction": data.validation_fraction,
            "test_fraction": data.test_fraction,
            "split_seed": data.split_seed,
            "on_bad_record": data.on_bad_record,
            "missing_modality": data.missing_modality,
            "manifest": data.manifest,
        },
        "versions": {"opset": OPSET, **versions()},
    }


def versions() -> dict[str, str]:
    """Versions of what shapes the artifact; TensorFlow under one name whichever distribution provides it."""
    tensorflow = artifact.package_versions(["tensorflow-cpu", "tensorflow"])
    found = [v for v in tensorflow.values() if v != "absent"]
    return {"kubefusion": __version__, "tensorflow": found[0] if found else "absent",
            **artifact.package_versions(VERSIONED_PACKAGES)}


def data_root_for(job: JobConfig, artifacts: Path) -> str | Path:
    """The dataset root (a local folder, or a URI as written in the job); the built-in demo data is
    synthesised (once) beside the artifacts."""
    if job.uses_demo_data:
        from kubefusion.data.synth import ensure_demo_data

        dest = artifacts / "data" / f"demo-{job.data.demo_samples}-seed{job.data.demo_seed}"
        return Path(ensure_demo_data(dest, job.data.demo_samples, job.data.demo_seed))
    return job.data_dir


def expected_content_key(job: JobConfig, artifacts: Path, *, data_root: str | Path | None = None) -> str:
    """The content key ``kubefusion preprocess`` computes for this job (no TensorFlow; hashes the data files).
    ``Preprocessor.load(artifacts, content_key=...)`` with it picks this job's artifact even when another
    job's export moved ``latest.json`` in a shared ARTIFACTS folder. A URI root is hashed through tf.io.gfile
    (TensorFlow imported). Files unchanged since the last run (size and mtime) take their digest from
    ``ARTIFACTS/.fingerprints/`` instead of being read."""
    artifacts = Path(artifacts)
    root = data_root if data_root is not None else data_root_for(job, artifacts)
    cache = artifact.fingerprint_cache_path(artifacts, root)
    return artifact.content_key(key_material(job, root, fingerprint_cache=cache))


# ----------------------------------------------------------------------------------------- prepare


def prepare(job: JobConfig, artifacts: Path, *, data_root: str | Path | None = None,
            rehash: bool = False) -> PrepareResult:
    """Make sure ``artifacts/<content key>/`` holds this job's preprocessing artifact; point latest.json at it.
    An existing artifact that fails verification is moved aside and rebuilt. ``rehash``: read every data file
    for the key even where the digest cache knows it."""
    started = time.perf_counter()
    artifacts = Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    root = data_root if data_root is not None else data_root_for(job, artifacts)
    material = key_material(job, root, fingerprint_cache=artifact.fingerprint_cache_path(artifacts, root),
                            rehash=rehash)
    key = artifact.content_key(material)
    final = artifacts / key
    if existing_artifact_is_valid(final):
        artifact.write_pointer(artifacts, key, job=(job.namespace, job.name))
        log.info("preprocessing artifact %s already exists: reused", final)
        return PrepareResult(final, key, True, time.perf_counter() - started)

    artifact.remove_stale_temps(artifacts)
    temp = artifact.new_temp_dir(artifacts, key)
    try:
        build_artifact(job, root, temp, key, material)
        won = artifact.publish(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    artifact.verify(final)
    artifact.write_pointer(artifacts, key, job=(job.namespace, job.name))
    log.info("preprocessing artifact %s %s", final, "written" if won else "written by another process: reused")
    return PrepareResult(final, key, not won, time.perf_counter() - started)


def existing_artifact_is_valid(final: Path) -> bool:
    """True when ``final`` holds a verified artifact. One that fails verification (a file changed, missing or
    truncated; no manifest) would fail every later pod the same way, so it is moved aside for rebuilding."""
    try:
        before = final.stat()
    except FileNotFoundError:
        return False
    try:
        artifact.verify(final)
        return True
    except ArtifactError as exc:
        artifact.move_aside_corrupt(final, before, str(exc))
        return False


def training_split(job: JobConfig, root: str | Path) -> tuple[Any, list[Any], dict[str, int]]:
    """(scan result, training records, split sizes) under the job's data settings."""
    from kubefusion.data import scan, split_records

    scanned = scan(job.data, root)
    parts = split_records(scanned.records, job.data.validation_fraction, job.data.test_fraction,
                          job.data.split_seed)
    sizes = {name: len(records) for name, records in parts.items()}
    if not parts["train"]:
        raise ArtifactError(f"{root}: the training split is empty; nothing to compute statistics on")
    return scanned, parts["train"], sizes


def build_artifact(job: JobConfig, root: str | Path, out: Path, key: str, material: dict[str, Any]) -> dict[str, Any]:
    """Write a complete artifact into the (empty) folder ``out``; returns the manifest."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    scanned, train, sizes = training_split(job, root)
    # Records without a numeric row (missingModality: keep) carry zeros, not values: leave them out.
    numeric = np.array([r.numeric for r in train if r.mask[2]], np.float32).reshape(-1, len(scanned.numeric_columns))
    stats = compute_numeric_statistics(numeric, scanned.numeric_columns)
    # The records this artifact is built on, so training ranks use exactly these without decoding every image.
    from kubefusion.data.index import RecordIndex

    index = RecordIndex.from_scan(scanned)
    index.save(out / RECORD_INDEX)
    timings["scan_and_statistics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from kubefusion.preprocess.graph import PreprocessModule, save_module

    pre = job.preprocessing
    module = PreprocessModule(pre.image_size, pre.image_mean, pre.image_std, stats)
    save_module(module, str(out / SAVED_MODEL_DIR))
    timings["saved_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = convert_saved_model(out / SAVED_MODEL_DIR, out / ONNX_FILE)
    timings["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    images = parity_images([r.image_path for r in train if r.image_path], pre.image_size)
    parity = check_parity(out / SAVED_MODEL_DIR, out / ONNX_FILE, images, parity_numeric_rows(numeric))
    timings["parity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tokenizer_info = save_tokenizer(pre.tokenizer, out / TOKENIZER_DIR)
    timings["tokenizer"] = time.perf_counter() - t0

    manifest = {
        "format_version": artifact.FORMAT_VERSION,
        "content_key": key,
        "key_material": material,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "exported_for_job": {"name": job.name, "namespace": job.namespace},  # the first job with this key
        "opset": OPSET,
        "inputs": io_spec(model.graph.input),
        "outputs": io_spec(model.graph.output),
        "image_size": pre.image_size,
        "image_mean": list(pre.image_mean),
        "image_std": list(pre.image_std),
        "max_tokens": pre.max_tokens,
        "classes": list(scanned.classes),
        "num_classes": len(scanned.classes),
        "numeric_columns": list(scanned.numeric_columns),
        "statistics": {"numeric": stats.to_json()},
        "split": {**sizes, "seed": job.data.split_seed, "validation_fraction": job.data.validation_fraction,
                  "test_fraction": job.data.test_fraction},
        "scan": scanned.report.to_dict(),
        "record_index": {"file": RECORD_INDEX, "records": len(index), "digest": index.digest()},
        "tokenizer": tokenizer_info,
        "parity": parity,
        "versions": versions(),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "files": artifact.file_digests(out),
    }
    artifact.write_json_atomic(out / MANIFEST, manifest)
    return manifest


def io_spec(values: Any) -> list[dict[str, Any]]:
    """ONNX graph inputs/outputs as {name, dtype, shape}; a dynamic dimension is its symbolic name."""
    from onnx import helper

    spec = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        spec.append({"name": value.name, "dtype": str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
                     "shape": shape})
    return sorted(spec, key=lambda s: s["name"])


# ------------------------------------------------------------------------------------- conversion


class _UnsupportedOpsLog(logging.Handler):
    """Collects tf2onnx's "Unsupported ops" error, which is all it says about an op it could not convert."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def convert_saved_model(saved_model_dir: Path, onnx_path: Path, opset: int = OPSET) -> Any:
    """Convert the SavedModel's ``serving_default`` signature to ONNX; raise :class:`ArtifactError` naming
    every op that did not convert to a standard ONNX operator."""
    import onnx
    import tf2onnx
    from tf2onnx import tf_loader

    handler = _UnsupportedOpsLog()
    tf2onnx_log = logging.getLogger("tf2onnx")
    level, propagate = tf2onnx_log.level, tf2onnx_log.propagate
    # Its INFO lines would drown the init container's log, and its errors are re-raised below as one message.
    tf2onnx_log.setLevel(logging.WARNING)
    tf2onnx_log.propagate = False
    tf2onnx_log.addHandler(handler)
    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(saved_model_dir), None, None, signatures=["serving_default"], return_tensors_to_rename=True)
        model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                                  opset=opset, tensors_to_rename=renames)
    except Exception as exc:  # tf2onnx raises plain exceptions of many types
        raise ArtifactError(f"{saved_model_dir}: tf2onnx could not convert the graph: {exc}") from exc
    finally:
        tf2onnx_log.removeHandler(handler)
        tf2onnx_log.setLevel(level)
        tf2onnx_log.propagate = propagate

    unsupported = sorted(nonstandard_ops(model))
    if unsupported or any("Unsupported ops" in m for m in handler.messages):
        names = ", ".join(unsupported) or "; ".join(handler.messages)
        raise ArtifactError(
            f"{saved_model_dir}: the preprocessing graph uses ops ONNX cannot express: {names}. tf2onnx left them "
            "unconverted; the graph must start at decoded uint8 pixels and numbers (decode files and tokenize "
            "text outside it)")
    name_dynamic_dims(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{onnx_path}: the converted model is not valid ONNX: {exc}") from exc
    onnx.save_model(model, str(onnx_path))
    return model


def name_dynamic_dims(model: Any) -> None:
    """Give the dynamic dimensions readable names (tf2onnx calls them unk__N)."""
    names = {INPUT_IMAGE: ["batch", "height", "width"]}
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, names.get(value.name, ["batch"])):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def nonstandard_ops(model: Any) -> set[str]:
    """Nodes (subgraphs included) that are not standard ONNX operators, as ``domain:op`` / ``op``."""
    from onnx import defs

    found: set[str] = set()

    def visit(graph: Any) -> None:
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS or not defs.has(node.op_type, node.domain):
                found.add(f"{node.domain}:{node.op_type}" if node.domain else node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    return found


# ------------------------------------------------------------------------------------------ parity


def parity_images(paths: Sequence[str], image_size: int, count: int = PARITY_IMAGES) -> list[np.ndarray]:
    """Up to ``count`` real training images, each at its own size and at the training size (uint8 HWC)."""
    import tensorflow as tf

    from kubefusion.data.images import decode_image_file

    images = []
    for path in list(paths)[:count]:
        images.append(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy())
        images.append(decode_image_file(path, image_size))
    return images


def parity_numeric_rows(train_numeric: np.ndarray, count: int = PARITY_NUMERIC_ROWS) -> np.ndarray:
    """Training rows (missing values included) plus a row with every value missing."""
    rows = np.asarray(train_numeric, np.float32)[:count]
    return np.concatenate([rows, np.full((1, rows.shape[1]), np.nan, np.float32)])


def check_parity(saved_model_dir: Path, onnx_path: Path, images: Sequence[np.ndarray], numeric_rows: np.ndarray,
                 tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Run TensorFlow (the SavedModel) and onnxruntime (the ONNX file) on the same inputs; raise
    :class:`ArtifactError` if any output differs by more than ``tolerance``."""
    from kubefusion.preprocess.runtime import onnx_runner, tf_runner

    onnx_run = onnx_runner(onnx_path, threads=None)
    tf_run = tf_runner(saved_model_dir)
    features = numeric_rows.shape[1]
    batches = [(img[None], numeric_rows[i % len(numeric_rows)][None]) for i, img in enumerate(images)]
    # One batch of many rows (with images of one size) exercises the dynamic batch dimension.
    stacked = np.zeros((len(numeric_rows), 8, 8, 3), np.uint8)
    if images:
        stacked[:] = np.asarray(images[0][:8, :8])
    batches.append((stacked, numeric_rows.reshape(-1, features)))
    worst = {OUTPUT_PIXELS: 0.0, OUTPUT_NUMERIC: 0.0}
    for image, numeric in batches:
        for name, a, b in zip((OUTPUT_PIXELS, OUTPUT_NUMERIC), onnx_run(image, numeric), tf_run(image, numeric)):
            if a.shape != b.shape:
                raise ArtifactError(f"{onnx_path}: output {name} has shape {a.shape} in onnxruntime but "
                                    f"{b.shape} in TensorFlow (input {INPUT_IMAGE} {image.shape})")
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                raise ArtifactError(f"{onnx_path}: output {name} has NaN where TensorFlow has none (or vice versa)")
            diff = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
            worst[name] = max(worst[name], diff)
            if diff > tolerance:
                raise ArtifactError(
                    f"{onnx_path}: onnxruntime and TensorFlow differ by {diff:.3g} on {name} (tolerance "
                    f"{tolerance:g}; {INPUT_IMAGE} {image.shape}, {INPUT_NUMERIC} {numeric.shape})")
    return {"tolerance": tolerance, "max_abs_diff": worst, "images": len(images),
            "numeric_rows": int(len(numeric_rows)), "batches": len(batches)}


# --------------------------------------------------------------------------------------- tokenizer


def save_tokenizer(name: str, dest: Path) -> dict[str, Any]:
    """Save the job's Hugging Face tokenizer into the artifact, so serving needs nothing else."""
    from kubefusion.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(name)
    if not getattr(tokenizer, "is_fast", False):
        raise ArtifactError(f"spec.preprocessing.tokenizer: {name!r} has no fast tokenizer (tokenizer.json); "
                            "serving reads tokenizer.json with the tokenizers library")
    tokenizer.save_pretrained(str(dest))
    if not (dest / "tokenizer.json").is_file():
        raise ArtifactError(f"{dest}: saving tokenizer {name!r} wrote no tokenizer.json")
    return {
        "name": name,
        "class": type(tokenizer).__name__,
        "files": sorted(p.name for p in dest.iterdir()),
        "pad_token": tokenizer.pad_token,
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": tokenizer.padding_side,
        "vocab_size": int(len(tokenizer)),
        "truncation": "longest_first",
    }
