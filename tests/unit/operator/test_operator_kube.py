"""What the operator asks the API server, and how often: discovery answers are reused for seconds, built-in
objects are read without the client's typed core API (whose first use costs seconds and 70 MiB), and the resync
loop leaves jobs kopf has not handled yet to kopf (benchmarks/operator_scale.py measures all three at scale)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from kubernetes.client.rest import ApiException

from kubefusion_operator import handlers, kube
from kubefusion_operator.backends import PYTORCHJOB, TRAINJOB


@dataclass
class Api:
    """A cluster that serves PyTorchJobs and not Trainer, on a clock the test moves."""

    asked: list[str] = field(default_factory=list)
    now: float = 1000.0

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        self.asked.append(path)
        if path == "/apis/kubeflow.org/v1":
            return {"resources": [{"name": "pytorchjobs"}, {"name": "pytorchjobs/status"}]}
        raise ApiException(status=404, reason="Not Found")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Api:
    cluster = Api()
    monkeypatch.setattr(kube, "_core", cluster.request)
    monkeypatch.setattr(kube.time, "monotonic", lambda: cluster.now)
    monkeypatch.setattr(kube, "_discovery", {})
    return cluster


def test_a_burst_of_jobs_asks_discovery_once_per_backend_and_period(api: Api) -> None:
    for _ in range(50):
        assert kube.served(PYTORCHJOB) and not kube.served(TRAINJOB)
    assert sorted(api.asked) == ["/apis/kubeflow.org/v1", "/apis/trainer.kubeflow.org/v1alpha1"]

    api.now += kube.DISCOVERY_SECONDS
    kube.served(PYTORCHJOB)
    assert api.asked.count("/apis/kubeflow.org/v1") == 2  # a CRD installed or removed is seen within the period

    kube.forget_discovery()  # a create answered 404: the CRD went away
    kube.served(PYTORCHJOB)
    assert api.asked.count("/apis/kubeflow.org/v1") == 3


def test_built_in_objects_are_read_without_the_typed_core_api() -> None:
    code = ("import sys, kubernetes, urllib3\n"
            "from kubefusion_operator import kube\n"
            "from kubefusion_operator.backends import PYTORCHJOB\n"
            "configuration = kubernetes.client.Configuration(host='http://127.0.0.1:9')\n"
            "configuration.retries = False\n"
            "kube._client = kubernetes.client.ApiClient(configuration)\n"
            "for call in (lambda: kube.get_configmap('ns', 'job-config'), lambda: kube.get_pod('ns', 'pod'),\n"
            "             lambda: kube.review_token('t', 'a'), lambda: kube.served(PYTORCHJOB)):\n"
            "    try:\n"
            "        call()\n"
            "    except (urllib3.exceptions.HTTPError, OSError):\n"
            "        pass\n"
            "print(sorted(m for m in sys.modules if m.endswith(('core_v1_api', 'authentication_v1_api'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_resync_leaves_a_job_kopf_has_not_handled_to_kopf() -> None:
    def body(status: dict[str, Any]) -> kopf.Body:
        return kopf.Body({"metadata": {"namespace": "ml", "name": "new", "uid": "uid-new"}, "spec": {"x": 1},
                          "status": status})

    def observe(status: dict[str, Any], kind: str = "MODIFIED") -> list[Any]:
        job = body(status)
        asyncio.run(handlers.observe_job(event={"type": kind, "object": dict(job)}, body=job, name="new",
                                         namespace="ml", uid="uid-new", status=job.status))
        return list(handlers.UNFINISHED)

    assert observe({}, "ADDED") == [("ml", "new")] and observe({"phase": "Pending"}) == [("ml", "new")]
    assert observe({"phase": "Succeeded"}) == []  # finished: nothing to resync
    assert observe({"phase": "Running"}) == [("ml", "new")] and observe({"phase": "Running"}, "DELETED") == []
    job = {"metadata": {"uid": "uid-new"}}
    assert not handlers.handled_by_kopf(job)  # just created: its create handler is on it
    handlers.DIFFBASE.store(body=body({}), patch=kopf.Patch(), essence=handlers.DIFFBASE.build(body=body({})))
    try:
        assert handlers.handled_by_kopf(job)
    finally:
        handlers.DIFFBASE.forget("uid-new")
    assert not handlers.handled_by_kopf(job)
