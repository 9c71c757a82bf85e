"""``kubefusion data synth``: the built-in demo dataset, and :func:`ensure_demo_data` for ``builtin:demo``.

Generative design (also written into ``dataset.json``): 8 classes = 3 independent fair bits, one carried by each
modality, ``label = 4*image_bit + 2*text_bit + numeric_bit``:

- image bit: stripe orientation (horizontal / vertical). Nuisance: stripe period and phase, foreground and
  background colours (hues in [0, 0.5) in distribution), pixel noise. OOD: unseen hues in [0.5, 1) and a
  gradient background instead of a flat one.
- text bit: the keywords come from one of two disjoint sets (sea / mountain words) inside templated sentences
  with filler. OOD: other templates, filler and adjectives, the same keyword sets.
- numeric bit: ``feature1 > feature2`` (rising) or ``<`` (falling), by at least 0.5; ``feature3..feature6`` are
  distractors (with ~2% empty cells = missing values). OOD: every column scaled by 3 and offset by +5
  (the relation holds).

Label noise ``p``: the observed label is replaced by a uniformly random class (of 8) with probability ``p``.
So the Bayes-optimal top-1 with one modality (one bit known, 4 classes left) is ``(1-p)/4 + p/8``, with two
``(1-p)/2 + p/8``, and with all three ``1 - p + p/8`` (``best_achievable``).

Layout: ``images/<id>.png``, ``text.csv`` (id,text,label), ``numeric.csv`` (id,feature1..6,label), ids in a
different order in each file; ``ood/`` the same layout with ``ood_fraction * samples`` records. Generation is a
deterministic function of the seed, works through the records in chunks and writes rows as it goes (memory
holds a few bytes of latent state per record, never the images). The whole folder is written under a temporary
name beside the target and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubefusion.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK = 2048
"""Records generated together (vectorised). Images use fewer per chunk as they grow: see _image_chunk."""
NUMERIC_COLUMNS = [f"feature{i}" for i in range(1, 7)]
IMAGE_VALUES = ("horizontal", "vertical")
TEXT_VALUES = ("sea", "mountain")
NUMERIC_VALUES = ("falling", "rising")
CLASSES = [
    f"{4 * a + 2 * b + c}-{IMAGE_VALUES[a]}-{TEXT_VALUES[b]}-{NUMERIC_VALUES[c]}"
    for a in range(2) for b in range(2) for c in range(2)
]
"""Class names; the leading number is the class index (they sort in index order)."""

KEYWORDS = (
    ("ocean", "wave", "harbor", "tide", "sailor", "reef", "shore", "lagoon"),
    ("summit", "ridge", "glacier", "cliff", "peak", "canyon", "alpine", "boulder"),
)


@dataclass(frozen=True)
class _Style:
    """Nuisance factors of one split (in distribution or OOD)."""

    templates: tuple[str, ...]
    fillers: tuple[str, ...]
    adjectives: tuple[str, ...]
    hue_low: float
    gradient_background: bool
    numeric_scale: float
    numeric_offset: float


IN_DISTRIBUTION = _Style(
    templates=(
        "the {k1} looked {adj} today , {filler}",
        "{k1} and {k2} were {adj} when we arrived , {filler}",
        "a {adj} {k1} near the {k2} , {filler}",
        "we walked past the {k1} , {filler}",
        "photo of the {k1} at dawn , {filler}",
    ),
    fillers=("the coffee was warm", "everyone seemed busy", "it rained a little", "the bus was late",
             "we ate bread and cheese", "my phone battery died", "the music was loud", "nobody said much"),
    adjectives=("quiet", "bright", "old", "small", "busy", "lovely"),
    hue_low=0.0, gradient_background=False, numeric_scale=1.0, numeric_offset=0.0,
)
OUT_OF_DISTRIBUTION = _Style(
    templates=(
        "honestly nothing beats a {adj} {k1} ; {filler}",
        "report : {k1} spotted beside {k2} , {filler}",
        "i keep thinking about that {k1} - {filler}",
        "{k1} ? {filler} , or so they claimed",
        "five stars for the {k1} and the {k2} ! {filler}",
    ),
    fillers=("the invoice arrived yesterday", "grandma knitted a scarf", "the printer jammed twice",
             "traffic downtown was terrible", "a cat slept on the keyboard", "the meeting ran overtime"),
    adjectives=("gloomy", "enormous", "peculiar", "ancient", "crowded"),
    hue_low=0.5, gradient_background=True, numeric_scale=3.0, numeric_offset=5.0,
)


def ceilings(label_noise: float) -> dict[str, Any]:
    """Bayes-optimal top-1 accuracy from each single modality, each pair, and all three."""
    p, k = label_noise, len(CLASSES)
    one, two, three = (1 - p) / 4 + p / k, (1 - p) / 2 + p / k, (1 - p) + p / k
    return {
        "ceilings": {"image": one, "text": one, "numeric": one},
        "pair_ceilings": {"image+text": two, "image+numeric": two, "text+numeric": two},
        "best_achievable": {"top1": three},
    }


# ----------------------------------------------------------------------------------------------- latents


def _latents(n: int, seed: int, split: int, label_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(bits uint8 [n, 3] image/text/numeric, observed label int64 [n])."""
    rng = np.random.default_rng([seed, split, 0])
    bits = rng.integers(0, 2, size=(n, 3), dtype=np.uint8)
    true_label = 4 * bits[:, 0].astype(np.int64) + 2 * bits[:, 1] + bits[:, 2]
    noisy = rng.random(n) < label_noise
    random_label = rng.integers(0, len(CLASSES), size=n)
    return bits, np.where(noisy, random_label, true_label)


