"""Serving's numpy resize gives the training pipeline's TensorFlow pixels (kubefusion.serve.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sklearn

from kubefusion.errors import DataError
from kubefusion.serve.images import decode_image, resize_like_training

PHOTOS = Path(sklearn.__file__).parent / "datasets" / "images"


def test_an_image_at_the_size_is_untouched_and_a_flat_one_stays_flat():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert resize_like_training(image, 16) is image
    flat = np.full((37, 53, 3), 200, np.uint8)
    np.testing.assert_array_equal(resize_like_training(flat, 8), np.full((8, 8, 3), 200, np.uint8))
    np.testing.assert_array_equal(resize_like_training(flat, 90), np.full((90, 90, 3), 200, np.uint8))


def test_a_two_to_one_downscale_averages_pixel_pairs_with_the_triangle_kernel():
    # Output pixel 0 samples at 1.0 in input coordinates, kernel radius 2: inputs 0,1,2 sit at -0.5, 0.5, 1.5
    # from it, scaled by 1/2 that is weights 3/4, 3/4, 1/4, normalised by their sum 7/4.
    row = np.array([0, 70, 140, 210], np.uint8)
    image = np.repeat(np.repeat(row[None, :, None], 4, axis=0), 3, axis=2)
    out = resize_like_training(image, 2)
    expected_first = (0 * 0.75 + 70 * 0.75 + 140 * 0.25) / 1.75  # 50
    assert out[0, 0, 0] == round(expected_first)


def test_unreadable_images_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such image file"):
        decode_image(tmp_path / "none.png", 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        decode_image(tmp_path / "bad.png", 8)


@pytest.mark.slow  # imports TensorFlow
def test_served_pixels_equal_the_training_decode_on_photographs_and_odd_sizes(tmp_path):
    from PIL import Image

    from kubefusion.data import decode_image_file

    for name in ("china.jpg", "flower.jpg"):  # 427x640 JPEGs: large downscales, and an upscale at 700
        for size in (32, 224, 700):
            served = decode_image(PHOTOS / name, size)
            np.testing.assert_array_equal(served, decode_image_file(PHOTOS / name, size), err_msg=f"{name} {size}")
    rng = np.random.default_rng(1)
    for shape, size in (((17, 23, 3), 32), ((300, 500, 3), 32), ((5, 400, 3), 7)):
        path = tmp_path / f"{shape[0]}x{shape[1]}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        np.testing.assert_array_equal(decode_image(path, size), decode_image_file(path, size), err_msg=str(shape))
