"""The tf.data -> torch pipeline: join integrity, equal batches per rank, determinism, placeholders."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from kubefusion.config import DataConfig
from kubefusion.data import decode_image_file, scan
from kubefusion.data.pipeline import (
    BATCH_KEYS,
    batches_per_epoch,
    encode_records,
    epoch_indices,
    torch_batches,
)
from kubefusion.errors import DataError


@pytest.fixture
def encoded(id_dataset, minilm_tokenizer):
    records = scan(DataConfig(path="unused"), id_dataset(23, seed=5)).records
    return encode_records(records, tokenizer=minilm_tokenizer, max_tokens=8)


def test_every_row_of_every_batch_belongs_to_one_id(encoded, minilm_tokenizer):
    seen = []
    for batch in torch_batches(encoded, image_size=4, batch_size=5, seed=1):
        for i in range(len(batch["label"])):
            k = int(batch["image"][i, 0, 0, 0])
            text = minilm_tokenizer.decode(batch["input_ids"][i], skip_special_tokens=True)
            assert text == f"record {k}"
            assert batch["numeric"][i].tolist() == [k, 2 * k]
            assert int(batch["label"][i]) == k % 3
            assert encoded.ids[int(batch["index"][i])] == f"r{k:03d}"
            seen.append(k)
    assert sorted(seen) == list(range(23))


def test_batch_dtypes_and_shapes(encoded):
    batch = next(torch_batches(encoded, image_size=6, batch_size=4, shuffle=False))
    expected = {
        "image": (torch.uint8, (4, 6, 6, 3)), "input_ids": (torch.int64, (4, 8)),
        "attention_mask": (torch.int64, (4, 8)), "numeric": (torch.float32, (4, 2)), "label": (torch.int64, (4,)),
        "modality_mask": (torch.bool, (4, 3)), "valid": (torch.bool, (4,)), "index": (torch.int64, (4,)),
    }
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == expected
    assert set(BATCH_KEYS) == set(expected)
    assert batch["index"].tolist() == [0, 1, 2, 3]  # shuffle=False keeps record order


@pytest.mark.parametrize("n", [10, 11, 23])
@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_gets_the_same_batches_and_all_records_once(encoded, n, world_size):
    subset = type(encoded)(**{f: getattr(encoded, f)[:n] for f in encoded.__dataclass_fields__})
    expected_batches = batches_per_epoch(n, 4, world_size)
    sizes, valid_rows, padding = [], [], 0
    for rank in range(world_size):
        batches = list(torch_batches(subset, image_size=4, batch_size=4, rank=rank, world_size=world_size,
                                     seed=7, epoch=2))
        assert len(batches) == expected_batches
        sizes.append([len(b["label"]) for b in batches])
        for b in batches:
            valid_rows += b["index"][b["valid"]].tolist()
            padding += int((~b["valid"]).sum())
    assert all(s == sizes[0] for s in sizes)  # same batch sizes on every rank: DDP never waits
    assert sorted(valid_rows) == list(range(n))
    assert padding == -n % world_size


def test_more_ranks_than_records_still_pads_every_rank():
    rows, valid = zip(*(epoch_indices(2, rank=r, world_size=4, seed=0, epoch=0, shuffle=True) for r in range(4)))
    assert [len(r) for r in rows] == [1, 1, 1, 1]
    assert sum(int(v.sum()) for v in valid) == 2


def test_batches_per_epoch():
    assert batches_per_epoch(100, 10, 1) == 10
    assert batches_per_epoch(101, 10, 1) == 11
    assert batches_per_epoch(101, 10, 2) == 6  # ceil(51 / 10)
    assert batches_per_epoch(5, 10, 8) == 1
    assert batches_per_epoch(0, 10, 2) == 0


def test_order_is_deterministic_per_seed_and_epoch_and_changes_between_epochs(encoded):
    def order(seed, epoch, rank=0):
        return [i for b in torch_batches(encoded, image_size=4, batch_size=4, seed=seed, epoch=epoch, rank=rank,
                                         world_size=2) for i in b["index"].tolist()]

    first = order(3, 0)
    assert order(3, 0) == first != order(3, 1)

    def indices(seed, epoch, rank=0):
        return epoch_indices(23, rank=rank, world_size=2, seed=seed, epoch=epoch, shuffle=True)[0].tolist()

    assert indices(3, 0) == first
    assert indices(4, 0) != first and indices(3, 0, rank=1) != first


def test_missing_modalities_get_placeholders_and_a_false_mask(id_dataset, minilm_tokenizer):
    root = id_dataset(6)
    (root / "images" / "r001.png").unlink()
    with open(root / "text.csv", newline="") as fh:
        table = [row for row in csv.reader(fh) if row[0] != "r002"]
    with open(root / "text.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(table)
    records = scan(DataConfig(path="unused", missing_modality="keep"), root).records
    batch = next(torch_batches(records, tokenizer=minilm_tokenizer, max_tokens=6, image_size=4, batch_size=6,
                               shuffle=False))
    assert batch["modality_mask"][1].tolist() == [False, True, True]
    assert batch["image"][1].sum() == 0
    assert batch["modality_mask"][2].tolist() == [True, False, True]
    cls, sep = minilm_tokenizer.cls_token_id, minilm_tokenizer.sep_token_id
    assert batch["input_ids"][2].tolist()[:2] == [cls, sep] and batch["attention_mask"][2].tolist()[:3] == [1, 1, 0]


def test_decode_image_file_matches_the_pipeline_resize(tmp_path, minilm_tokenizer):
    from kubefusion.data.records import Record

    rng = np.random.default_rng(0)
    path = tmp_path / "x.jpg"
    Image.fromarray(rng.integers(0, 255, (37, 23, 3), dtype=np.uint8)).save(path)
    served = decode_image_file(path, 16)
    assert served.dtype == np.uint8 and served.shape == (16, 16, 3)
    record = Record(id="x", label=0, image_path=str(path), text="hi", numeric=np.zeros(1, np.float32),
                    mask=(True, True, True))
    batch = next(torch_batches([record], tokenizer=minilm_tokenizer, max_tokens=4, image_size=16, batch_size=1))
    np.testing.assert_array_equal(batch["image"][0].numpy(), served)


def test_decode_image_file_names_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DataError, match="no such image file"):
        decode_image_file(tmp_path / "none.png", 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.png: cannot decode image"):
        decode_image_file(tmp_path / "bad.png", 8)


def test_empty_record_list_is_a_clear_error(minilm_tokenizer):
    with pytest.raises(DataError, match="no records"):
        next(torch_batches([], tokenizer=minilm_tokenizer, max_tokens=4, image_size=4, batch_size=2, num_numeric=1))


def test_skip_batches_resumes_mid_epoch_at_the_same_batches(encoded):
    def batches(**kw):
        return [b["index"].tolist() for b in torch_batches(encoded, image_size=4, batch_size=4, seed=2, epoch=1,
                                                           rank=1, world_size=2, **kw)]

    assert batches(skip_batches=2) == batches()[2:]


def test_ranks_on_one_node_share_the_cpus(monkeypatch):
    from kubefusion.data.pipeline import default_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_threads() is None  # one process: TensorFlow's own pool


@pytest.mark.parametrize("keep_missing", [False, True])
def test_the_tf_data_dataset_and_the_torch_batches_are_the_same_batches(id_dataset, minilm_tokenizer, keep_missing):
    from kubefusion.data.pipeline import build_dataset

    root = id_dataset(11, seed=3)
    if keep_missing:
        (root / "images" / "r004.png").unlink()
    records = scan(DataConfig(path="unused", missing_modality="keep" if keep_missing else "drop"), root).records
    encoded = encode_records(records, tokenizer=minilm_tokenizer, max_tokens=6)
    blanks = 0
    for rank, skip in ((0, 0), (1, 0), (1, 1)):
        options = dict(image_size=4, batch_size=4, seed=7, epoch=2, rank=rank, world_size=2, skip_batches=skip)
        from_torch = list(torch_batches(encoded, **options))
        from_tf = [{k: v.numpy() for k, v in batch.items()} for batch in build_dataset(encoded, **options)]
        assert len(from_torch) == len(from_tf) == 2 - skip  # 11 records over 2 ranks: 6 each, batches of 4
        for ours, theirs in zip(from_torch, from_tf):
            assert set(ours) == set(theirs) == set(BATCH_KEYS)
            for key in BATCH_KEYS:
                assert ours[key].numpy().dtype == theirs[key].dtype, key
                np.testing.assert_array_equal(ours[key].numpy(), theirs[key], err_msg=key)
            for row, index in enumerate(ours["index"].tolist()):
                if keep_missing and skip == 0 and encoded.ids[index] == "r004":
                    blanks += 1
                    assert ours["image"][row].sum() == 0 and not ours["modality_mask"][row, 0]
    assert blanks == (1 if keep_missing else 0)


def test_a_finished_epochs_tf_data_iterator_is_released_off_the_training_thread(encoded, monkeypatch):
    import threading
    import weakref

    from kubefusion.data import pipeline

    released, keep = [], pipeline._keep_until_done

    def recording(iterator):
        released.append((threading.current_thread().name, weakref.ref(iterator)))
        keep(iterator)

    monkeypatch.setattr(pipeline, "_keep_until_done", recording)
    assert len(list(torch_batches(encoded, image_size=4, batch_size=5))) == 5
    pipeline._RETIRING.submit(lambda: None).result()  # the retiring thread is done with the iterator
    [(thread, iterator)] = released
    assert thread.startswith("kubefusion-tfdata-retire") and iterator() is None
