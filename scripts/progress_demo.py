"""Watch a job's live progress in ``kubectl get mmtj`` on a real API server, without a GPU cluster.

    .venv/bin/python scripts/progress_demo.py [--out DIR]       # after `make venv tools cluster-build`

Starts the test control plane (cluster/controlplane.py: etcd, kube-apiserver, controller manager, scheduler,
kwok's fake GPU nodes, Kubeflow's training operator), ``helm install``s charts/kubefusion, runs the operator out
of cluster with the chart's ServiceAccount token and environment, and applies examples/local-job.yaml (the
demo job). kwok's pods run nothing, so the demo job's trainer runs here, as its pod would run it: ``kubefusion
run --local`` with ``KUBEFUSION_PROGRESS_URL`` pointing at the operator's progress port and a token the API
server issues bound to the job's pod, with the job's audience (what the kubelet projects into the pod). While
it trains, ``kubectl get mmtj`` is printed every 10 s; at the end the pod is made to succeed and ``kubectl get
mmtj -o wide`` and ``kubectl describe mmtj demo`` are printed. Everything is stopped on exit; DIR (default a
temporary folder) keeps the logs, the run folder and every printed table. docs/operator.md shows its output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "cluster"), str(REPO / "tests")]

import controlplane  # noqa: E402
from kube_harness import OperatorProcess  # noqa: E402

NAMESPACE, JOB = "default", "demo"
POD_LABEL = f"training.kubeflow.org/job-name={JOB}"


def show(cp: controlplane.ControlPlane, out: Path, name: str, *args: str) -> str:
    text = f"$ kubectl {' '.join(args)}\n" + cp.kubectl(*args).stdout
    print(text, flush=True)
    with (out / name).open("a") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')}\n{text}")
    return text


def running_pod(cp: controlplane.ControlPlane, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = json.loads(cp.kubectl("get", "pods", "-l", POD_LABEL, "-o", "json").stdout)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        if running:
            return running[0]
        time.sleep(1)
    raise TimeoutError(f"no running pod of {JOB} after {timeout:.0f} s")


def pod_token(cp: controlplane.ControlPlane, pod: dict, audience: str) -> str:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [audience], "expirationSeconds": 3600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                           "uid": pod["metadata"]["uid"]}}}
    account = pod["spec"].get("serviceAccountName") or "default"
    created = cp.kubectl("create", "--raw", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{account}/token",
                         "-f", "-", input=json.dumps(request)).stdout
    return json.loads(created)["status"]["token"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for logs and tables (default: a temporary one)")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="kubefusion-progress-demo-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cp = controlplane.ControlPlane(out / "control-plane")
    cp.start()
    try:
        cp.install_training_operator()
        helm = str(REPO / ".tools" / "bin" / "helm")
        subprocess.run([helm, "--kubeconfig", str(cp.kubeconfig), "install", "kubefusion", str(REPO / "charts" /
                        "kubefusion"), "--namespace", "kubefusion-system", "--create-namespace"], check=True,
                       capture_output=True)
        cp.kubectl("-n", "kubefusion-system", "scale", "deployment", "--all", "--replicas=0")
        cp.wait_established("multimodaltrainjobs.kubefusion.io")
        kubeconfig = cp.service_account_kubeconfig("kubefusion-system", "kubefusion-operator",
                                                   out / "operator.kubeconfig")
        deployment = json.loads(cp.kubectl("-n", "kubefusion-system", "get", "deployment", "-o", "json").stdout)
        (container,) = deployment["items"][0]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        operator = OperatorProcess(kubeconfig, out / "operator.log", env=env)
        operator.start()
        try:
            print(cp.kubectl("apply", "-f", str(REPO / "examples" / "local-job.yaml")).stdout, flush=True)
            pod = running_pod(cp)
            audience = f"kubefusion.io/v1alpha1/namespaces/{NAMESPACE}/multimodaltrainjobs/{JOB}/progress"
            (out / "token").write_text(pod_token(cp, pod, audience))
            trainer = subprocess.Popen(
                [sys.executable, "-m", "kubefusion", "run", str(REPO / "examples" / "local-job.yaml"), "--local",
                 "--output", str(out / "run")],
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                     "KUBEFUSION_PROGRESS_URL": f"http://127.0.0.1:{operator.progress_port}/apis/{audience}",
                     "KUBEFUSION_PROGRESS_TOKEN_FILE": str(out / "token")},
                stdout=(out / "trainer.log").open("w"), stderr=subprocess.STDOUT)
            while trainer.poll() is None:
                show(cp, out, "during.txt", "get", "mmtj")
                time.sleep(10)
            if trainer.returncode != 0:
                print(f"the trainer failed: see {out / 'trainer.log'}", file=sys.stderr)
                return 1
            time.sleep(15)  # its last report written (at most every 12 s)
            show(cp, out, "done.txt", "get", "mmtj", "-o", "wide")
            cp.kubectl("annotate", "pod", "-l", POD_LABEL, "--overwrite", f"{controlplane.EXIT_CODE_ANNOTATION}=0")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and json.loads(cp.kubectl(
                    "get", "mmtj", JOB, "-o", "json").stdout).get("status", {}).get("phase") != "Succeeded":
                time.sleep(1)
            show(cp, out, "final.txt", "get", "mmtj")
            show(cp, out, "final.txt", "get", "mmtj", "-o", "wide")
            show(cp, out, "describe.txt", "describe", "mmtj", JOB)
            cp.kubectl("delete", "mmtj", "--all", "--wait", "--timeout=60s", check=False)  # while the operator runs
        finally:
            operator.stop()
    finally:
        cp.stop()
    print(f"logs, the run folder and the tables: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
