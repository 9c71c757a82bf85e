"""manifests/rbac.yaml is enough for the operator's whole job, and every rule in it is used."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from .harness import REPO, Cluster, OperatorProcess, job_body, wait_for

TOKEN = 'system:serviceaccount:kubefusion-system:kubefusion-operator'
ONLY_FOR_ADMISSION = {('kubefusion.io/multimodaltrainjobs/finalizers', 'update')}
"""Checked by the OwnerReferencesPermissionEnforcement admission plugin (blockOwnerDeletion), not by requests."""
PROGRESS_REPORTS = {('authentication.k8s.io/tokenreviews', 'create'), ('/pods', 'get')}
"""Checking a progress report's token: the emulator has neither TokenReviews nor pods; a real API server does
(the cluster tier's progress tests)."""


def rbac_documents() -> dict[str, dict]:
    return {d['kind']: d for d in yaml.safe_load_all((REPO / 'manifests' / 'rbac.yaml').read_text()) if d}


def test_rbac_binds_the_operator_service_account() -> None:
    documents = rbac_documents()
    account = documents['ServiceAccount']['metadata']
    assert (account['name'], account['namespace']) == ('kubefusion-operator', 'kubefusion-system')
    binding = documents['ClusterRoleBinding']
    assert binding['roleRef'] == {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'ClusterRole',
                                  'name': documents['ClusterRole']['metadata']['name']}
    assert binding['subjects'] == [{'kind': 'ServiceAccount', 'name': 'kubefusion-operator',
                                    'namespace': 'kubefusion-system'}]
    for document in documents.values():
        kubernetes_validate.validate(document, '1.28.0', strict=True)
    for rule in documents['ClusterRole']['rules']:
        assert '*' not in rule['verbs'] + rule['resources'] + rule['apiGroups']
        assert 'delete' not in rule['verbs']


def test_operator_does_everything_within_its_cluster_role_and_uses_all_of_it(
        bare_cluster: Cluster, tmp_path: Path) -> None:
    cluster = bare_cluster
    emulator = cluster.api.emulator
    assert emulator is not None
    rules = rbac_documents()['ClusterRole']['rules']
    cluster.api.call(lambda em: em.roles.__setitem__(TOKEN, rules))
    operator = OperatorProcess(cluster.api.write_kubeconfig(tmp_path / 'operator-kubeconfig', token=TOKEN),
                               tmp_path / 'operator.log')
    operator.start()
    try:
        cluster.create_job(job_body('early'))  # before Kubeflow: discovery, BackendUnavailable, CRD watch
        wait_for(lambda: (cluster.job('early').get('status') or {}).get('reason') == 'BackendUnavailable',
                 what='BackendUnavailable')
        cluster.install_kubeflow()
        wait_for(lambda: cluster.pytorchjob('early'), what='the PyTorchJob')
        cluster.kubeflow_reports('early', 'Created', 'Running')
        cluster.wait_phase('early', 'Running')
        cluster.patch_job('early', {'spec': {'runPolicy': {'suspend': True}}})
        wait_for(lambda: cluster.pytorchjob('early')['spec']['runPolicy']['suspend'] is True, what='suspend')
        orphan = {'metadata': {'name': 'late-config', 'labels': {'kubefusion.io/job-name': 'late'}}, 'data': {}}
        cluster.core.create_namespaced_config_map('ml-team', orphan)
        cluster.create_job(job_body('late'))  # its ConfigMap, made for it, exists already: adopted and patched
        wait_for(lambda: cluster.core.read_namespaced_config_map('late-config', 'ml-team').metadata.owner_references,
                 what='adoption')
        wait_for(lambda: any(e.reason == 'Created' for e in cluster.events('early')), what='an Event')
        # A queued job suspended: its Kueue Workload is found (list) and deactivated (patch).
        cluster.install_kueue()
        cluster.create_job(job_body('queued', scheduling={'queue': 'team-a'}))
        workload = cluster.kueue_admits(wait_for(lambda: cluster.pytorchjob('queued'), what='queued PyTorchJob'))
        cluster.patch_job('queued', {'spec': {'runPolicy': {'suspend': True}}})
        wait_for(lambda: cluster.workload(workload['metadata']['name'])['spec'].get('active') is False,
                 what='the Workload deactivated')
        # Trainer v2 joins: a job on the TrainJob backend reads the runtime, creates the TrainJob, mirrors it and
        # patches its spec.suspend.
        cluster.install_trainer()
        cluster.create_job(job_body('trainer', backend='TrainJob'))
        wait_for(lambda: cluster.trainjob('trainer'), what='the TrainJob')
        cluster.trainer_reports('trainer', active=1, ready=1)
        cluster.wait_phase('trainer', 'Running')
        cluster.patch_job('trainer', {'spec': {'runPolicy': {'suspend': True}}})
        wait_for(lambda: cluster.trainjob('trainer')['spec']['suspend'] is True, what='the TrainJob suspended')
    finally:
        operator.stop()

    assert emulator.denied == [], operator.tail()
    used = {(resource, verb) for token, _, verb, resource in emulator.authorized if token == TOKEN}
    granted = {(f'{group}/{resource}', verb) for rule in rules for group in rule['apiGroups']
               for resource in rule['resources'] for verb in rule['verbs']}
    assert granted - used == ONLY_FOR_ADMISSION | PROGRESS_REPORTS
