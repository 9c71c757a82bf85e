"""The real operator (``kubefusion-operator``, kopf) against the API emulator, for what a real control plane
cannot produce on demand: an API server answering 500 to a create, and Kubeflow's final status write landing
while the PyTorchJob is already being deleted. Everything a real server can answer is in tests/cluster.

The test plays Kubeflow's training operator: it patches the PyTorchJob's status as Kubeflow would.
"""

from __future__ import annotations

from typing import Any

import pytest

from .harness import NAMESPACE, Cluster, OperatorProcess, job_body, wait_for


def children(cluster: Cluster, name: str) -> tuple[dict[str, Any], Any]:
    pytorchjob = wait_for(lambda: cluster.pytorchjob(name), what=f'PyTorchJob {name}')
    configmap = wait_for(lambda: cluster.core.read_namespaced_config_map(f'{name}-config', NAMESPACE),
                         what=f'ConfigMap {name}-config')
    return pytorchjob, configmap


@pytest.mark.slow
def test_api_errors_are_retried_not_lost(cluster: Cluster, operator: OperatorProcess) -> None:
    """Two 500s on the PyTorchJob create (a real API server gives none on demand): retried, one child made."""
    emulator = cluster.api.emulator
    assert emulator is not None
    emulator['post', emulator.resource('kubeflow.org', 'v1', 'pytorchjobs')][:2] << 500
    cluster.create_job(job_body('flaky'))
    wait_for(lambda: cluster.pytorchjob('flaky'), timeout=30, what='the PyTorchJob after two failures')
    assert len(cluster.pytorchjobs()) == 1
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ApiError500"}'] >= 1


def test_deleted_pytorchjob_keeps_the_outcome_its_last_state_reported(cluster: Cluster,
                                                                       operator: OperatorProcess) -> None:
    """Kubeflow writes the end while the PyTorchJob is already being deleted (a race a real control plane does not
    produce on demand): the job keeps that outcome."""
    cluster.create_job(job_body('quick'))
    children(cluster, 'quick')
    cluster.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'quick',
                                                  {'metadata': {'finalizers': ['example.com/hold']}})
    cluster.custom.delete_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'quick')
    cluster.kubeflow_reports('quick', 'Created', 'Running', 'Succeeded')
    cluster.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'quick',
                                                  {'metadata': {'finalizers': None}})
    done = cluster.wait_phase('quick', 'Succeeded')
    assert done['status']['reason'] == 'PyTorchJobSucceeded'
    operator.restart()
    operator.wait_reconciled_since(0)
    assert cluster.phase('quick') == 'Succeeded' and cluster.pytorchjobs() == []
