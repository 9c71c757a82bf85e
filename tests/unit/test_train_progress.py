"""Live progress on the trainer side: the numbers a report carries, and delivery that never holds up training.

The report is shaped like the resource's status fields (docs/operator.md, "Progress and results"); the
delivery threads get the newest report through to each sink, back off when one fails, and never make the
caller wait.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubefusion.train import progress as p

STAGES = ["fused", "baseline-image", "baseline-text", "baseline-numeric"]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tracker(clock: Clock | None = None) -> p.ProgressTracker:
    return p.ProgressTracker(STAGES, steps_per_stage=100, epochs=4, monotonic=clock or Clock(),
                             now=lambda: "2026-01-02T03:04:05Z")


# ------------------------------------------------------------------------------------------- the numbers


def test_percent_counts_the_steps_of_every_stage_and_the_eta_the_current_pace():
    clock = Clock()
    t = tracker(clock)
    t.stage_started("fused", step=0, epoch=0)
    report = t.report()
    assert report["progress"]["percent"] == 0.0 and "etaSeconds" not in report["progress"]  # no pace yet
    clock.t += 50
    t.steps_done(step=50, epoch=1, samples_per_second=640.0)
    report = t.report()["progress"]
    assert report == {"stage": "fused", "stageNumber": 1, "stages": 4, "epoch": 2, "epochs": 4, "step": 50,
                      "steps": 100, "percent": 12.5, "samplesPerSecond": 640.0, "etaSeconds": 350,
                      "updateTime": "2026-01-02T03:04:05Z"}
    # The second stage: until its first step it goes at the first stage's pace (1 s per step), then at its own.
    clock.t += 50
    t.steps_done(step=100, epoch=3, samples_per_second=640.0)
    t.stage_started("baseline-image", step=0, epoch=0)
    assert t.report()["progress"]["percent"] == 25.0 and "samplesPerSecond" not in t.report()["progress"]
    assert t.report()["progress"]["etaSeconds"] == 300
    clock.t += 20
    t.steps_done(step=100, epoch=3, samples_per_second=2000.0)
    assert t.report()["progress"]["percent"] == 50.0
    assert t.report()["progress"]["etaSeconds"] == 40  # 200 steps left at 0.2 s per step


def test_a_resumed_stage_measures_its_pace_from_the_step_it_resumed_at():
    clock = Clock()
    t = tracker(clock)
    t.stage_started("fused", step=60, epoch=2)
    assert t.report()["progress"]["epoch"] == 3 and t.report()["progress"]["percent"] == 15.0
    clock.t += 10
    t.steps_done(step=70, epoch=2, samples_per_second=None)
    assert t.report()["progress"]["etaSeconds"] == 330  # (400 - 70) steps at 1 s per step


def test_the_last_step_is_not_the_end_until_the_results_exist():
    t = tracker()
    t.stage_started("baseline-numeric", step=0, epoch=0)
    t.steps_done(step=100, epoch=3, samples_per_second=10.0)
    assert t.report()["progress"]["percent"] == 99.0
    t.finished({"fusedTestTop1": 0.9, "model": "/out/model.pt"})
    report = t.report()
    assert report["progress"]["percent"] == 100.0 and report["progress"]["etaSeconds"] == 0
    assert report["results"] == {"fusedTestTop1": 0.9, "model": "/out/model.pt"}
    assert report["summary"]["progress"] == "100%" and report["summary"]["testTop1"] == "90.00%"


def test_validation_keeps_the_latest_and_the_best_per_stage_with_their_steps():
    t = tracker()
    t.validation("fused", 0.5, step=25)
    t.validation("fused", 0.8, step=50)
    t.validation("fused", 0.7, step=75)
    t.validation("baseline-text", 0.25, step=25)
    assert t.report()["metrics"] == {"validation": [
        {"stage": "fused", "top1": 0.7, "step": 75, "bestTop1": 0.8, "bestStep": 50},
        {"stage": "baseline-text", "top1": 0.25, "step": 25, "bestTop1": 0.25, "bestStep": 25}]}
    # The column shows the fused model's latest, whichever stage trains now.
    t.stage_started("baseline-text", step=25, epoch=1)
    assert t.report()["summary"]["valTop1"] == "70.00%"


def test_the_newest_checkpoint_is_reported_with_its_stage_step_and_time():
    t = tracker()
    t.checkpoint("fused", 40)
    assert t.report()["checkpoint"] == {"stage": "fused", "step": 40, "time": "2026-01-02T03:04:05Z"}


def test_a_resumed_run_carries_over_the_scores_and_checkpoint_of_the_run_it_continues(tmp_path):
    before = tracker()
    before.validation("fused", 0.6, step=25)
    before.checkpoint("fused", 30)
    p.StatusFile(tmp_path / p.STATUS_FILE).deliver(before.report())

    after = tracker()
    after.restore(p.read_status_file(tmp_path))
    report = after.report()
    assert report["metrics"]["validation"][0] == {"stage": "fused", "top1": 0.6, "step": 25, "bestTop1": 0.6,
                                                  "bestStep": 25}
    assert report["checkpoint"]["step"] == 30
    assert p.read_status_file(tmp_path / "absent") is None
    (tmp_path / p.STATUS_FILE).write_text("{not json")
    assert p.read_status_file(tmp_path) is None


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (45.4, "45s"), (190, "3m10s"), (3720, "1h02m"),
                                           (183600, "2d03h"), (None, None), (-1, None), (float("nan"), None)])
def test_durations_are_short_enough_for_a_column(seconds, text):
    assert p.format_duration(seconds) == text


def test_results_name_the_scores_the_best_single_modality_and_where_the_model_is():
    results = {"fused": {"test": {"top1": 0.975}, "ood": {"top1": 0.925}},
               "baselines": {"image": {"test": {"top1": 0.24}, "ood": {"top1": 0.23}},
                             "text": {"test": {"top1": 0.25}, "ood": {"top1": 0.256}}},
               "summary": {"best_single_modality_test": "text"}, "best_achievable": {"top1": 0.97375}}
    assert p.results_fields(results, output=Path("/checkpoints")) == {
        "fusedTestTop1": 0.975, "fusedOodTop1": 0.925, "bestSingleModality": "text",
        "bestSingleModalityTestTop1": 0.25, "bestSingleModalityOodTop1": 0.256, "bestAchievableTop1": 0.97375,
        "model": "/checkpoints/model.pt", "resultsFile": "/checkpoints/results.json"}
    # Without baselines there is no best single modality; a custom dataset has no best achievable.
    assert p.results_fields({"fused": {"test": {"top1": 0.5}}}, output=Path("/o")) == {
        "fusedTestTop1": 0.5, "model": "/o/model.pt", "resultsFile": "/o/results.json"}


def test_kubeflow_trainer_gets_its_own_payload_with_string_metrics_of_at_most_64_characters():
    t = tracker()
    t.stage_started("fused", 0, 0)
    t.validation("fused", 0.91234, step=10)
    t.checkpoint("fused", 10)
    t.steps_done(step=10, epoch=0, samples_per_second=123.456)
    payload = p.trainer_status(t.report())
    status = payload["trainerStatus"]
    assert set(payload) == {"trainerStatus"}
    assert status["progressPercentage"] == 2 and status["lastUpdatedTime"] == "2026-01-02T03:04:05Z"
    metrics = {m["name"]: m["value"] for m in status["metrics"]}
    assert metrics["fused_validation_top1"] == "0.9123" and metrics["stage"] == "fused"
    assert metrics["checkpoint_step"] == "10" and metrics["samples_per_second"] == "123.5"
    assert all(isinstance(m["value"], str) and 1 <= len(m["name"]) <= 64 and 1 <= len(m["value"]) <= 64
               for m in status["metrics"])


def test_the_environment_names_the_endpoints(tmp_path):
    env = {p.ENV_URL: "http://op:8082/x", p.ENV_TOKEN_FILE: "/t/token", p.ENV_INTERVAL: "2",
           p.TRAINER_ENV_URL: "https://trainer:10443/y", p.TRAINER_ENV_TOKEN: "/k/token", p.TRAINER_ENV_CA: "/k/ca"}
    sinks = p.sinks_from_environment(tmp_path, env)
    assert [type(s).__name__ for s in sinks] == ["StatusFile", "OperatorEndpoint", "KubeflowTrainerEndpoint"]
    assert sinks[1].interval == 2.0 and sinks[1].token_file == "/t/token"
    assert (sinks[2].url, sinks[2].ca_file) == ("https://trainer:10443/y", "/k/ca")
    assert [type(s).__name__ for s in p.sinks_from_environment(tmp_path, {})] == ["StatusFile"]


# ---------------------------------------------------------------------------------------------- delivery


class GatedSink(p.Sink):
    """Blocks in ``deliver`` until the test opens the gate; fails while ``failing``."""

    name = "gated"
    interval = 0.0

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.delivered: list[dict] = []
        self.failing = False

    def deliver(self, report):
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.failing:
            raise ConnectionRefusedError("refused")
        self.delivered.append(report)


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_publish_never_waits_for_a_stuck_sink_and_only_the_newest_report_follows():
    sink = GatedSink()
    publisher = p.ProgressPublisher([sink], final_timeout=5)
    publisher.publish({"n": 0})
    assert sink.entered.wait(5)  # the sender is now stuck inside deliver
    for n in range(1, 1000):
        publisher.publish({"n": n})  # returns although the sink has not taken anything since
    sink.gate.set()
    wait_until(lambda: len(sink.delivered) == 2)
    assert sink.delivered == [{"n": 0}, {"n": 999}]  # the 998 in between were superseded, not queued
    publisher.close()


def test_a_failing_sink_backs_off_and_gets_the_newest_report_once_it_recovers(monkeypatch, caplog):
    monkeypatch.setattr(p, "BACKOFF_SECONDS", (0.05,))
    sink = GatedSink()
    sink.gate.set()
    sink.failing = True
    thread = p._SinkThread(sink)
    thread.start()
    thread.offer({"n": 1})
    wait_until(lambda: thread.failures >= 2)  # the same report retried after the back-off
    thread.offer({"n": 2})
    sink.failing = False
    wait_until(lambda: sink.delivered)
    assert sink.delivered[0] == {"n": 2}
    assert thread.failures == 0
    thread.stop(time.monotonic())
    thread.join(5)
    warnings = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0]  # one line, not one per attempt


def test_close_tries_the_last_report_until_its_deadline_and_then_gives_up(caplog):
    sink = GatedSink()
    sink.gate.set()
    sink.failing = True
    publisher = p.ProgressPublisher([sink], final_timeout=0.3)
    publisher.publish({"results": {}})
    publisher.close()
    assert not publisher.threads[0].is_alive()
    assert any("did not get through" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------- over HTTP


class Recorder(BaseHTTPRequestHandler):
    received: list = []
    answer = 202

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                    "agent": self.headers.get("User-Agent"), "body": body})
        self.send_response(type(self).answer)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"message": "no such job" if type(self).answer >= 400 else "ok"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.received, Recorder.answer = [], 202
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_the_operator_endpoint_gets_the_report_with_the_token_read_at_every_send(server, tmp_path):
    token = tmp_path / "token"
    token.write_text("first\n")
    url = f"http://127.0.0.1:{server.server_port}/apis/kubefusion.io/v1alpha1/namespaces/ns/multimodaltrainjobs/j/progress"
    sink = p.OperatorEndpoint(url, str(token))
    sink.deliver({"progress": {"percent": 1.0}})
    token.write_text("rotated\n")  # the kubelet refreshes projected tokens in place
    sink.deliver({"progress": {"percent": 2.0}})
    first, second = Recorder.received
    assert first["auth"] == "Bearer first" and second["auth"] == "Bearer rotated"
    assert first["body"] == {"schema": p.SCHEMA, "progress": {"percent": 1.0}}
    assert first["agent"] == "kubefusion-trainer rank/0" and first["path"].endswith("/j/progress")


def test_an_error_answer_is_a_failure_naming_the_code_and_the_server_message(server):
    Recorder.answer = 403
    sink = p.OperatorEndpoint(f"http://127.0.0.1:{server.server_port}/x", None)
    with pytest.raises(p.ReportRejected, match="HTTP 403: no such job"):
        sink.deliver({})


def test_the_status_file_is_written_whole(tmp_path):
    sink = p.StatusFile(tmp_path / "status.json")
    sink.deliver({"progress": {"percent": 3.0}})
    assert json.loads((tmp_path / "status.json").read_text()) == {"progress": {"percent": 3.0}}
    assert [f.name for f in tmp_path.iterdir()] == ["status.json"]  # no temporary file left


def test_a_failed_onnx_export_is_a_warning_naming_the_command_to_redo_it(tmp_path, caplog):
    from kubefusion.train.recipe import export_onnx

    assert export_onnx(tmp_path, tmp_path / "artifacts") is None  # no model.pt: nothing to export
    (warning,) = [r.getMessage() for r in caplog.records if "ONNX export failed" in r.getMessage()]
    assert f"kubefusion export --checkpoint {tmp_path / 'model.pt'} --out {tmp_path / 'onnx'}" in warning
