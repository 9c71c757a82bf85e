"""TrainerMetrics: the series a Prometheus scrape of one rank shows (names from docs/architecture.md)."""

from __future__ import annotations

import socket
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubefusion.errors import UserError
from kubefusion.train.metrics import TrainerMetrics

LABELS = {"namespace": "team-a", "job_name": "products", "rank": "3"}
# Calls that name no stage record the fused model's (the API before stages existed).
FUSED = {"stage": "fused"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series, name: str, **extra: str) -> float:
    return series[(name, tuple(sorted({**LABELS, **FUSED, **extra}.items())))]


def two_steps(metrics: TrainerMetrics) -> None:
    metrics.observe_step(step_seconds=0.5, data_wait_seconds=0.2, samples=32, loss=1.5,
                         learning_rate=3e-4, epoch=0, step=1, accuracy=0.25)
    metrics.observe_step(step_seconds=1.5, data_wait_seconds=0.3, samples=32, loss=1.25,
                         learning_rate=2e-4, epoch=1, step=2)


def test_scrape_over_http_shows_every_series_with_job_labels():
    port = free_port()
    metrics = TrainerMetrics("team-a", "products", 3, port).start()
    try:
        before = time.time()
        two_steps(metrics)
        metrics.observe_eval("validation", accuracy=0.75, loss=0.5)
        series = scrape(port)
    finally:
        metrics.close()

    assert value(series, "kubefusion_trainer_step_seconds_count") == 2
    assert value(series, "kubefusion_trainer_step_seconds_sum") == pytest.approx(2.0)
    assert value(series, "kubefusion_trainer_step_seconds_bucket", le="1.0") == 1
    assert value(series, "kubefusion_trainer_data_wait_seconds_total") == pytest.approx(0.5)
    assert value(series, "kubefusion_trainer_samples_total") == 64
    assert value(series, "kubefusion_trainer_samples_per_second") == pytest.approx(32.0)
    assert value(series, "kubefusion_trainer_loss") == 1.25
    assert value(series, "kubefusion_trainer_learning_rate") == 2e-4
    assert value(series, "kubefusion_trainer_epoch") == 1
    assert value(series, "kubefusion_trainer_step") == 2
    assert value(series, "kubefusion_trainer_accuracy", split="train") == 0.25
    assert value(series, "kubefusion_trainer_accuracy", split="validation") == 0.75
    assert value(series, "kubefusion_trainer_eval_loss", split="validation") == 0.5
    assert before <= value(series, "kubefusion_trainer_last_step_timestamp_seconds") <= time.time()
    assert before <= value(series, "kubefusion_trainer_last_eval_timestamp_seconds") <= time.time()
    # The data-wait fraction of docs/architecture.md, computed from the scraped counters.
    fraction = (value(series, "kubefusion_trainer_data_wait_seconds_total")
                / value(series, "kubefusion_trainer_step_seconds_sum"))
    assert fraction == pytest.approx(0.25)


def test_no_port_means_no_server_but_series_still_recorded():
    metrics = TrainerMetrics("team-a", "products", 3, None).start()
    two_steps(metrics)
    metrics.close()
    assert metrics._server is None
    from prometheus_client import generate_latest
    series = parse(generate_latest(metrics.registry).decode())
    assert value(series, "kubefusion_trainer_step") == 2


def test_several_instances_in_one_process_do_not_collide():
    first = TrainerMetrics("ns", "job", 0, 0)
    second = TrainerMetrics("ns", "job", 1, 0)
    first.observe_step(1.0, 0.0, 8, 1.0, 0.1, 0, 1)
    second.observe_step(1.0, 0.0, 16, 1.0, 0.1, 0, 1)
    assert first.registry.get_sample_value(
        "kubefusion_trainer_samples_total", {"namespace": "ns", "job_name": "job", "rank": "0", **FUSED}) == 8
    assert second.registry.get_sample_value(
        "kubefusion_trainer_samples_total", {"namespace": "ns", "job_name": "job", "rank": "1", **FUSED}) == 16


def test_close_frees_the_port_for_the_next_run():
    port = free_port()
    TrainerMetrics("ns", "job", 0, port).start().close()
    again = TrainerMetrics("ns", "job", 0, port).start()
    again.close()
    again.close()  # idempotent


def test_port_in_use_is_a_user_error_naming_the_port():
    port = free_port()
    holder = TrainerMetrics("ns", "job", 0, port).start()
    try:
        with pytest.raises(UserError, match=f"port {port}.*metricsPort"):
            TrainerMetrics("ns", "job", 1, port).start()
    finally:
        holder.close()


def test_throughput_is_over_recent_steps_not_the_whole_run():
    metrics = TrainerMetrics("ns", "job", 0, None)
    labels = {"namespace": "ns", "job_name": "job", "rank": "0", **FUSED}
    for step in range(30):  # 30 s of slow steps: 10 samples/s
        metrics.observe_step(1.0, 0.0, 10, 1.0, 0.1, 0, step)
    for step in range(30, 60):  # then 30 s at 100 samples/s
        metrics.observe_step(1.0, 0.0, 100, 1.0, 0.1, 0, step)
    assert metrics.registry.get_sample_value("kubefusion_trainer_samples_per_second", labels) == 100


