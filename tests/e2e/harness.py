"""Helpers of the end-to-end tests: the cluster as a test sees it, a simulated Kubeflow controller, the
operator as a subprocess."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import requests
import yaml

from .emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
MTJ = ('kubefusion.io', 'v1alpha1', 'multimodaltrainjobs')
PYTORCHJOB = ('kubeflow.org', 'v1', 'pytorchjobs')
NAMESPACE = 'ml-team'

def crd(group: str, version: str, kind: str, plural: str, scope: str = 'Namespaced') -> dict[str, Any]:
    """A CRD as far as the API server is concerned (scope, names, /status), for another project's kind."""
    return {
        'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
        'metadata': {'name': f'{plural}.{group}'},
        'spec': {'group': group, 'scope': scope,
                 'names': {'kind': kind, 'plural': plural, 'singular': kind.lower(), 'listKind': f'{kind}List'},
                 'versions': [{'name': version, 'served': True, 'storage': True, 'subresources': {'status': {}},
                               'schema': {'openAPIV3Schema': {'type': 'object',
                                                              'x-kubernetes-preserve-unknown-fields': True}}}]},
    }


PYTORCHJOB_CRD = crd('kubeflow.org', 'v1', 'PyTorchJob', 'pytorchjobs')  # Kubeflow's training operator
TRAINJOB = ('trainer.kubeflow.org', 'v1alpha1', 'trainjobs')  # Kubeflow Trainer v2
TRAINER_CRDS = (crd(*TRAINJOB[:2], 'TrainJob', 'trainjobs'),
                crd(*TRAINJOB[:2], 'ClusterTrainingRuntime', 'clustertrainingruntimes', scope='Cluster'))
