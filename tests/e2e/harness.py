"""Helpers of the emulator tests: the emulated cluster as a test sees it and a simulated Kubeflow controller
(the operator process and polling are shared with tests/cluster, in tests/kube_harness.py)."""

from __future__ import annotations

import time
from typing import Any

import kubernetes

from kube_harness import REPO, OperatorProcess, condition, job_body, wait_for  # noqa: F401  (re-exported)

from .emulator import EmulatorThread

MTJ = ('kubefusion.io', 'v1alpha1', 'multimodaltrainjobs')
PYTORCHJOB = ('kubeflow.org', 'v1', 'pytorchjobs')
NAMESPACE = 'ml-team'


def crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A CRD as far as the API server is concerned (scope, names, /status), for another project's kind."""
    return {
        'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
        'metadata': {'name': f'{plural}.{group}'},
        'spec': {'group': group, 'scope': 'Namespaced',
                 'names': {'kind': kind, 'plural': plural, 'singular': kind.lower(), 'listKind': f'{kind}List'},
                 'versions': [{'name': version, 'served': True, 'storage': True, 'subresources': {'status': {}},
                               'schema': {'openAPIV3Schema': {'type': 'object',
                                                              'x-kubernetes-preserve-unknown-fields': True}}}]},
    }


PYTORCHJOB_CRD = crd('kubeflow.org', 'v1', 'PyTorchJob', 'pytorchjobs')  # Kubeflow's training operator


class Cluster:
    """The emulated cluster as a test sees it: typed helpers over the official client."""

    def __init__(self, api: EmulatorThread, client: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.crds = kubernetes.client.ApiextensionsV1Api(client)

    def install_kubeflow(self) -> None:
        self.crds.create_custom_resource_definition(PYTORCHJOB_CRD)

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
