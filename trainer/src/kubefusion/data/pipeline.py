"""The tf.data input pipeline that feeds PyTorch.

Use::

    encoded = encode_records(splits["train"], tokenizer=tok, max_tokens=24)   # tokenize once
    for epoch in range(epochs):
        for batch in torch_batches(encoded, image_size=32, batch_size=64, rank=rank, world_size=world,
                                   seed=seed, epoch=epoch, shuffle=True):
            ...                       # batch: dict of torch tensors, see BATCH_KEYS

:func:`build_dataset` and :func:`torch_batches` accept the records themselves too (then they tokenize on
every call); pass :class:`EncodedRecords` to tokenize once for all epochs.

Per batch (B = batch size, T = max_tokens, F = numeric columns):
``image`` uint8 [B,H,W,3]; ``input_ids`` int64 [B,T]; ``attention_mask`` int64 [B,T]; ``numeric`` float32 [B,F]
raw (NaN = missing value); ``label`` int64 [B]; ``modality_mask`` bool [B,3] (image, text, numeric);
``valid`` bool [B] (False for padding records); ``index`` int64 [B] (position of the record in the list given,
to map predictions back to ids).

Order and sharding: each epoch draws one permutation of all records from ``(seed, epoch)`` (an exact global
shuffle: no shuffle buffer), pads it by repeating records from its start up to a multiple of ``world_size``
(the repeats carry ``valid=False``), and deals it out round-robin, so rank r gets positions r, r+W, r+2W, ...
Every rank therefore gets ``ceil(N / W)`` records and exactly :func:`batches_per_epoch` batches, of equal sizes
on every rank (the last may be smaller than ``batch_size``, the same on all ranks), so DDP never waits on a
rank that ran out. Same seed, epoch and rank: same batches.

Missing modalities (``missingModality: keep``): the image is zeros, the text is the tokenized empty string
([CLS] [SEP], so attention never sees an all-masked row), numeric is zeros; ``modality_mask`` says which.

Images are read and decoded by TensorFlow in parallel (AUTOTUNE), resized to ``image_size`` uint8 with
:mod:`kubefusion.data.images` (the same ops serving uses); tokens, numbers and labels are gathered per batch from
the pre-tokenized arrays (by :func:`torch_batches`, in Python: tf.data keeps the epoch's order, so batch k holds
its records k*B .. k*B+B-1). Images reach torch through ``torch.from_numpy`` on the arrays TF hands back: no copy.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubefusion.data.images import decode_and_resize, decode_image_file
from kubefusion.data.records import Record
from kubefusion.errors import DataError

__all__ = [
    "BATCH_KEYS",
    "EncodedRecords",
    "batches_per_epoch",
    "build_dataset",
    "decode_image_file",
    "encode_records",
    "epoch_indices",
    "torch_batches",
]

BATCH_KEYS = ("image", "input_ids", "attention_mask", "numeric", "label", "modality_mask", "valid", "index")

_TOKENIZE_CHUNK = 4096


@dataclass
class EncodedRecords:
    """Records as columns, tokenized once. Tokens are kept narrow (int32, uint8) and widened per batch."""

    ids: list[str]
    image_paths: np.ndarray
    """bytes [N]; b"" where the record has no image."""
    input_ids: np.ndarray
    """int32 [N, T]"""
    attention_mask: np.ndarray
    """uint8 [N, T]"""
    numeric: np.ndarray
    """float32 [N, F]"""
    label: np.ndarray
    """int64 [N]"""
    modality_mask: np.ndarray
    """bool [N, 3]"""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def encode_records(
    records: Sequence[Record], *, tokenizer: Any, max_tokens: int, num_numeric: int | None = None
) -> EncodedRecords:
    """Tokenize every text (padded/truncated to ``max_tokens``) and stack the other columns."""
    n = len(records)
    if num_numeric is None:
        num_numeric = len(records[0].numeric) if records else 0
    texts = [r.text if r.text is not None else "" for r in records]
    input_ids = np.zeros((n, max_tokens), dtype=np.int32)
    attention = np.zeros((n, max_tokens), dtype=np.uint8)
    for start in range(0, n, _TOKENIZE_CHUNK):
        chunk = tokenizer(
            texts[start:start + _TOKENIZE_CHUNK], padding="max_length", truncation=True, max_length=max_tokens,
            return_attention_mask=True, return_tensors="np",
        )
        input_ids[start:start + _TOKENIZE_CHUNK] = chunk["input_ids"]
        attention[start:start + _TOKENIZE_CHUNK] = chunk["attention_mask"]
    numeric = np.zeros((n, num_numeric), dtype=np.float32)
    for i, record in enumerate(records):
        if record.mask[2]:
            if len(record.numeric) != num_numeric:
                raise DataError(f"id {record.id!r}: {len(record.numeric)} numeric values, expected {num_numeric}")
            numeric[i] = record.numeric
    return EncodedRecords(
        ids=[r.id for r in records],
        image_paths=np.array([(r.image_path or "").encode() for r in records], dtype=object),
        input_ids=input_ids,
        attention_mask=attention,
        numeric=numeric,
        label=np.array([r.label for r in records], dtype=np.int64),
        modality_mask=np.array([r.mask for r in records], dtype=bool).reshape(n, 3),
    )


def batches_per_epoch(num_records: int, batch_size: int, world_size: int) -> int:
    """Batches every rank yields per epoch: ``ceil(ceil(N / world_size) / batch_size)``."""
    if num_records <= 0:
        return 0
    return math.ceil(math.ceil(num_records / world_size) / batch_size)


def epoch_indices(
    num_records: int, *, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(record positions, valid flags) for one rank and epoch; ``ceil(N / world_size)`` of each."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if num_records <= 0:
        raise DataError("no records to feed the pipeline (did the scan or the split leave none?)")
    order = (
        np.random.default_rng([seed, epoch]).permutation(num_records) if shuffle else np.arange(num_records)
    )
    total = math.ceil(num_records / world_size) * world_size
    padded = np.resize(order, total)  # cyclic repeat: pads even when there are fewer records than ranks
    valid = np.arange(total) < num_records
    return padded[rank::world_size].astype(np.int64), valid[rank::world_size]


def build_dataset(
    records: Sequence[Record] | EncodedRecords,
    *,
    tokenizer: Any = None,
    image_size: int,
    max_tokens: int | None = None,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    num_numeric: int | None = None,
    skip_batches: int = 0,
    threads: int | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of batches (dicts of tensors, keys :data:`BATCH_KEYS`) for one rank and epoch.
    ``skip_batches`` starts that many batches into the epoch without reading their images (resuming from a
    mid-epoch checkpoint); the batches after it are the same as without skipping. ``threads``: a private thread
    pool of that size for this pipeline. By default TensorFlow's shared pool is used, except under torchrun with
    several ranks on a node (``LOCAL_WORLD_SIZE`` > 1): then each rank gets the node's CPUs divided by the ranks
    (at least 4), so the ranks share the cores instead of each starting a pool as large as the node.

    :func:`torch_batches` (what training reads) yields the same batches without this dataset's last stage: it
    gathers the columns in Python instead of in a ``tf.numpy_function``."""
    tf = _tf()
    plan = _EpochPlan.of(records, tokenizer=tokenizer, max_tokens=max_tokens, num_numeric=num_numeric,
                         batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                         shuffle=shuffle, skip_batches=skip_batches)
    tokens, width = plan.encoded.max_tokens, plan.encoded.numeric.shape[1]

    def columns(images: Any, rows: Any, valid: Any) -> dict[str, Any]:
        ids, attention, numeric, label, mask = tf.numpy_function(
            lambda r: tuple(plan.columns(r).values()), [rows], [tf.int64, tf.int64, tf.float32, tf.int64, tf.bool],
            stateful=False)
        ids.set_shape([None, tokens])
        attention.set_shape([None, tokens])
        numeric.set_shape([None, width])
        label.set_shape([None])
        mask.set_shape([None, 3])
        return {"index": rows, "image": images, "valid": valid, "input_ids": ids, "attention_mask": attention,
                "numeric": numeric, "label": label, "modality_mask": mask}

    positions = tf.data.Dataset.from_tensor_slices((plan.rows, plan.valid)).batch(batch_size)
    ds = tf.data.Dataset.zip((plan.images(image_size, threads), positions))
    ds = ds.map(lambda images, rows_valid: columns(images, *rows_valid))
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclass
class _EpochPlan:
    """One rank's epoch: which records, in which order, in batches of ``batch_size``."""

    encoded: EncodedRecords
    rows: np.ndarray
    """int64: positions in ``encoded``, in the order this rank reads them (after ``skip_batches``)."""
    valid: np.ndarray
    """bool: False for the padding repeats."""
    batch_size: int

    @classmethod
    def of(cls, records: Sequence[Record] | EncodedRecords, *, batch_size: int, tokenizer: Any = None,
           max_tokens: int | None = None, num_numeric: int | None = None, rank: int = 0, world_size: int = 1,
           seed: int = 0, epoch: int = 0, shuffle: bool = True, skip_batches: int = 0) -> "_EpochPlan":
        encoded = _encoded(records, tokenizer=tokenizer, max_tokens=max_tokens, num_numeric=num_numeric)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 (got {batch_size})")
        rows, valid = epoch_indices(len(encoded), rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                                    shuffle=shuffle)
        start = skip_batches * batch_size
        return cls(encoded, rows[start:], valid[start:], batch_size)

    def images(self, image_size: int, threads: int | None) -> Any:
        """A ``tf.data.Dataset`` of uint8 [B, image_size, image_size, 3] batches, in this plan's order: read +
        decode + resize mapped in parallel over the records, nothing else per record (its order is kept, so
        batch k holds ``rows[k * B:(k + 1) * B]``)."""
        tf = _tf()
        paths = self.encoded.image_paths[self.rows].astype(bytes)
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(_image_loader(image_size, every_image=bool(np.all(paths != b""))),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)
        threads = threads or default_threads()
        if threads:
            options = tf.data.Options()
            options.threading.private_threadpool_size = threads
            ds = ds.with_options(options)
        return ds

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The pre-tokenized columns of ``rows``, widened to what the model takes."""
        e = self.encoded
        return {"input_ids": e.input_ids[rows].astype(np.int64),
                "attention_mask": e.attention_mask[rows].astype(np.int64),
                "numeric": e.numeric[rows], "label": e.label[rows], "modality_mask": e.modality_mask[rows]}


def default_threads() -> int | None:
    """The CPUs of this node shared out among its ranks (``LOCAL_WORLD_SIZE``), or None for one process."""
    try:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local_ranks = 1
    if local_ranks <= 1:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(4, cpus // local_ranks)  # at least 4: reads block on I/O, not only on CPU


def torch_batches(records: Sequence[Record] | EncodedRecords, *, image_size: int, threads: int | None = None,
                  **options: Any) -> Iterator[dict[str, Any]]:
    """The batches of :func:`build_dataset` (same arguments) as dicts of CPU ``torch.Tensor``; move them with
    ``.to(device, non_blocking=True)``.

    tf.data reads and decodes the images, in order; the other columns are gathered here, one numpy gather per
    batch from the epoch's order, rather than in a ``tf.numpy_function`` stage (a Python call on a TensorFlow
    thread per batch, and every record's position and flag carried through tf.data as two more tensors)."""
    import torch  # noqa: PLC0415 (only training imports torch; validate must not)

    plan = _EpochPlan.of(records, **options)
    iterator = iter(plan.images(image_size, threads))
    try:
        for k, images in enumerate(iterator):
            at = slice(k * plan.batch_size, (k + 1) * plan.batch_size)
            rows = plan.rows[at]
            if len(rows) != images.shape[0]:  # the map keeps its order (deterministic), so this cannot happen
                raise RuntimeError(f"input pipeline out of step: batch {k} has {images.shape[0]} images for "
                                   f"{len(rows)} records")
            # EagerTensor.numpy() shares the tensor's buffer; from_numpy shares the array's: no copy either way.
            batch = {"image": images.numpy(), **plan.columns(rows), "valid": plan.valid[at].copy(),
                     "index": rows.copy()}
            yield {key: torch.from_numpy(batch[key]) for key in BATCH_KEYS}
    finally:
        _retire(iterator)
        del iterator


