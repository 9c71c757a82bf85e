"""The trainer's view of the data: scanned, split and tokenized once, then batches per split and epoch.

Built on :mod:`kubefusion.data` (scan, split_records, the tf.data pipeline). Every rank reads the CSVs and
keeps exactly the records the preprocessing artifact's record index lists (:mod:`kubefusion.data.index`;
``kubefusion preprocess`` decoded their images once), splits them the same way (the split depends only on
ids, labels and ``spec.data.splitSeed``), checks with an all-gather that every rank holds the same records,
then reads its own shard of each epoch; every rank gets the same number of batches, padding rows carry
``valid=False``. The classes and numeric columns must be the ones the preprocessing artifact was built for.
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
from kubefusion.errors import ArtifactError, DataError, UserError

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
                       rank: int, world_size: int, artifact_dir: str | Path) -> TrainingData:
    """Every rank's data, the same on every rank: the records the preprocessing artifact's record index lists
    (read from the CSVs without decoding every image again), split as preprocessing split them; the OOD split
    is verified (images decoded) on rank 0 only and every rank keeps rank 0's ids. Two all-gathers (always
    reached, also when a rank failed, so no rank waits for a collective another one skipped) make every rank
    fail together with the failing rank's message, and compare a digest of (ids, labels, split sizes)."""
    from kubefusion.data import _gfile
    from kubefusion.data.pipeline import encode_records
    from kubefusion.train.distributed import all_gather_object

    splits: dict[str, list[Any]] = {}
    numeric_columns: list[str] = []
    ood_ids: list[str] | None = None
    try:
        splits, numeric_columns, ood = _local_splits(job, data_root, manifest, Path(artifact_dir), rank)
        if rank == 0 and ood is not None:
            ood_ids = [r.id for r in ood]
        failure = None
    except UserError as exc:
        failure, ood = exc, None
    gathered = all_gather_object((_error_text(failure), ood_ids))
    _raise_rank_errors(failure, [g[0] for g in gathered])
    try:
        if ood is not None:
            splits["ood"] = _keep_ids(ood, gathered[0][1], data_root, rank)
        failure = None
    except UserError as exc:
        failure = exc
    digest = None if failure else splits_digest(splits)
    gathered = all_gather_object((_error_text(failure), digest))
    _raise_rank_errors(failure, [g[0] for g in gathered])
    check_same_data([g[1] for g in gathered], {name: len(records) for name, records in splits.items()})

    for name, records in splits.items():
        if not records:
            log.warning("warning: the %s split of %s is empty", name, data_root)
    width = len(numeric_columns)
    encoded = {name: encode_records(records, tokenizer=tokenizer, max_tokens=job.preprocessing.max_tokens,
                                    num_numeric=width)
               for name, records in splits.items() if records}
    facts_file = _gfile.join(data_root, "dataset.json")
    facts = {}
    if _gfile.exists(facts_file) and not _gfile.isdir(facts_file):
        with _gfile.readable(facts_file):
            facts = json.loads(_gfile.read_bytes(facts_file))
    return TrainingData(splits=encoded, classes=list(manifest["classes"]), numeric_columns=numeric_columns,
                        image_size=job.preprocessing.image_size, batch_size=job.training.batch_size_per_gpu,
                        rank=rank, world_size=world_size, seed=job.training.seed, dataset_facts=facts)


def _local_splits(job: JobConfig, data_root: str | Path, manifest: dict[str, Any], artifact_dir: Path,
                  rank: int) -> tuple[dict[str, list[Any]], list[str], list[Any] | None]:
    """(train/validation/test records, numeric columns, OOD records before agreeing on rank 0's ids)."""
    from kubefusion.data.index import INDEX_FILE, RecordIndex, select
    from kubefusion.data.reader import scan
    from kubefusion.data.split import split_records

    if "record_index" not in manifest:
        raise ArtifactError(f"{artifact_dir}: the preprocessing artifact has no record index (made by an older "
                            "kubefusion); rerun `kubefusion preprocess`")
    index = RecordIndex.load(artifact_dir / INDEX_FILE)
    _same_as_artifact(data_root, "classes", index.classes, manifest.get("classes"))
    # The artifact's export decoded every image already; decoding them again on every rank at every restart
    # is what this index exists to avoid (a corrupt file would fail the pipeline instead).
    scanned = scan(job.data, data_root, classes=index.classes, verify_images=False)
    _same_as_artifact(data_root, "numeric columns", scanned.numeric_columns, manifest.get("numeric_columns"))
    records = select(index, scanned, source=str(data_root))
    splits = split_records(records, job.data.validation_fraction, job.data.test_fraction, job.data.split_seed)
    expected = {name: manifest["split"][name] for name in splits if name in manifest.get("split", {})}
    found = {name: len(splits[name]) for name in expected}
    if found != expected:
        raise ArtifactError(f"{data_root}: split sizes {found} differ from the preprocessing artifact's {expected} "
                            "(spec.data split settings changed?); rerun `kubefusion preprocess`")
    ood_root = _ood_root(job, data_root)
    ood = None
    if ood_root is not None:
        # Not in the artifact (its content key leaves the OOD folder out): rank 0 alone decodes its images and
        # the other ranks keep exactly rank 0's ids.
        ood = scan(job.data, ood_root, classes=index.classes, verify_images=rank == 0).records
    return splits, scanned.numeric_columns, ood


def _keep_ids(records: list[Any], ids: list[str] | None, data_root: str | Path, rank: int) -> list[Any]:
    if ids is None:
        raise DataError(f"{data_root}: rank {rank} found an OOD folder that rank 0 did not; every pod must see "
                        "the same data")
    by_id = {r.id: r for r in records}
    absent = [i for i in ids if i not in by_id]
    if absent:
        raise DataError(f"{data_root}: rank {rank} cannot read {len(absent)} OOD record(s) rank 0 read (first: id "
                        f"{absent[0]!r}); every pod must see the same data")
    return [by_id[i] for i in ids]


def splits_digest(splits: dict[str, list[Any]]) -> str:
    """One string per rank naming its records: the split names and sizes and a digest of each split's
    (ids, labels)."""
    from kubefusion.data.index import records_digest

    return ";".join(f"{name}={len(records)}:{records_digest([r.id for r in records], [r.label for r in records])[:16]}"
                    for name, records in sorted(splits.items()))


def check_same_data(digests: list[str], sizes: dict[str, int]) -> None:
    """Raise :class:`DataError` naming the ranks whose records differ from rank 0's."""
    differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differing:
        raise DataError(
            f"rank{'s' if len(differing) > 1 else ''} {', '.join(map(str, differing))} loaded other records than rank 0 (rank 0: {digests[0]}; "
            f"rank {differing[0]}: {digests[differing[0]]}; this rank's split sizes {sizes}); every pod must read "
            "the same data and preprocessing artifact")


def _error_text(failure: Exception | None) -> str | None:
    return None if failure is None else f"{type(failure).__name__}: {failure}"


def _raise_rank_errors(own: Exception | None, errors: list[str | None]) -> None:
    """Re-raise this rank's own error, else fail naming the first rank that failed."""
    if own is not None:
        raise own
    failed = [(rank, text) for rank, text in enumerate(errors) if text is not None]
    if failed:
        rank, text = failed[0]
        raise DataError(f"rank {rank} could not load the data ({text}); "
                        f"ranks that failed: {', '.join(str(r) for r, _ in failed)}")


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
