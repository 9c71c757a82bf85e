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
    monkeypatch.setattr(kube, "_request", cluster.request)
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


def test_every_call_is_one_plain_request_with_the_patch_type_custom_resources_take(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No call goes through the client's typed APIs (each call validated by pydantic and run through generated
    code on top of the same request); the paths and patch types are the ones those APIs sent."""
    sent: list[tuple[str, str, Any, str]] = []

    def request(method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> dict:
        sent.append((method, path, body, content_type if body is not None else ""))
        return {"items": []}
    monkeypatch.setattr(kube, "_request", request)
    child = {"metadata": {"namespace": "ml", "name": "products"}}
    kube.get_job("ml", "products")
    kube.patch_job_status("ml", "products", {"phase": "Running"}, "7")
    kube.merge_job_status("ml", "products", {"progress": {}})
    kube.get_child(PYTORCHJOB, "ml", "products")
    kube.create_child(PYTORCHJOB, child)
    kube.patch_child(TRAINJOB, "ml", "products", {"spec": {"suspend": True}})
    kube.get_training_runtime("torch-distributed")
    kube.workloads_owned_by("ml", "uid-1")
    kube.patch_workload("v1beta2", "ml", "pytorchjob-products-1", {"spec": {"active": False}})
    merge = "application/merge-patch+json"
    jobs = "/apis/kubefusion.io/v1alpha1/namespaces/ml/multimodaltrainjobs/products"
    assert sent == [
        ("GET", jobs, None, ""),
        ("PATCH", f"{jobs}/status", {"metadata": {"resourceVersion": "7"}, "status": {"phase": "Running"}}, merge),
        ("PATCH", f"{jobs}/status", {"status": {"progress": {}}}, merge),
        ("GET", "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/products", None, ""),
        ("POST", "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs", child, "application/json"),
        ("PATCH", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/products", {"spec": {"suspend": True}},
         merge),
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/torch-distributed", None, ""),
        ("GET", "/apis/kueue.x-k8s.io/v1beta2/namespaces/ml/workloads", None, ""),
        ("PATCH", "/apis/kueue.x-k8s.io/v1beta2/namespaces/ml/workloads/pytorchjob-products-1",
         {"spec": {"active": False}}, merge)]


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
    handlers.PROGRESS.store(key="reconcile", record={"retries": 1}, body=body({}), patch=kopf.Patch())
    assert handlers.handled_by_kopf(job)  # to be retried (held, or an API error)
    handlers.DIFFBASE.store(body=body({}), patch=kopf.Patch(), essence=handlers.DIFFBASE.build(body=body({})))
    handlers.PROGRESS.purge(key="reconcile", body=body({}), patch=kopf.Patch())
    assert handlers.handled_by_kopf(job)  # done
    asyncio.run(handlers.observe_job(event={"type": "DELETED"}, body=body({}), name="new", namespace="ml",
                                     uid="uid-new", status=body({}).status))
    assert not handlers.handled_by_kopf(job)  # deleted: forgotten


@dataclass
class Objects:
    """The API as the reconciliation sees it: objects by (kind, name), and every call made, in order."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def read(self, kind: str) -> Any:
        def get(*args: Any) -> dict[str, Any]:
            self.calls.append(f"get {kind}")
            if (kind, args[-1]) not in self.objects:
                raise kube.NotFound(f"{kind} {args[-1]}")
            return self.objects[(kind, args[-1])]
        return get

    def create(self, kind: str) -> Any:
        def post(*args: Any) -> dict[str, Any]:
            body = args[-1]
            self.calls.append(f"create {kind}")
            if (kind, body["metadata"]["name"]) in self.objects:
                raise ApiException(status=409, reason="Conflict")
            body = {**body, "metadata": {**body["metadata"], "uid": f"uid-{kind}", "resourceVersion": "1"}}
            self.objects[(kind, body["metadata"]["name"])] = body
            return body
        return post

    def patch(self, kind: str) -> Any:
        def patch(*args: Any) -> dict[str, Any]:
            self.calls.append(f"patch {kind}")
            obj = self.objects[(kind, args[-2])]
            obj["metadata"].update(args[-1].get("metadata", {}))
            return obj
        return patch


@pytest.fixture
def objects(monkeypatch: pytest.MonkeyPatch, api: Api) -> Objects:
    cluster = Objects()
    job = {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob",
           "metadata": {"name": "products", "namespace": "ml", "uid": "uid-job", "resourceVersion": "5",
                        "generation": 1},
           "spec": {"image": "trainer:1", "data": {"path": "gs://bucket/products/"}}}
    cluster.objects[("job", "products")] = job

    def patch_status(namespace: str, name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        cluster.calls.append("patch job/status")
        current = cluster.objects[("job", name)]
        if current["metadata"]["resourceVersion"] != resource_version:
            raise ApiException(status=409, reason="Conflict")
        current["status"] = {key: value for key, value in status.items() if value is not None}
        current["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return current

    monkeypatch.setattr(kube, "get_job", cluster.read("job"))
    monkeypatch.setattr(kube, "patch_job_status", patch_status)
    monkeypatch.setattr(kube, "get_child", cluster.read("pytorchjob"))
    monkeypatch.setattr(kube, "create_child", cluster.create("pytorchjob"))
    monkeypatch.setattr(kube, "patch_child", cluster.patch("pytorchjob"))
    monkeypatch.setattr(kube, "get_configmap", cluster.read("configmap"))
    monkeypatch.setattr(kube, "create_configmap", cluster.create("configmap"))
    monkeypatch.setattr(kube, "patch_configmap", cluster.patch("configmap"))
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)
    monkeypatch.setattr(kopf, "event", lambda *_, **__: None)
    return cluster


def reconcile_new(objects: Objects) -> dict[str, Any]:
    import copy
    import logging
    handlers._reconcile(copy.deepcopy(objects.objects[("job", "products")]), retry=0,
                        logger=logging.getLogger("test"))
    return objects.objects[("job", "products")]


def test_a_new_job_costs_three_writes_and_no_read(objects: Objects) -> None:
    job = reconcile_new(objects)
    assert objects.calls == ["create configmap", "create pytorchjob", "patch job/status"]
    assert job["status"]["backend"] == "PyTorchJob" and job["status"]["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["SpecValid"] == "True"


def test_a_new_job_whose_status_write_was_lost_adopts_its_children_instead_of_making_them_twice(
        objects: Objects) -> None:
    reconcile_new(objects)
    del objects.objects[("job", "products")]["status"]  # the earlier run died before recording anything
    objects.calls.clear()
    job = reconcile_new(objects)
    # The ConfigMap's 409 says an earlier run got here: the full reconciliation reads and keeps what it made.
    assert objects.calls[:2] == ["create configmap", "get pytorchjob"] and "create pytorchjob" not in objects.calls
    assert [k for k in objects.objects if k[0] == "pytorchjob"] == [("pytorchjob", "products")]
    assert job["status"]["backend"] == "PyTorchJob"