RUNTIME = yaml.safe_load((REPO / 'manifests' / 'trainjob' / 'runtime.yaml').read_text())
"""kubefusion's ClusterTrainingRuntime as the chart renders it."""
KUEUE_WORKLOAD_CRD = crd('kueue.x-k8s.io', 'v1beta1', 'Workload', 'workloads')
WORKLOAD = ('kueue.x-k8s.io', 'v1beta1', 'workloads')


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = 'condition') -> Any:
    """Poll until ``check()`` returns something truthy (API errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except kubernetes.client.ApiException as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f'timed out after {timeout}s waiting for {what}; last: {last!r}')


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1: all bound at once, so the kernel never hands out one twice
    (picking them one by one could give the metrics and liveness endpoints the same port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """The emulated cluster as a test sees it: typed helpers over the official client."""

    def __init__(self, api: EmulatorThread, client: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.crds = kubernetes.client.ApiextensionsV1Api(client)

    def install_kubeflow(self) -> None:
        self.crds.create_custom_resource_definition(PYTORCHJOB_CRD)

    def install_kueue(self) -> None:
        self.crds.create_custom_resource_definition(KUEUE_WORKLOAD_CRD)

    def install_trainer(self, *, runtime: bool = True, image: str = 'registry.example.com/kubefusion-trainer:0.1.0',
                        **pod: Any) -> None:
        """Kubeflow Trainer v2's CRDs and, with ``runtime``, kubefusion's ClusterTrainingRuntime as the chart
        makes it with ``trainer.image`` = ``image`` (the image of the jobs :func:`job_body` makes)."""
        for definition in TRAINER_CRDS:
            self.crds.create_custom_resource_definition(definition)
        if runtime:
            self.install_runtime(image=image, **pod)

    def install_runtime(self, *, image: str = 'registry.example.com/kubefusion-trainer:0.1.0', **pod: Any) -> None:
        """kubefusion's ClusterTrainingRuntime, its images set to ``image`` and its pod spec updated with ``pod``."""
        body = copy.deepcopy(RUNTIME)
        (node,) = body['spec']['template']['spec']['replicatedJobs']
        pod_spec = node['template']['spec']['template']['spec']
        for container in pod_spec['initContainers'] + pod_spec['containers']:
            container['image'] = image
        pod_spec.update(pod)
        self.custom.create_cluster_custom_object(TRAINJOB[0], TRAINJOB[1], 'clustertrainingruntimes', body)

    def trainjob(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2], name)

    def trainjobs(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2])['items']

    def trainer_reports(self, name: str, *, conditions: tuple[tuple[str, str, str], ...] = (), ready: int = 0,
                        active: int = 1, succeeded: int = 0, failed: int = 0, namespace: str = NAMESPACE) -> None:
        """What Kubeflow Trainer writes on a TrainJob: its conditions (type, status, reason) and the jobsStatus of
        the replicated job ``node`` (counts of child Jobs, as JobSet reports them)."""
        now = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        status = {'conditions': [{'type': t, 'status': s, 'reason': r, 'message': f'{r} ({name})',
                                  'lastTransitionTime': now} for t, s, r in conditions],
                  'jobsStatus': [{'name': 'node', 'ready': ready, 'active': active, 'succeeded': succeeded,
                                  'failed': failed, 'suspended': 0}]}
        self.custom.patch_namespaced_custom_object_status(*TRAINJOB[:2], namespace, TRAINJOB[2], name,
                                                          {'status': status})

    def kueue_admits(self, child: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
        """What Kueue does for a queued job: a Workload owned by the child (PyTorchJob or TrainJob; active unless
        said otherwise), admitted, and the child un-suspended."""
        meta, kind = child['metadata'], child['kind']
        workload = self.custom.create_namespaced_custom_object(*WORKLOAD[:2], namespace, WORKLOAD[2], {
            'apiVersion': 'kueue.x-k8s.io/v1beta1', 'kind': 'Workload',
            'metadata': {'name': f"{kind.lower()}-{meta['name']}-0a1b2", 'ownerReferences': [
                {'apiVersion': child['apiVersion'], 'kind': kind, 'name': meta['name'], 'uid': meta['uid'],
                 'controller': True, 'blockOwnerDeletion': True}]},
            'spec': {'queueName': meta['labels']['kueue.x-k8s.io/queue-name'], 'podSets': []}})
        if kind == 'TrainJob':
            self.custom.patch_namespaced_custom_object(*TRAINJOB[:2], namespace, TRAINJOB[2], meta['name'],
                                                       {'spec': {'suspend': False}})
        else:
            self.custom.patch_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], meta['name'],
                                                       {'spec': {'runPolicy': {'suspend': False}}})
        return workload

    def workload(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*WORKLOAD[:2], namespace, WORKLOAD[2], name)

    def create_namespace(self, name: str) -> None:
        self.core.create_namespace({'metadata': {'name': name}})

    def job(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*MTJ[:2], namespace, MTJ[2], name)

    def create_job(self, body: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(*MTJ[:2], namespace, MTJ[2], body)

    def patch_job(self, name: str, patch: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(*MTJ[:2], namespace, MTJ[2], name, patch)

    def pytorchjobs(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2])['items']

    def pytorchjob(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], name)

    def configmaps(self, namespace: str = NAMESPACE) -> list[Any]:
        return self.core.list_namespaced_config_map(namespace).items

    def events(self, name: str, namespace: str = NAMESPACE) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items if e.involved_object.name == name]

    def phase(self, name: str, namespace: str = NAMESPACE) -> str | None:
        return (self.job(name, namespace).get('status') or {}).get('phase')

    def wait_phase(self, name: str, phase: str, namespace: str = NAMESPACE, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: self.phase(name, namespace) == phase and self.job(name, namespace),
                        timeout, f'{namespace}/{name} to be {phase}')

    def kubeflow_reports(self, name: str, *conditions: str, namespace: str = NAMESPACE,
                         extra: dict[str, Any] | None = None) -> None:
        """What Kubeflow's training operator would write: the given conditions, the last one True."""
        now = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        status = {'conditions': [{'type': c, 'status': 'True' if i == len(conditions) - 1 else 'False',
                                  'reason': f'PyTorchJob{c}', 'message': f'PyTorchJob {name} is {c.lower()}.',
                                  'lastUpdateTime': now, 'lastTransitionTime': now}
                                 for i, c in enumerate(conditions)],
                  'startTime': now, **(extra or {})}
        self.custom.patch_namespaced_custom_object_status(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], name,
                                                          {'status': status})


