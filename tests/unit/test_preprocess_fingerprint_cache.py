"""The per-file digest cache behind the content key (ARTIFACTS/.fingerprints/): unchanged files are not read
again, and the key is the same with or without the cache, whatever state the cache file is in."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from kubefusion.config import demo
from kubefusion.data import _gfile
from kubefusion.preprocess import artifact, cli
from kubefusion.preprocess.export import expected_content_key

SETTLED = time.time() - 3600  # a dataset written an hour ago: older than the racy window


def _dataset(root: Path, files: int = 5) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / "images" / f"{i}.png").write_bytes(f"png-{i}".encode())
    (root / "text.csv").write_text("id,text,label\na,hello,x\n")
    for path in root.rglob("*"):
        os.utime(path, (SETTLED, SETTLED))
    return root


@pytest.fixture
def reads(monkeypatch):
    """Relative names of the files whose contents data_fingerprint reads."""
    seen: list[str] = []
    real = artifact.sha256_file

    def counting(path, **kwargs):
        seen.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(artifact, "sha256_file", counting)
    return seen


def test_a_warm_cache_reads_no_file_and_gives_the_same_key(tmp_path, reads):
    root = _dataset(tmp_path / "data")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    uncached = artifact.data_fingerprint(root)
    reads.clear()
    cold = artifact.data_fingerprint(root, cache=cache)
    assert len(reads) == 6 and cache.is_file()
    reads.clear()
    warm = artifact.data_fingerprint(root, cache=cache)
    assert reads == []
    assert uncached == cold == warm


def test_a_changed_file_is_read_again_and_changes_the_key(tmp_path, reads):
    root = _dataset(tmp_path / "data")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    before = artifact.data_fingerprint(root, cache=cache)
    (root / "text.csv").write_text("id,text,label\na,HELLO,x\n")  # same size, new contents, new mtime
    os.utime(root / "text.csv", (SETTLED + 60, SETTLED + 60))
    reads.clear()
    after = artifact.data_fingerprint(root, cache=cache)
    assert reads == ["text.csv"]
    assert after["sha256"] != before["sha256"] and after == artifact.data_fingerprint(root)


def test_added_and_removed_files_count_like_without_a_cache(tmp_path):
    root = _dataset(tmp_path / "data")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    artifact.data_fingerprint(root, cache=cache)
    (root / "images" / "0.png").unlink()
    (root / "images" / "new.png").write_bytes(b"new")
    assert artifact.data_fingerprint(root, cache=cache) == artifact.data_fingerprint(root)
    assert "images/0.png" not in artifact.read_digest_cache(cache)


@pytest.mark.parametrize("contents", [b"", b'{"version": 1, "files": {"text.csv": [2', b"\x00\xff garbage",
                                      b'{"version": 99, "files": {}}', b'{"version": 1, "files": []}',
                                      b'{"version": 1, "files": {"text.csv": [1, 2, "not-a-digest"]}}'])
def test_a_torn_or_corrupt_cache_is_ignored_with_a_debug_line(tmp_path, reads, caplog, contents):
    root = _dataset(tmp_path / "data")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(contents)
    reads.clear()
    with caplog.at_level(logging.DEBUG, logger="kubefusion.preprocess.artifact"):
        result = artifact.data_fingerprint(root, cache=cache)
    assert result == artifact.data_fingerprint(root) and len(reads) >= 6
    assert any("digest cache ignored" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)
    assert len(artifact.read_digest_cache(cache)) == 6  # rewritten whole


def test_a_cache_that_lies_about_a_file_is_only_trusted_while_size_and_mtime_match(tmp_path):
    """The documented trade-off: a rewrite in place keeping size and mtime_ns is missed; --rehash reads it."""
    root = _dataset(tmp_path / "data")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    before = artifact.data_fingerprint(root, cache=cache)
    (root / "text.csv").write_text("id,text,label\na,HELLO,x\n")
    os.utime(root / "text.csv", (SETTLED, SETTLED))
    assert artifact.data_fingerprint(root, cache=cache) == before  # missed
    rehashed = artifact.data_fingerprint(root, cache=cache, rehash=True)
    assert rehashed == artifact.data_fingerprint(root) != before
    assert artifact.data_fingerprint(root, cache=cache) == rehashed  # and the cache now knows


def test_files_modified_just_now_are_not_cached(tmp_path, reads):
    root = _dataset(tmp_path / "data")
    (root / "text.csv").write_text("id,text,label\nb,fresh,y\n")  # mtime: now, within the racy window
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    artifact.data_fingerprint(root, cache=cache)
    assert "text.csv" not in artifact.read_digest_cache(cache)
    reads.clear()
    artifact.data_fingerprint(root, cache=cache)
    assert reads == ["text.csv"]


def test_the_cache_file_is_named_by_the_data_root_however_it_is_spelled(tmp_path, monkeypatch):
    root = _dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert artifact.fingerprint_cache_path(Path("artifacts"), "data") == \
        artifact.fingerprint_cache_path(Path("artifacts"), root)
    other = _dataset(tmp_path / "other")
    assert artifact.fingerprint_cache_path(Path("artifacts"), other) != \
        artifact.fingerprint_cache_path(Path("artifacts"), root)


def test_concurrent_writers_leave_one_whole_cache(tmp_path):
    root = _dataset(tmp_path / "data", files=200)
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    expected = artifact.data_fingerprint(root)
    results = []
    workers = [threading.Thread(target=lambda: results.append(artifact.data_fingerprint(root, cache=cache,
                                                                                        rehash=True)))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [expected] * 4
    assert len(artifact.read_digest_cache(cache)) == 201
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind


def test_an_unwritable_cache_location_costs_only_the_cache(tmp_path, caplog):
    root = _dataset(tmp_path / "data")
    (tmp_path / "artifacts").write_text("a file where the ARTIFACTS folder should be")
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", root)
    with caplog.at_level(logging.DEBUG, logger="kubefusion.preprocess.artifact"):
        assert artifact.data_fingerprint(root, cache=cache) == artifact.data_fingerprint(root)
    assert any("digest cache not written" in r.getMessage() for r in caplog.records)


def test_expected_content_key_uses_and_fills_the_cache(tmp_path, reads):
    root = _dataset(tmp_path / "data")
    job = demo(str(root))
    artifacts = tmp_path / "artifacts"
    key = expected_content_key(job, artifacts, data_root=root)
    assert (artifacts / artifact.FINGERPRINT_CACHE_DIR).is_dir()
    reads.clear()
    assert expected_content_key(job, artifacts, data_root=root) == key
    assert reads == []


def test_preprocess_has_a_rehash_flag():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args(["--config", "j.yaml", "--out", "a", "--rehash"]).rehash is True
    assert parser.parse_args(["--config", "j.yaml", "--out", "a"]).rehash is False


# ------------------------------------------------------------------------------------------- URI roots


class _LocalGfile:
    """tf.io.gfile over a local folder served as ``mem://``, reporting ``mtime_nsec`` like GCS (or 0, like
    TF's ram://, with ``times=False``)."""

    def __init__(self, base: Path, times: bool = True) -> None:
        self.base, self.times, self.opened = base, times, []

    def _local(self, path: str) -> Path:
        return self.base / path.removeprefix("mem://")

    def exists(self, path):
        return self._local(path).exists()

    def isdir(self, path):
        return self._local(path).is_dir()

    def walk(self, top):
        for folder, dirs, names in os.walk(self._local(top)):
            yield "mem://" + Path(folder).relative_to(self.base).as_posix(), dirs, names

    def GFile(self, path, mode):  # noqa: N802 (tf.io.gfile's name)
        self.opened.append(path.rsplit("/", 1)[-1])
        return open(self._local(path), mode)

    def stat(self, path):
        st = self._local(path).stat()
        return argparse.Namespace(length=st.st_size, mtime_nsec=st.st_mtime_ns if self.times else 0)


@pytest.mark.parametrize("times", [True, False])
def test_a_uri_root_reuses_digests_only_where_the_store_reports_times(tmp_path, monkeypatch, times):
    _dataset(tmp_path / "bucket" / "data")
    fake = _LocalGfile(tmp_path / "bucket", times)
    monkeypatch.setattr(_gfile, "gfile", lambda: fake)
    cache = artifact.fingerprint_cache_path(tmp_path / "artifacts", "mem://data")
    first = artifact.data_fingerprint("mem://data", cache=cache)
    assert first == artifact.data_fingerprint(tmp_path / "bucket" / "data")
    fake.opened.clear()
    assert artifact.data_fingerprint("mem://data", cache=cache) == first
    assert len(fake.opened) == (0 if times else 6)
