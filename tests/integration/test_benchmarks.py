"""Every benchmark runs (its ``--smoke`` mode: tiny sizes) and hands make bench rows it can read; the GPU check
runs its whole code path on CPU (``--dry-run``) and prints the JSON a GPU run would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import CACHE_ENV, Report, Row  # noqa: E402
from run_all import BENCHMARKS as LISTED  # noqa: E402


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One scratch folder for the module, as make bench shares one: the demo artifact is exported once."""
    return tmp_path_factory.mktemp("bench-scratch")


def run(script: str, *args: str, scratch: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, CACHE_ENV: str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("name", [b.name for b in LISTED if not b.needs])
def test_smoke_mode_gives_rows_the_table_can_show(name, scratch):
    done = run(f"{name}.py", "--smoke", "--json", scratch=scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = Report.from_json(done.stdout.strip().splitlines()[-1]).rows
    assert rows and all(isinstance(r, Row) for r in rows)
    for row in rows:
        assert row.ratio.n >= 1 and row.ratio.median > 0 and row.command.startswith(".venv/bin/python benchmarks/")
        assert row.measured and row.baseline and row.ratio_of


def test_gpu_check_dry_run_runs_the_whole_check_on_cpu(scratch):
    done = run("gpu_check.py", "--dry-run", scratch=scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["dry_run"] is True and report["ok"] is True and report["device"] == "cpu"
    amp = report["amp"]
    assert amp["preset"] == "resnet50_bert_base" and set(amp["precisions"]) == {"fp32", "bf16", "fp16"}
    for precision, figures in amp["precisions"].items():
        assert figures["step_ms"] > 0 and figures["samples_per_s"] > 0
        assert ("speedup_vs_fp32" in figures) == (precision != "fp32")
    assert amp["amp_goal"]["met"] is None  # the goal is for a GPU: a dry run does not judge it
    demo = report["demo_job"]
    assert demo["exit_code"] == 0 and demo["backend"] == "gloo" and demo["device"] == "cpu"
    assert 0 <= demo["fused_test_top1"] <= 1 and demo["batch_preparation"]["non_blocking_copies"] is True


def test_gpu_check_without_a_gpu_says_how_to_dry_run():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: no CUDA GPU here; run with --dry-run to exercise the check on CPU"


@pytest.mark.cluster
@pytest.mark.skipif(shutil.which("go") is None, reason="the control plane is built from Go modules")
def test_the_operator_at_scale_rows_come_from_the_real_control_plane(scratch, tmp_path):
    """make bench runs the control-plane benchmark (benchmarks/operator_scale.py, its own --json file) and turns
    its figures into rows: this keeps the two in step (under a minute: a 2 s resync period is waited out)."""
    page = tmp_path / "bench.md"
    done = run("run_all.py", "--only", "operator_scale", "--smoke", "--out", str(page), scratch=scratch, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = page.read_text()
    assert "p99 over 5 jobs" in text and "= operator p99 (that is" in text and "Skipped" not in text
    assert "Operator CPU time:" in text  # the script's CPU ms per job reaches the row
    assert "VmRSS with 10 jobs" in text and "PyTorchJobs the operator reports having created: 10." in text
