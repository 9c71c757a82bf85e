"""Stratified, reproducible train/validation/test splits."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from kubefusion.data import Record, split_records
from kubefusion.errors import DataError


def records(n: int = 1000, classes: int = 4) -> list[Record]:
    return [Record(id=f"id{i:05d}", label=(i * 7) % classes, image_path=None, text="t",
                   numeric=np.zeros(1, np.float32), mask=(False, True, False)) for i in range(n)]


def ids(split: dict[str, list[Record]]) -> dict[str, list[str]]:
    return {name: [r.id for r in rs] for name, rs in split.items()}


def test_splits_are_disjoint_complete_and_stratified():
    data = records()
    split = split_records(data, 0.1, 0.2, seed=0)
    assert {name: len(rs) for name, rs in split.items()} == {"train": 700, "validation": 100, "test": 200}
    assert sorted(i for rs in ids(split).values() for i in rs) == sorted(r.id for r in data)
    for name, fraction in (("validation", 0.1), ("test", 0.2)):
        assert Counter(r.label for r in split[name]) == {label: 250 * fraction for label in range(4)}


def test_same_seed_same_split_whatever_the_input_order():
    data = records()
    shuffled = random.Random(1).sample(data, len(data))
    assert ids(split_records(data, 0.1, 0.1, seed=5)) == ids(split_records(shuffled, 0.1, 0.1, seed=5))
    assert ids(split_records(data, 0.1, 0.1, seed=5)) != ids(split_records(data, 0.1, 0.1, seed=6))


def test_zero_fractions_put_everything_in_train_and_bad_fractions_are_refused():
    assert len(split_records(records(10), 0.0, 0.0, seed=0)["train"]) == 10
    with pytest.raises(DataError, match="leave records for training"):
        split_records(records(10), 0.5, 0.5, seed=0)