def test_each_stage_keeps_its_own_series_while_the_next_one_trains():
    """With baselines on, one process trains the fused model and then three baselines, each from step 0: a
    baseline's steps must neither overwrite nor be added to the fused model's series."""
    metrics = TrainerMetrics("ns", "job", 0, None)
    labels = {"namespace": "ns", "job_name": "job", "rank": "0"}
    get = metrics.registry.get_sample_value
    for step in range(1, 11):
        metrics.observe_step(1.0, 0.25, 8, 2.0, 1e-3, epoch=2, step=step)  # no stage: the fused model
    metrics.observe_eval("test", accuracy=0.9, loss=0.3)
    metrics.observe_step(1.0, 0.5, 4, 3.0, 5e-4, epoch=0, step=1, accuracy=0.5, stage="baseline-image")
    metrics.observe_eval("test", accuracy=0.6, loss=1.1, stage="baseline-image")

    fused, image = {**labels, "stage": "fused"}, {**labels, "stage": "baseline-image"}
    assert (get("kubefusion_trainer_step", fused), get("kubefusion_trainer_step", image)) == (10, 1)
    assert (get("kubefusion_trainer_epoch", fused), get("kubefusion_trainer_epoch", image)) == (2, 0)
    assert (get("kubefusion_trainer_samples_total", fused), get("kubefusion_trainer_samples_total", image)) == (80, 4)
    assert get("kubefusion_trainer_data_wait_seconds_total", image) == 0.5
    assert get("kubefusion_trainer_step_seconds_count", image) == 1
    assert (get("kubefusion_trainer_loss", fused), get("kubefusion_trainer_loss", image)) == (2.0, 3.0)
    assert get("kubefusion_trainer_accuracy", {**fused, "split": "test"}) == 0.9
    assert get("kubefusion_trainer_accuracy", {**image, "split": "test"}) == 0.6
    assert get("kubefusion_trainer_accuracy", {**image, "split": "train"}) == 0.5
    assert get("kubefusion_trainer_eval_loss", {**image, "split": "test"}) == 1.1
    assert get("kubefusion_trainer_last_step_timestamp_seconds", image) >= get(
        "kubefusion_trainer_last_step_timestamp_seconds", fused)
    # The new model's throughput is its own: 4 samples in 1 s, not averaged with the fused model's 8/s.
    assert get("kubefusion_trainer_samples_per_second", image) == 4
    # Series that belong to the process, not to a model, carry no stage.
    assert get("kubefusion_trainer_samples_total", labels) is None


def test_before_the_first_step_a_rank_shows_zero_progress():
    """What the KubefusionTrainingNotStarted alert and the dashboard's rank count read."""
    metrics = TrainerMetrics("ns", "job", 0, None)
    labels = {"namespace": "ns", "job_name": "job", "rank": "0", **FUSED}
    assert metrics.registry.get_sample_value("kubefusion_trainer_last_step_timestamp_seconds", labels) == 0
    assert metrics.registry.get_sample_value("kubefusion_trainer_step", labels) == 0


def test_stage_must_be_named():
    metrics = TrainerMetrics("ns", "job", 0, None)
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_step(1.0, 0.0, 1, 0.0, 0.1, 0, 1, stage="")
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_eval("test", 0.5, 1.0, stage="")


def test_negative_durations_are_rejected():
    with pytest.raises(ValueError, match="step_seconds"):
        TrainerMetrics("ns", "job", 0, None).observe_step(-1.0, 0.0, 1, 0.0, 0.1, 0, 1)


def test_from_environment_uses_operator_labels_and_local_rank_port(monkeypatch):
    monkeypatch.setenv("KUBEFUSION_NAMESPACE", "team-a")
    monkeypatch.setenv("KUBEFUSION_JOB_NAME", "products")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    metrics = TrainerMetrics.from_environment(9402)
    assert (metrics.namespace, metrics.job_name, metrics.rank, metrics.port) == ("team-a", "products", 5, 9403)
    assert TrainerMetrics.from_environment(0).port is None


def test_gpu_memory_is_a_no_op_without_cuda():
    metrics = TrainerMetrics("ns", "job", 0, None)
    metrics.observe_gpu_memory()
    metrics.observe_step(1.0, 0.0, 8, 1.0, 0.1, 0, 1)
    assert metrics.registry.get_sample_value(
        "kubefusion_trainer_gpu_memory_bytes",
        {"namespace": "ns", "job_name": "job", "rank": "0", "kind": "allocated"}) is None


class FakeCuda:
    """torch.cuda as a rank on GPU 1 sees it (allocated 3 GiB, reserved 4 GiB)."""

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def current_device() -> int:
        return 1

    @staticmethod
    def memory_allocated(device: int) -> int:
        return 3 << 30 if device == 1 else 0

    @staticmethod
    def memory_reserved(device: int) -> int:
        return 4 << 30 if device == 1 else 0


def test_every_step_records_the_current_devices_cuda_memory(monkeypatch):
    import types
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda))
    metrics = TrainerMetrics("ns", "job", 0, None)
    metrics.observe_step(1.0, 0.0, 8, 1.0, 0.1, 0, 1)
    labels = {"namespace": "ns", "job_name": "job", "rank": "0"}
    get = metrics.registry.get_sample_value
    assert get("kubefusion_trainer_gpu_memory_bytes", {**labels, "kind": "allocated"}) == 3 << 30
    assert get("kubefusion_trainer_gpu_memory_bytes", {**labels, "kind": "reserved"}) == 4 << 30
