"""What the training benchmarks start from: the demo job, its synthesised data and its preprocessing artifact."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import CACHE_ENV  # noqa: E402
from kubefusion import config as cfg  # noqa: E402


@dataclass
class DemoArtifacts:
    job: cfg.JobConfig
    data: Path
    artifacts: Path
    """The ARTIFACTS folder ``kubefusion preprocess`` would have written for ``job``."""


def demo_artifacts(folder: Path, *, samples: int, image_size: int | None = None) -> DemoArtifacts:
    """The demo preset with ``samples`` records (and ``image_size`` when given), its data synthesised and its
    preprocessing exported under ``folder`` (or under ``$KUBEFUSION_BENCH_CACHE``, where an earlier benchmark
    may have made them already: the export is content-keyed): what ``kubefusion run --local`` does first."""
    from kubefusion.data.synth import ensure_demo_data
    from kubefusion.preprocess.export import prepare

    folder = Path(os.environ.get(CACHE_ENV) or folder)
    job = cfg.demo()
    job.data.demo_samples = samples
    if image_size is not None:
        job.preprocessing.image_size = image_size
    data = ensure_demo_data(folder / "data", samples, job.data.demo_seed)
    job.data.path = str(data)
    artifacts = folder / f"artifacts-{samples}-{job.preprocessing.image_size}px"
    prepare(job, artifacts, data_root=data)
    return DemoArtifacts(job, data, artifacts)
