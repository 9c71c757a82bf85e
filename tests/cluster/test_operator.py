"""The operator's contract on a real control plane: what it creates and never creates twice, what it refuses and
how it says so, how it treats objects it did not make, and the API's own refusals (a ResourceQuota's 403, an
admission policy's 422), all produced by kube-apiserver, the garbage collector and Kubeflow's training operator
rather than simulated."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from kube_harness import OperatorProcess, condition, job_body, wait_for

from .conftest import Installed, helm, make_namespace, retire
from .kube import Namespace
from .test_lifecycle import started

CHART_TRAINER_IMAGE = 'kubefusion/kubefusion-trainer:0.1.0'  # the chart's default trainer.image


def images(pods: list) -> set[str]:
    """The images of kubefusion's containers (Kubeflow adds an init container of its own to Worker pods)."""
    return {c.image for p in pods for c in p.spec.containers + p.spec.init_containers
            if c.name in ('pytorch', 'preprocess')}


@pytest.mark.slow
def test_finished_job_keeps_its_outcome_when_kubeflow_removes_the_pytorchjob(
        namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'brief', runPolicy={'ttlSecondsAfterFinished': 1})
    ns.end_pods('brief', 0)
    done = ns.wait_phase('brief', 'Succeeded')
    wait_for(lambda: ns.pytorchjobs() == [], timeout=30, what='Kubeflow to delete the finished PyTorchJob (TTL)')
    reasons = {e.reason for e in ns.events('brief')}
    assert {'Created', 'Succeeded'} <= reasons
    metrics = operator.metrics()
    assert metrics['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 1
    # A finished job is not resynced, and a restart (resume) creates nothing again.
    seen = operator.reconciliations()
    time.sleep(2 * operator.resync_seconds)  # waiting for something that must not happen
    assert operator.reconciliations() == seen
    operator.restart()
    operator.wait_reconciled_since(0)
    after = ns.job('brief')['status']
    assert ns.pytorchjobs() == [] and (after['phase'], after['reason']) == ('Succeeded', done['status']['reason'])


@pytest.mark.slow
def test_a_queue_suspending_the_pytorchjob_is_shown_not_undone(namespace: Namespace,
                                                                operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'held')
    # Kueue preempts: it suspends the PyTorchJob itself; Kubeflow stops the pods; the job shows it.
    ns.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', ns.name, 'pytorchjobs', 'held',
                                             {'spec': {'runPolicy': {'suspend': True}}})
    suspended = ns.wait_phase('held', 'Suspended')
    assert suspended['status']['reason'] == 'PyTorchJobSuspended'
    operator.wait_resync()
    assert ns.pytorchjob('held')['spec']['runPolicy']['suspend'] is True  # not undone
    # A mutable limit changes without touching the queue's suspend.
    ns.patch_job('held', {'spec': {'runPolicy': {'backoffLimit': 7}}})
    wait_for(lambda: ns.pytorchjob('held')['spec']['runPolicy']['backoffLimit'] == 7, what='backoffLimit')
    assert ns.pytorchjob('held')['spec']['runPolicy']['suspend'] is True


def test_what_only_the_operator_checks_is_refused_with_a_condition(namespace: Namespace,
                                                                   operator: OperatorProcess) -> None:
    ns = namespace
    ns.create_job(job_body('climber', data={'source': {'persistentVolumeClaim': {'claimName': 'datasets'}},
                                            'path': '../elsewhere/'}))
    refused = wait_for(lambda: (c := condition(ns.job('climber'), 'SpecValid')).get('status') == 'False' and c,
                       what='SpecValid=False')
    assert refused['reason'] == 'InvalidSpec' and 'spec.data.path' in refused['message']
    assert ns.job('climber')['status']['phase'] == 'Pending' and ns.pytorchjobs() == [] and ns.configmaps() == []
    wait_for(lambda: any(e.reason == 'InvalidSpec' and e.type == 'Warning' for e in ns.events('climber')),
             what='the InvalidSpec Event')


