"""benchmarks/train_progress.py runs (``--smoke``) and measures what it says: each variant trained, the live
endpoint got reports, the wedged one held a request unanswered and the refused one failed, and none of that
stopped a run (docs/training.md, "Live progress", has its figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubefusion.train.progress import REQUEST_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "train_progress.py"


def test_the_progress_benchmark_trains_every_variant_against_live_wedged_and_refused_endpoints():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--smoke", "--json"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the progress bars come before it
    variants = summary["variants"]
    assert list(variants) == ["none", "live endpoint", "wedged endpoint", "refused endpoint"]
    assert all(len(v["walls"]) == 1 and v["wall_s"] > 0 and v["cpu_ratio"] > 0 for v in variants.values())
    assert variants["live endpoint"]["delivered"] >= 1 and variants["live endpoint"]["failed"] == 0
    assert summary["live_received"] == variants["live endpoint"]["delivered"]
    assert summary["wedged_connections"] >= 1 and variants["wedged endpoint"]["delivered"] == 0
    assert variants["refused endpoint"]["failed"] >= 1 and variants["refused endpoint"]["delivered"] == 0
    assert variants["none"]["wall_ratio"] == 1.0
    # The loop only hands reports over: no call of it waited out a send (5 s against the wedged endpoint).
    reporting = [v for name, v in variants.items() if name != "none"]
    assert all(v["calls"] >= summary["steps"] for v in reporting)  # a report every step (logEverySteps: 1)
    assert max(v["longest_call_ms"] for v in variants.values()) < 1000 * REQUEST_TIMEOUT_SECONDS, variants
    assert summary["hand_over"]["calls"] == 1000 and summary["hand_over"]["cpu_us"] > 0
