"""A real `kubefusion train` run with spec.monitoring.metricsPort set, scraped over HTTP while it trains: the
series the PodMonitor, the alerts and the dashboard rely on are there, labelled the way the operator's
environment says."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# baselines are off: the only stage is the fused model.
LABELS = {"namespace": "team-a", "job_name": "scrape-demo", "rank": "0", "stage": "fused"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series, name: str, **extra: str) -> float | None:
    return series.get((name, tuple(sorted({**LABELS, **extra}.items()))))


@pytest.fixture(scope="module")
def prepared_job(tmp_path_factory):
    """Demo data, its preprocessing artifacts and a job file with a metrics port (one CPU process)."""
    from kubefusion.config import demo, job_to_dict
    from kubefusion.data import ensure_demo_data
    from kubefusion.preprocess.export import prepare

    root = tmp_path_factory.mktemp("scrape")
    data = Path(ensure_demo_data(root / "data", 160, 0))
    job = demo(str(data))
    artifacts = root / "artifacts"
    prepare(job, artifacts)
    document = job_to_dict(job)
    port = free_port()
    spec = document["spec"]
    spec["monitoring"] = {"metricsPort": port}
    # Metrics are published once per logging window: a window of one step lets the scrape catch the run
    # mid-epoch, before the cosine schedule has decayed the learning rate to 0 at the last step.
    spec["training"].update({"epochs": 1, "baselines": False, "batchSizePerGPU": 16, "logEverySteps": 1})
    spec["resources"]["gpusPerNode"] = 1
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config, artifacts, root / "out", port


def test_training_run_serves_the_trainer_series_while_it_trains(prepared_job):
    config, artifacts, output, port = prepared_job
    env = {**os.environ, "KUBEFUSION_NAMESPACE": "team-a", "KUBEFUSION_JOB_NAME": "scrape-demo",
           "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "kubefusion", "train", "--config", str(config), "--artifacts", str(artifacts),
               "--output", str(output)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            series = scrape(port)
            if series and (value(series, "kubefusion_trainer_step") or 0) >= 2:
                seen = series
                break
            time.sleep(0.05)
        logs = process.communicate(timeout=600)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, logs[-3000:]
    assert seen is not None, f"never scraped a finished step on port {port}:\n{logs[-3000:]}"

    assert value(seen, "kubefusion_trainer_step_seconds_count") >= 2
    assert value(seen, "kubefusion_trainer_step_seconds_sum") > 0
    assert value(seen, "kubefusion_trainer_samples_total") >= 2
    assert value(seen, "kubefusion_trainer_data_wait_seconds_total") >= 0
    assert value(seen, "kubefusion_trainer_samples_per_second") > 0
    assert value(seen, "kubefusion_trainer_learning_rate") > 0
    assert value(seen, "kubefusion_trainer_loss") is not None
    assert value(seen, "kubefusion_trainer_epoch") is not None
    assert time.time() - 600 < value(seen, "kubefusion_trainer_last_step_timestamp_seconds") <= time.time()
    # The port is released when training ends: the next run on this node can listen on it (as servers do,
    # with SO_REUSEADDR, so the closed scrape connections' TIME_WAIT does not count).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen()
