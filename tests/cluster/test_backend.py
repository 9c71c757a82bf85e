"""A cluster without Kubeflow yet, installed with ``kubectl apply -k manifests/``: a job applied before the
PyTorchJob CRD exists says BackendUnavailable and what to install, and runs once the training operator is
installed, with no restart of the operator. A control plane of its own (the session's has Kubeflow already)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_harness import REPO, OperatorProcess, condition, job_body, wait_for

from .conftest import OPERATOR_ACCOUNT, RELEASE_NAMESPACE, control_plane_or_skip, make_namespace


@pytest.fixture()
def bare_control_plane(tmp_path: Path) -> Iterator:
    cp = control_plane_or_skip(tmp_path / 'control-plane', nodes=2)
    yield cp
    cp.stop()


@pytest.mark.slow
def test_kustomize_install_then_a_job_before_kubeflow_waits_and_runs_once_it_is_installed(
        bare_control_plane, tmp_path: Path) -> None:
    cp = bare_control_plane
    applied = cp.kubectl('apply', '-k', str(REPO / 'manifests')).stdout
    assert 'customresourcedefinition.apiextensions.k8s.io/multimodaltrainjobs.kubefusion.io created' in applied
    assert 'clusterrole.rbac.authorization.k8s.io/kubefusion-operator created' in applied
    cp.wait_established('multimodaltrainjobs.kubefusion.io')
    cp.kubectl('-n', RELEASE_NAMESPACE, 'scale', 'deployment', '--all', '--replicas=0')  # it runs out of cluster
    deployment = json.loads(cp.kubectl('-n', RELEASE_NAMESPACE, 'get', 'deployment', '-o', 'json').stdout)
    (container,) = deployment['items'][0]['spec']['template']['spec']['containers']
    token = cp.service_account_kubeconfig(RELEASE_NAMESPACE, OPERATOR_ACCOUNT, tmp_path / 'operator.kubeconfig')
    ns = make_namespace(cp, 'ml-team')
    operator = OperatorProcess(token, tmp_path / 'operator.log',
                               env={e['name']: e['value'] for e in container.get('env', []) if 'value' in e})
    operator.start()
    try:
        ns.create_job(job_body('early'))
        waiting = wait_for(lambda: condition(ns.job('early'), 'BackendAvailable') and ns.job('early'),
                           what='BackendAvailable condition')
        backend = condition(waiting, 'BackendAvailable')
        assert backend['status'] == 'False' and backend['reason'] == 'BackendUnavailable'
        assert 'kubeflow.org/v1 PyTorchJob is not served' in backend['message']
        assert 'kubectl apply' in backend['message']
        assert waiting['status']['phase'] == 'Pending' and waiting['status']['reason'] == 'BackendUnavailable'
        wait_for(lambda: any(e.reason == 'BackendUnavailable' and e.type == 'Warning' for e in ns.events('early')),
                 what='the BackendUnavailable Event')

        cp.install_training_operator()
        ns.running_pods('early', 2, timeout=90)
        running = ns.wait_phase('early', 'Running')
        assert condition(running, 'BackendAvailable')['status'] == 'True'
        assert operator.process is not None and operator.process.poll() is None  # never restarted
        assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="BackendUnavailable"}'] >= 1
    finally:
        operator.stop()
