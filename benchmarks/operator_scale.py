"""The operator at scale on a real control plane: N jobs applied at once, seconds from apply to PyTorchJob created
(p50, p99), and the operator's resident memory with 1000 jobs; against baselines measured in the same run.

    .venv/bin/python benchmarks/operator_scale.py [--sizes 100 500] [--memory-jobs 1000] [--resync-seconds 60]
                                                  [--json out.json]

Setup: the control plane of cluster/controlplane.py (built on first use; no fake nodes, no audit log), the
PyTorchJob CRD of Kubeflow's training operator without its controller (the operator's side is measured, not how
fast Kubeflow starts pods), ``kubectl apply -k manifests/`` (CRD, RBAC), and ``kubefusion-operator`` as its
ServiceAccount with default settings, watching every namespace.

- Latency: the jobs of one size are created by 8 client threads as fast as the API server takes them, in a
  namespace of their own; a watch on PyTorchJobs notes when each one appears. Latency = that moment minus the
  moment its job's create was sent (one clock, this process). Baseline: the same number of PyTorchJobs created
  directly by the same threads, create-to-watch: what the API server and the watch alone take. The ratio says
  how much the operator adds.
  Also the operator's CPU time per job over that span (/proc): unlike the latency, it hardly depends on how
  busy the machine is, and the latency of a burst is about its size times this, divided by the share of a core
  the operator gets.
- Memory: VmRSS of the operator process (/proc) right after it started with no job (baseline), and once
  ``--memory-jobs`` jobs exist in total and each has its PyTorchJob and status (after one more resync period).

``--json`` writes the figures: ``sizes`` (by size: ``operator`` and ``baseline`` p50/p99/max seconds,
``p99_ratio``, ``apply_seconds``, ``operator_cpu_ms_per_job``), ``rss_idle_mib``, ``rss_mib``, ``rss_jobs``,
``pytorchjobs_created`` (must equal ``rss_jobs``: one child per job), ``load_average_start``/``_end``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cluster"))
import controlplane  # noqa: E402
from kubefusion_operator.options import Options  # noqa: E402

CLIENT_THREADS = 8
MTJ = ("kubefusion.io", "v1alpha1", "multimodaltrainjobs")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")


def job(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubefusion.io/v1alpha1", "kind": "MultimodalTrainJob", "metadata": {"name": name},
            "spec": {"image": "registry.example.com/kubefusion-trainer:0.1.0",
                     "data": {"path": "gs://bucket/products/"}, "resources": {"nodes": 1, "gpusPerNode": 4}}}


def pytorchjob(name: str) -> dict[str, Any]:
    """A PyTorchJob of the size the operator makes, for the baseline."""
    container = {"name": "pytorch", "image": "registry.example.com/kubefusion-trainer:0.1.0",
                 "command": ["torchrun", "-m", "kubefusion", "train"], "resources": {"limits": {"nvidia.com/gpu": 4}}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"nprocPerNode": "4", "pytorchReplicaSpecs": {"Master": {
                "replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [container]}}}}}}


class Appearances:
    """When each PyTorchJob of a namespace was first seen through a watch (monotonic clock of this process)."""

    def __init__(self, cp: controlplane.ControlPlane, namespace: str) -> None:
        import kubernetes
        self.seen: dict[str, float] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._client = cp.api_client()
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        import kubernetes
        import urllib3
        watch = kubernetes.watch.Watch()
        listed = self._custom.list_namespaced_custom_object(*PYTORCHJOB[:2], self._namespace, PYTORCHJOB[2])
        self._ready.set()
        try:
            for event in watch.stream(self._custom.list_namespaced_custom_object, *PYTORCHJOB[:2], self._namespace,
                                      PYTORCHJOB[2], resource_version=listed["metadata"]["resourceVersion"],
                                      timeout_seconds=600):
                self.seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())
                if self._stop.is_set():
                    watch.stop()
        except (urllib3.exceptions.HTTPError, OSError):
            if not self._stop.is_set():  # after wait(), the control plane stopping ends the watch: not an error
                raise

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.seen)} of {count} PyTorchJobs after {timeout:.0f} s")
            time.sleep(0.05)
        self._stop.set()


def create_all(names: list[str], create: Callable[[str], None]) -> dict[str, float]:
    """Create every name from CLIENT_THREADS threads at once; the moment each create was sent."""
    sent: dict[str, float] = {}

    def one(name: str) -> None:
        sent[name] = time.monotonic()
        create(name)
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(one, names))
    return sent


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * len(ordered))) - 1)]
    return {"p50": round(statistics.median(ordered), 3), "p99": round(p99, 3), "max": round(ordered[-1], 3)}


@dataclass
class Run:
    latency: dict[str, float]
    """p50, p99 and max seconds from a create sent to its PyTorchJob seen."""
    apply_seconds: float
    """How long the client took to create them all."""
    operator_cpu_seconds: float
    """CPU time the operator used from the first create to the last PyTorchJob (0 without an operator)."""


def measure(cp: controlplane.ControlPlane, namespace: str, count: int, create: Callable[[str, str], None],
            timeout: float, operator_pid: int | None = None) -> Run:
    """Create ``count`` objects in a namespace of their own at once and wait for their PyTorchJobs."""
    cp.kubectl("create", "namespace", namespace)
    watch = Appearances(cp, namespace)
    names = [f"job-{i:04d}" for i in range(count)]
    cpu = cpu_seconds(operator_pid) if operator_pid else 0.0
    started = time.monotonic()
    sent = create_all(names, lambda name: create(namespace, name))
    spread = time.monotonic() - started
    watch.wait(count, timeout)
    cpu = cpu_seconds(operator_pid) - cpu if operator_pid else 0.0
    return Run(percentiles([watch.seen[n] - sent[n] for n in names]), spread, cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_operator(cp: controlplane.ControlPlane, token: Path, env: dict[str, str]) -> tuple[controlplane.Process, str]:
    metrics, liveness, progress = controlplane.free_ports(3)
    script = shutil.which("kubefusion-operator", path=str(Path(sys.executable).parent)) or "kubefusion-operator"
    process = cp._start("kubefusion-operator", [
        script, f"--liveness=http://127.0.0.1:{liveness}/healthz", f"--metrics-port={metrics}",
        "--metrics-address=127.0.0.1", f"--progress-port={progress}", "--progress-address=127.0.0.1"],
        env={**env, "KUBECONFIG": str(token)})
    controlplane.wait_until(lambda: requests.get(f"http://127.0.0.1:{liveness}/healthz", timeout=1).ok, 60,
                            "the operator to be healthy", processes=[process])
    return process, f"http://127.0.0.1:{metrics}/metrics"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--memory-jobs", type=int, default=1000)
    parser.add_argument("--resync-seconds", type=float, default=None,
                        help="the operator's resync period; the memory figure is read one period after the last "
                             "job exists (default: the chart's, which is the operator's: "
                             f"{Options.resync_seconds:g} s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    cp = controlplane.ControlPlane(root, nodes=0, audit=False)
    # The machine's load says how much of its CPU the operator and the API server had (2 shared cores here).
    results: dict[str, Any] = {"sizes": {}, "client_threads": CLIENT_THREADS,
                               "load_average_start": round(os.getloadavg()[0], 1)}
    try:
        cp.start()
        cp.apply(*yaml.safe_load_all((cp.manifests("training-operator") / "crds" /
                                      "kubeflow.org_pytorchjobs.yaml").read_text()))
        cp.wait_established("pytorchjobs.kubeflow.org")
        cp.kubectl("apply", "-k", str(REPO / "manifests"))
        cp.wait_established("multimodaltrainjobs.kubefusion.io")
        cp.kubectl("-n", "kubefusion-system", "scale", "deployment", "--all", "--replicas=0")
        deployment = json.loads(cp.kubectl("-n", "kubefusion-system", "get", "deployment", "-o", "json").stdout)
        (container,) = deployment["items"][0]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        if args.resync_seconds is not None:
            env["KUBEFUSION_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
        token = cp.service_account_kubeconfig("kubefusion-system", "kubefusion-operator", root / "operator.kubeconfig")
        operator, metrics_url = start_operator(cp, token, env)
        time.sleep(5)  # settled: watches open, startup done
        results["rss_idle_mib"] = round(rss_mib(operator.pid), 1)

        import kubernetes
        custom = kubernetes.client.CustomObjectsApi(cp.api_client())

        def create_job(namespace: str, name: str) -> None:
            custom.create_namespaced_custom_object(*MTJ[:2], namespace, MTJ[2], job(name))

        def create_pytorchjob(namespace: str, name: str) -> None:
            custom.create_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], pytorchjob(name))

        total = 0
        for size in args.sizes:
            baseline = measure(cp, f"baseline-{size}", size, create_pytorchjob, 300)
            run = measure(cp, f"jobs-{size}", size, create_job, 600, operator.pid)
            total += size
            figures = results["sizes"][size] = {
                "operator": run.latency, "baseline": baseline.latency, "apply_seconds": round(run.apply_seconds, 2),
                "p99_ratio": round(run.latency["p99"] / max(baseline.latency["p99"], 1e-3), 1),
                "operator_cpu_ms_per_job": round(run.operator_cpu_seconds / size * 1000, 1)}
            print(f"{size} jobs (applied in {run.apply_seconds:.2f} s): apply -> PyTorchJob p50 "
                  f"{run.latency['p50']:.3f} s, p99 {run.latency['p99']:.3f} s, max {run.latency['max']:.3f} s; "
                  f"API alone p50 {baseline.latency['p50']:.3f} s, p99 {baseline.latency['p99']:.3f} s "
                  f"(PyTorchJobs created directly in {baseline.apply_seconds:.2f} s); p99 ratio "
                  f"{figures['p99_ratio']}x; operator CPU {figures['operator_cpu_ms_per_job']} ms per job", flush=True)

        if args.memory_jobs > total:
            measure(cp, "jobs-rest", args.memory_jobs - total, create_job, 900)
        period = Options.from_env(env).resync_seconds
        time.sleep(period + 5)  # every unfinished job resynced once with all of them present
        results["rss_jobs"] = max(total, args.memory_jobs)
        results["rss_mib"] = round(rss_mib(operator.pid), 1)
        metrics = requests.get(metrics_url, timeout=10).text
        created = [line for line in metrics.splitlines()
                   if line.startswith('kubefusion_operator_children_created_total{kind="PyTorchJob"}')]
        results["pytorchjobs_created"] = float(created[0].split()[-1]) if created else 0
        results["load_average_end"] = round(os.getloadavg()[0], 1)
        per_job = (results["rss_mib"] - results["rss_idle_mib"]) / results["rss_jobs"] * 1024
        print(f"operator RSS: {results['rss_idle_mib']} MiB idle, {results['rss_mib']} MiB with "
              f"{results['rss_jobs']} jobs ({per_job:.0f} KiB per job); PyTorchJobs created: "
              f"{results['pytorchjobs_created']:.0f}; load average {results['load_average_start']} at the start, "
              f"{results['load_average_end']} at the end", flush=True)
    finally:
        cp.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
