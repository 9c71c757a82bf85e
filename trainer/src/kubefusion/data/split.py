"""Stratified, reproducible train / validation / test splits: :func:`split_records`.

Per class, the records are put in id order, shuffled with a generator seeded by ``seed`` (``spec.data.splitSeed``),
and the first ``round(n * validation_fraction)`` go to validation, the next ``round(n * test_fraction)`` to test,
the rest to train. The result depends only on the ids, labels and seed: not on the order of the input list
(files list rows in any order) and not on the training seed. Each split comes back in id order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from kubefusion.data.records import Record
from kubefusion.errors import DataError

SPLITS = ("train", "validation", "test")


def split_records(
    records: Sequence[Record], validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Record]]:
    """{"train": [...], "validation": [...], "test": [...]}, stratified by label."""
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise DataError(
            f"validation fraction {validation_fraction} and test fraction {test_fraction} must be in [0, 1) "
            "and leave records for training"
        )
    by_label: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda r: r.id)
        order = rng.permutation(len(members))
        n_val = round(len(members) * validation_fraction)
        n_test = round(len(members) * test_fraction)
        for rank, position in enumerate(order):
            split = "validation" if rank < n_val else "test" if rank < n_val + n_test else "train"
            out[split].append(members[position])
    for name in SPLITS:
        out[name].sort(key=lambda r: r.id)
    if not out["train"] and records:
        raise DataError(f"no records left for training out of {len(records)}")
    return out
