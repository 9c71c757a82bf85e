"""Live progress on a real API server: a real trainer process (the local demo job) reports while the operator
writes ``kubectl get mmtj``'s Progress, ETA and Val-Top1, then the results; the path cut (as a NetworkPolicy
would) marks the job stale and training goes on; an operator restart; tokens and RBAC.

The job runs on kwok's fake nodes, so its pods run nothing: the trainer runs here as a local process, as the pod
would run it, with the token the kubelet would mount in the pod (a TokenRequest bound to that very pod, with the
job's audience), posting to the operator's progress port through a forwarder the test can cut.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kube_harness import REPO, OperatorProcess, wait_for

from .conftest import OPERATOR_USER, Installed
from .kube import Namespace

WRITE_SECONDS = 12.0  # the operator's default: at most one progress write per job this often
STALE_SECONDS = 15.0  # shorter than the default 60 s, so that the cut path shows within the run


def audience(namespace: str, name: str) -> str:
    return f"kubefusion.io/v1alpha1/namespaces/{namespace}/multimodaltrainjobs/{name}/progress"


def pod_token(ns: Namespace, pod: Any, aud: str) -> str:
    """The token the kubelet projects into ``pod``: its ServiceAccount's, bound to the pod, with ``aud``."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [aud], "expirationSeconds": 3600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name,
                                           "uid": pod.metadata.uid}}}
    account = pod.spec.service_account_name or "default"
    out = ns.cp.kubectl("create", "--raw", f"/api/v1/namespaces/{ns.name}/serviceaccounts/{account}/token",
                        "-f", "-", input=json.dumps(request)).stdout
    return json.loads(out)["status"]["token"]


class Forwarder:
    """127.0.0.1:port -> the operator's progress port; ``cut()`` makes it a black hole (connections accepted,
    never answered: what a NetworkPolicy that drops the traffic looks like to the trainer), ``mend()`` undoes it."""

    def __init__(self, target: int) -> None:
        self.target, self.open = target, True
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.open = False

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.listener.close()
        for held in self.held:
            held.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                self.held.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()  # the operator is down: refused, as a Service without endpoints
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Recorder:
    """Reads the job twice a second and keeps every change of its progress sections, with the time seen."""

    def __init__(self, ns: Namespace, name: str) -> None:
        self.ns, self.name = ns, name
        self.changes: list[tuple[float, dict[str, Any]]] = []
        self.tables: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: Any = None
        while not self._stop.is_set():
            try:
                status = self.ns.job(self.name).get("status") or {}
            except kubernetes.client.ApiException:
                status = {}
            seen = {k: status.get(k) for k in ("progress", "metrics", "checkpoint", "results", "summary")}
            if seen["progress"] is not None and seen != last:
                self.changes.append((time.monotonic(), seen))
                last = seen
            self._stop.wait(0.5)

    def latest(self) -> dict[str, Any]:
        return self.changes[-1][1] if self.changes else {}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def progress_operator(installed: Installed, log: Path) -> OperatorProcess:
    """The real operator as the chart runs it (its ServiceAccount, its environment), stale after 15 s."""
    process = OperatorProcess(installed.operator_kubeconfig, log,
                              env={**installed.operator_env,
                                   "KUBEFUSION_OPERATOR_PROGRESS_STALE_SECONDS": str(STALE_SECONDS)})
    process.start()
    return process


def pod_of_job(ns: Namespace, installed: Installed, name: str) -> Any:
    """The job's running pod, after checking what the operator told it: its endpoint, a token for this job."""
    (pod,) = ns.running_pods(name, 1)
    (container,) = [c for c in pod.spec.containers if c.name == "pytorch"]
    env = {e.name: e.value for e in container.env}
    told = installed.operator_env["KUBEFUSION_OPERATOR_PROGRESS_URL"]
    assert env["KUBEFUSION_PROGRESS_URL"] == told + report_path(ns.name, name)
    (volume,) = [v for v in pod.spec.volumes if v.name == "progress-token"]
    (source,) = volume.projected.sources
    assert source.service_account_token.audience == audience(ns.name, name)
    return pod


