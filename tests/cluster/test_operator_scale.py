"""benchmarks/operator_scale.py at a tiny size, so the benchmark cannot rot: it starts its own control plane
and operator, and its ``--json`` figures (which `make bench` puts in docs/benchmarks.md) are all there and
consistent. The figures themselves are in docs/operator.md ("The operator at scale")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, skip_without_own_control_plane

pytestmark = pytest.mark.slow

BENCHMARK = REPO / 'benchmarks' / 'operator_scale.py'


def test_operator_scale_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    skip_without_own_control_plane()  # the benchmark starts one
    out = tmp_path / 'scale.json'
    done = subprocess.run([sys.executable, str(BENCHMARK), '--sizes', '3', '5', '--memory-jobs', '10',
                           '--resync-seconds', '2', '--request-costs', '10', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Traceback' not in done.stderr, done.stderr  # the watches end quietly when the control plane stops

    figures = json.loads(out.read_text())
    assert set(figures['sizes']) == {'3', '5'}
    for size in figures['sizes'].values():
        for side in ('operator', 'baseline'):
            assert 0 < size[side]['p50'] <= size[side]['p99'] <= size[side]['max'], size
        assert size['p99_ratio'] == pytest.approx(size['operator']['p99'] / size['baseline']['p99'], abs=0.1)
        assert size['apply_seconds'] > 0 and size['operator_cpu_ms_per_job'] > 0, size
        assert size['api_cpu_ms_per_job'] > 0 and size['client_cpu_ms_per_job'] > 0, size
        assert size['baseline_api_cpu_ms_per_object'] > 0 and size['cpu_seconds'] >= size['apply_seconds'], size
    # One PyTorchJob per job, and no more, with every job present for the memory figure.
    assert figures['rss_jobs'] == 10 and figures['pytorchjobs_created'] == 10, figures
    assert 0 < figures['rss_idle_mib'] <= figures['rss_mib'], figures
    assert figures['load_average_start'] >= 0 and figures['load_average_end'] >= 0
    assert '3 jobs (applied in' in done.stdout and 'operator RSS:' in done.stdout, done.stdout
    # What each of a job's writes costs the API server: the operator's own objects for one job, written again.
    assert figures['request_count'] == 10 and figures['cores'] >= 1
    assert list(figures['request_costs']) == ["create the job (the client's)", 'create its ConfigMap',
                                               'create its PyTorchJob', 'write its status', 'post its Event']
    assert all(ms > 0 for ms in figures['request_costs'].values()), figures['request_costs']
    assert 'API server + etcd CPU per request (10 of each)' in done.stdout, done.stdout
