"""Progress reports into status: the pure mapping, the CRD schema it must fit, the throttle and the stale mark,
the token check, and the endpoint itself (aiohttp on a real port).

The reports here are made by the trainer's own ``ProgressTracker``: what the operator accepts is checked
against what the trainer sends, not against a hand-written copy of it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kubefusion.train import progress as trainer_progress
from kubefusion_operator import kube
from kubefusion_operator.progress import (FIELDS, MAX_REPORT_BYTES, SCHEMA, SECTIONS, ReportError, audience,
                                          openapi, parse_report, report_path, stale_fields, status_fields,
                                          volume_description)
from kubefusion_operator.progress_server import (Forbidden, ProgressServer, ProgressStore, TokenAuthenticator,
                                                 Unauthenticated)

STAGES = ["fused", "baseline-image", "baseline-text", "baseline-numeric"]
RECEIVED = "2026-03-04T05:06:07Z"
KEY = ("ml-team", "products")


def trainer_report(*, finished: bool = False) -> dict[str, Any]:
    """A report as rank 0 sends it, mid-run (fused done, a baseline training) or finished."""
    clock = [0.0]
    tracker = trainer_progress.ProgressTracker(STAGES, 120, 3, monotonic=lambda: clock[0],
                                               now=lambda: "2026-03-04T05:06:00Z")
    tracker.stage_started("fused", 0, 0)
    tracker.validation("fused", 0.9712, step=120)
    tracker.stage_started("baseline-image", 0, 0)
    clock[0] = 30.0
    tracker.steps_done(60, 1, 812.25)
    tracker.validation("baseline-image", 0.26, step=40)
    tracker.checkpoint("baseline-image", 60)
    if finished:
        tracker.finished({"fusedTestTop1": 0.975, "fusedOodTop1": 0.925, "bestSingleModality": "text",
                          "bestSingleModalityTestTop1": 0.2507, "bestSingleModalityOodTop1": 0.256,
                          "bestAchievableTop1": 0.97375, "model": "/checkpoints/model.pt",
                          "resultsFile": "/checkpoints/results.json"})
    return {"schema": SCHEMA, **tracker.report()}


# ------------------------------------------------------------------------------------- report -> status


def test_a_trainer_report_maps_to_every_status_field_with_the_operators_time():
    fields = status_fields(parse_report(trainer_report()), received=RECEIVED,
                           spec={"storage": {"checkpoints": {"persistentVolumeClaim": {"claimName": "ckpts"}}}})
    assert set(fields) == set(SECTIONS)
    assert fields["progress"] == {"stage": "baseline-image", "stageNumber": 2, "stages": 4, "epoch": 2,
                                  "epochs": 3, "step": 60, "steps": 120, "percent": 37.5,
                                  "samplesPerSecond": 812.2, "etaSeconds": 150, "updateTime": RECEIVED,
                                  "stale": False}
    assert fields["metrics"]["validation"][0] == {"stage": "fused", "top1": 0.9712, "step": 120,
                                                  "bestTop1": 0.9712, "bestStep": 120}
    assert fields["checkpoint"] == {"stage": "baseline-image", "step": 60, "time": "2026-03-04T05:06:00Z"}
    assert fields["results"] is None  # a merge patch null: no results from an earlier run linger
    assert fields["summary"] == {"progress": "37%", "eta": "2m30s", "stage": "baseline-image 2/4, epoch 2/3",
                                 "valTop1": "97.12%", "testTop1": None, "oodTop1": None}


def test_a_finished_report_names_the_scores_and_where_the_model_is():
    fields = status_fields(parse_report(trainer_report(finished=True)), received=RECEIVED,
                           spec={"storage": {"checkpoints": {"persistentVolumeClaim": {"claimName": "ckpts"}}}})
    assert fields["results"] == {
        "fusedTestTop1": 0.975, "fusedOodTop1": 0.925, "bestSingleModality": "text",
        "bestSingleModalityTestTop1": 0.2507, "bestSingleModalityOodTop1": 0.256, "bestAchievableTop1": 0.97375,
        "model": "/checkpoints/model.pt", "onnx": None, "resultsFile": "/checkpoints/results.json",
        "volume": "persistentVolumeClaim ckpts"}
    assert fields["progress"]["percent"] == 100.0 and fields["summary"]["testTop1"] == "97.50%"


def test_status_fields_fit_the_crds_schema(status_errors):
    def without_nulls(value):
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [without_nulls(v) for v in value]
        return value

    for finished in (False, True):
        fields = without_nulls(status_fields(parse_report(trainer_report(finished=finished)), received=RECEIVED))
        assert status_errors({"phase": "Running", **fields}) == []
    assert status_errors(without_nulls(stale_fields({"summary": {"progress": "37%"}}))) == []
    assert status_errors({"progress": {"percent": 120}}) != []  # the check can fail


def test_the_crd_describes_exactly_the_report_fields(root_schema):
    status = root_schema["properties"]["status"]["properties"]

    def shape(schema):
        kept = {k: v for k, v in schema.items() if k not in ("description",)}
        if "properties" in kept:
            kept["properties"] = {k: shape(v) for k, v in kept["properties"].items()}
        if "items" in kept:
            kept["items"] = shape(kept["items"])
            kept["items"].pop("type", None)
            kept["items"] = {"type": "object", **kept["items"]}
        return kept

    for section in SECTIONS:
        assert status[section]["type"] == "object" and status[section]["description"]
        assert shape(status[section])["properties"] == shape({"properties": openapi(FIELDS[section])})["properties"], \
            section
        for name, field in status[section]["properties"].items():
            assert field["description"] == FIELDS[section][name].description, f"{section}.{name}"


def test_printer_columns_show_progress_eta_and_validation_top1(crd):
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Progress"]["jsonPath"] == ".status.summary.progress"
    assert columns["ETA"]["jsonPath"] == ".status.summary.eta"
    assert columns["Val-Top1"]["jsonPath"] == ".status.summary.valTop1"
    wide = [name for name, c in columns.items() if c.get("priority") == 1]
    assert {"Stage", "Samples/s", "Test-Top1", "OOD-Top1"} <= set(wide)
    summary = FIELDS["summary"]
    for column in columns.values():
        path = column["jsonPath"].split(".")
        if path[1:3] == ["status", "summary"]:
            assert path[3] in summary, column["name"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(extra={}), "extra: not a section"),
    (lambda r: r["progress"].update(speed=1), "progress.speed: not a field of progress"),
    (lambda r: r["progress"].update(percent=101), r"progress.percent: must be in \[0, 100\]"),
    (lambda r: r["progress"].update(step=1.5), "progress.step: must be an integer"),
    (lambda r: r["progress"].update(step="7"), "progress.step: must be a finite integer"),
    (lambda r: r["progress"].update(percent=float("nan")), "progress.percent: must be a finite number"),
    (lambda r: r["progress"].update(stage="x" * 64), "progress.stage: at most 63 characters"),
    (lambda r: r["progress"].update(updateTime="yesterday"), "progress.updateTime: must be an RFC 3339 time"),
    (lambda r: r["metrics"]["validation"].extend([r["metrics"]["validation"][0]] * 16),
     r"metrics.validation: at most 16 entries"),
    (lambda r: r["metrics"]["validation"][1].update(top1=1.2), r"metrics.validation\[1\].top1: must be in"),
    (lambda r: r.pop("progress"), "progress: required"),
    (lambda r: r.update(schema="kubefusion.io/progress/v9"), "schema: .* is not"),
])
def test_a_report_that_does_not_fit_is_refused_naming_the_field(change, message):
    report = trainer_report()
    change(report)
    with pytest.raises(ReportError, match=message):
        parse_report(report)


def test_fields_only_the_operator_writes_are_ignored_in_a_report():
    report = trainer_report()
    report["progress"]["stale"] = True
    assert "stale" not in parse_report(report)["progress"]
    assert parse_report(report) == parse_report(trainer_report())


def test_stale_keeps_the_numbers_and_says_so_in_the_columns():
    patch = stale_fields({"summary": {"progress": "37%", "eta": "2m30s"}})
    assert patch == {"progress": {"stale": True}, "summary": {"progress": "37% stale", "eta": None}}
    assert stale_fields({"summary": {"progress": "37% stale"}})["summary"]["progress"] == "37% stale"


@pytest.mark.parametrize("checkpoints, text", [
    (None, "emptyDir: deleted with the pods (set spec.storage.checkpoints to keep the model)"),
    ({"emptyDir": {}}, "emptyDir: deleted with the pods (set spec.storage.checkpoints to keep the model)"),
    ({"persistentVolumeClaim": {"claimName": "ckpts"}}, "persistentVolumeClaim ckpts"),
    ({"nfs": {"server": "nfs.local", "path": "/exports/ml"}}, "nfs nfs.local:/exports/ml"),
    ({"csi": {"driver": "filestore.csi.storage.gke.io"}}, "csi filestore.csi.storage.gke.io"),
])
def test_the_volume_is_named_as_a_user_finds_it(checkpoints, text):
    assert volume_description({"storage": {"checkpoints": checkpoints}}) == text


def test_each_job_has_its_own_path_and_token_audience():
    assert report_path("ns", "job") == "/apis/kubefusion.io/v1alpha1/namespaces/ns/multimodaltrainjobs/job/progress"
    assert audience("ns", "job") == "kubefusion.io/v1alpha1/namespaces/ns/multimodaltrainjobs/job/progress"
    assert audience("ns", "job") != audience("ns", "other") != audience("other", "job")


# ------------------------------------------------------------------------------- throttle and staleness


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += datetime.timedelta(seconds=seconds)


def store(clocks: Clocks, *, fresh: bool = False, **kwargs) -> ProgressStore:
    """A store as in an operator that has run for a while (``fresh``: one that has just started)."""
    made = ProgressStore(monotonic=lambda: clocks.mono, now=lambda: clocks.wall, **kwargs)
    if not fresh:
        clocks.mono += made.write_seconds  # the monotonic clock only: report times stay as written
    return made


def flush(s: ProgressStore, *, ok: bool = True) -> list:
    writes = s.due(limit=4)
    for write in writes:
        s.done(write, ok=ok)
    return writes


def test_at_most_one_write_per_job_every_12_seconds_however_many_reports_come():
    clocks = Clocks()
    s = store(clocks)
    report = parse_report(trainer_report())
    s.accept(KEY, report)
    assert [w.kind for w in flush(s)] == ["progress"]
    for second in range(1, 12):  # a report every second, as from many ranks: none written before 12 s
        clocks.advance(1)
        s.accept(KEY, {**report, "progress": {**report["progress"], "step": 60 + second}})
        assert flush(s) == []
    clocks.advance(1)
    (write,) = flush(s)
    assert write.fields["progress"]["step"] == 71  # the newest only
    assert write.fields["progress"]["updateTime"] == "2026-03-04T05:06:18Z"  # received, by the operator's clock
    clocks.advance(30)
    assert flush(s) == []  # nothing new, nothing written


def test_the_throttle_is_per_job():
    clocks = Clocks()
    s = store(clocks)
    report = parse_report(trainer_report())
    s.accept(KEY, report)
    flush(s)
    s.accept(("ml-team", "other"), report)
    assert [w.key for w in flush(s)] == [("ml-team", "other")]


def test_a_write_in_flight_is_not_started_twice_and_a_report_meanwhile_is_kept():
    clocks = Clocks()
    s = store(clocks)
    report = parse_report(trainer_report())
    s.accept(KEY, report)
    (write,) = s.due(limit=4)
    clocks.advance(20)
    assert s.due(limit=4) == []  # still in flight
    s.accept(KEY, {**report, "progress": {**report["progress"], "step": 99}})
    s.done(write, ok=True)
    (second,) = s.due(limit=4)
    assert second.fields["progress"]["step"] == 99


def test_a_failed_write_is_retried_after_the_interval_with_the_newest_report():
    clocks = Clocks()
    s = store(clocks)
    s.accept(KEY, parse_report(trainer_report()))
    assert len(flush(s, ok=False)) == 1
    assert flush(s) == []
    clocks.advance(12)
    assert len(flush(s)) == 1


def test_writes_in_flight_are_bounded():
    clocks = Clocks()
    s = store(clocks)
    for i in range(10):
        s.accept(("ns", f"job-{i}"), parse_report(trainer_report()))
    first = s.due(limit=4)
    assert len(first) == 4 and s.due(limit=4) == []
    s.done(first[0], ok=True)
    assert len(s.due(limit=4)) == 1


def running(progress_time: str, **status: Any) -> dict[str, Any]:
    return {"status": {"phase": "Running", "progress": {"percent": 37.5, "updateTime": progress_time},
                       "summary": {"progress": "37%", "eta": "2m30s"}, **status}, "spec": {}}


def test_a_job_whose_reports_stop_is_marked_stale_once_then_a_report_clears_it():
    clocks = Clocks()
    s = store(clocks)
    s.accept(KEY, parse_report(trainer_report()))
    flush(s)
    s.observe(KEY, running("2026-03-04T05:06:07Z"))
    clocks.advance(60)
    assert flush(s) == []  # 60 s is not more than the threshold
    clocks.advance(1)
    (write,) = flush(s)
    assert write.kind == "stale" and write.fields["progress"] == {"stale": True}
    assert write.fields["summary"] == {"progress": "37% stale", "eta": None}
    assert s.stale_jobs() == 1
    clocks.advance(120)
    assert flush(s) == []  # marked once
    s.accept(KEY, parse_report(trainer_report()))
    (write,) = flush(s)
    assert write.kind == "progress" and write.fields["progress"]["stale"] is False
    assert s.stale_jobs() == 0


def test_a_restarted_operator_writes_nothing_before_the_interval_has_passed():
    """The operator it replaces may have written a job just before it stopped: the limit holds across restarts."""
    clocks = Clocks()
    s = store(clocks, fresh=True)
    s.accept(KEY, parse_report(trainer_report()))
    clocks.advance(11)
    assert flush(s) == []
    clocks.advance(1)
    assert [w.kind for w in flush(s)] == ["progress"]


def test_after_an_operator_restart_a_job_whose_last_report_is_old_is_marked_stale():
    clocks = Clocks()
    s = store(clocks)  # a restarted operator: nothing in memory, the watch lists the jobs
    s.observe(KEY, running("2026-03-04T05:04:00Z"))  # two minutes before now
    s.observe(("ml-team", "fresh"), running("2026-03-04T05:06:00Z"))
    (write,) = flush(s)
    assert write.key == KEY and write.kind == "stale"
    s.observe(KEY, running("2026-03-04T05:04:00Z") | {"status": {**running("x")["status"],
                                                                  "progress": {"stale": True}}})
    clocks.advance(120)
    assert [w.key for w in flush(s)] == [("ml-team", "fresh")]  # the other one's turn now; KEY stays marked


def test_finished_or_deleted_jobs_are_not_marked_stale_and_are_forgotten():
    clocks = Clocks()
    s = store(clocks)
    s.observe(KEY, running("2026-03-04T05:00:00Z", phase="Succeeded"))
    s.observe(("ml-team", "gone"), running("2026-03-04T05:00:00Z"))
    s.observe(("ml-team", "gone"), None)
    s.observe(("ml-team", "never-reported"), {"status": {"phase": "Running"}, "spec": {}})
    assert flush(s) == [] and len(s) == 0


def test_a_run_that_has_its_results_is_over_and_never_stale():
    clocks = Clocks()
    s = store(clocks)
    s.accept(KEY, parse_report(trainer_report(finished=True)))
    flush(s)
    s.observe(KEY, running("2026-03-04T05:06:07Z") | {"status": {**running("2026-03-04T05:06:07Z")["status"],
                                                                  "results": {"fusedTestTop1": 0.9}}})
    clocks.advance(600)  # its pods linger, still Running
    assert flush(s) == []


def test_the_last_report_of_a_job_that_just_finished_is_still_written():
    clocks = Clocks()
    s = store(clocks)
    s.accept(KEY, parse_report(trainer_report()))
    flush(s)
    s.accept(KEY, parse_report(trainer_report(finished=True)))
    s.observe(KEY, running("2026-03-04T05:06:07Z", phase="Succeeded"))
    clocks.advance(12)
    (write,) = flush(s)
    assert write.fields["results"]["fusedTestTop1"] == 0.975
    assert len(s) == 0  # nothing more to do for it


def test_a_deleted_job_is_dropped_when_its_write_finds_it_gone():
    clocks = Clocks()
    s = store(clocks)
    s.accept(KEY, parse_report(trainer_report()))
    (write,) = s.due(limit=4)
    s.done(write, ok=False, gone=True)
    assert len(s) == 0


# ------------------------------------------------------------------------------------------ the token


def jwt(exp: float) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'aud': ['x']})}.signature"


def review_of(namespace="ml-team", pod="products-master-0", uid="pod-uid", authenticated=True, error=None):
    user = {"username": f"system:serviceaccount:{namespace}:default",
            "extra": {"authentication.kubernetes.io/pod-name": [pod],
                      "authentication.kubernetes.io/pod-uid": [uid]} if pod else {}}
    return {"status": {"authenticated": authenticated, "user": user if authenticated else {}, "error": error}}


def pod_of(job="products", uid="pod-uid"):
    return {"metadata": {"name": "products-master-0", "uid": uid, "labels": {"kubefusion.io/job-name": job}}}


class FakeApi:
    def __init__(self, review=None, pod=None):
        self.review, self.pod = review or review_of(), pod or pod_of()
        self.reviews: list[tuple[str, str]] = []

    def review_token(self, token, aud):
        self.reviews.append((token, aud))
        return self.review

    def get_pod(self, namespace, name):
        if self.pod is None:
            raise kube.NotFound(name)
        return self.pod


def authenticator(fake: FakeApi, wall=time.time) -> TokenAuthenticator:
    return TokenAuthenticator(review=fake.review_token, get_pod=fake.get_pod, wall=wall)


def test_a_token_of_a_pod_of_the_job_is_accepted_and_remembered():
    fake = FakeApi()
    auth = authenticator(fake)
    token = jwt(time.time() + 3600)
    identity = auth.authenticate(token, "ml-team", "products")
    assert (identity.namespace, identity.pod, identity.service_account) == ("ml-team", "products-master-0",
                                                                             "default")
    assert fake.reviews == [(token, audience("ml-team", "products"))]  # reviewed for this job's audience
    auth.authenticate(token, "ml-team", "products")
    assert len(fake.reviews) == 1  # remembered: one TokenReview per token and job


def test_a_remembered_token_is_reviewed_again_once_it_expires():
    fake = FakeApi()
    now = [1_000_000.0]
    auth = authenticator(fake, wall=lambda: now[0])
    token = jwt(now[0] + 60)
    auth.authenticate(token, "ml-team", "products")
    now[0] += 61
    auth.authenticate(token, "ml-team", "products")
    assert len(fake.reviews) == 2


@pytest.mark.parametrize("fake, error, message", [
    (FakeApi(review=review_of(authenticated=False, error="token audiences invalid")), Unauthenticated,
     "token audiences invalid"),
    (FakeApi(review=review_of(namespace="other-team")), Forbidden, "not in the job's namespace"),
    (FakeApi(review=review_of(pod=None)), Forbidden, "not bound to a pod"),
    (FakeApi(pod=pod_of(job="someone-else")), Forbidden, "is not a pod of MultimodalTrainJob products"),
    (FakeApi(pod=pod_of(uid="another-uid")), Forbidden, "was replaced"),
    (FakeApi(review={"status": {"authenticated": True, "user": {"username": "alice"}}}), Forbidden,
     "not a service account"),
])
def test_tokens_that_are_not_of_a_pod_of_the_job_are_refused(fake, error, message):
    with pytest.raises(error, match=message):
        authenticator(fake).authenticate(jwt(time.time() + 3600), "ml-team", "products")


def test_a_token_of_a_pod_that_is_gone_is_refused():
    fake = FakeApi()
    fake.pod = None
    with pytest.raises(Forbidden, match="does not exist any more"):
        authenticator(fake).authenticate(jwt(time.time() + 3600), "ml-team", "products")


# ------------------------------------------------------------------------------------------ the endpoint


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def endpoint():
    """The endpoint on a free port of 127.0.0.1, its event loop on a thread of its own (as kopf's)."""
    import threading

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = FakeApi()
    writes: list[tuple[str, str, dict]] = []
    clocks = Clocks()
    server = ProgressServer(store(clocks), authenticator(fake),
                            write=lambda ns, name, fields: writes.append((ns, name, fields)))
    asyncio.run_coroutine_threadsafe(server.start(0, "127.0.0.1", period=3600), loop).result(10)
    yield server, fake, writes
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def post(server: ProgressServer, body: Any, *, token: str | None = "t", path: str | None = None,
         raw: bytes | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{server.port}{path or report_path(*KEY)}"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=raw if raw is not None else json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_an_accepted_report_is_written_into_the_status_by_the_writer(endpoint):
    server, fake, writes = endpoint
    received = counter("kubefusion_operator_progress_reports_received_total")
    code, answer = post(server, trainer_report())
    assert code == 202 and answer["reason"] == "Accepted"
    assert counter("kubefusion_operator_progress_reports_received_total") == received + 1
    for future in server.write_due():
        future.result(10)
    ((namespace, name, fields),) = writes
    assert (namespace, name) == KEY and fields["progress"]["step"] == 60 and fields["progress"]["stale"] is False


@pytest.mark.parametrize("setup, code, reason", [
    (lambda fake: None, 401, "Unauthenticated"),  # no token at all
    (lambda fake: setattr(fake, "review", review_of(authenticated=False)), 401, "Unauthenticated"),
    (lambda fake: setattr(fake, "pod", pod_of(job="other")), 403, "Forbidden"),
])
def test_refused_reports_are_counted_by_reason_and_never_written(endpoint, setup, code, reason):
    server, fake, writes = endpoint
    setup(fake)
    before = counter("kubefusion_operator_progress_reports_rejected_total", reason=reason)
    status, answer = post(server, trainer_report(), token=None if code == 401 and fake.review["status"][
        "authenticated"] else "t")
    assert (status, answer["reason"]) == (code, reason)
    assert counter("kubefusion_operator_progress_reports_rejected_total", reason=reason) == before + 1
    assert server.write_due() == [] and writes == []


def test_a_body_that_is_not_a_report_is_refused_with_the_field_named(endpoint):
    server, _, _ = endpoint
    broken = copy.deepcopy(trainer_report())
    broken["progress"]["percent"] = 140
    code, answer = post(server, broken)
    assert code == 422 and "progress.percent" in answer["message"]
    code, answer = post(server, None, raw=b"{not json")
    assert code == 422 and answer["reason"] == "Invalid"


def test_an_oversized_body_is_refused_before_it_is_read(endpoint):
    server, fake, _ = endpoint
    before = counter("kubefusion_operator_progress_reports_rejected_total", reason="TooLarge")
    code, answer = post(server, None, raw=b" " * (MAX_REPORT_BYTES + 1))
    assert code == 413 and fake.reviews == []  # not even the token was looked at
    assert counter("kubefusion_operator_progress_reports_rejected_total", reason="TooLarge") == before + 1


def test_a_token_review_that_fails_is_a_503_to_retry(endpoint):
    server, fake, _ = endpoint

    def broken(token, aud):
        raise kube.urllib3.exceptions.MaxRetryError(None, "/apis/authentication.k8s.io", "refused")

    server.authenticator._review = broken
    code, answer = post(server, trainer_report())
    assert code == 503 and answer["reason"] == "Unavailable"


def test_other_paths_are_not_served(endpoint):
    server, _, _ = endpoint
    code, _ = post(server, trainer_report(), path="/apis/kubefusion.io/v1alpha1/namespaces/x/pods/y/progress")
    assert code == 404


def test_the_mapping_is_pure_and_the_endpoint_needs_no_trainer():
    import subprocess
    import sys

    code = ("import sys\nimport kubefusion_operator.progress\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('kubefusion', 'torch', 'tensorflow', 'kopf', 'kubernetes', 'aiohttp'))))\n"
            "import kubefusion_operator.progress_server\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('kubefusion', 'torch', 'tensorflow'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", ""]


@pytest.mark.parametrize("backend_name, child", [
    ("PyTorchJob", {"metadata": {"name": "products"}, "spec": {"pytorchReplicaSpecs": {}}, "status": {
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}),
    ("TrainJob", {"metadata": {"name": "products"}, "spec": {"trainer": {"numNodes": 1}}, "status": {
        "conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted"}]}}),
])
def test_mirroring_the_backend_keeps_the_progress_fields(backend_name, child):
    from kubefusion_operator.backends import BACKENDS
    from kubefusion_operator.status import status_from_child

    backend = BACKENDS[backend_name]
    progress = status_fields(parse_report(trainer_report(finished=True)), received=RECEIVED)
    previous = {"phase": "Running", "backend": backend.name, backend.status_key: "products", **progress}
    for observed in (child, None):  # mirrored, then the child deleted by its TTL
        status = status_from_child(backend, observed, previous, generation=None, now=RECEIVED)
        assert status["phase"] == "Succeeded"
        assert {k: status.get(k) for k in SECTIONS} == progress
        previous = status


# ------------------------------------------------------------------------------- what the pods are told

ENDPOINT = "http://kubefusion-operator-progress.kubefusion-system.svc:8082/"


def training_pods(backend: str, progress_url: str) -> list[dict[str, Any]]:
    from kubefusion_operator.backends import build_pytorchjob, build_trainjob

    spec = {"image": "registry.example.com/kubefusion-trainer:0.1.0", "resources": {"nodes": 2},
            "storage": {"checkpoints": {"persistentVolumeClaim": {"claimName": "runs"}}}}
    meta = {"name": KEY[1], "namespace": KEY[0], "uid": "0b7e9a52"}
    if backend == "PyTorchJob":
        child = build_pytorchjob(spec, meta, progress_url=progress_url)
        return [r["template"]["spec"] for r in child["spec"]["pytorchReplicaSpecs"].values()]
    child = build_trainjob(spec, meta, progress_url=progress_url)
    (replicated,) = child["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = copy.deepcopy(replicated["template"]["spec"]["template"]["spec"])
    pod["containers"][0]["env"] = child["spec"]["trainer"]["env"]  # Trainer puts trainer.env on the node container
    return [pod]


@pytest.mark.parametrize("backend", ["PyTorchJob", "TrainJob"])
def test_the_training_container_is_told_the_endpoint_and_gets_a_token_for_its_job_alone(backend):
    for pod in training_pods(backend, ENDPOINT):
        (trainer,), (init,) = pod["containers"], pod["initContainers"]
        env = {e["name"]: e["value"] for e in trainer["env"]}
        assert env["KUBEFUSION_PROGRESS_URL"] == ENDPOINT.rstrip("/") + report_path(*KEY)
        assert env["KUBEFUSION_PROGRESS_TOKEN_FILE"] == "/var/run/secrets/kubefusion.io/progress/token"
        assert {"name": "progress-token", "mountPath": "/var/run/secrets/kubefusion.io/progress",
                "readOnly": True} in trainer["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "progress-token"]
        assert volume == {"name": "progress-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": audience(*KEY), "expirationSeconds": 3600, "path": "token"}}]}}
        # The preprocessing step reports nothing and gets no token.
        assert not any(e["name"].startswith("KUBEFUSION_PROGRESS") for e in init.get("env", []))
        assert all(m["name"] != "progress-token" for m in init.get("volumeMounts", []))


@pytest.mark.parametrize("backend", ["PyTorchJob", "TrainJob"])
def test_without_a_progress_url_the_pods_are_told_nothing(backend):
    for pod in training_pods(backend, ""):
        assert "progress-token" not in json.dumps(pod) and "KUBEFUSION_PROGRESS" not in json.dumps(pod)