def report_path(namespace: str, name: str) -> str:
    return f"/apis/{audience(namespace, name)}"


@pytest.mark.slow
def test_a_real_trainer_moves_progress_eta_and_val_top1_in_kubectl_get_mmtj_and_leaves_its_results(
        namespace: Namespace, installed: Installed, tmp_path: Path) -> None:
    ns = namespace
    operator = progress_operator(installed, tmp_path / "operator.log")
    trainer: subprocess.Popen[str] | None = None
    recorder: Recorder | None = None
    try:
        ns.kubectl("apply", "-f", str(REPO / "examples" / "local-job.yaml"))  # the demo job
        pod = pod_of_job(ns, installed, "demo")
        ns.wait_phase("demo", "Running")
        token_file = tmp_path / "token"
        token_file.write_text(pod_token(ns, pod, audience(ns.name, "demo")))
        # That token opens nothing on the API: the API server refuses a token of a foreign audience.
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(ns.cp.kubeconfig), client_configuration=configuration)
        configuration.cert_file = configuration.key_file = None
        configuration.api_key = {"authorization": f"Bearer {token_file.read_text()}"}
        with kubernetes.client.ApiClient(configuration) as as_the_pod:
            with pytest.raises(kubernetes.client.ApiException) as refused:
                kubernetes.client.CoreV1Api(as_the_pod).list_namespaced_pod(ns.name)
        assert refused.value.status == 401

        recorder = Recorder(ns, "demo")
        output = tmp_path / "run"
        trainer = subprocess.Popen(
            [sys.executable, "-m", "kubefusion", "run", str(REPO / "examples" / "local-job.yaml"), "--local",
             "--output", str(output)],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                 "KUBEFUSION_PROGRESS_URL": f"http://127.0.0.1:{operator.progress_port}{report_path(ns.name, 'demo')}",
                 "KUBEFUSION_PROGRESS_TOKEN_FILE": str(token_file)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        rows: list[dict[str, str]] = []
        while trainer.poll() is None:  # what a user watching `kubectl get mmtj -o wide` sees
            rows += ns.table("mmtj", "demo", "-o", "wide")
            time.sleep(2)
        log = trainer.stdout.read() if trainer.stdout else ""
        assert trainer.returncode == 0, log[-3000:]
        done = wait_for(lambda: recorder.latest().get("results") and recorder.latest(), 60, "the results")
    finally:
        if recorder is not None:
            recorder.stop()
        if trainer is not None and trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()

    try:
        progressing = [r for r in rows if r["PROGRESS"]]
        assert len({r["PROGRESS"] for r in progressing}) >= 3, rows  # Progress moves ...
        assert any(r["ETA"] for r in progressing) and any(r["VAL-TOP1"].endswith("%") for r in progressing)
        # ... through the stages (the demo's last baseline can be shorter than one write interval)
        stages = {r["STAGE"].split()[0] for r in progressing}
        assert "fused" in stages and any(s.startswith("baseline-") for s in stages), stages
        percents = [c["progress"]["percent"] for _, c in recorder.changes]
        assert percents == sorted(percents)
        # ... at most one write per job every 12 s (the job's status polled twice a second).
        times = [t for t, _ in recorder.changes]
        assert min(b - a for a, b in zip(times, times[1:])) >= WRITE_SECONDS - 1.0, times

        results = json.loads((output / "results.json").read_text())
        assert done["results"]["fusedTestTop1"] == pytest.approx(results["fused"]["test"]["top1"], abs=1e-6)
        assert done["results"]["model"] == str(output / "model.pt")
        assert "onnx" not in done["results"]  # the demo job turns spec.training.exportOnnx off
        assert done["results"]["volume"].startswith("emptyDir")  # the demo job keeps no checkpoints volume
        assert done["progress"]["percent"] == 100 and done["summary"]["testTop1"].endswith("%")
        fused = done["metrics"]["validation"][0]
        assert fused["stage"] == "fused" and fused["top1"] == pytest.approx(results["fused"]["validation"]["top1"])
        # The run folder's status.json says the same (the operator adds only its own: times, stale, the volume).
        local = json.loads((output / "status.json").read_text())
        assert {**done, "progress": None, "results": {**done["results"], "volume": None}} == \
            {**local, "progress": None, "results": {**local["results"], "volume": None}}

        # The pods finish: the results stay; a run that has its results is over, never stale.
        ns.end_pods("demo", 0)
        ns.wait_phase("demo", "Succeeded", timeout=60)
        time.sleep(STALE_SECONDS + 2)
        finished = ns.job("demo")["status"]
        assert finished["results"] == done["results"] and finished["progress"]["stale"] is False
        (row,) = ns.table("mmtj", "demo", "-o", "wide")
        assert (row["PHASE"], row["PROGRESS"], row["TEST-TOP1"]) == ("Succeeded", "100%", done["summary"]["testTop1"])
        assert operator.metrics()['kubefusion_operator_progress_status_writes_total{kind="progress"}'] >= 3
    finally:
        operator.stop()


@pytest.mark.slow
def test_a_cut_path_marks_the_job_stale_and_reports_resume_after_it_mends_and_after_an_operator_restart(
        namespace: Namespace, installed: Installed, tmp_path: Path) -> None:
    """The trainer's own reporting code (kubefusion.train.progress), driven by a tracker that advances a step a
    second, through a path the test cuts as a NetworkPolicy would."""
    from kubefusion.train import progress as live

    ns = namespace
    operator = progress_operator(installed, tmp_path / "operator.log")
    forwarder = Forwarder(operator.progress_port)
    recorder = Recorder(ns, "demo")
    publisher: live.ProgressPublisher | None = None
    stepping = threading.Event()
    try:
        ns.kubectl("apply", "-f", str(REPO / "examples" / "local-job.yaml"))
        pod = pod_of_job(ns, installed, "demo")
        token_file = tmp_path / "token"
        token_file.write_text(pod_token(ns, pod, audience(ns.name, "demo")))
        tracker = live.ProgressTracker(["fused"], steps_per_stage=10_000, epochs=1)
        tracker.stage_started("fused", 0, 0)
        sink = live.OperatorEndpoint(f"http://127.0.0.1:{forwarder.port}{report_path(ns.name, 'demo')}",
                                     str(token_file), interval=2.0)
        publisher = live.ProgressPublisher([sink], final_timeout=0)

        def train() -> None:
            step = 0
            while not stepping.wait(1.0):
                step += 1
                tracker.steps_done(step, 0, 100.0)
                publisher.publish(tracker.report())

        threading.Thread(target=train, daemon=True).start()
        wait_for(lambda: recorder.latest().get("progress"), 60, "the first progress")

        forwarder.cut()
        stale = wait_for(lambda: recorder.latest()["progress"]["stale"] and recorder.latest(), 90, "the stale mark")
        assert stale["summary"]["progress"].endswith(" stale") and stale["summary"].get("eta") is None
        (row,) = ns.table("mmtj", "demo")
        assert row["PROGRESS"].endswith(" stale") and row["ETA"] == ""
        assert tracker.report()["progress"]["step"] > stale["progress"]["step"]  # the loop went on meanwhile
        wait_for(lambda: operator.metrics()["kubefusion_operator_progress_stale_jobs"] == 1, 10, "the stale gauge")
        assert operator.metrics()['kubefusion_operator_progress_status_writes_total{kind="stale"}'] == 1

        forwarder.mend()
        fresh = wait_for(lambda: recorder.latest()["progress"]["stale"] is False and recorder.latest(), 90,
                         "fresh progress")
        assert fresh["progress"]["step"] > stale["progress"]["step"]

        operator.stop()  # the same ports again: a restarted operator behind the same Service
        restarted = time.monotonic()
        operator.start()
        after = wait_for(lambda: recorder.changes[-1][0] > restarted and recorder.latest(), 90,
                         "progress written by the restarted operator")
        assert after["progress"]["step"] > fresh["progress"]["step"] and after["progress"]["stale"] is False
        assert operator.metrics()["kubefusion_operator_progress_reports_received_total"] >= 1
        times = [t for t, _ in recorder.changes]
        assert min(b - a for a, b in zip(times, times[1:])) >= WRITE_SECONDS - 1.0, times  # across the restart too
    finally:
        stepping.set()
        if publisher is not None:
            publisher.close()
        recorder.stop()
        forwarder.close()
        operator.stop()


@pytest.mark.slow
def test_reports_with_a_token_of_another_job_or_none_are_refused_and_counted(
        namespace: Namespace, installed: Installed, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    ns = namespace
    operator = progress_operator(installed, tmp_path / "operator.log")
    try:
        job = yaml.safe_load((REPO / "examples" / "local-job.yaml").read_text())
        for name in ("demo", "other"):
            job["metadata"]["name"] = name
            ns.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
        (pod,) = ns.running_pods("other", 1)
        report = {"schema": "kubefusion.io/progress/v1",
                  "progress": {"stage": "fused", "stageNumber": 1, "stages": 4, "epoch": 1, "epochs": 3, "step": 5,
                               "steps": 84, "percent": 1.5, "updateTime": "2026-01-01T00:00:00Z"},
                  "summary": {"progress": "1%"}}

        def post(name: str, token: str | None) -> int:
            url = (f"http://127.0.0.1:{operator.progress_port}/apis/kubefusion.io/v1alpha1/namespaces/{ns.name}"
                   f"/multimodaltrainjobs/{name}/progress")
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
            request = urllib.request.Request(url, data=json.dumps(report).encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as e:
                return e.code

        others = pod_token(ns, pod, audience(ns.name, "other"))
        assert post("demo", others) == 401  # another job's audience: the TokenReview says no
        wrong_pod = pod_token(ns, pod, audience(ns.name, "demo"))
        assert post("demo", wrong_pod) == 403  # the right audience, but a pod of another job
        assert post("demo", None) == 401
        assert post("other", others) == 202
        metrics = operator.metrics()
        assert metrics['kubefusion_operator_progress_reports_rejected_total{reason="Unauthenticated"}'] == 2
        assert metrics['kubefusion_operator_progress_reports_rejected_total{reason="Forbidden"}'] == 1
        assert metrics["kubefusion_operator_progress_reports_received_total"] == 4
        progress = wait_for(lambda: (ns.job("other").get("status") or {}).get("progress"), 30, "the report written")
        assert progress["step"] == 5 and "progress" not in (ns.job("demo").get("status") or {})
        # No Role or RoleBinding was made for the pods: the report path needs none; their ServiceAccount still
        # cannot touch the job. The operator checked the tokens within the chart's RBAC (its audit log).
        assert ns.kubectl("get", "roles,rolebindings", "-o", "name").stdout.strip() == ""
        for verb, *subresource in (("patch", "--subresource=status"), ("patch",), ("update", "--subresource=status")):
            can = ns.kubectl("auth", "can-i", verb, "multimodaltrainjobs.kubefusion.io/demo", *subresource,
                             f"--as=system:serviceaccount:{ns.name}:default", check=False)
            assert can.stdout.strip() == "no", (verb, subresource)
        if not ns.cp.external:  # an external cluster's audit log is not readable from here
            checks = [(e["verb"], (e.get("objectRef") or {}).get("resource"),
                       (e.get("responseStatus") or {}).get("code"))
                      for e in ns.cp.audit_events(OPERATOR_USER)
                      if (e.get("objectRef") or {}).get("resource") == "tokenreviews"
                      or (e.get("objectRef") or {}).get("namespace") == ns.name]
            assert ("create", "tokenreviews", 201) in checks and ("get", "pods", 200) in checks
            assert not [c for c in checks if c[2] == 403], checks
    finally:
        operator.stop()


def test_the_demo_script_of_the_docs_starts():
    """scripts/progress_demo.py produced docs/operator.md's tables; it runs the flow tested above."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "progress_demo.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "kubectl get mmtj" in done.stdout, done.stderr
