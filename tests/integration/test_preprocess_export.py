"""`kubefusion preprocess` end to end: statistics from the training split, TF vs onnxruntime parity on real
photographs and numeric rows with missing values, the content-addressed cache, concurrent exports, and loud
failures (unsupported ops, parity mismatches). One artifact is built per module and shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubefusion.config import demo, job_to_dict
from kubefusion.errors import ArtifactError

pytestmark = pytest.mark.slow

IMAGE_SIZE = 48  # demo images are 32 px and photographs 427x640: the graph both up- and downsamples
PHOTOS = Path(__import__("sklearn.datasets").datasets.__file__).parent / "images"


def blocked_import_command(argv: list[str], blocked: tuple[str, ...] = ("tensorflow", "torch")) -> list[str]:
    """A python command running ``kubefusion ARGV`` where importing any of ``blocked`` raises ImportError,
    and that reports the blocked modules' absence from sys.modules on stderr."""
    script = f"""
import sys
BLOCKED = {blocked!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked import of " + name)
sys.meta_path.insert(0, Blocker())
from kubefusion.cli import main
code = main({argv!r})
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "blocked module imported"
sys.exit(code)
"""
    return [sys.executable, "-c", script]


def write_job(path: Path, data_root: Path, image_size: int = IMAGE_SIZE) -> Path:
    job = demo(str(data_root))
    job.preprocessing.image_size = image_size
    path.write_text(yaml.safe_dump(job_to_dict(job)))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from kubefusion.data import ensure_demo_data

    return Path(ensure_demo_data(tmp_path_factory.mktemp("demo") / "data", 160, 0))


@pytest.fixture(scope="module")
def job_file(tmp_path_factory, data_root):
    return write_job(tmp_path_factory.mktemp("job") / "job.yaml", data_root)


@pytest.fixture(scope="module")
def built(tmp_path_factory, job_file):
    from kubefusion.config import load_job_file
    from kubefusion.preprocess.export import prepare

    out = tmp_path_factory.mktemp("artifacts")
    result = prepare(load_job_file(job_file), out)
    assert not result.reused
    return out, result


@pytest.fixture(scope="module")
def backends(built):
    from kubefusion.preprocess.runtime import Preprocessor

    out, _ = built
    return Preprocessor.load(out, "onnx"), Preprocessor.load(out, "tf")


def _photographs() -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(PHOTOS / name).convert("RGB")) for name in ("china.jpg", "flower.jpg")]


def test_onnx_and_tf_backends_agree_on_photographs_and_missing_values(backends):
    onnx_pre, tf_pre = backends
    photos = np.stack(_photographs())  # both 427x640: one batch of two
    assert photos.shape == (2, 427, 640, 3)
    numeric = np.array([[np.nan] * 6, [1.0, np.nan, 3.0, np.nan, 5.0, -6.0]], np.float32)
    pixels_onnx, numeric_onnx = onnx_pre(photos, numeric)
    pixels_tf, numeric_tf = tf_pre(photos, numeric)
    assert pixels_onnx.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.abs(pixels_onnx - pixels_tf).max() <= 1e-4
    assert np.abs(numeric_onnx - numeric_tf).max() <= 1e-4
    assert not np.isnan(numeric_onnx).any()


def test_outputs_are_the_documented_arithmetic(backends):
    import tensorflow as tf

    onnx_pre, _ = backends
    photo = _photographs()[1][None]
    stats = onnx_pre.manifest["statistics"]["numeric"]["columns"]
    mean = np.array([c["mean"] for c in stats], np.float32)
    std = np.array([c["std"] for c in stats], np.float32)
    raw = np.array([[np.nan, 2.0, np.nan, 0.5, 1.0, 9.0]], np.float32)
    pixels, numeric = onnx_pre(photo, raw)

    resized = tf.image.resize(photo.astype(np.float32), [IMAGE_SIZE, IMAGE_SIZE], method="bilinear").numpy()
    expected = (resized / 255.0 - np.array(onnx_pre.manifest["image_mean"])) / np.array(onnx_pre.manifest["image_std"])
    # tf.image.resize derives source coordinates with its own float rounding: a few pixels differ by ~1e-4.
    np.testing.assert_allclose(pixels, expected.transpose(0, 3, 1, 2), atol=1e-3)
    np.testing.assert_allclose(numeric, (np.where(np.isnan(raw), mean, raw) - mean) / std, atol=1e-5)
    assert numeric[0, 0] == 0.0 and numeric[0, 2] == 0.0  # imputed with the training mean


