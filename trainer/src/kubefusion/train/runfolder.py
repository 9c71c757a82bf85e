"""A run folder (``--output``) belongs to one training configuration.

``OUT/run.json`` records the configuration the folder's checkpoints, models and results come from::

    {"format": 1, "fingerprint": "<sha256 of configuration + data, 16 hex>",
     "configuration": {"spec.training.learningRate": 0.002, ...},   every field that changes the trained model
     "data": {"data files (sha256)": ..., "preprocessing artifact (content key)": ...} or null until training}

What changes the trained model: every spec field except those that say where or how the same training runs
(:data:`NOT_THE_MODEL`: resources, monitoring, the cluster's volumes and scheduling, checkpoint and logging
cadence, baselines (each stage has its own checkpoints), the ONNX export at the end, and how the same computation
is carried out: precision, deterministic kernels, the preprocessing runtime); plus the data, by content (CSV line
endings do not count, :func:`kubefusion.preprocess.artifact.data_fingerprint`), and the preprocessing artifact.

A folder whose record differs from the job is refused, naming each field that differs (old -> new) and the two
ways out: a new ``--output``, or ``--restart``, which moves what the old run wrote (:data:`RUN_OUTPUTS`) aside and
deletes it; the data and the content-addressed preprocessing artifacts stay. A non-empty folder that is not a
run folder is refused: nothing is written into someone else's files. The same record goes into every checkpoint
and into results.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kubefusion.config import JobConfig, job_to_dict
from kubefusion.errors import UserError
from kubefusion.train.atomic import atomic_write_text

RUN_FILE = "run.json"
FORMAT = 1

NOT_THE_MODEL = (
    "spec.image", "spec.backend", "spec.resources", "spec.monitoring", "spec.scheduling", "spec.runPolicy",
    "spec.storage",
    "spec.data.path", "spec.data.source", "spec.data.oodPath",
    "spec.preprocessing.backend",
    "spec.training.precision", "spec.training.deterministic", "spec.training.baselines",
    "spec.training.checkpointEverySteps", "spec.training.keepCheckpoints", "spec.training.logEverySteps",
    "spec.training.collectiveTimeoutSeconds", "spec.training.exportOnnx",
)
"""Spec fields (and sections) that do not change the trained model: a resume may change them."""

RUN_OUTPUTS = ("checkpoints", "baselines", "tensorboard", "onnx", "model.pt", "results.json", "results.md",
               "status.json", RUN_FILE)
"""What a run writes into its folder (besides its logs); ``--restart`` discards these (status.json too: a run
carries its progress over from it; onnx/ too: an export of a model at the same step would be kept)."""
BESIDE_A_RUN = ("artifacts", "data", "logs", "lost+found")
"""Entries that may be in a folder before its first run: ``kubefusion run`` puts its data, artifacts and logs
there first, and a fresh ext4 volume (a cluster's /checkpoints) holds lost+found."""

DATA_FILES = "data files (sha256)"
ARTIFACT = "preprocessing artifact (content key)"


class RunFolderError(UserError):
    """The output folder holds another configuration's run, or files that are not a run's."""


# ---------------------------------------------------------------------------------------- the record (pure)


def configuration(job: JobConfig) -> dict[str, Any]:
    """Every spec field that changes the trained model, as {dotted camelCase path: value}, sorted."""
    flat: dict[str, Any] = {}

    def walk(path: str, value: Any) -> None:
        if any(path == skip or path.startswith(skip + ".") for skip in NOT_THE_MODEL):
            return
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{path}.{key}", item)
        else:
            flat[path] = value

    walk("spec", job_to_dict(job)["spec"])
    return dict(sorted(flat.items()))


def data_identity(manifest: dict[str, Any]) -> dict[str, str]:
    """The data and preprocessing a model is trained on, from its preprocessing artifact's manifest."""
    data = (manifest.get("key_material") or {}).get("data") or {}
    return {DATA_FILES: str(data.get("sha256", "unknown")), ARTIFACT: str(manifest["content_key"])}


def fingerprint(config: dict[str, Any], data: dict[str, str] | None) -> str:
    text = json.dumps({"configuration": config, "data": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record(job: JobConfig, data: dict[str, str] | None) -> dict[str, Any]:
    config = configuration(job)
    return {"format": FORMAT, "fingerprint": fingerprint(config, data), "configuration": config, "data": data}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field old -> new`` for every field that differs between two records (data only when both know it)."""
    changed = []
    before, after = old.get("configuration") or {}, new.get("configuration") or {}
    for key in sorted(set(before) | set(after)):
        if before.get(key, "(unset)") != after.get(key, "(unset)"):
            changed.append(f"{key} {_show(before.get(key, '(unset)'))} -> {_show(after.get(key, '(unset)'))}")
    if old.get("data") and new.get("data"):
        for key in (DATA_FILES, ARTIFACT):
            if old["data"].get(key) != new["data"].get(key):
                changed.append(f"{key} {str(old['data'].get(key))[:12]} -> {str(new['data'].get(key))[:12]}")
    return changed


def _show(value: Any) -> str:
    return value if value == "(unset)" else json.dumps(value)


# ------------------------------------------------------------------------------------------- the folder


def read_record(output: Path) -> dict[str, Any] | None:
    path = output / RUN_FILE
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: unreadable ({exc}); start over with --restart, or use a new --output") \
            from None
    if not isinstance(found, dict) or "configuration" not in found:
        raise RunFolderError(f"{path}: not a kubefusion run record; start over with --restart, or use a new "
                             "--output")
    return found


def claim(output: Path, job: JobConfig, *, data: dict[str, str] | None = None, restart: bool = False,
          option: str = "--output") -> dict[str, Any]:
    """Make ``output`` this configuration's run folder, or refuse (:class:`RunFolderError`). ``data`` is the
    data identity once known (``kubefusion train``), None before preprocessing (``kubefusion run``).
    ``restart`` discards the run already there first. Returns the record now in the folder."""
    output = Path(output)
    wanted = record(job, data)
    existing = read_record(output)
    if existing is None:
        written = [name for name in RUN_OUTPUTS if (output / name).exists()]
        if written and not restart:
            raise RunFolderError(
                f"{option} {output} holds a run ({', '.join(written)}) without {RUN_FILE}, the record of the "
                f"configuration it was trained with, so it cannot be resumed safely: {_ways_out(output, option)}")
        strangers = sorted(p.name for p in _entries(output)
                           if p.name not in RUN_OUTPUTS and p.name not in BESIDE_A_RUN and not p.name.startswith("."))
        if strangers:
            listed = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
            raise RunFolderError(f"{option} {output} is not empty and is not a kubefusion run folder (it holds "
                                 f"{listed}); give an empty or new folder")
        if written:
            discard(output)
    else:
        changed = differences(existing, wanted)
        if restart:
            discard(output)
        elif changed:
            raise RunFolderError(
                f"{option} {output} was trained with another configuration ({'; '.join(changed)}): its "
                f"checkpoints and results belong to that one. {_ways_out(output, option)}")
        elif existing.get("data") and data is None:
            wanted = existing  # `kubefusion run` before preprocessing: the data is checked by training
        if existing == wanted:
            return existing
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / RUN_FILE, json.dumps(wanted, indent=2) + "\n")
    return wanted


def _ways_out(output: Path, option: str) -> str:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return ("On a cluster: give this job a checkpoints volume of its own (spec.storage.checkpoints), or "
                f"empty {output}")
    return (f"Give a new {option} for this configuration, or add --restart to discard that run (checkpoints, "
            f"models, results, TensorBoard curves) and start over in {output}")


def _entries(output: Path) -> list[Path]:
    return list(output.iterdir()) if output.is_dir() else []


def discard(output: Path) -> None:
    """Move what a run wrote out of the way, then delete it: a crash in between leaves a folder without a run
    record or checkpoints (a fresh start), never half of the old run. Data, artifacts and tool logs stay."""
    trash = output / f".discarded-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    trash.mkdir()
    for name in RUN_OUTPUTS:
        if (output / name).exists():
            os.replace(output / name, trash / name)
    logs = output / "logs"
    for steps in logs.glob("*.steps.jsonl") if logs.is_dir() else ():
        os.replace(steps, trash / steps.name)
    shutil.rmtree(trash)
    for stale in output.glob(".discarded-*"):  # left by a process killed mid-delete
        shutil.rmtree(stale, ignore_errors=True)
