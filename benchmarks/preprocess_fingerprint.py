"""The data part of the content key with and without the per-file digest cache (ARTIFACTS/.fingerprints/).

    .venv/bin/python benchmarks/preprocess_fingerprint.py [--files 20000] [--bytes 4096] [--rounds 3]
        [--evict] [--json]
    .venv/bin/python benchmarks/preprocess_fingerprint.py --parse-entries 1000000

Writes ``--files`` files of ``--bytes`` random bytes (images/NNNNN.png, 1000 per folder, plus text.csv) into a
temporary folder and dates them an hour back (a dataset written earlier; files younger than
``artifact.RACY_SECONDS`` are never cached). Then, in this one process, ``--rounds`` interleaved rounds of:

- ``no cache``: ``data_fingerprint(root)``, every file read (what every init container did before the cache);
- ``cold``: an empty cache, every file read and the cache file written (the first pod on a new dataset);
- ``warm``: the cache from the run before, no file read (every later pod, restart and expected_content_key).

The baseline is ``no cache`` in the same run; rows: no cache / warm and cold / no cache, per-round ratios.
The files were just written, so they sit in the page cache: ``no cache`` and ``cold`` are measured at
their best (memory speed). ``--evict`` drops this dataset's files (only these: ``posix_fadvise(DONTNEED)`` per
file, after an fsync) from the page cache before every run, so their contents come from the disk as in a pod
that mounts a dataset it has not read yet; the warm run touches only metadata (one stat per file) and the
cache file.

``--parse-entries N`` only times reading a synthetic cache file of N entries (64 KB files, distinct digests):
the fixed part of a warm run on a large dataset, which the 20k-file runs do not show.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness import Row, describe, emit, interleave, log, paired, parser
from kubefusion.preprocess import artifact

COMMAND = ".venv/bin/python benchmarks/preprocess_fingerprint.py"


def write_dataset(root: Path, files: int, size: int) -> None:
    settled = time.time() - 3600
    for i in range(files):
        folder = root / "images" / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.png"
        path.write_bytes(os.urandom(size))
        os.utime(path, (settled, settled))
    text = root / "text.csv"
    text.write_text("id,text,label\n" + "".join(f"{i:06d},row {i},c{i % 3}\n" for i in range(files)))
    os.utime(text, (settled, settled))


def evict(root: Path) -> None:
    """Drop ``root``'s file contents from the page cache (written back first: dirty pages cannot be dropped)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_cache_parse(entries: int) -> None:
    import hashlib
    import tracemalloc

    with tempfile.TemporaryDirectory(prefix="fingerprint-parse-") as tmp:
        cache = Path(tmp) / "cache.json"
        files = {f"images/{i // 1000:04d}/{i:07d}.jpg": [65536, 1_700_000_000_000_000_000 + i,
                                                         hashlib.sha256(str(i).encode()).hexdigest()]
                 for i in range(entries)}
        cache.write_bytes(artifact.canonical_json({"version": artifact.DIGEST_CACHE_VERSION, "files": files}))
        del files
        seconds, known = timed_result(lambda: artifact.read_digest_cache(cache))
        assert len(known) == entries
        del known
        tracemalloc.start()  # a second, traced read: tracing slows it, so the time above is untraced
        known = artifact.read_digest_cache(cache)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{entries} entries, cache file {cache.stat().st_size / 1e6:.0f} MB: read in {seconds:.2f} s; "
              f"Python memory: {held / 1e6:.0f} MB held after, {peak / 1e6:.0f} MB peak while reading; "
              f"load {os.getloadavg()[0]:.1f}")


def timed_result(fn) -> tuple[float, dict]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--bytes", type=int, default=4096, help="size of each file")
    p.add_argument("--evict", action="store_true", help="read the files from disk, not the page cache")
    p.add_argument("--parse-entries", type=int, default=0, help="only time reading a cache of N entries")
    args = p.parse_args(argv)
    if args.parse_entries:
        time_cache_parse(args.parse_entries)
        return []
    files, rounds = (200, 1) if args.smoke else (args.files, args.rounds or 3)

    with tempfile.TemporaryDirectory(prefix="fingerprint-bench-") as tmp:
        root, artifacts = Path(tmp) / "data", Path(tmp) / "artifacts"
        write_dataset(root, files, args.bytes)
        cache = artifact.fingerprint_cache_path(artifacts, root)
        keys = set()

        def run(use_cache: bool, fresh: bool) -> float:
            if fresh:
                cache.unlink(missing_ok=True)
            elif use_cache and not cache.exists():  # a warm run needs the cache of a run before (untimed)
                artifact.data_fingerprint(root, cache=cache)
            if args.evict:
                evict(root)
            seconds, result = timed_result(lambda: artifact.data_fingerprint(root, cache=cache if use_cache else None))
            keys.add(result["sha256"])
            return seconds

        log(f"preprocess_fingerprint: {files} files of {args.bytes} B, {rounds} rounds")
        seconds = interleave({"no cache": lambda: run(False, False), "cold": lambda: run(True, True),
                              "warm": lambda: run(True, False)}, rounds=rounds, progress=log)
        assert len(keys) == 1, "the cache changed the key"
        cache_bytes = cache.stat().st_size

    where = "read from disk (--evict)" if args.evict else "in the page cache"
    measured = f"data part of the content key, {files + 1} files of {args.bytes} B {where}"
    command = COMMAND + (" --evict" if args.evict else "")
    baseline = f"no cache: every file read and hashed: {describe(seconds['no cache'], 's', 2)}"
    rows = [
        Row(measured=f"{measured}, warm digest cache (one stat per file)",
            value=f"warm {describe(seconds['warm'], 's', 2)}", baseline=baseline,
            ratio=paired(seconds["no cache"], seconds["warm"]), ratio_of="no-cache s / warm s", command=command,
            note=f"Cache file {cache_bytes / 1e6:.1f} MB. Files read from the page cache are the uncached run at "
                 f"its cheapest; from disk (--evict) or a network volume the gain grows."),
        Row(measured=f"{measured}, cold digest cache (every file read, the cache written)",
            value=f"cold {describe(seconds['cold'], 's', 2)}", baseline=baseline,
            ratio=paired(seconds["cold"], seconds["no cache"]), ratio_of="cold s / no-cache s", command=command,
            note="What the first pod on a new dataset pays for writing the cache."),
    ]
    emit(rows, args)
    return rows


if __name__ == "__main__":
    main()