def test_dynamic_batch_and_image_size(backends):
    onnx_pre, tf_pre = backends
    rng = np.random.default_rng(0)
    for batch, h, w in ((1, 17, 23), (5, IMAGE_SIZE, IMAGE_SIZE), (3, 300, 41)):
        image = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        numeric = rng.normal(size=(batch, 6)).astype(np.float32)
        a, b = onnx_pre(image, numeric), tf_pre(image, numeric)
        assert a[0].shape == (batch, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert max(np.abs(x - y).max() for x, y in zip(a, b)) <= 1e-4


def test_statistics_come_from_the_training_split_only(built, job_file, data_root):
    from kubefusion.config import load_job_file
    from kubefusion.data import scan, split_records
    from kubefusion.preprocess.runtime import Preprocessor

    job = load_job_file(job_file)
    records = scan(job.data, data_root).records
    train = split_records(records, job.data.validation_fraction, job.data.test_fraction, job.data.split_seed)["train"]
    expected = np.nanmean(np.stack([r.numeric for r in train]), axis=0)
    everything = np.nanmean(np.stack([r.numeric for r in records]), axis=0)
    manifest = Preprocessor.load(built[0]).manifest
    got = np.array([c["mean"] for c in manifest["statistics"]["numeric"]["columns"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not np.allclose(got, everything, rtol=1e-5)
    assert manifest["split"]["train"] == len(train)


def test_manifest_describes_the_artifact(built):
    import onnx

    out, result = built
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    model = onnx.load(str(result.artifact_dir / "preprocess.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert manifest["content_key"] == result.content_key == result.artifact_dir.name
    assert {i["name"]: i["shape"] for i in manifest["inputs"]} == {
        "image": ["batch", "height", "width", 3], "numeric_raw": ["batch", 6]}
    assert {o["name"]: o["dtype"] for o in manifest["outputs"]} == {"pixel_values": "float32", "numeric": "float32"}
    assert manifest["num_classes"] == len(manifest["classes"]) == 8
    assert manifest["numeric_columns"] == [f"feature{i}" for i in range(1, 7)]
    assert manifest["image_size"] == IMAGE_SIZE and manifest["max_tokens"] == 24
    assert manifest["tokenizer"]["name"] == "builtin:minilm" and "tokenizer.json" in manifest["tokenizer"]["files"]
    assert all(manifest["versions"][name] not in ("", "absent") for name in ("tensorflow", "tf2onnx", "onnx"))
    assert set(manifest["files"]) >= {"preprocess.onnx", "saved_model/saved_model.pb", "tokenizer/tokenizer.json"}
    assert manifest["parity"]["max_abs_diff"]["pixel_values"] <= 1e-4
    assert json.loads((out / "latest.json").read_text())["content_key"] == result.content_key


def test_saved_tokenizer_matches_the_training_tokenizer(backends, data_root):
    from kubefusion.data import load_tokenizer

    onnx_pre, _ = backends
    texts = [line.split(",", 1)[1].rsplit(",", 1)[0] for line in (data_root / "text.csv").read_text().splitlines()[1:40]]
    texts += ["", "a much longer sentence " * 20]
    ids, mask = onnx_pre.tokenize(texts)
    training = load_tokenizer("builtin:minilm")(texts, padding="max_length", truncation=True, max_length=24)
    np.testing.assert_array_equal(ids, training["input_ids"])
    np.testing.assert_array_equal(mask, training["attention_mask"])


def test_second_run_reuses_the_artifact_without_tensorflow(built, job_file):
    out, result = built
    mtime = (result.artifact_dir / "preprocess.onnx").stat().st_mtime_ns
    proc = subprocess.run(blocked_import_command(["preprocess", "--config", str(job_file), "--out", str(out),
                                                  "--json"]), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["reused"] is True and summary["content_key"] == result.content_key
    assert (result.artifact_dir / "preprocess.onnx").stat().st_mtime_ns == mtime
    print(f"cache hit took {summary['seconds']} s in-process")


def test_the_key_is_known_before_exporting(built, job_file):
    from kubefusion.config import load_job_file
    from kubefusion.preprocess.export import expected_content_key
    from kubefusion.preprocess.runtime import Preprocessor

    out, result = built
    key = expected_content_key(load_job_file(job_file), out)
    assert key == result.content_key
    assert Preprocessor.load(out, content_key=key).artifact_dir == result.artifact_dir


def test_concurrent_exports_leave_one_complete_artifact(tmp_path, job_file):
    from kubefusion.preprocess import artifact

    out = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "kubefusion", "preprocess", "--config", str(job_file), "--out", str(out), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    summaries = [json.loads(stdout) for stdout, _ in results]
    assert len({s["artifact"] for s in summaries}) == 1
    assert sorted(s["reused"] for s in summaries) == [False, True]  # one wrote it, the other used it
    entries = sorted(p.name for p in out.iterdir())
    assert set(entries) - {artifact.FINGERPRINT_CACHE_DIR} == {summaries[0]["content_key"], "latest.json", "jobs"}
    artifact.verify(out / summaries[0]["content_key"])


def test_unsupported_ops_fail_the_export_loudly(tmp_path):
    import tensorflow as tf

    from kubefusion.preprocess.export import convert_saved_model

    class Decoding(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def __call__(self, contents):
            return {"pixels": tf.cast(tf.io.decode_jpeg(contents, channels=3), tf.float32)}

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, text):
            return {"prefix": tf.strings.to_number(tf.strings.substr(text, 0, 2))}

    for module, op in ((Decoding(), "DecodeJpeg"), (Strings(), "Substr")):
        folder = tmp_path / op
        tf.saved_model.save(module, str(folder), signatures={"serving_default": module.__call__.get_concrete_function()})
        with pytest.raises(ArtifactError, match=f"ops ONNX cannot express: .*{op}.*decoded uint8 pixels"):
            convert_saved_model(folder, folder / "model.onnx")
        assert not (folder / "model.onnx").exists()


def test_a_parity_mismatch_fails_with_the_difference(built, tmp_path):
    import onnx
    from onnx import numpy_helper

    from kubefusion.preprocess.export import check_parity

    artifact_dir = built[1].artifact_dir
    model = onnx.load(str(artifact_dir / "preprocess.onnx"))
    for init in model.graph.initializer:  # nudge every float constant: the ONNX graph now computes otherwise
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.size > 1:
            init.CopyFrom(numpy_helper.from_array(value * 1.01, init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    rows = np.array([[1.0, 2.0, np.nan, 4.0, 5.0, 6.0]], np.float32)
    with pytest.raises(ArtifactError, match="onnxruntime and TensorFlow differ by"):
        check_parity(artifact_dir / "saved_model", tampered, _photographs()[:1], rows)


def test_serving_decode_matches_the_training_decode(data_root):
    import tensorflow as tf

    from kubefusion.data import decode_image_file
    from kubefusion.serve.predict import decode_image

    for path in sorted((data_root / "images").iterdir())[:10]:  # PNG at the training size: identical
        np.testing.assert_array_equal(decode_image(path, 32), decode_image_file(path, 32))
    for name in ("china.jpg", "flower.jpg"):
        # The same decoded pixels, resized by PIL and by the pipeline's TF op: within one grey level.
        accurate = tf.io.decode_jpeg(tf.io.read_file(str(PHOTOS / name)), channels=3, dct_method="INTEGER_ACCURATE")
        from kubefusion.data.images import resize

        for size in (32, 224):
            diff = np.abs(decode_image(PHOTOS / name, size).astype(int) - resize(accurate, size).numpy().astype(int))
            assert diff.max() <= 1, (name, size)


# ------------------------------------------------------------------------------------- the record index


def _training_data(job_file, data_root, artifact_dir, *, rank=0, world_size=1):
    from kubefusion.config import load_job_file
    from kubefusion.data import load_tokenizer
    from kubefusion.preprocess.artifact import read_manifest
    from kubefusion.train.data import load_training_data

    job = load_job_file(job_file)
    return load_training_data(job, data_root, manifest=read_manifest(artifact_dir),
                              tokenizer=load_tokenizer(str(artifact_dir / "tokenizer")), rank=rank,
                              world_size=world_size, artifact_dir=artifact_dir)


def test_the_artifact_lists_the_records_it_was_built_on(built, job_file, data_root):
    from kubefusion.config import load_job_file
    from kubefusion.data import scan
    from kubefusion.data.index import RecordIndex

    _, result = built
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert "records.npz" in manifest["files"]  # covered by the sha256 list, like every other file
    index = RecordIndex.load(result.artifact_dir / "records.npz")
    scanned = scan(load_job_file(job_file).data, data_root)
    assert list(index.ids) == [r.id for r in scanned.records]
    assert list(index.labels) == [r.label for r in scanned.records]
    assert [tuple(m) for m in index.masks] == [r.mask for r in scanned.records]
    assert index.classes == manifest["classes"] and index.report["joined"] == len(scanned.records)
    assert manifest["record_index"] == {"file": "records.npz", "records": len(index), "digest": index.digest()}


def test_training_ranks_keep_the_indexed_records_without_decoding_them_again(built, job_file, data_root,
                                                                             monkeypatch):
    from kubefusion.data import reader
    from kubefusion.data.index import RecordIndex
    from kubefusion.train import distributed

    _, result = built
    decoded: list[str] = []
    real = reader.undecodable
    monkeypatch.setattr(reader, "undecodable", lambda paths: (decoded.extend(paths), real(paths))[1])
    index = RecordIndex.load(result.artifact_dir / "records.npz")
    rank0_sent: list = []
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: (rank0_sent.append(obj), [obj])[1])
    data = _training_data(job_file, data_root, result.artifact_dir)
    ood = data.splits["ood"]
    assert sorted(decoded) == sorted(p.decode() for p in ood.image_paths if p)  # rank 0: the OOD images only
    kept = sorted(i for name in ("train", "validation", "test") for i in data.splits[name].ids)
    assert kept == sorted(index.ids)

    # Rank 1 of 2, with rank 0's messages replayed: no image decoded, and the digests agree.
    decoded.clear()
    replay = iter(rank0_sent)
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [next(replay), obj])
    on_rank_1 = _training_data(job_file, data_root, result.artifact_dir, rank=1, world_size=2)
    assert decoded == []
    assert {k: v.ids for k, v in on_rank_1.splits.items()} == {k: v.ids for k, v in data.splits.items()}


def test_a_rank_with_other_records_fails_every_rank_naming_it(built, job_file, data_root, monkeypatch):
    from kubefusion.errors import DataError
    from kubefusion.train import distributed

    _, result = built
    calls = []

    def gather(obj):  # rank 1 of 3 saw other records
        calls.append(obj)
        return [obj, obj, obj] if len(calls) == 1 else [obj, (None, obj[1] + "x"), obj]

    monkeypatch.setattr(distributed, "all_gather_object", gather)
    with pytest.raises(DataError, match=r"rank 1 loaded other records than rank 0 \(rank 0: .*train=\d+"):
        _training_data(job_file, data_root, result.artifact_dir)


def test_a_listed_record_that_is_no_longer_readable_says_to_rerun_preprocess(built, job_file, data_root, tmp_path):
    import shutil

    from kubefusion.errors import DataError

    _, result = built
    changed = Path(shutil.copytree(data_root, tmp_path / "data"))
    lines = (changed / "text.csv").read_text().splitlines(keepends=True)
    gone = lines[5].split(",")[0]
    (changed / "text.csv").write_text("".join(lines[:5] + lines[6:]))
    with pytest.raises(DataError, match=rf"1 record\(s\) listed in the preprocessing artifact's record index are no "
                                        rf"longer readable \(first: id '{gone}'\).*rerun it"):
        _training_data(job_file, changed, result.artifact_dir)


def test_concurrent_pods_move_a_corrupt_artifact_aside_and_rebuild_one_valid_artifact(tmp_path, built, job_file):
    import shutil

    from kubefusion.preprocess import artifact
    from kubefusion.preprocess.runtime import Preprocessor

    _, result = built
    out = tmp_path / "artifacts"
    damaged = out / result.content_key
    shutil.copytree(result.artifact_dir, damaged)
    onnx_file = damaged / "preprocess.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(ArtifactError, match=f"{damaged}: corrupt .*rerun `kubefusion preprocess`"):
        Preprocessor.load(out, content_key=result.content_key)

    cmd = [sys.executable, "-m", "kubefusion", "preprocess", "--config", str(job_file), "--out", str(out), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    assert {json.loads(stdout)["artifact"] for stdout, _ in results} == {str(damaged)}
    artifact.verify(damaged)
    assert Preprocessor.load(out, content_key=result.content_key).content_key == result.content_key
    [aside] = [p for p in out.iterdir() if p.name.startswith(f".corrupt-{result.content_key}-")]
    assert len((aside / "preprocess.onnx").read_bytes()) == 100  # the damaged copy, kept for inspection
    warnings = [line for _, err in results for line in err.splitlines() if "failed verification" in line]
    assert warnings and "preprocess.onnx: sha256 differs" in warnings[0] and aside.name in warnings[0]
