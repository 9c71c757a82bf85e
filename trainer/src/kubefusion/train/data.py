"""The trainer's view of the data: scanned, split and tokenized once, then batches per split and epoch.

Built on :mod:`kubefusion.data` (scan, split_records, the tf.data pipeline). Every rank scans the same files
and splits them the same way (the split depends only on ids, labels and ``spec.data.splitSeed``), then reads
its own shard of each epoch; every rank gets the same number of batches, padding rows carry ``valid=False``.
The classes and numeric columns must be the ones the preprocessing artifact was built for.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubefusion.config import JobConfig
from kubefusion.errors import ArtifactError

log = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test", "ood")


@dataclass
class TrainingData:
    splits: dict[str, Any]
    """split name -> ``EncodedRecords`` (train, validation, test, and ood when there is an OOD set)."""
    classes: list[str]
    numeric_columns: list[str]
    image_size: int
    batch_size: int
    rank: int
    world_size: int
    seed: int
    dataset_facts: dict[str, Any]
    """The dataset's own ``dataset.json`` when it has one (the demo data records its best achievable accuracy)."""

    def sizes(self) -> dict[str, int]:
        return {name: len(records) for name, records in self.splits.items()}

    def batches_per_epoch(self, split: str = "train") -> int:
        from kubefusion.data.pipeline import batches_per_epoch

        return batches_per_epoch(len(self.splits[split]), self.batch_size, self.world_size)

    def batches(self, split: str, *, epoch: int = 0, skip: int = 0, limit: int | None = None) -> Iterator[dict]:
        """This rank's batches of ``split``; ``train`` is reshuffled per epoch from (seed, epoch), the others
        are read in order. ``skip`` starts that many batches into the epoch (resuming mid-epoch at the same
        position, without reading the skipped images); ``limit`` ends the epoch after that many batches."""
        from kubefusion.data.pipeline import torch_batches

        stream = torch_batches(self.splits[split], image_size=self.image_size, batch_size=self.batch_size,
                               rank=self.rank, world_size=self.world_size, seed=self.seed, epoch=epoch,
                               shuffle=split == "train", skip_batches=skip)
        return itertools.islice(stream, None if limit is None else max(0, limit - skip))


def load_training_data(job: JobConfig, data_root: str | Path, *, manifest: dict[str, Any], tokenizer: Any,
                       rank: int, world_size: int) -> TrainingData:
    from kubefusion.data import _gfile
    from kubefusion.data.pipeline import encode_records
    from kubefusion.data.reader import scan
    from kubefusion.data.split import split_records

    scanned = scan(job.data, data_root)
    _same_as_artifact(data_root, "classes", scanned.classes, manifest.get("classes"))
    _same_as_artifact(data_root, "numeric columns", scanned.numeric_columns, manifest.get("numeric_columns"))
    splits = split_records(scanned.records, job.data.validation_fraction, job.data.test_fraction,
                           job.data.split_seed)
    ood_root = _ood_root(job, data_root)
    if ood_root is not None:
        splits["ood"] = scan(job.data, ood_root, classes=scanned.classes).records
    for name, records in splits.items():
        if not records:
            log.warning("warning: the %s split of %s is empty", name, data_root)
    width = len(scanned.numeric_columns)
    encoded = {name: encode_records(records, tokenizer=tokenizer, max_tokens=job.preprocessing.max_tokens,
                                    num_numeric=width)
               for name, records in splits.items() if records}
    facts_file = _gfile.join(data_root, "dataset.json")
    facts = {}
    if _gfile.exists(facts_file) and not _gfile.isdir(facts_file):
        with _gfile.readable(facts_file):
            facts = json.loads(_gfile.read_bytes(facts_file))
    return TrainingData(splits=encoded, classes=scanned.classes, numeric_columns=scanned.numeric_columns,
                        image_size=job.preprocessing.image_size, batch_size=job.training.batch_size_per_gpu,
                        rank=rank, world_size=world_size, seed=job.training.seed, dataset_facts=facts)


def _ood_root(job: JobConfig, data_root: str | Path) -> str | Path | None:
    """``spec.data.oodPath``, else ``<data root>/ood`` when it is a folder (local or URI alike, via gfile)."""
    from kubefusion.data import _gfile

    if job.data.ood_path:
        return job.resolve(job.data.ood_path)
    candidate = _gfile.join(data_root, "ood")
    return candidate if _gfile.isdir(candidate) else None


def _same_as_artifact(data_root: str | Path, what: str, found: list[str], expected: list[str] | None) -> None:
    if expected is not None and list(expected) != list(found):
        raise ArtifactError(
            f"{data_root}: the data has {what} {found}, the preprocessing artifact was built for {list(expected)}; "
            "rerun `kubefusion preprocess` on this data")
