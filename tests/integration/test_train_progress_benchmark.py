"""benchmarks/train_progress.py runs (``--smoke``) and measures what it says: each variant trained, the live
endpoint got reports, the wedged one held a request unanswered and the refused one failed, no call of the
loop waited out a send, and its rows are the benchmark table's (docs/training.md, "Live progress", has its
figures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubefusion.train.progress import REQUEST_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import Report  # noqa: E402


def test_the_progress_benchmark_trains_every_variant_against_live_wedged_and_refused_endpoints():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "train_progress.py"), "--smoke", "--json"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = Report.from_json(done.stdout.strip().splitlines()[-1]).rows  # the progress bars come before it
    assert [r.measured.split(":")[0] for r in rows] == [
        "training with live progress to an endpoint that answers 202 at once (the operator up)",
        "training with live progress to an endpoint that accepts and never answers (a NetworkPolicy dropping "
        "the traffic)",
        "training with live progress to an endpoint that refuses (the operator down, a Service without "
        "endpoints)"]
    live, wedged, refused = (r.details for r in rows)
    assert all(r.ratio.n == 1 and r.ratio.median > 0 and r.command == ".venv/bin/python benchmarks/train_progress.py"
               for r in rows)
    assert live["delivered"] >= 1 and live["failed"] == 0 and live["live_received"] == live["delivered"]
    assert wedged["wedged_connections"] >= 1 and wedged["delivered"] == 0
    assert refused["failed"] >= 1 and refused["delivered"] == 0
    # The loop only hands reports over (a report every step: logEverySteps 1); none of its calls waited out a
    # send, which against the wedged endpoint takes 5 s.
    assert all(d["calls"] >= d["steps"] for d in (live, wedged, refused))
    assert max(d["longest_call_ms"] for d in (live, wedged, refused)) < 1000 * REQUEST_TIMEOUT_SECONDS, rows
    assert live["hand_over"]["calls"] == 1000 and live["hand_over"]["cpu_us"] > 0
