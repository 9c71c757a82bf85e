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
- Where the CPU went: over the same span, the CPU time of the API server and etcd, and of this client, per job.
  On one machine they share the cores with the operator, and what a job's writes cost the API server bounds the
  latency as much as the operator does.
- Memory: VmRSS of the operator process (/proc) right after it started with no job (baseline), and once
  ``--memory-jobs`` jobs exist in total and each has its PyTorchJob and status (after one more resync period).
- What each request of a job costs the API server (``--request-costs N``, 200 by default; 0: skipped): once the
  operator has stopped, the objects it made for one job (its ConfigMap, PyTorchJob, status and Event) are written
  again N times under new names, one kind of request after another, from the same client threads; the API server's
  and etcd's CPU time per request of each kind (/proc). The watches the operator had (jobs, PyTorchJobs) stay open
  meanwhile, as a watch's share of each write is part of its cost.

``--json`` writes the figures: ``sizes`` (by size: ``operator`` and ``baseline`` p50/p99/max seconds,
``p99_ratio``, ``apply_seconds``, ``operator_cpu_ms_per_job``, ``api_cpu_ms_per_job`` (API server + etcd),
``client_cpu_ms_per_job``, ``baseline_api_cpu_ms_per_object``, ``cpu_seconds`` (the span's length)),
``rss_idle_mib``, ``rss_mib``, ``rss_jobs``, ``pytorchjobs_created`` (must equal ``rss_jobs``: one child per job),
``request_costs`` (request kind -> API server + etcd CPU ms per request; ``request_count``), ``cores``,
``load_average_start``/``_end``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from kubefusion_operator.api import config_map_name as api_config_map_name  # noqa: E402
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
    seconds: float
    """From the first create to the last PyTorchJob seen."""
    operator_cpu_seconds: float
    """CPU time the operator used over that span (0 without an operator)."""
    api_cpu_seconds: float
    """CPU time the API server and etcd used over that span."""
    client_cpu_seconds: float
    """CPU time this process (the creating threads and the watch) used over that span."""


class CpuClock:
    """CPU seconds used by the operator, the API server with etcd, and this process, from one moment to another."""

    def __init__(self, cp: controlplane.ControlPlane, operator_pid: int | None) -> None:
        self._api = [cp.processes[name].pid for name in ("kube-apiserver", "etcd")]
        self._operator = operator_pid

    def read(self) -> tuple[float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (cpu_seconds(self._operator) if self._operator else 0.0, sum(map(cpu_seconds, self._api)),
                usage.ru_utime + usage.ru_stime)


def measure(cp: controlplane.ControlPlane, namespace: str, count: int, create: Callable[[str, str], None],
            timeout: float, operator_pid: int | None = None) -> Run:
    """Create ``count`` objects in a namespace of their own at once and wait for their PyTorchJobs."""
    cp.kubectl("create", "namespace", namespace)
    watch = Appearances(cp, namespace)
    names = [f"job-{i:04d}" for i in range(count)]
    clock = CpuClock(cp, operator_pid)
    before = clock.read()
    started = time.monotonic()
    sent = create_all(names, lambda name: create(namespace, name))
    spread = time.monotonic() - started
    watch.wait(count, timeout)
    seconds = time.monotonic() - started
    operator, api, client = (after - then for after, then in zip(clock.read(), before))
    return Run(percentiles([watch.seen[n] - sent[n] for n in names]), spread, seconds, operator, api, client)


def request_costs(cp: controlplane.ControlPlane, made_in: str, count: int) -> dict[str, float]:
    """API server + etcd CPU milliseconds per request, for each request the operator's handling of a new job
    makes (and the client's create of the job), measured by writing the operator's own objects for one job
    (``job-0000`` in ``made_in``) again ``count`` times under new names, one kind after another."""
    import kubernetes
    api = cp.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)

    def get(path: str) -> dict[str, Any]:
        return json.loads(cp.kubectl("get", "--raw", path).stdout)

    base = f"/namespaces/{made_in}"
    job_made = get(f"/apis/{'/'.join(MTJ[:2])}{base}/{MTJ[2]}/job-0000")
    configmap = get(f"/api/v1{base}/configmaps/{api_config_map_name('job-0000')}")
    child = get(f"/apis/{'/'.join(PYTORCHJOB[:2])}{base}/{PYTORCHJOB[2]}/job-0000")
    events = [e for e in get(f"/api/v1{base}/events")["items"]
              if e["involvedObject"].get("name") == "job-0000" and e["involvedObject"].get("kind") == job_made["kind"]]
    namespace = "request-costs"
    cp.kubectl("create", "namespace", namespace)
    names = [f"job-{i:04d}" for i in range(count)]
    made: dict[str, dict[str, Any]] = {}

    def renamed(obj: dict[str, Any], name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
        keep = ("labels", "annotations")
        meta = {k: v for k, v in obj["metadata"].items() if k in keep}
        meta.update(name=name, namespace=namespace)
        if owner is not None:
            meta["ownerReferences"] = [{**ref, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
                                       for ref in obj["metadata"].get("ownerReferences", [])]
        return {k: v for k, v in obj.items() if k not in ("metadata", "status")} | {"metadata": meta}

    def create_job(name: str) -> None:
        made[name] = custom.create_namespaced_custom_object(*MTJ[:2], namespace, MTJ[2], job(name))

    def create_configmap(name: str) -> None:
        body = renamed(configmap, api_config_map_name(name), made[name])
        api.call_api(*api.param_serialize("POST", f"/api/v1/namespaces/{namespace}/configmaps", body=body,
                                          auth_settings=["BearerToken"])).read()

    def create_child(name: str) -> None:
        custom.create_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2],
                                               renamed(child, name, made[name]))

    def write_status(name: str) -> None:
        body = {"metadata": {"resourceVersion": made[name]["metadata"]["resourceVersion"]},
                "status": job_made.get("status") or {}}
        custom.patch_namespaced_custom_object_status(*MTJ[:2], namespace, MTJ[2], name, body)

    def post_event(name: str) -> None:
        event = {k: v for k, v in events[0].items() if k not in ("metadata",)}
        event["metadata"] = {"generateName": f"{name}.", "namespace": namespace}
        event["involvedObject"] = {**event["involvedObject"], "name": name, "namespace": namespace,
                                   "uid": made[name]["metadata"]["uid"],
                                   "resourceVersion": made[name]["metadata"]["resourceVersion"]}
        api.call_api(*api.param_serialize("POST", f"/api/v1/namespaces/{namespace}/events", body=event,
                                          auth_settings=["BearerToken"])).read()

    kinds: list[tuple[str, Callable[[str], None]]] = [
        ("create the job (the client's)", create_job), ("create its ConfigMap", create_configmap),
        ("create its PyTorchJob", create_child), ("write its status", write_status)]
    if events:
        kinds.append(("post its Event", post_event))
    clock = CpuClock(cp, None)
    costs = {}
    for kind, write in kinds:
        before = clock.read()[1]
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(write, names))
        time.sleep(0.5)  # the watch caches and the watches take their share of the last writes
        costs[kind] = round((clock.read()[1] - before) / count * 1000, 2)
    api.close()
    return costs


class Watches:
    """The watches the operator holds (every job, every labelled PyTorchJob), held by this process instead while
    the request costs are measured without the operator."""

    def __init__(self, cp: controlplane.ControlPlane) -> None:
        self._processes = [subprocess.Popen(
            [str(cp.binary("kubectl")), f"--kubeconfig={cp.kubeconfig}", "get", resource_, "--all-namespaces",
             "--watch", "--output-watch-events", "-o", "name", *selector],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for resource_, selector in ((f"{MTJ[2]}.{MTJ[0]}", ()),
                                        (f"{PYTORCHJOB[2]}.{PYTORCHJOB[0]}", ("-l", "kubefusion.io/job-name")))]
        time.sleep(1)

    def close(self) -> None:
        for process in self._processes:
            process.terminate()
            process.wait(10)


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
    parser.add_argument("--request-costs", type=int, default=200, metavar="N",
                        help="write each kind of request a job needs N times once the operator has stopped, for the "
                             "API server's CPU per request (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    cp = controlplane.ControlPlane(root, nodes=0, audit=False)
    # The machine's load says how much of its CPU the operator and the API server had (2 shared cores here).
    results: dict[str, Any] = {"sizes": {}, "client_threads": CLIENT_THREADS, "cores": os.cpu_count(),
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
                "operator_cpu_ms_per_job": round(run.operator_cpu_seconds / size * 1000, 1),
                "api_cpu_ms_per_job": round(run.api_cpu_seconds / size * 1000, 1),
                "client_cpu_ms_per_job": round(run.client_cpu_seconds / size * 1000, 1),
                "baseline_api_cpu_ms_per_object": round(baseline.api_cpu_seconds / size * 1000, 1),
                "cpu_seconds": round(run.seconds, 2)}
            print(f"{size} jobs (applied in {run.apply_seconds:.2f} s): apply -> PyTorchJob p50 "
                  f"{run.latency['p50']:.3f} s, p99 {run.latency['p99']:.3f} s, max {run.latency['max']:.3f} s; "
                  f"API alone p50 {baseline.latency['p50']:.3f} s, p99 {baseline.latency['p99']:.3f} s "
                  f"(PyTorchJobs created directly in {baseline.apply_seconds:.2f} s); p99 ratio "
                  f"{figures['p99_ratio']}x; CPU per job over the {run.seconds:.1f} s: operator "
                  f"{figures['operator_cpu_ms_per_job']} ms, API server + etcd {figures['api_cpu_ms_per_job']} ms "
                  f"({figures['baseline_api_cpu_ms_per_object']} ms per PyTorchJob created directly), client "
                  f"{figures['client_cpu_ms_per_job']} ms", flush=True)

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
        if args.request_costs > 0 and args.sizes:
            operator.stop()
            watches = Watches(cp)
            try:
                results["request_costs"] = request_costs(cp, f"jobs-{args.sizes[0]}", args.request_costs)
            finally:
                watches.close()
            results["request_count"] = args.request_costs
            print(f"API server + etcd CPU per request ({args.request_costs} of each): " + "; ".join(
                f"{kind} {ms} ms" for kind, ms in results["request_costs"].items()) +
                f"; {sum(results['request_costs'].values()):.1f} ms in all", flush=True)
    finally:
        cp.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
