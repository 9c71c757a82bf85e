"""A test's view of its namespace on the control plane: typed helpers over the official client and kubectl."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import kubernetes

from kube_harness import wait_for

EXIT_CODE_ANNOTATION = 'kwok.kubefusion.io/exit-code'  # cluster/kwok/pod-stages.yaml

MTJ = ('kubefusion.io', 'v1alpha1', 'multimodaltrainjobs')
PYTORCHJOB = ('kubeflow.org', 'v1', 'pytorchjobs')
WORKLOAD = ('kueue.x-k8s.io', 'v1beta2', 'workloads')  # Kueue's (the CRD from its module, no controller)
JOB_NAME_LABEL = 'training.kubeflow.org/job-name'  # the training operator's label on the pods it makes


class Namespace:
    """One namespace of the control plane (``cp``: a ``controlplane.ControlPlane`` or an external cluster),
    seen as admin."""

    def __init__(self, cp: Any, name: str, client: kubernetes.client.ApiClient) -> None:
        self.cp, self.name = cp, name
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl('-n', self.name, *args, check=check, input=input)

    # ------------------------------------------------------------------------------- MultimodalTrainJobs

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(*MTJ[:2], self.name, MTJ[2], body)

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*MTJ[:2], self.name, MTJ[2], name)

    def jobs(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(*MTJ[:2], self.name, MTJ[2])['items']

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(*MTJ[:2], self.name, MTJ[2], name, patch)

    def delete_job(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*MTJ[:2], self.name, MTJ[2], name)

    def phase(self, name: str) -> str | None:
        return (self.job(name).get('status') or {}).get('phase')

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: self.phase(name) == phase and self.job(name), timeout, f'{self.name}/{name} to be {phase}')

    # ------------------------------------------------------------------------------------------ children

    def pytorchjob(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*PYTORCHJOB[:2], self.name, PYTORCHJOB[2], name)

    def pytorchjobs(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(*PYTORCHJOB[:2], self.name, PYTORCHJOB[2])['items']

    def configmaps(self) -> list[Any]:
        return [c for c in self.core.list_namespaced_config_map(self.name).items
                if c.metadata.name != 'kube-root-ca.crt']  # the one every namespace gets

    def pods(self, job: str | None = None) -> list[Any]:
        selector = f'{JOB_NAME_LABEL}={job}' if job else JOB_NAME_LABEL
        return self.core.list_namespaced_pod(self.name, label_selector=selector).items

    def services(self, job: str | None = None) -> list[Any]:
        selector = f'{JOB_NAME_LABEL}={job}' if job else JOB_NAME_LABEL
        return self.core.list_namespaced_service(self.name, label_selector=selector).items

    def running_pods(self, job: str, count: int, timeout: float = 60) -> list[Any]:
        """Wait until the training operator's ``count`` pods of ``job`` run on fake GPU nodes."""
        return wait_for(lambda: len(pods := [p for p in self.pods(job) if p.status.phase == 'Running']) == count
                        and pods, timeout, f'{count} running pods of {job}')

    def end_pods(self, job: str, exit_code: int = 0, *, replica: str | None = None) -> None:
        """Make the containers of ``job``'s pods (only the ``replica`` type's, e.g. ``master``) exit, all in one
        request (Kubeflow deletes the other pods as soon as the master has succeeded)."""
        selector = f'{JOB_NAME_LABEL}={job}' + (f',training.kubeflow.org/replica-type={replica}' if replica else '')
        self.kubectl('annotate', 'pod', '-l', selector, '--overwrite', f'{EXIT_CODE_ANNOTATION}={exit_code}')

    def workload_for(self, job: str) -> str:
        """What Kueue does for a queued job: a Workload owned by its PyTorchJob (Kueue's own controller is not
        running here). Returns its name; read ``spec.active`` with :meth:`workload_active`."""
        owner = wait_for(lambda: self.pytorchjob(job), what=f'the PyTorchJob {job}')['metadata']
        name = f'pytorchjob-{job}'
        self.custom.create_namespaced_custom_object(*WORKLOAD[:2], self.name, WORKLOAD[2], {
            'apiVersion': '/'.join(WORKLOAD[:2]), 'kind': 'Workload',
            'metadata': {'name': name, 'ownerReferences': [
                {'apiVersion': 'kubeflow.org/v1', 'kind': 'PyTorchJob', 'name': job, 'uid': owner['uid'],
                 'controller': True, 'blockOwnerDeletion': True}]},
            'spec': {'queueName': owner['labels']['kueue.x-k8s.io/queue-name'], 'podSets': [
                {'name': 'master', 'count': 1, 'template': {'spec': {'containers': [{'name': 'pytorch',
                                                                                     'image': 'x'}]}}}]}})
        return name

    def workload_active(self, name: str) -> bool | None:
        return self.custom.get_namespaced_custom_object(*WORKLOAD[:2], self.name, WORKLOAD[2], name)['spec'].get(
            'active')

    def events(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.name).items if e.involved_object.name == name]

    def table(self, *args: str) -> list[dict[str, str]]:
        """``kubectl get ARGS`` as a user reads it: one dict per row, keyed by column header (cells are cut at
        the header's position, so empty cells stay empty)."""
        lines = self.kubectl('get', *args).stdout.splitlines()
        starts = [m.start() for m in re.finditer(r'\S+', lines[0])]
        heads = lines[0].split()
        bounds = list(zip(starts, starts[1:] + [None]))
        return [{h: line[a:b].strip() for h, (a, b) in zip(heads, bounds)} for line in lines[1:]]

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl('get', *args, '-o', 'json').stdout)
