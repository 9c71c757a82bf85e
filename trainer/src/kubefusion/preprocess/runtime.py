"""Apply the exported preprocessing: the same graph in training (any backend) and serving (onnx).

    pre = Preprocessor.load("/artifacts")                  # or backend="tf" (the SavedModel)
    pixel_values, numeric = pre(batch["image"], batch["numeric"])   # uint8 NHWC, raw float (NaN = missing)
    input_ids, attention_mask = pre.tokenize(["some text", ...])    # the tokenizer saved in the artifact
    pre.manifest["content_key"], pre.classes, pre.numeric_columns

Imports only numpy and the chosen runtime (onnxruntime or TensorFlow), and ``tokenizers`` when tokenising.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from kubefusion.errors import ArtifactError
from kubefusion.preprocess import artifact
from kubefusion.preprocess.artifact import (INPUT_IMAGE, INPUT_NUMERIC, ONNX_FILE, OUTPUT_NUMERIC, OUTPUT_PIXELS,
                                            SAVED_MODEL_DIR, TOKENIZER_DIR)

Backend = Literal["onnx", "tf"]
BACKENDS = ("onnx", "tf")


class Preprocessor:
    """One loaded preprocessing artifact. Thread-safe for concurrent calls (onnxruntime sessions are)."""

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], backend: Backend, runner: Any) -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.backend = backend
        self._run = runner
        self._tokenizer: Any = None

    @classmethod
    def load(cls, artifacts: str | Path, backend: Backend = "onnx", *, content_key: str | None = None,
             threads: int | None = 1, verify: bool = True) -> "Preprocessor":
        """Load from the ARTIFACTS folder given to ``kubefusion preprocess`` (``latest.json`` picks the
        artifact, or ``content_key`` does) or from one artifact folder. ``verify`` checks every file's sha256.
        ``threads``: onnxruntime intra-op threads; ``None`` lets it use every core. One by default: every rank
        of a pod runs its own copy per batch, and on a demo batch one thread was also the fastest (measured in
        benchmarks/preprocess_export.py)."""
        if backend not in BACKENDS:
            raise ArtifactError(f"preprocessing backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
        artifact_dir = artifact.resolve(Path(artifacts), content_key)
        if verify:
            try:
                manifest = artifact.verify(artifact_dir)
            except ArtifactError as exc:
                raise ArtifactError(
                    f"{artifact_dir}: corrupt preprocessing artifact ({exc}); rerun `kubefusion preprocess` with "
                    "this job's config and ARTIFACTS folder: it moves the folder aside and rebuilds it") from None
        else:
            manifest = artifact.read_manifest(artifact_dir)
        if content_key and manifest.get("content_key") != content_key:
            raise ArtifactError(f"{artifact_dir}: content key {manifest.get('content_key')} != {content_key}")
        if backend == "onnx":
            runner = onnx_runner(artifact_dir / ONNX_FILE, threads)
        else:
            runner = tf_runner(artifact_dir / SAVED_MODEL_DIR)
        return cls(artifact_dir, manifest, backend, runner)

    # ---- manifest views --------------------------------------------------------------------------------

    @property
    def content_key(self) -> str:
        return self.manifest["content_key"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def numeric_columns(self) -> list[str]:
        return list(self.manifest["numeric_columns"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def max_tokens(self) -> int:
        return int(self.manifest["max_tokens"])

    # ---- apply -----------------------------------------------------------------------------------------

    def __call__(self, image: Any, numeric: Any) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [B,H,W,3], float32 [B,F] with NaN) -> (float32 [B,3,S,S] pixel_values, float32 [B,F])."""
        image = np.ascontiguousarray(np.asarray(image))
        numeric = np.ascontiguousarray(np.asarray(numeric, dtype=np.float32))
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"image must be uint8 [batch, height, width, 3] (got {image.dtype} {image.shape})")
        features = len(self.numeric_columns)
        if numeric.ndim != 2 or numeric.shape[1] != features or numeric.shape[0] != image.shape[0]:
            raise ValueError(f"numeric must be float32 [{image.shape[0]}, {features}] (got {numeric.shape})")
        return self._run(image, numeric)

    # ---- text ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The saved ``tokenizers.Tokenizer``, padding and truncating to ``max_tokens`` like training."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer_json(self.artifact_dir / TOKENIZER_DIR, self.manifest["tokenizer"],
                                                  self.max_tokens)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids int64 [B, max_tokens], attention_mask int64 [B, max_tokens])."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.max_tokens)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
        return ids, mask


def load_tokenizer_json(folder: Path, info: dict[str, Any], max_tokens: int) -> Any:
    """The fast tokenizer from ``tokenizer.json`` via the ``tokenizers`` library (no transformers, no torch),
    with the padding and truncation the training pipeline used (recorded in the manifest)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (the artifact's tokenizer must be a fast tokenizer)")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(length=max_tokens, pad_id=int(info["pad_token_id"]), pad_token=info["pad_token"],
                       direction=info.get("padding_side", "right"))
    return tok


def onnx_runner(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ArtifactError(f"{path}: onnxruntime cannot load it ({exc})") from None
    outputs = [OUTPUT_PIXELS, OUTPUT_NUMERIC]

    def run(image: np.ndarray, numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels, num = session.run(outputs, {INPUT_IMAGE: image, INPUT_NUMERIC: numeric})
        return pixels, num

    return run


def tf_runner(path: Path) -> Any:
    import tensorflow as tf

    try:
        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: TensorFlow cannot load the SavedModel ({exc})") from None

    def run(image: np.ndarray, numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = fn(**{INPUT_IMAGE: tf.constant(image), INPUT_NUMERIC: tf.constant(numeric)})
        return out[OUTPUT_PIXELS].numpy(), out[OUTPUT_NUMERIC].numpy()

    return run
