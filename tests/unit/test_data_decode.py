"""Training decodes with TensorFlow, serving with PIL: both must see the same pixels."""

from pathlib import Path

import numpy as np
import pytest
import sklearn
from PIL import Image

PHOTOS = sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_jpeg_decode_matches_pil_exactly(photo):
    import tensorflow as tf

    from kubefusion.data.images import decode

    ours = decode(tf.io.read_file(str(photo))).numpy()
    pil = np.asarray(Image.open(photo).convert("RGB"))
    assert ours.shape == pil.shape
    assert np.array_equal(ours, pil)


def test_png_decode_matches_pil(tmp_path):
    import tensorflow as tf

    from kubefusion.data.images import decode

    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    assert np.array_equal(decode(tf.io.read_file(str(tmp_path / "x.png"))).numpy(), pixels)
