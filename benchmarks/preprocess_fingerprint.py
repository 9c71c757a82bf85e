"""The data part of the content key with and without the per-file digest cache (ARTIFACTS/.fingerprints/).

    .venv/bin/python benchmarks/preprocess_fingerprint.py [--files 20000] [--bytes 4096] [--repeats 3]
        [--evict] [--json]
    .venv/bin/python benchmarks/preprocess_fingerprint.py --parse-entries 1000000

Writes ``--files`` files of ``--bytes`` random bytes (images/NNNNN.png, 1000 per folder, plus text.csv) into a
temporary folder and dates them an hour back (a dataset written earlier; files younger than
``artifact.RACY_SECONDS`` are never cached). Then, in this one process, ``--repeats`` times each:

- ``no cache``: ``data_fingerprint(root)``, every file read (what every init container did before the cache);
- ``cold``: an empty cache, every file read and the cache file written (the first pod on a new dataset);
- ``warm``: the cache from the run before, no file read (every later pod, restart and expected_content_key).

The baseline is ``no cache`` in the same run; printed are the median seconds, per-file microseconds and the
ratios. The files were just written, so they sit in the page cache: ``no cache`` and ``cold`` are measured at
their best (memory speed). ``--evict`` drops this dataset's files (only these: ``posix_fadvise(DONTNEED)`` per
file, after an fsync) from the page cache before every run, so their contents come from the disk as in a pod
that mounts a dataset it has not read yet; the warm run touches only metadata (one stat per file) and the
cache file.

``--parse-entries N`` only times reading a synthetic cache file of N entries (64 KB files, distinct digests):
the fixed part of a warm run on a large dataset, which the 20k-file runs do not show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from kubefusion.preprocess import artifact


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
        seconds, known = timed(lambda: artifact.read_digest_cache(cache))
        assert len(known) == entries
        del known
        tracemalloc.start()  # a second, traced read: tracing slows it, so the time above is untraced
        known = artifact.read_digest_cache(cache)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{entries} entries, cache file {cache.stat().st_size / 1e6:.0f} MB: read in {seconds:.2f} s; "
              f"Python memory: {held / 1e6:.0f} MB held after, {peak / 1e6:.0f} MB peak while reading; "
              f"load {os.getloadavg()[0]:.1f}")


def timed(fn) -> tuple[float, dict]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--bytes", type=int, default=4096, help="size of each file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--evict", action="store_true", help="read the files from disk, not the page cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--parse-entries", type=int, default=0, help="only time reading a cache of N entries")
    args = parser.parse_args()
    if args.parse_entries:
        time_cache_parse(args.parse_entries)
        return

    with tempfile.TemporaryDirectory(prefix="fingerprint-bench-") as tmp:
        root, artifacts = Path(tmp) / "data", Path(tmp) / "artifacts"
        write_dataset(root, args.files, args.bytes)
        cache = artifact.fingerprint_cache_path(artifacts, root)
        runs: dict[str, list[float]] = {"no cache": [], "cold": [], "warm": []}
        keys = set()
        runners = {"no cache": lambda: artifact.data_fingerprint(root),
                   "cold": lambda: artifact.data_fingerprint(root, cache=cache),
                   "warm": lambda: artifact.data_fingerprint(root, cache=cache)}
        for _ in range(args.repeats):
            cache.unlink(missing_ok=True)
            for name, run in runners.items():
                if args.evict:
                    evict(root)
                seconds, result = timed(run)
                runs[name].append(seconds)
                keys.add(result["sha256"])
        assert len(keys) == 1, "the cache changed the key"
        cache_bytes = cache.stat().st_size

    base = statistics.median(runs["no cache"])
    files = args.files + 1
    report = {
        "files": files, "bytes_per_file": args.bytes, "repeats": args.repeats, "evicted": args.evict,
        "cache_file_bytes": cache_bytes,
        "load_average": os.getloadavg()[0],
        "runs": {name: {"median_s": round(statistics.median(times), 3), "all_s": [round(t, 3) for t in times],
                        "us_per_file": round(statistics.median(times) / files * 1e6, 1),
                        "no_cache_over_this": round(base / statistics.median(times), 1)}
                 for name, times in runs.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{files} files of {args.bytes} B, median of {args.repeats}; cache file {cache_bytes / 1e6:.1f} MB; "
          f"{'read from disk' if args.evict else 'page cache'}; load {report['load_average']:.1f}")
    for name, row in report["runs"].items():
        print(f"  {name:9s} {row['median_s']:7.3f} s  {row['us_per_file']:7.1f} us/file  "
              f"no-cache/this {row['no_cache_over_this']:5.1f}x")


if __name__ == "__main__":
    main()