def job_body(name: str, *, nodes: int = 2, gpus: int = 4, suspend: bool = False, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        'apiVersion': 'kubefusion.io/v1alpha1', 'kind': 'MultimodalTrainJob', 'metadata': {'name': name},
        'spec': {'image': 'registry.example.com/kubefusion-trainer:0.1.0',
                 'data': {'source': {'persistentVolumeClaim': {'claimName': 'datasets'}}, 'path': 'products/'},
                 'resources': {'nodes': nodes, 'gpusPerNode': gpus},
                 # Several nodes need a volume all pods share for checkpoints (a ReadWriteMany claim).
                 'storage': {'checkpoints': {'persistentVolumeClaim': {'claimName': 'runs'}}},
                 'runPolicy': {'suspend': suspend}}}
    body['spec'].update(spec)
    return body


class OperatorProcess:
    """The real ``kubefusion-operator`` console script, against the emulator, as a subprocess."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        """``kubeconfig``: the operator's credentials (an RBAC-restricted token, or the admin one); ``args``:
        more command-line flags (``--namespace``); ``env``: ``KUBEFUSION_OPERATOR_*`` settings, as the
        Deployment sets them (none is inherited from the test's own environment)."""
        self.kubeconfig, self.log, self.args, self.env = kubeconfig, log, args, dict(env or {})
        self.metrics_port, self.liveness_port, self.progress_port = free_ports(3)
        self.resync_seconds = 3.0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        script = shutil.which('kubefusion-operator', path=str(Path(sys.executable).parent)) or 'kubefusion-operator'
        env = {k: v for k, v in os.environ.items() if not k.startswith('KUBEFUSION_OPERATOR_')}
        env.update(KUBECONFIG=str(self.kubeconfig), NO_PROXY='127.0.0.1',
                   KUBEFUSION_OPERATOR_BACKEND_RETRY_MAX_SECONDS='1', **self.env)
        with self.log.open('ab') as log:
            self.process = subprocess.Popen(
                [script, '--liveness', f'http://127.0.0.1:{self.liveness_port}/healthz',
                 '--metrics-port', str(self.metrics_port), '--metrics-address', '127.0.0.1',
                 '--progress-port', str(self.progress_port), '--progress-address', '127.0.0.1',
                 '--backend-retry-seconds', '0.5', '--resync-seconds', str(self.resync_seconds), *self.args],
                env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                return requests.get(f'http://127.0.0.1:{self.liveness_port}/healthz', timeout=1).ok
            except requests.RequestException:
                return False
        wait_for(healthy, timeout, 'the operator to report healthy')

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.metrics_port, self.liveness_port, self.progress_port = free_ports(3)  # the old process's ports may linger in TIME_WAIT
        self.start()

    def reconciliations(self) -> float:
        return self.metrics().get('kubefusion_operator_reconcile_duration_seconds_count', 0.0)

    def wait_resync(self, timeout: float = 20) -> None:
        """Return once a reconciliation has finished after a whole resync period from now: every job has been
        reconciled again since the call, so a negative check ("nothing changed") afterwards means something."""
        time.sleep(self.resync_seconds)
        self.wait_reconciled_since(self.reconciliations(), timeout)

    def wait_reconciled_since(self, seen: float, timeout: float = 20) -> None:
        """Wait until a reconciliation or status mirroring has finished since the count was ``seen``."""
        wait_for(lambda: self.reconciliations() > seen, timeout, f'a reconciliation after the {seen:.0f}th')

    def metrics(self) -> dict[str, float]:
        """The scraped samples, by their full name with labels: ``name{label="value"}``."""
        from prometheus_client.parser import text_string_to_metric_families
        text = requests.get(f'http://127.0.0.1:{self.metrics_port}/metrics', timeout=5).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ','.join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f'{sample.name}{{{labels}}}' if labels else sample.name] = sample.value
        return samples

    def tail(self, lines: int = 60) -> str:
        return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:]) if self.log.exists() else ''


