"""``kubefusion predict --artifacts DIR (--data DATASET | --image F --text T --numeric a,b,c) [--json]``.

Serves from the folder ``kubefusion export`` wrote, with onnxruntime, the ``tokenizers`` library, PIL and
numpy only: neither torch nor TensorFlow is imported (a test runs this command under an import blocker).

Images: PIL decodes the file to RGB and, when it is not already ``imageSize`` square,
:func:`kubefusion.serve.images.resize_like_training` resizes it with TensorFlow's antialiased bilinear
arithmetic in numpy and rounds to uint8, which is what the training pipeline's TensorFlow decode
(:func:`kubefusion.data.images.decode_image_file`) does; the pixels are identical on the photographs (tested). The uint8 pixels then go through the
exported preprocessing graph, like in training. Feeding the full-size image to the graph instead would use its
plain bilinear resize, which aliases on large downscales and would not match training.

Text: the tokenizer saved in the artifact, padded and truncated to ``maxTokens`` as in training. Numbers: an
empty entry (``1.5,,3``) is a missing value, imputed by the graph. A modality left out is absent (mask false)
and gets the training pipeline's filler (zero image, empty text, zero numbers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kubefusion.data.location import dataset_location
from kubefusion.errors import ArtifactError, UserError
from kubefusion.preprocess import artifact
from kubefusion.preprocess.runtime import Preprocessor
from kubefusion.serve.dataset import read_dataset
from kubefusion.serve.images import decode_image

MODEL_FILE = "model.onnx"
MODEL_INFO = "model.json"
BATCH = 64
MODEL_INFO_KEYS = {"files": dict, "content_key": str, "classes": list}
PREPROCESSING_KEYS = ("content_key", "classes", "numeric_columns", "image_size", "max_tokens", "tokenizer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", required=True, type=Path, help="folder written by `kubefusion export`")
    parser.add_argument("--data", type=Path,
                        help="dataset to predict: a folder (images/, text.csv id,text[,label], numeric.csv "
                             "id,<columns>[,label]; any may be absent), or a manifest CSV "
                             "(id,image,text,<columns>[,label]) or its folder with --manifest; labels are optional")
    parser.add_argument("--manifest", type=Path,
                        help="the manifest CSV of --data DIR: a path from here (DIR/manifest.csv), or a name in DIR")
    parser.add_argument("--image", type=Path, help="one sample's image file")
    parser.add_argument("--text", help="one sample's text")
    parser.add_argument("--numeric", help="one sample's comma-separated numbers; an empty entry is missing")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    one_sample = any(v is not None for v in (args.image, args.text, args.numeric))
    if (args.data is not None) == one_sample:
        raise UserError("give either --data DATASET or one sample's --image/--text/--numeric (any of them)")
    if args.manifest is not None and args.data is None:
        raise UserError("--manifest goes with --data DIR")
    server = Server.load(args.artifacts, threads=args.threads)
    if args.data is not None:
        where = dataset_location(args.data, args.manifest)
        result = server.predict_dataset(Path(where.root) / where.manifest if where.manifest else Path(where.root))
    else:
        result = {"predictions": [server.predict_one(image=args.image, text=args.text, numeric=args.numeric)]}
    _print(result, as_json=args.json)
    return 0


class Server:
    """The exported preprocessing and model in onnxruntime."""

    def __init__(self, folder: Path, info: dict[str, Any], pre: Preprocessor, session: Any) -> None:
        self.folder = folder
        self.info = info
        self.pre = pre
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, folder: Path, *, threads: int | None = None) -> "Server":
        import onnxruntime as ort

        folder = Path(folder)
        info = read_model_info(folder)
        for name, digest in info["files"].items():
            path = folder / name
            if not path.is_file() or artifact.sha256_file(path) != digest:
                raise ArtifactError(f"{path}: missing or its sha256 differs from {MODEL_INFO}")
        pre = Preprocessor.load(folder, "onnx", threads=threads)
        missing = [k for k in PREPROCESSING_KEYS if k not in pre.manifest]
        if missing:
            raise ArtifactError(f"{folder / artifact.MANIFEST}: lacks {', '.join(missing)}; not a complete export")
        if pre.content_key != info["content_key"]:
            raise ArtifactError(f"{folder}: preprocessing {pre.content_key} but the model expects {info['content_key']}")
        try:
            pre.tokenizer  # noqa: B018 (loaded now, so a damaged tokenizer fails here with its file named)
        except ArtifactError:
            raise
        except Exception as exc:  # the tokenizers library raises plain Exceptions for unreadable files
            raise ArtifactError(f"{folder / 'tokenizer'}: cannot load the tokenizer ({_first_line(exc)})") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
            raise ArtifactError(f"{folder / MODEL_FILE}: onnxruntime cannot load it ({_first_line(exc)})") from None
        return cls(folder, info, pre, session)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    # ---- core ------------------------------------------------------------------------------------------

    def logits(self, images: np.ndarray, texts: Sequence[str], numeric: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """uint8 [B,S,S,3], B texts, raw float32 [B,F] (NaN = missing), bool [B,3] -> float32 [B, classes]."""
        pixel_values, numeric_std = self.pre(images, numeric)
        input_ids, attention_mask = self.pre.tokenize(texts)
        feed = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                "numeric": numeric_std, "modality_mask": mask.astype(bool)}
        return self.session.run(["logits"], {name: feed[name] for name in self.inputs})[0]

    def _rows(self, ids: Sequence[str], logits: np.ndarray, labels: Sequence[int | None]) -> list[dict[str, Any]]:
        probs = softmax(logits)
        rows = []
        for rid, p, label in zip(ids, probs, labels):
            best = int(np.argmax(p))
            row = {"id": rid, "predicted": self.classes[best], "predicted_index": best,
                   "probability": round(float(p[best]), 6),
                   "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p)}}
            if label is not None:
                row["label"] = self.classes[label]
            rows.append(row)
        return rows

    # ---- one sample ------------------------------------------------------------------------------------

    def predict_one(self, *, image: Path | None, text: str | None, numeric: str | None) -> dict[str, Any]:
        if image is None and text is None and numeric is None:
            raise UserError("give at least one of --image, --text, --numeric")
        size = self.pre.image_size
        pixels = decode_image(image, size) if image is not None else np.zeros((size, size, 3), np.uint8)
        values = parse_numeric(numeric, self.pre.numeric_columns) if numeric is not None else \
            np.zeros(len(self.pre.numeric_columns), np.float32)
        mask = np.array([[image is not None, text is not None, numeric is not None]])
        logits = self.logits(pixels[None], [text or ""], values[None], mask)
        name = str(image) if image is not None else "sample"
        return self._rows([name], logits, [None])[0]

    # ---- a dataset -------------------------------------------------------------------------------------

    def predict_dataset(self, root: Path) -> dict[str, Any]:
        records = read_dataset(root, self.classes, self.pre.numeric_columns)
        size = self.pre.image_size
        rows: list[dict[str, Any]] = []
        for start in range(0, len(records), BATCH):
            chunk = records[start:start + BATCH]
            images = np.stack([decode_image(Path(r.image_path), size) if r.image_path else
                               np.zeros((size, size, 3), np.uint8) for r in chunk])
            texts = [r.text or "" for r in chunk]
            numeric = np.stack([np.asarray(r.numeric, np.float32) for r in chunk]).reshape(
                len(chunk), len(self.pre.numeric_columns))
            mask = np.array([r.mask for r in chunk], dtype=bool)
            rows += self._rows([r.id for r in chunk], self.logits(images, texts, numeric, mask),
                               [r.label for r in chunk])
        labelled = [r for r in rows if "label" in r]
        correct = sum(r["predicted"] == r["label"] for r in labelled)
        return {"predictions": rows, "records": len(rows), "labelled": len(labelled),
                "accuracy": round(correct / len(labelled), 6) if labelled else None}


def read_model_info(folder: Path) -> dict[str, Any]:
    """model.json, checked for what serving reads from it; a missing or damaged file is one ArtifactError."""
    path = folder / MODEL_INFO
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"--artifacts {folder}: a file, not a folder; give the folder `kubefusion export` wrote")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        from kubefusion.serve.export import previous_dir

        if not folder.exists() and previous_dir(folder).is_dir():
            raise ArtifactError(f"{folder}: missing; an export died while replacing it and left the previous export "
                                f"at {previous_dir(folder)} (the next `kubefusion export --out {folder}` puts it "
                                "back, or rename it)") from None
        raise ArtifactError(f"{path}: missing; --artifacts must be a folder written by `kubefusion export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); export the model again") from None
    if not isinstance(info, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(info).__name__}; export the model again")
    for key, kind in MODEL_INFO_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise ArtifactError(f"{path}: {key!r} missing or not a {kind.__name__}; export the model again")
    return info


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def parse_numeric(value: str, columns: Sequence[str]) -> np.ndarray:
    cells = value.split(",")
    if len(cells) != len(columns):
        raise UserError(f"--numeric: {len(cells)} values given, the model takes {len(columns)} "
                        f"({', '.join(columns)})")
    out = np.full(len(cells), np.nan, np.float32)
    for i, (cell, column) in enumerate(zip(cells, columns)):
        cell = cell.strip()
        if cell and cell.lower() != "nan":
            try:
                out[i] = float(cell)
            except ValueError:
                raise UserError(f"--numeric: {column} = {cell!r} is not a number") from None
            if not np.isfinite(out[i]):
                raise UserError(f"--numeric: {column} = {cell!r} is not finite")
    return out


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for row in result["predictions"]:
        truth = f"  (label {row['label']})" if "label" in row else ""
        print(f"{row['id']}\t{row['predicted']}\t{row['probability']:.4f}{truth}")
    if result.get("accuracy") is not None:
        print(f"accuracy {result['accuracy']:.4f} on the {result['labelled']} labelled of {result['records']} "
              "records")
    elif "records" in result:
        print(f"{result['records']} records, none labelled: no accuracy")
