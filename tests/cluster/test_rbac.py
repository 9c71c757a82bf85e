"""The chart's RBAC on a real API server: the operator, as the chart's ServiceAccount (a TokenRequest token, never
admin), does its whole job with it (the audit log shows no request it was denied, and every rule in use), and
it can do nothing more (it cannot read Secrets, create pods, delete anything, ...)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from kube_harness import REPO, job_body, wait_for

from .conftest import OPERATOR_USER, Installed, local_only
from .kube import Namespace

ONLY_FOR_ADMISSION = {('kubefusion.io/multimodaltrainjobs/finalizers', 'update')}
"""Checked by the OwnerReferencesPermissionEnforcement admission plugin (blockOwnerDeletion), not by requests."""
PROGRESS_REPORTS = {('authentication.k8s.io/tokenreviews', 'create'), ('/pods', 'get')}
"""Used when a trainer posts a progress report, which this scenario does not do."""
DELAYED_RETRIES = {('kubefusion.io/multimodaltrainjobs', 'patch')}
"""kopf wakes a handler it retries later (a backend not installed yet, a ChildConflict) by touching the job's
annotations; nothing else patches a job (kopf's bookkeeping stays in memory), and nothing here is retried."""


def rules() -> list[dict]:
    (role,) = [d for d in yaml.safe_load_all((REPO / 'manifests' / 'rbac.yaml').read_text())
               if d and d['kind'] == 'ClusterRole']
    return role['rules']


def requests_since(control_plane, since: str) -> list[dict]:
    return [e for e in control_plane.audit_events(OPERATOR_USER) if e['requestReceivedTimestamp'] >= since]


def resource(event: dict) -> str:
    ref = event.get('objectRef') or {}
    name = ref.get('resource', '') + (f"/{ref['subresource']}" if ref.get('subresource') else '')
    return f"{ref.get('apiGroup', '')}/{name}"


@pytest.fixture()
def trainer_and_kueue_crds(control_plane) -> None:
    """Kubeflow Trainer's and Kueue's CRDs (from their modules) and kubefusion's ClusterTrainingRuntime: what the
    operator reads and writes on those paths, without their controllers."""
    trainer = control_plane.manifests('trainer') / 'base' / 'crds'
    for crd in ('trainer.kubeflow.org_trainjobs.yaml', 'trainer.kubeflow.org_clustertrainingruntimes.yaml'):
        control_plane.apply(*yaml.safe_load_all((trainer / crd).read_text()))
    control_plane.apply(*yaml.safe_load_all(
        (control_plane.manifests('kueue') / 'crd' / 'bases' / 'kueue.x-k8s.io_workloads.yaml').read_text()))
    for crd in ('trainjobs.trainer.kubeflow.org', 'clustertrainingruntimes.trainer.kubeflow.org',
                'workloads.kueue.x-k8s.io'):
        control_plane.wait_established(crd)
    control_plane.apply(*[d for d in yaml.safe_load_all((REPO / 'manifests' / 'trainjob' / 'runtime.yaml').read_text())
                          if d])


@pytest.mark.slow
def test_the_charts_role_is_enough_for_the_whole_job_and_all_of_it_is_used(
        control_plane, installed: Installed, namespace: Namespace, trainer_and_kueue_crds: None,
        tmp_path: Path) -> None:
    local_only(control_plane, 'its audit log is not readable from here')
    ns = namespace
    since = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S')
    operator = installed.operator(tmp_path / 'operator.log')
    try:
        # A job runs through Kubeflow, is suspended (its PyTorchJob patched), and posts Events.
        ns.create_job(job_body('run'))
        ns.running_pods('run', 2)
        ns.wait_phase('run', 'Running')
        ns.patch_job('run', {'spec': {'runPolicy': {'suspend': True}}})
        ns.wait_phase('run', 'Suspended')
        wait_for(lambda: any(e.reason == 'Created' for e in ns.events('run')), what='an Event')
        # A ConfigMap made for a job before it existed is adopted and filled.
        ns.core.create_namespaced_config_map(ns.name, {'metadata': {'name': 'late-config',
                                                                    'labels': {'kubefusion.io/job-name': 'late'}}})
        ns.create_job(job_body('late', nodes=1))
        wait_for(lambda: ns.core.read_namespaced_config_map('late-config', ns.name).metadata.owner_references,
                 what='adoption')
        # A queued job's Kueue Workload (made here as Kueue would) is found and deactivated on suspend.
        ns.create_job(job_body('queued', nodes=1, scheduling={'queue': 'team-a'}))
        workload = ns.workload_for('queued')
        ns.patch_job('queued', {'spec': {'runPolicy': {'suspend': True}}})
        wait_for(lambda: ns.workload_active(workload) is False, what='the Workload deactivated')
        # The TrainJob backend: the runtime is read, the TrainJob created, watched and suspended.
        imageless = job_body('trainer', backend='TrainJob', nodes=1)
        del imageless['spec']['image']  # a TrainJob runs its runtime's image
        ns.create_job(imageless)
        trainjob = ('trainer.kubeflow.org', 'v1alpha1', 'trainjobs')
        wait_for(lambda: ns.custom.get_namespaced_custom_object(*trainjob[:2], ns.name, trainjob[2], 'trainer'),
                 what='the TrainJob')
        ns.patch_job('trainer', {'spec': {'runPolicy': {'suspend': True}}})
        wait_for(lambda: ns.custom.get_namespaced_custom_object(*trainjob[:2], ns.name, trainjob[2], 'trainer')
                 ['spec'].get('suspend') is True, what='the TrainJob suspended')
    finally:
        operator.stop()

    requests = requests_since(control_plane, since)
    denied = [(e['verb'], resource(e)) for e in requests
              if e.get('annotations', {}).get('authorization.k8s.io/decision') == 'forbid']
    assert denied == [], operator.tail()
    used = {(resource(e), e['verb']) for e in requests}
    granted = {(f'{group}/{res}', verb) for rule in rules() for group in rule['apiGroups']
               for res in rule['resources'] for verb in rule['verbs']}
    assert granted - used == ONLY_FOR_ADMISSION | PROGRESS_REPORTS | DELAYED_RETRIES
    assert not [e for e in requests if 'system:masters' in e.get('user', {}).get('groups', [])]


@pytest.mark.parametrize('verb, what, where', [
    ('get', 'secrets', '-A'), ('list', 'secrets', '-A'), ('create', 'pods', '-n=default'),
    ('list', 'pods', '-A'), ('delete', 'pods', '-A'), ('delete', 'pytorchjobs.kubeflow.org', '-A'),
    ('delete', 'configmaps', '-A'), ('create', 'multimodaltrainjobs.kubefusion.io', '-A'),
    ('delete', 'multimodaltrainjobs.kubefusion.io', '-A'), ('list', 'configmaps', '-A'),
    ('list', 'namespaces', ''), ('create', 'deployments.apps', '-A'), ('create', 'clusterrolebindings', ''),
    ('create', 'serviceaccounts/token', '-A'), ('impersonate', 'serviceaccounts', '-A'),
])
def test_the_operator_can_do_nothing_more(control_plane, installed: Installed, verb: str, what: str,
                                          where: str) -> None:
    done = control_plane.kubectl('auth', 'can-i', verb, what, *([where] if where else []),
                                 kubeconfig=installed.operator_kubeconfig, check=False)
    assert done.stdout.strip() == 'no', (verb, what, done.stdout, done.stderr)


def test_what_it_may_do_it_can(control_plane, installed: Installed) -> None:
    # (kubectl reads TYPE/NAME as a named object: a subresource is asked for with --subresource)
    for verb, what, *sub in (('create', 'pytorchjobs.kubeflow.org'),
                             ('patch', 'multimodaltrainjobs.kubefusion.io', '--subresource=status'),
                             ('create', 'events'), ('get', 'pods')):
        done = control_plane.kubectl('auth', 'can-i', verb, what, *sub, '-A',
                                     kubeconfig=installed.operator_kubeconfig, check=False)
        assert done.stdout.strip() == 'yes', (verb, what, *sub)