@pytest.mark.slow
def test_a_job_without_image_runs_the_default_and_keeps_it_and_without_a_default_is_refused(
        namespace: Namespace, installed: Installed, tmp_path: Path) -> None:
    ns = namespace
    body = job_body('imageless')
    del body['spec']['image']
    operator = installed.operator(tmp_path / 'operator.log')  # the chart's default trainer image
    try:
        ns.create_job(body)
        pods = ns.running_pods('imageless', 2)
        assert images(pods) == {CHART_TRAINER_IMAGE}
        assert 'image' not in ns.job('imageless')['spec']  # the user's spec is left as written
        operator.stop()
        # A chart upgrade with a new default serves new jobs; the running one keeps its image.
        operator.env['KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE'] = 'kubefusion/kubefusion-trainer:0.2.0'
        operator.restart()
        body['metadata']['name'] = 'later'
        ns.create_job(body)
        later = wait_for(lambda: ns.pytorchjob('later'), what='the later PyTorchJob')
        assert 'kubefusion-trainer:0.2.0' in json.dumps(later['spec'])
        operator.wait_resync()
        assert CHART_TRAINER_IMAGE in json.dumps(ns.pytorchjob('imageless')['spec'])
        # No default at all: refused, saying which settings would give one.
        operator.stop()
        del operator.env['KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE']
        operator.restart()
        body['metadata']['name'] = 'nodefault'
        ns.create_job(body)
        refused = wait_for(lambda: (c := condition(ns.job('nodefault'), 'SpecValid')).get('status') == 'False' and c,
                           what='InvalidSpec')
        assert refused['message'].startswith('spec.image: is required')
        assert 'KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE' in refused['message']
    finally:
        operator.stop()


