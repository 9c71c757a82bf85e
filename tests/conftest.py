"""Shared fixtures (keep this file small; add a fixture here only when several test files need it)."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def id_coded_dataset(root: Path, n: int = 12, *, seed: int = 0, image_size: int = 8) -> Path:
    """A dataset in the three-file layout where every modality spells out its id ``r<k>`` (k < 256):
    the image is a flat grey of value k, the text is ``record <k>``, ``feature1`` is k (``feature2`` = 2k) and
    the label is ``c<k % 3>``. Rows are in a different shuffled order in each file."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ks = list(range(n))
    for k in rng.sample(ks, n):
        Image.fromarray(np.full((image_size, image_size, 3), k, dtype=np.uint8)).save(root / "images" / f"r{k:03d}.png")
    with open(root / "text.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows([f"r{k:03d}", f"record {k}", f"c{k % 3}"] for k in rng.sample(ks, n))
    with open(root / "numeric.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "feature1", "feature2", "label"])
        writer.writerows([f"r{k:03d}", k, 2 * k, f"c{k % 3}"] for k in rng.sample(ks, n))
    return root


@pytest.fixture
def id_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``id_dataset(n=12, seed=0)`` writes :func:`id_coded_dataset` under tmp_path and returns it."""

    def make(n: int = 12, *, seed: int = 0, name: str = "data", image_size: int = 8) -> Path:
        return id_coded_dataset(tmp_path / name, n, seed=seed, image_size=image_size)

    return make


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The offline BERT-uncased tokenizer of ``builtin:minilm``."""
    from kubefusion.data.tokenizer import load_tokenizer

    return load_tokenizer("builtin:minilm")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthesised demo dataset (300 records + 60 OOD, seed 0). Read-only: copy it before editing."""
    from kubefusion.data.synth import synthesize

    root = tmp_path_factory.mktemp("demo") / "demo"
    synthesize(root, samples=300, seed=0, progress=False)
    return root