def _chunks(order: np.ndarray, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    for number, start in enumerate(range(0, len(order), size)):
        yield number, order[start:start + size]


def _image_chunk(image_size: int) -> int:
    """Images per chunk: about 2M pixels (~50 MB of float32 work arrays) whatever the image size."""
    return max(1, min(CHUNK, (1 << 21) // (image_size * image_size)))


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h, s, v, strict=True)], dtype=np.float32) * 255


def _images(rng: np.random.Generator, bits: np.ndarray, size: int, style: _Style) -> np.ndarray:
    """uint8 [c, size, size, 3]: stripes whose orientation is the bit."""
    c = len(bits)
    periods = np.array(sorted({max(2, round(size * f)) for f in (1 / 8, 3 / 16, 1 / 4)}))
    period = rng.choice(periods, size=c)[:, None, None]
    phase = rng.integers(0, 1 << 16, size=c)[:, None, None] % period
    yy, xx = np.mgrid[:size, :size]
    coordinate = np.where(bits[:, None, None] == 0, yy[None], xx[None])  # horizontal stripes vary along y
    stripe = ((coordinate + phase) % period) < period / 2

    def colour(v_low: float, v_high: float) -> np.ndarray:
        return _hsv(style.hue_low + 0.5 * rng.random(c), 0.5 + 0.5 * rng.random(c),
                    v_low + (v_high - v_low) * rng.random(c))

    foreground = colour(0.75, 1.0)[:, None, None, :]
    background = colour(0.1, 0.35)[:, None, None, :]
    if style.gradient_background:
        other = colour(0.1, 0.4)[:, None, None, :]
        angle = rng.random(c)[:, None, None] * 2 * np.pi
        ramp = (np.cos(angle) * xx[None] + np.sin(angle) * yy[None]) / size
        ramp = ((ramp - ramp.min(axis=(1, 2), keepdims=True))
                / (np.ptp(ramp, axis=(1, 2), keepdims=True) + 1e-6))[..., None]
        background = background * (1 - ramp) + other * ramp
    pixels = np.where(stripe[..., None], foreground, background)
    pixels = pixels + rng.normal(0.0, 6.0, size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _texts(rng: np.random.Generator, bits: np.ndarray, style: _Style) -> list[str]:
    out = []
    for bit in bits:
        words = KEYWORDS[int(bit)]
        k1, k2 = rng.choice(len(words), size=2, replace=False)
        template = style.templates[rng.integers(len(style.templates))]
        out.append(template.format(
            k1=words[k1], k2=words[k2], adj=style.adjectives[rng.integers(len(style.adjectives))],
            filler=style.fillers[rng.integers(len(style.fillers))],
        ))
    return out


def _numeric(rng: np.random.Generator, bits: np.ndarray, style: _Style) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 [c, 6], missing bool [c, 6]): feature1 > feature2 iff the bit is 1."""
    c = len(bits)
    f2 = rng.normal(size=c)
    margin = 0.5 + 0.5 * np.abs(rng.normal(size=c))
    f1 = f2 + np.where(bits == 1, margin, -margin)
    values = np.stack([
        f1, f2, rng.normal(size=c), rng.lognormal(0.0, 0.5, size=c), rng.poisson(3.0, size=c).astype(float),
        0.5 * f2 + 0.5 * rng.normal(size=c),
    ], axis=1)
    missing = np.zeros_like(values, dtype=bool)
    missing[:, 2:] = rng.random((c, 4)) < 0.02  # never in feature1/2: the bit stays decodable
    return values * style.numeric_scale + style.numeric_offset, missing


# ---------------------------------------------------------------------------------------------- writing


def _write_split(
    out: Path, *, n: int, seed: int, split: int, prefix: str, style: _Style, image_size: int,
    label_noise: float, progress: Any,
) -> None:
    from PIL import Image  # noqa: PLC0415

    bits, labels = _latents(n, seed, split, label_noise)

    def ids(i: int) -> str:
        return f"{prefix}{i:07d}"

    (out / "images").mkdir(parents=True)
    for number, idx in _chunks(np.arange(n), _image_chunk(image_size)):
        pixels = _images(np.random.default_rng([seed, split, 1, number]), bits[idx, 0], image_size, style)
        for i, image in zip(idx, pixels, strict=True):
            Image.fromarray(image).save(out / "images" / f"{ids(i)}.png", format="PNG")
        progress.update(len(idx))
    # Each file lists the ids in its own order: a reader that joins by position gets garbage, as it should.
    with open(out / "text.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        for number, idx in _chunks(np.random.default_rng([seed, split, 4]).permutation(n)):
            texts = _texts(np.random.default_rng([seed, split, 2, number]), bits[idx, 1], style)
            writer.writerows([ids(i), text, CLASSES[labels[i]]] for i, text in zip(idx, texts, strict=True))
            progress.update(len(idx))
    with open(out / "numeric.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *NUMERIC_COLUMNS, "label"])
        for number, idx in _chunks(np.random.default_rng([seed, split, 5]).permutation(n)):
            values, missing = _numeric(np.random.default_rng([seed, split, 3, number]), bits[idx, 2], style)
            for i, row, gaps in zip(idx, values, missing, strict=True):
                cells = ["" if gap else f"{v:.6g}" for v, gap in zip(row, gaps, strict=True)]
                writer.writerow([ids(i), *cells, CLASSES[labels[i]]])
            progress.update(len(idx))


def describe(*, samples: int, seed: int, image_size: int, ood_samples: int, label_noise: float) -> dict[str, Any]:
    """The content of ``dataset.json``."""
    return {
        "format_version": FORMAT_VERSION,
        "name": "kubefusion-demo",
        "classes": CLASSES,
        "num_classes": len(CLASSES),
        "numeric_columns": NUMERIC_COLUMNS,
        "label_noise": label_noise,
        **ceilings(label_noise),
        "seed": seed,
        "samples": samples,
        "image_size": image_size,
        "ood": {"path": "ood", "samples": ood_samples,
                "shift": "unseen hues and gradient backgrounds; unseen sentence templates, filler and adjectives "
                         "(same keyword sets); numeric columns x3 + 5 (feature1 > feature2 preserved)"},
        "description": (
            "8 classes = 3 independent bits, one per modality: image = stripe orientation (horizontal/vertical), "
            "text = keyword set (sea/mountain words in templated sentences), numeric = feature1 > feature2 "
            "(feature3-6 are distractors with ~2% missing values). Each modality alone determines one bit, so "
            "its Bayes-optimal top-1 is (1-p)/4 + p/8; all three give 1 - p + p/8. With probability p "
            "(label_noise) the label is a uniformly random class."
        ),
    }


def synthesize(
    out: str | Path,
    *,
    samples: int,
    seed: int = 0,
    image_size: int = 32,
    ood_fraction: float = 0.2,
    label_noise: float = 0.03,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write the demo dataset to ``out`` (atomically) and return its ``dataset.json`` content. An existing
    complete dataset with the same parameters is kept as it is."""
    from tqdm import tqdm  # noqa: PLC0415

    if samples < 1:
        raise DataError(f"--samples must be >= 1 (got {samples})")
    if not 8 <= image_size <= 1024:
        raise DataError(f"--image-size must be in [8, 1024] (got {image_size})")
    if not 0 <= ood_fraction <= 10 or not 0 <= label_noise < 1:
        raise DataError("--ood-fraction must be in [0, 10] and --label-noise in [0, 1)")
    out = Path(out)
    ood_samples = round(samples * ood_fraction)
    info = describe(samples=samples, seed=seed, image_size=image_size, ood_samples=ood_samples,
                    label_noise=label_noise)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; --out names the dataset folder to write")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise DataError(f"{out}: cannot create it: {blocking} is a file, not a folder")
    existing = _read_info(out)
    if existing == info:
        log.info("%s already holds this dataset (samples=%d, seed=%d); kept", out, samples, seed)
        return info
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not this dataset; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with tqdm(total=3 * (samples + ood_samples), unit="rows", desc=f"synth {out.name}",
                  disable=None if progress is None else not progress) as bar:
            _write_split(tmp, n=samples, seed=seed, split=0, prefix="s", style=IN_DISTRIBUTION,
                         image_size=image_size, label_noise=label_noise, progress=bar)
            if ood_samples:
                _write_split(tmp / "ood", n=ood_samples, seed=seed, split=1, prefix="o", style=OUT_OF_DISTRIBUTION,
                             image_size=image_size, label_noise=label_noise, progress=bar)
                (tmp / "ood" / "dataset.json").write_text(json.dumps(
                    {**info, "samples": ood_samples, "split": "ood", "ood": None}, indent=2) + "\n")
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completion
        if _read_info(out) != info:  # else another process completed the same dataset meanwhile: keep theirs
            _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is renamed aside first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "data")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None and not out.exists():
            os.replace(old / "data", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_demo_data(dest: Path, samples: int, seed: int) -> Path:
    """The built-in demo dataset (``spec.data.path: builtin:demo``) in ``dest``: reused when ``dest`` already
    holds a complete one with the same samples and seed, otherwise synthesised atomically. Safe when several
    processes call it at once: each writes its own temporary folder; if another process completed ``dest``
    first, its result is kept."""
    dest = Path(dest)
    info = _read_info(dest)
    if info and info.get("samples") == samples and info.get("seed") == seed \
            and info.get("format_version") == FORMAT_VERSION:
        return dest
    try:
        synthesize(dest, samples=samples, seed=seed, overwrite=True, progress=False)
    except OSError:
        info = _read_info(dest)  # another process renamed its copy into place first
        if not (info and info.get("samples") == samples and info.get("seed") == seed):
            raise
    return dest


# ---------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write (created atomically)")
    parser.add_argument("--samples", type=int, default=4000, help="in-distribution records (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same files)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--ood-fraction", type=float, default=0.2,
                        help="OOD records written to OUT/ood, as a fraction of --samples (default 0.2)")
    parser.add_argument("--label-noise", type=float, default=0.03,
                        help="probability that a label is replaced by a random class (default 0.03)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it holds something else")


def run(args: argparse.Namespace) -> int:
    try:
        info = synthesize(args.out, samples=args.samples, seed=args.seed, image_size=args.image_size,
                          ood_fraction=args.ood_fraction, label_noise=args.label_noise, overwrite=args.overwrite)
    except OSError as exc:  # a parent that is a file, no permission, a full disk: one line, not a traceback
        where = exc.filename or args.out
        raise DataError(f"--out {args.out}: cannot write the dataset ({exc.strerror or exc} at {where})") from None
    c = info["ceilings"]
    print(f"{args.out}: {info['samples']} records, {info['ood']['samples']} OOD records in ood/, "
          f"{info['num_classes']} classes")
    print(f"accuracy ceilings: image {c['image']:.4f}, text {c['text']:.4f}, numeric {c['numeric']:.4f}; "
          f"all three {info['best_achievable']['top1']:.4f} (label noise {info['label_noise']})")
    return 0