@pytest.mark.slow
def test_hundred_jobs_make_exactly_hundred_pytorchjobs(namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    for i in range(100):  # suspended: Kubeflow makes no pods, 100 jobs would not fit on 4 fake nodes
        ns.create_job(job_body(f'job-{i:03d}', nodes=1 + i % 3, suspend=True))
    wait_for(lambda: len(ns.pytorchjobs()) == 100, timeout=120, what='100 PyTorchJobs')
    wait_for(lambda: all((j.get('status') or {}).get('pytorchJob') for j in ns.jobs()), timeout=60,
             what='100 statuses')
    operator.wait_resync()
    assert sorted(p['metadata']['name'] for p in ns.pytorchjobs()) == [f'job-{i:03d}' for i in range(100)]
    assert len(ns.configmaps()) == 100
    assert operator.metrics()['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 100


def test_a_child_the_api_refuses_is_reported_not_retried_forever(control_plane, namespace: Namespace,
                                                                 operator: OperatorProcess) -> None:
    # An admission policy of the cluster's (a ValidatingAdmissionPolicy, in the API server itself) says no: 422.
    ns = namespace
    name = f'{ns.name}-no-pytorchjobs'
    control_plane.apply(
        {'apiVersion': 'admissionregistration.k8s.io/v1', 'kind': 'ValidatingAdmissionPolicy',
         'metadata': {'name': name},
         'spec': {'failurePolicy': 'Fail', 'matchConstraints': {'resourceRules': [
             {'apiGroups': ['kubeflow.org'], 'apiVersions': ['v1'], 'operations': ['CREATE'],
              'resources': ['pytorchjobs']}]},
             'validations': [{'expression': "object.spec.nprocPerNode != '4'", 'reason': 'Invalid',
                              'message': 'nprocPerNode 4 is not allowed in this namespace'}]}},
        {'apiVersion': 'admissionregistration.k8s.io/v1', 'kind': 'ValidatingAdmissionPolicyBinding',
         'metadata': {'name': name},
         'spec': {'policyName': name, 'validationActions': ['Deny'], 'matchResources': {'namespaceSelector': {
             'matchLabels': {'kubernetes.io/metadata.name': ns.name}}}}})
    try:
        wait_for(lambda: 'denied' in ns.kubectl('create', '--dry-run=server', '-f', '-', check=False, input=json.dumps(
            {'apiVersion': 'kubeflow.org/v1', 'kind': 'PyTorchJob', 'metadata': {'name': 'probe'},
             'spec': {'nprocPerNode': '4', 'pytorchReplicaSpecs': {'Master': {'replicas': 1, 'template': {
                 'spec': {'containers': [{'name': 'pytorch', 'image': 'x'}]}}}}}})).stderr,
                 what='the policy to be in force')
        ns.create_job(job_body('refused'))
        rejected = wait_for(lambda: (c := condition(ns.job('refused'), 'SpecValid')).get('status') == 'False' and c,
                            what='ChildRejected')
        assert rejected['reason'] == 'ChildRejected'
        assert 'nprocPerNode 4 is not allowed in this namespace' in rejected['message']
        assert ns.pytorchjobs() == []
        assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ApiError422"}'] >= 1
    finally:
        control_plane.kubectl('delete', 'validatingadmissionpolicybinding,validatingadmissionpolicy', name,
                              check=False)


def test_a_full_quota_is_retried_not_reported_as_a_bad_spec(namespace: Namespace,
                                                             operator: OperatorProcess) -> None:
    ns = namespace
    quota = {'apiVersion': 'v1', 'kind': 'ResourceQuota', 'metadata': {'name': 'jobs', 'namespace': ns.name},
             'spec': {'hard': {'count/pytorchjobs.kubeflow.org': '0'}}}
    ns.cp.apply(quota, server_side=False)
    wait_for(lambda: ns.core.read_namespaced_resource_quota('jobs', ns.name).status.hard, what='the quota counted')
    ns.create_job(job_body('capped'))
    forbidden = wait_for(lambda: (c := condition(ns.job('capped'), 'ChildrenReady')).get('reason')
                         == 'ChildCreationForbidden' and c, what='ChildCreationForbidden')
    assert forbidden['status'] == 'False' and 'exceeded quota' in forbidden['message']
    assert condition(ns.job('capped'), 'SpecValid').get('status') != 'False'
    ns.cp.apply({**quota, 'spec': {'hard': {'count/pytorchjobs.kubeflow.org': '5'}}}, server_side=False)
    wait_for(lambda: ns.pytorchjob('capped'), timeout=60, what='the PyTorchJob once the quota allows it')
    wait_for(lambda: condition(ns.job('capped'), 'ChildrenReady').get('status') == 'True', what='ChildrenReady')
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ChildCreationForbidden"}'] >= 1


@pytest.mark.slow
def test_a_namespaced_install_serves_its_namespaces_only(control_plane, installed: Installed,
                                                          tmp_path: Path) -> None:
    """The chart with operator.watchNamespaces: a Role in each watched namespace, and the operator, run as that
    release's ServiceAccount with the release's --namespace flags, leaves the other namespaces alone."""
    mine, theirs = make_namespace(control_plane, 'team-mine'), make_namespace(control_plane, 'team-theirs')
    helm(control_plane, 'install', 'team', str(Path(__file__).parents[2] / 'charts' / 'kubefusion'), '--namespace',
         'team-ops', '--create-namespace', '--set', 'operator.watchNamespaces={team-mine}')
    try:
        control_plane.kubectl('-n', 'team-ops', 'scale', 'deployment', '--all', '--replicas=0')
        token = control_plane.service_account_kubeconfig('team-ops', 'team-kubefusion-operator',
                                                         tmp_path / 'team.kubeconfig')
        assert control_plane.kubectl('auth', 'can-i', 'create', 'pytorchjobs.kubeflow.org', '-n', 'team-theirs',
                                     kubeconfig=token, check=False).stdout.strip() == 'no'
        deployment = json.loads(control_plane.kubectl('-n', 'team-ops', 'get', 'deployment', '-o', 'json').stdout)
        (container,) = deployment['items'][0]['spec']['template']['spec']['containers']
        namespaces = [a for a in container['args'] if a.startswith('--namespace')]
        assert namespaces == ['--namespace=team-mine']
        operator = OperatorProcess(token, tmp_path / 'operator.log', *namespaces,
                                   env={e['name']: e['value'] for e in container.get('env', []) if 'value' in e})
        operator.start()
        try:
            mine.create_job(job_body('ours', nodes=1))
            theirs.create_job(job_body('other', nodes=1))
            wait_for(lambda: mine.pytorchjob('ours'), what='the watched namespace to be served')
            operator.wait_resync()
            assert theirs.pytorchjobs() == [] and 'status' not in theirs.job('other')
        finally:
            operator.stop()
    finally:
        helm(control_plane, 'uninstall', 'team', '--namespace', 'team-ops')
        retire(control_plane, mine.name)
        retire(control_plane, theirs.name)


def earlier_runs_pytorchjob(ns: Namespace, name: str) -> None:
    """What a deleted job of the same name leaves while garbage collection waits on it: its PyTorchJob, owned by
    a uid that no longer exists and held by a finalizer (the garbage collector has marked it for deletion)."""
    old_spec = job_body(name, nodes=1)['spec']
    ns.custom.create_namespaced_custom_object('kubeflow.org', 'v1', ns.name, 'pytorchjobs', {
        'apiVersion': 'kubeflow.org/v1', 'kind': 'PyTorchJob',
        'metadata': {'name': name, 'labels': {'kubefusion.io/job-name': name}, 'finalizers': ['example.com/hold'],
                     'annotations': {'kubefusion.io/applied-spec': json.dumps(old_spec)},
                     'ownerReferences': [{'apiVersion': 'kubefusion.io/v1alpha1', 'kind': 'MultimodalTrainJob',
                                          'name': name, 'uid': '0e5b9a3c-0000-4000-8000-00000000e411',
                                          'controller': True, 'blockOwnerDeletion': True}]},
        'spec': {'runPolicy': {'suspend': True}, 'pytorchReplicaSpecs': {'Master': {'replicas': 1, 'template': {
            'spec': {'containers': [{'name': 'pytorch', 'image': 'old'}]}}}}}})


@pytest.mark.slow
def test_a_recreated_job_waits_for_the_earlier_runs_pytorchjob_and_never_inherits_its_outcome(
        namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    earlier_runs_pytorchjob(ns, 'again')
    wait_for(lambda: ns.pytorchjob('again')['metadata'].get('deletionTimestamp'), timeout=60,
             what='the garbage collector to delete the orphaned PyTorchJob (held by its finalizer)')
    created = ns.create_job(job_body('again', nodes=2))
    waiting = wait_for(lambda: (c := condition(ns.job('again'), 'ChildrenReady')).get('status') == 'False' and c,
                       what='WaitingForPreviousRun')
    assert waiting['reason'] == 'WaitingForPreviousRun' and 'earlier run' in waiting['message']
    assert 'pytorchJob' not in ns.job('again')['status']
    ns.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', ns.name, 'pytorchjobs', 'again',
                                             {'metadata': {'finalizers': None}})
    ours = wait_for(lambda: (p := ns.pytorchjob('again'))['metadata']['ownerReferences'][0]['uid']
                    == created['metadata']['uid'] and p, timeout=60, what="the new run's PyTorchJob")
    assert sum(r['replicas'] for r in ours['spec']['pytorchReplicaSpecs'].values()) == 2
    ns.running_pods('again', 2)
    ns.wait_phase('again', 'Running')


@pytest.mark.slow
def test_a_run_that_finished_and_was_removed_while_the_operator_was_away_is_not_trained_again(
        namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'gone', runPolicy={'ttlSecondsAfterFinished': 0})
    operator.stop()
    ns.end_pods('gone', 0)
    wait_for(lambda: ns.pytorchjobs() == [], timeout=60, what='Kubeflow to finish and remove the PyTorchJob')
    operator.restart()
    lost = ns.wait_phase('gone', 'Failed')
    assert lost['status']['reason'] == 'PyTorchJobLost'
    assert 'delete this MultimodalTrainJob and create it again' in lost['status']['message']
    operator.restart()
    operator.wait_reconciled_since(0)
    assert ns.pytorchjobs() == [] and ns.phase('gone') == 'Failed'


def test_an_unrelated_configmap_of_the_childs_name_is_left_alone(namespace: Namespace,
                                                                  operator: OperatorProcess) -> None:
    ns = namespace
    ns.core.create_namespaced_config_map(ns.name, {'metadata': {'name': 'mine-config', 'labels': {'app': 'other'}},
                                                   'data': {'keep': 'me'}})
    ns.create_job(job_body('mine'))
    conflict = wait_for(lambda: (c := condition(ns.job('mine'), 'ChildrenReady')).get('status') == 'False' and c,
                        what='ChildConflict')
    assert conflict['reason'] == 'ChildConflict' and f'ConfigMap {ns.name}/mine-config' in conflict['message']
    operator.wait_resync()
    configmap = ns.core.read_namespaced_config_map('mine-config', ns.name)
    assert configmap.data == {'keep': 'me'} and not configmap.metadata.owner_references
    assert ns.pytorchjobs() == []


def test_a_running_jobs_configmap_is_never_rewritten_and_a_steady_job_is_not_written(
        namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'steady')
    configmap = ns.core.read_namespaced_config_map('steady-config', ns.name)
    older = configmap.data['job.yaml'].replace('products', 'products-as-an-older-operator-wrote-it')
    ns.core.patch_namespaced_config_map('steady-config', ns.name, {'data': {'job.yaml': older}})
    operator.wait_resync()
    assert ns.core.read_namespaced_config_map('steady-config', ns.name).data['job.yaml'] == older
    before = (ns.job('steady')['metadata']['resourceVersion'], ns.pytorchjob('steady')['metadata']['resourceVersion'])
    operator.wait_resync()
    assert (ns.job('steady')['metadata']['resourceVersion'],
            ns.pytorchjob('steady')['metadata']['resourceVersion']) == before


@pytest.mark.slow
def test_suspending_a_queued_job_deactivates_its_kueue_workload(control_plane, namespace: Namespace,
                                                                 operator: OperatorProcess) -> None:
    # Kueue un-suspends a job whose Workload is admitted: suspend must go through Workload.spec.active.
    ns = namespace
    crd = control_plane.manifests('kueue') / 'crd' / 'bases' / 'kueue.x-k8s.io_workloads.yaml'
    control_plane.apply(*yaml.safe_load_all(crd.read_text()))
    control_plane.wait_established('workloads.kueue.x-k8s.io')
    ns.create_job(job_body('queued', nodes=1, scheduling={'queue': 'team-a'}))
    workload = ns.workload_for('queued')

    def active() -> bool | None:
        return ns.workload_active(workload)

    ns.patch_job('queued', {'spec': {'runPolicy': {'suspend': True}}})
    wait_for(lambda: active() is False, what='the Workload deactivated')
    operator.wait_resync()
    assert active() is False
    ns.patch_job('queued', {'spec': {'runPolicy': {'suspend': False}}})
    wait_for(lambda: active() is True, what='the Workload back in the queue')


def test_the_operator_serves_liveness_and_metrics_and_stops_cleanly(installed: Installed, tmp_path: Path) -> None:
    import requests

    operator = installed.operator(tmp_path / 'operator.log')
    assert requests.get(f'http://127.0.0.1:{operator.liveness_port}/healthz', timeout=5).ok
    assert 'kubefusion_operator_reconcile_duration_seconds_count' in operator.metrics()
    process = operator.process
    operator.stop()
    assert process is not None and process.returncode == 0, operator.tail()

