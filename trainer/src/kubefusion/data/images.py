"""Image decoding shared by the scan (is the file decodable?), the tf.data pipeline and serving.

One decode + resize for training and serving: :func:`decode_image_file` runs the very graph ops the pipeline
maps over its records, so a served image gets the same pixels a trained one did. Images are decoded to RGB
(grey and RGBA are converted; the first frame of an animation is used) and resized to a square with bilinear
interpolation and antialiasing, aspect ratio not kept; an image already at the size is passed through
untouched. Output: uint8 [H, W, 3].
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from kubefusion.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
"""Files in ``images/`` with these suffixes (any case) are images; the stem is the record id. The formats that
TensorFlow's decoder (training) and PIL (serving) both read, to the same pixels (tested)."""
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
"""The same formats by content, as PIL names them: serving refuses any other (a TIFF PIL could read would get
pixels training never saw)."""


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def formats_text() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _tf() -> Any:
    from kubefusion.data._tf import tensorflow  # noqa: PLC0415 (lazy: validate --help must not pay for it)

    return tensorflow()


def decode(contents: Any) -> Any:
    """Encoded bytes (tf.string scalar) -> uint8 [H, W, 3] tensor; raises a TF error on a corrupt file."""
    tf = _tf()

    # JPEG with the accurate integer IDCT: TF's default (fast) IDCT differs from libjpeg's standard one by up
    # to 18 grey levels, so PIL-based serving (`kubefusion predict`) would see other pixels than training did.
    def jpeg() -> Any:
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def other() -> Any:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, 3])
        return image

    return tf.cond(tf.io.is_jpeg(contents), jpeg, other)


def resize(image: Any, image_size: int) -> Any:
    """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3] (rounded, not truncated)."""
    tf = _tf()

    def scaled() -> Any:
        out = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    already = tf.reduce_all(tf.equal(tf.shape(image)[:2], image_size))
    out = tf.cond(already, lambda: image, scaled)
    out.set_shape([image_size, image_size, 3])
    return out


def decode_and_resize(contents: Any, image_size: int) -> Any:
    return resize(decode(contents), image_size)


def decode_image_file(path: str | Path, image_size: int) -> np.ndarray:
    """Read one image (:data:`IMAGE_FORMATS`; local path or URI) and return uint8 [image_size, image_size, 3], exactly as the
    training pipeline would. Raises :class:`DataError` naming the file when it is missing or corrupt."""
    tf = _tf()
    try:
        contents = tf.io.read_file(str(path))
        return decode_and_resize(contents, int(image_size)).numpy()
    except tf.errors.NotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot decode image: {first_line(exc.message)}") from None


def first_line(message: str) -> str:
    """A TF error message as one readable line (without the ``{{function_node ...}}`` and ``[Op:...]`` noise)."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message or "").strip()
    text = text.splitlines()[0] if text else "unknown error"
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip() or "unknown error"


def undecodable(paths: list[str]) -> dict[int, str]:
    """Which of ``paths`` do not decode, as {position: reason}. Decodes in parallel with tf.data (the same
    decoder as the pipeline, so a scan that passes means the pipeline will not meet a corrupt file).

    A file that fails in the parallel pass is checked again on its own: a file that cannot be *read* is read
    once more and, when that fails too, raises :class:`DataError` naming it (a storage problem, not a bad
    record: under ``skip`` it must not silently change which records train); a file that reads but does not
    decode is corrupt; a file that reads and decodes on the second look was a transient failure and is fine.
    """
    failures: dict[int, str] = {}
    for position in _parallel_failures(paths):
        reason = _decode_error(paths[position])
        if reason is not None:
            failures[position] = reason
    return failures


def _parallel_failures(paths: list[str]) -> list[int]:
    """Positions whose read or decode failed in one parallel tf.data pass (read and decode errors alike)."""
    if not paths:
        return []
    tf = _tf()
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), np.asarray(paths, dtype=object)))
    ds = ds.map(
        lambda i, p: (i, tf.shape(decode(tf.io.read_file(p)))[0]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ok = np.zeros(len(paths), dtype=bool)
    for positions, _ in ds.ignore_errors().batch(4096):
        ok[positions.numpy()] = True
    return [int(p) for p in np.flatnonzero(~ok)]


READ_ATTEMPTS = 2
"""A read error is retried once before it stops the scan."""


def _read(path: str) -> Any:
    return _tf().io.read_file(path)


def _decode_error(path: str) -> str | None:
    """Why ``path`` does not decode, None when it does; raises :class:`DataError` when it cannot be read."""
    tf = _tf()
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            contents = _read(path)
            break
        except tf.errors.OpError as exc:
            if attempt == READ_ATTEMPTS:
                what = "no such file (it was listed when the scan began)" \
                    if isinstance(exc, tf.errors.NotFoundError) else first_line(exc.message)
                raise DataError(
                    f"{path}: read error ({READ_ATTEMPTS} attempts): {what}; the file could not be read, which is "
                    "a storage problem, not a bad record: fix the storage (or the file) and run again") from None
    try:
        decode(contents)
    except tf.errors.OpError as exc:
        return first_line(exc.message)
    return None