_RETIRING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubefusion-tfdata-retire")


def _retire(iterator: Any) -> None:
    """Drop the last reference to a finished tf.data iterator on a thread of its own: deleting one waits for
    its autotuning thread to stop, 0.1-0.2 s per epoch on the development machine (measured in
    benchmarks/data_pipeline.py), which the training thread and the next epoch need not wait for."""
    _RETIRING.submit(_keep_until_done, iterator)


def _keep_until_done(iterator: Any) -> None:
    del iterator  # the executor's thread holds the last reference; it goes when this task does


@functools.lru_cache(maxsize=None)
def _image_loader(image_size: int, *, every_image: bool) -> Any:
    """path -> uint8 [image_size, image_size, 3], traced once per process and reused by every epoch's dataset
    (tracing it anew took about half of building one). The branch for a record without an image
    (``missingModality: keep``: zeros) only where some record has none."""
    tf = _tf()

    def load(path: Any) -> Any:
        return decode_and_resize(tf.io.read_file(path), image_size)

    def load_or_blank(path: Any) -> Any:
        return tf.cond(tf.strings.length(path) > 0, lambda: load(path),
                       lambda: tf.zeros([image_size, image_size, 3], tf.uint8))

    return tf.function(load if every_image else load_or_blank, input_signature=[tf.TensorSpec([], tf.string)])


def _tf() -> Any:
    from kubefusion.data._tf import tensorflow  # noqa: PLC0415 (lazy: validate --help must not pay for it)

    return tensorflow()


def _encoded(
    records: Sequence[Record] | EncodedRecords, *, tokenizer: Any, max_tokens: int | None, num_numeric: int | None
) -> EncodedRecords:
    if isinstance(records, EncodedRecords):
        if max_tokens is not None and max_tokens != records.max_tokens:
            raise ValueError(f"records were encoded with max_tokens={records.max_tokens}, not {max_tokens}")
        return records
    if tokenizer is None or max_tokens is None:
        raise ValueError("tokenizer and max_tokens are needed unless the records are EncodedRecords")
    return encode_records(records, tokenizer=tokenizer, max_tokens=max_tokens, num_numeric=num_numeric)
