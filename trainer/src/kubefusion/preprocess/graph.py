"""The TensorFlow preprocessing graph, exported once as a SavedModel and converted to ONNX.

It starts at decoded pixels and numbers because tf2onnx cannot convert JPEG/PNG decoding, file reads or
string tokenisation; decoding happens in tf.data (training) or PIL (serving), tokenisation in the Hugging
Face tokenizer saved beside the graph.

    image        uint8   [batch, height, width, 3]  (any height and width)
    numeric_raw  float32 [batch, F]                  (NaN = missing)
 -> pixel_values float32 [batch, 3, S, S]            bilinear resize to S = imageSize, /255, (x - mean) / std
    numeric      float32 [batch, F]                  NaN -> training mean, then (x - mean) / std

The resize is bilinear with half-pixel centres and no antialiasing (what ``tf.image.resize(..., "bilinear")``
computes), spelled out as gathers and lerps rather than one ``ResizeBilinear`` op: tf2onnx turns that op into
ONNX ``Resize``, whose source coordinates onnxruntime derives from a differently rounded scale, and on the
scikit-learn photographs the two then differ by up to 1.8e-4 after normalisation (measured; the parity bound
is 1e-4). With the coordinates computed by the same elementwise float ops in both runtimes, they agree to
float rounding. Antialiased resizing is not an option either: it becomes ScaleAndTranslate, which tf2onnx
does not convert.
All statistics enter the graph as numpy constants created inside the traced function: a ``tf.constant``
captured from outside a ``tf.function`` would become an extra graph input in the converted model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from kubefusion.preprocess.artifact import INPUT_IMAGE, INPUT_NUMERIC, OUTPUT_NUMERIC, OUTPUT_PIXELS
from kubefusion.preprocess.stats import NumericStatistics

SIGNATURE = "serving_default"


class PreprocessModule(tf.Module):
    """Resize + normalise images (NHWC uint8 -> NCHW float) and impute + standardise numeric columns."""

    def __init__(self, image_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                 numeric: NumericStatistics) -> None:
        super().__init__(name="kubefusion_preprocess")
        self.image_size = int(image_size)
        self._pixel_mean = np.asarray(image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._pixel_std = np.asarray(image_std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._num_mean = np.asarray(numeric.mean, dtype=np.float32).reshape(1, -1)
        self._num_std = np.asarray(numeric.std, dtype=np.float32).reshape(1, -1)
        features = self._num_mean.shape[1]
        self.__call__ = tf.function(
            self._preprocess,
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGE),
                tf.TensorSpec([None, features], tf.float32, name=INPUT_NUMERIC),
            ],
        )

    def _preprocess(self, image: tf.Tensor, numeric_raw: tf.Tensor) -> dict[str, tf.Tensor]:
        # Channels first before any arithmetic: onnxruntime broadcasts a per-channel constant over a
        # contiguous H*W plane several times faster than over a trailing axis of 3.
        pixels = resize_bilinear(tf.cast(tf.transpose(image, [0, 3, 1, 2]), tf.float32), self.image_size)
        pixels = (pixels / 255.0 - tf.constant(self._pixel_mean)) / tf.constant(self._pixel_std)
        mean = tf.constant(self._num_mean)
        imputed = tf.where(tf.math.is_nan(numeric_raw), mean, numeric_raw)
        numeric = (imputed - mean) / tf.constant(self._num_std)
        return {OUTPUT_PIXELS: tf.identity(pixels, name=OUTPUT_PIXELS),
                OUTPUT_NUMERIC: tf.identity(numeric, name=OUTPUT_NUMERIC)}


def _source_coordinates(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """For each output index along one axis: the two source indices and the weight of the second."""
    scale = tf.cast(in_size, tf.float32) / float(out_size)
    centre = (tf.range(out_size, dtype=tf.float32) + 0.5) * scale - 0.5
    floor = tf.math.floor(centre)
    last = in_size - 1
    lower = tf.clip_by_value(tf.cast(floor, tf.int32), 0, last)
    upper = tf.clip_by_value(tf.cast(floor, tf.int32) + 1, 0, last)
    # Left of the first pixel centre both indices clamp to 0, so the weight there does not matter.
    return lower, upper, centre - floor


def resize_bilinear(pixels: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear, half-pixel-centre resize of float NCHW ``pixels`` to ``size`` x ``size``. Images already at
    the size (what the training pipeline hands over) skip the gathers: the resize would be the identity."""
    shape = tf.shape(pixels)
    at_size = tf.logical_and(tf.equal(shape[2], size), tf.equal(shape[3], size))
    out = tf.cond(at_size, lambda: tf.identity(pixels), lambda: _resize(pixels, shape, size))
    out.set_shape([None, 3, size, size])
    return out


def _resize(pixels: tf.Tensor, shape: tf.Tensor, size: int) -> tf.Tensor:
    top, bottom, dy = _source_coordinates(shape[2], size)
    left, right, dx = _source_coordinates(shape[3], size)
    dy = tf.reshape(dy, [1, 1, size, 1])
    upper_rows = tf.gather(pixels, top, axis=2)
    rows = upper_rows + (tf.gather(pixels, bottom, axis=2) - upper_rows) * dy
    left_cols = tf.gather(rows, left, axis=3)
    return left_cols + (tf.gather(rows, right, axis=3) - left_cols) * dx


def save_module(module: tf.Module, saved_model_dir: str) -> None:
    """Save with the call as the ``serving_default`` signature (what tf2onnx and the tf backend read)."""
    tf.saved_model.save(module, saved_model_dir, signatures={SIGNATURE: module.__call__.get_concrete_function()})
