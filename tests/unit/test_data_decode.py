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


# ------------------------------------------------------------- the scan's decode check: read vs decode errors


def _two_pngs(tmp_path):
    paths = []
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    return paths


def test_an_image_that_decodes_on_the_second_look_is_not_corrupt(tmp_path, monkeypatch):
    from kubefusion.data import images

    paths = _two_pngs(tmp_path)
    (tmp_path / "c.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "c.png"))
    # A transient failure in the parallel pass (every file "failed" there): only the truly corrupt one is bad.
    monkeypatch.setattr(images, "_parallel_failures", lambda p: list(range(len(p))))
    failures = images.undecodable(paths)
    assert list(failures) == [2]


def test_a_read_error_is_retried_once_then_named_as_a_read_error(tmp_path, monkeypatch):
    import tensorflow as tf

    from kubefusion.data import images
    from kubefusion.errors import DataError

    paths = _two_pngs(tmp_path)
    real_read, calls = images._read, []

    def flaky(path, failures):
        calls.append(path)
        if calls.count(path) <= failures:
            raise tf.errors.UnavailableError(None, None, "connection reset by peer")
        return real_read(path)

    monkeypatch.setattr(images, "_parallel_failures", lambda p: [1])
    monkeypatch.setattr(images, "_read", lambda p: flaky(p, 1))
    assert images.undecodable(paths) == {}  # one failed read, then fine: not corrupt, not an error

    calls.clear()
    monkeypatch.setattr(images, "_read", lambda p: flaky(p, 2))
    with pytest.raises(DataError, match=r"b\.png: read error \(2 attempts\): connection reset by peer.*not a bad record"):
        images.undecodable(paths)
