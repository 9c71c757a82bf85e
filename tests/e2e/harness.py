"""Helpers of the emulator tests: the emulated cluster as a test sees it and a simulated Kubeflow controller
(the operator process and polling are shared with tests/cluster, in tests/kube_harness.py)."""

from __future__ import annotations

import copy
import time
from typing import Any

import kubernetes
import yaml

from kube_harness import REPO, OperatorProcess, condition, job_body, wait_for  # noqa: F401  (re-exported)

from .emulator import EmulatorThread

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
