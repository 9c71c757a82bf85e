"""Serving's image decode: PIL decodes, numpy resizes exactly like the training pipeline.

Training decodes with TensorFlow and resizes with ``tf.image.resize(..., "bilinear", antialias=True)``, then
rounds to uint8 (:mod:`kubefusion.data.images`). That resize is TensorFlow's ``ScaleAndTranslate`` with the
triangle kernel: each output pixel is a normalised, triangle-weighted mean of the input pixels under a kernel
widened by the downscale factor. PIL's antialiased bilinear uses the same idea with other span and rounding
rules (1 grey level apart on 13% of the pixels of the scikit-learn photographs at 224 px), and serving must not import TensorFlow, so
:func:`resize_like_training` computes TensorFlow's spans and weights in float32 and accumulates in its order:
rows first, then columns, each a running float32 sum over the span. Measured on the photographs:
identical to TensorFlow's float output and uint8 pixels (see docs/onnx.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kubefusion.errors import DataError


def _spans(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TensorFlow's ``ComputeSpans`` for the triangle kernel with antialiasing, translation 0:
    (start index [out], normalised weights [out, span]) in float32, zero-padded past a span's end."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))
    radius = np.float32(1.0) * kernel_scale
    span = min(2 * int(np.ceil(radius)) + 1, in_size)
    sample = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * inv_scale
    start = np.clip(np.ceil(sample - radius - np.float32(0.5)).astype(np.int64), 0, in_size - 1)
    end = np.clip(np.floor(sample + radius - np.float32(0.5)).astype(np.int64), 0, in_size - 1) + 1
    source = start[:, None] + np.arange(span)[None, :]
    position = source.astype(np.float32) + np.float32(0.5) - sample[:, None]
    weights = np.maximum(np.float32(1.0) - np.abs(position * (np.float32(1.0) / kernel_scale)), np.float32(0.0))
    weights[source >= end[:, None]] = 0.0
    total = np.zeros(out_size, np.float32)
    for k in range(span):  # TF sums the weights one by one, in span order
        total += weights[:, k]
    weights = (weights * (np.float32(1.0) / total)[:, None]).astype(np.float32)
    return start, weights


def _gather(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """Resample ``image`` (float32 or uint8, [H, W, C]) along ``axis`` (0 rows, 1 columns) to ``out_size``."""
    in_size = image.shape[axis]
    start, weights = _spans(out_size, in_size)
    moved = np.moveaxis(image, axis, 0)
    out = np.zeros((out_size,) + moved.shape[1:], np.float32)
    last = in_size - 1
    for k in range(weights.shape[1]):
        rows = moved[np.minimum(start + k, last)].astype(np.float32)
        out += weights[:, k].reshape((-1,) + (1,) * (moved.ndim - 1)) * rows
    return np.moveaxis(out, 0, axis)


def resize_like_training(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] as :func:`kubefusion.data.images.resize` computes it (an image
    already at the size is returned as is)."""
    if image.shape[:2] == (size, size):
        return image
    rows = _gather(image, 0, size)
    resized = _gather(rows, 1, size)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def decode_image(path: Path, size: int) -> np.ndarray:
    """PIL decode to RGB (first frame) + :func:`resize_like_training`: uint8 [size, size, 3]."""
    from PIL import Image, UnidentifiedImageError

    from kubefusion.data.images import IMAGE_FORMATS, formats_text

    try:
        with Image.open(path) as img:
            if img.format not in IMAGE_FORMATS:
                raise DataError(f"{path}: a {img.format} image; training reads {formats_text()} only, so the "
                                "model has never seen this format's pixels (convert it)")
            img.seek(0)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from None
    return resize_like_training(rgb, size)
