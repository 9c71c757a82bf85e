"""Input pipeline throughput: kubefusion's tf.data pipeline vs a naive sequential loader, same data, same run.

    .venv/bin/python benchmarks/data_pipeline.py [--samples 4000] [--file-size 64] [--image-size 32]

The baseline does per record, one after another, what a first loader would: open and decode the image with
PIL, resize it, tokenize the text, then stack a batch and hand it to torch. The pipeline is
``kubefusion.data.pipeline.torch_batches`` over records tokenized once (``encode_records``; its one-off time is
printed separately). Both produce the same batch dict for every record of one epoch; records/s and the ratio are
printed. Synthesised demo data is written to a temporary folder (or ``--data``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from kubefusion.config import DataConfig  # noqa: E402
from kubefusion.data import load_tokenizer, scan  # noqa: E402
from kubefusion.data.pipeline import encode_records, epoch_indices, torch_batches  # noqa: E402
from kubefusion.data.synth import synthesize  # noqa: E402


def naive_epoch(records, tokenizer, *, image_size: int, max_tokens: int, batch_size: int, seed: int) -> int:
    rows, _ = epoch_indices(len(records), rank=0, world_size=1, seed=seed, epoch=0, shuffle=True)
    seen = 0
    for start in range(0, len(rows), batch_size):
        batch = {k: [] for k in ("image", "input_ids", "attention_mask", "numeric", "label")}
        for row in rows[start:start + batch_size]:
            record = records[row]
            with Image.open(record.image_path) as im:
                image = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            tokens = tokenizer(record.text, padding="max_length", truncation=True, max_length=max_tokens)
            batch["image"].append(np.asarray(image, dtype=np.uint8))
            batch["input_ids"].append(tokens["input_ids"])
            batch["attention_mask"].append(tokens["attention_mask"])
            batch["numeric"].append(record.numeric)
            batch["label"].append(record.label)
        tensors = {
            "image": torch.from_numpy(np.stack(batch["image"])),
            "input_ids": torch.tensor(batch["input_ids"], dtype=torch.int64),
            "attention_mask": torch.tensor(batch["attention_mask"], dtype=torch.int64),
            "numeric": torch.from_numpy(np.stack(batch["numeric"])),
            "label": torch.tensor(batch["label"], dtype=torch.int64),
        }
        seen += len(tensors["label"])
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--file-size", type=int, default=64, help="side of the PNG files written")
    parser.add_argument("--image-size", type=int, default=32, help="side the loaders resize to")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", type=Path, help="existing demo dataset to use instead of synthesising one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "demo"
        if args.data is None:
            synthesize(root, samples=args.samples, seed=0, image_size=args.file_size, ood_fraction=0, progress=False)
        records = scan(DataConfig(path=str(root)), root, verify_images=False).records
        tokenizer = load_tokenizer("builtin:minilm")
        print(f"{len(records)} records, {args.file_size}px PNG -> {args.image_size}px, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")

        start = time.perf_counter()
        naive = naive_epoch(records, tokenizer, image_size=args.image_size, max_tokens=args.max_tokens,
                            batch_size=args.batch_size, seed=0)
        naive_rate = naive / (time.perf_counter() - start)

        start = time.perf_counter()
        encoded = encode_records(records, tokenizer=tokenizer, max_tokens=args.max_tokens)
        encode_s = time.perf_counter() - start
        rates = []
        for epoch in range(2):
            start = time.perf_counter()
            seen = sum(len(b["label"]) for b in torch_batches(
                encoded, image_size=args.image_size, batch_size=args.batch_size, seed=0, epoch=epoch))
            rates.append(seen / (time.perf_counter() - start))

    print(f"naive sequential loader : {naive_rate:9.0f} records/s")
    print(f"tf.data pipeline        : {rates[0]:9.0f} records/s (epoch 0), {rates[1]:.0f} records/s (epoch 1); "
          f"pre-tokenizing once took {encode_s:.2f} s")
    print(f"ratio (pipeline epoch 1 / naive): {rates[1] / naive_rate:.2f}x")


if __name__ == "__main__":
    main()
