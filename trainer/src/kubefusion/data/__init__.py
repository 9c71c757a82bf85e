"""The multimodal data layer: read, join by id, split, synthesise, validate, and feed PyTorch via tf.data.

Public API (docs/data.md has the full story):

- :func:`scan` (``kubefusion.data.reader``): read a dataset root under ``DataConfig``'s policies -> ``ScanResult``
  (``records``, ``classes``, ``numeric_columns``, ``report``).
- :func:`split_records` (``kubefusion.data.split``): stratified, reproducible train/validation/test.
- ``kubefusion.data.pipeline``: ``encode_records``, ``build_dataset``, ``torch_batches``, ``batches_per_epoch``.
- :func:`decode_image_file` (``kubefusion.data.images``): one image as the pipeline decodes it (for serving).
- :func:`load_tokenizer` (``kubefusion.data.tokenizer``): offline Hugging Face tokenizer.
- :func:`ensure_demo_data` (``kubefusion.data.synth``): the built-in demo dataset, synthesised once.

Importing this package costs numpy only; TensorFlow, transformers and torch load when first used.
"""

from __future__ import annotations

from typing import Any

from kubefusion.data.images import decode_image_file
from kubefusion.data.reader import scan
from kubefusion.data.records import BAD_REASONS, Record, ScanReport, ScanResult
from kubefusion.data.split import split_records

__all__ = [
    "BAD_REASONS",
    "Record",
    "ScanReport",
    "ScanResult",
    "decode_image_file",
    "ensure_demo_data",
    "load_tokenizer",
    "scan",
    "split_records",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `kubefusion data validate` never imports transformers.
    if name == "load_tokenizer":
        from kubefusion.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "ensure_demo_data":
        from kubefusion.data.synth import ensure_demo_data

        return ensure_demo_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
