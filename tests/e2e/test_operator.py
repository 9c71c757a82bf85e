"""The real operator (``kubefusion-operator``, kopf) against the API emulator, driven by the official client.

A simulated Kubeflow training operator is the test itself: it patches the PyTorchJob's status as Kubeflow would.
"""

from __future__ import annotations

import json
import shutil
import time
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import NAMESPACE, REPO, Cluster, OperatorProcess, job_body, wait_for

KUBECTL = shutil.which('kubectl') or '/usr/bin/kubectl'


def children(cluster: Cluster, name: str) -> tuple[dict[str, Any], Any]:
    pytorchjob = wait_for(lambda: cluster.pytorchjob(name), what=f'PyTorchJob {name}')
    configmap = wait_for(lambda: cluster.core.read_namespaced_config_map(f'{name}-config', NAMESPACE),
                         what=f'ConfigMap {name}-config')
    return pytorchjob, configmap


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of that type, or {} while there is none."""
    return next((c for c in (job.get('status') or {}).get('conditions', []) if c['type'] == type_), {})


@pytest.mark.slow
def test_job_lifecycle_children_status_events_and_metrics(cluster: Cluster, operator: OperatorProcess) -> None:
    created = cluster.create_job(job_body('products'))
    pytorchjob, configmap = children(cluster, 'products')

    owner = {'apiVersion': 'kubefusion.io/v1alpha1', 'kind': 'MultimodalTrainJob', 'name': 'products',
             'uid': created['metadata']['uid'], 'controller': True, 'blockOwnerDeletion': True}
    assert pytorchjob['metadata']['ownerReferences'] == [owner]
    assert configmap.metadata.owner_references[0].uid == created['metadata']['uid']
    assert pytorchjob['metadata']['labels']['kubefusion.io/job-name'] == 'products'
    replicas = pytorchjob['spec']['pytorchReplicaSpecs']
    assert replicas['Master']['replicas'] + replicas['Worker']['replicas'] == 2
    assert pytorchjob['spec']['nprocPerNode'] == '4'
    document = configmap.data['job.yaml']
    assert 'products' in document and '/data/products' in document

    pending = cluster.wait_phase('products', 'Pending')  # created, no word from Kubeflow yet
    assert pending['status']['pytorchJob'] == 'products'
    cluster.kubeflow_reports('products', 'Created')
    cluster.wait_phase('products', 'Created')
    cluster.kubeflow_reports('products', 'Created', 'Running',
                             extra={'replicaStatuses': {'Master': {'active': 1}, 'Worker': {'active': 1}}})
    running = cluster.wait_phase('products', 'Running')
    assert running['status']['nodes'] == 2 and running['status']['gpus'] == 8
    assert running['status']['active'] == 2 and running['status']['startTime']
    assert running['status']['observedGeneration'] == 1
    cluster.kubeflow_reports('products', 'Created', 'Running', 'Succeeded',
                             extra={'completionTime': '2026-01-01T00:00:00Z'})
    done = cluster.wait_phase('products', 'Succeeded')
    assert done['status']['completionTime'] == '2026-01-01T00:00:00Z'
    assert condition(done, 'Succeeded')['status'] == 'True'
    assert condition(done, 'Running')['status'] == 'False'

    # ttlSecondsAfterFinished: Kubeflow deletes the PyTorchJob. The job stays Succeeded, nothing is re-created.
    seen = operator.reconciliations()
    cluster.custom.delete_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'products')
    operator.wait_reconciled_since(seen)  # the deletion was mirrored
    assert cluster.phase('products') == 'Succeeded' and cluster.pytorchjobs() == []

    reasons = {e.reason for e in cluster.events('products')}
    assert {'Created', 'Succeeded'} <= reasons
    metrics = operator.metrics()
    assert metrics['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 1
    assert metrics['kubefusion_operator_children_created_total{kind="ConfigMap"}'] == 1
    assert metrics['kubefusion_operator_jobs{phase="Succeeded"}'] == 1
    assert metrics['kubefusion_operator_jobs{phase="Running"}'] == 0
    assert metrics['kubefusion_operator_reconcile_duration_seconds_count'] >= 1
    # A finished job is not resynced: two resync periods pass without a reconciliation.
    seen = operator.reconciliations()
    time.sleep(2 * operator.resync_seconds)  # waiting for something that must not happen
    assert operator.reconciliations() == seen
    # A restart reconciles it once more (resume), and creates nothing.
    operator.restart()
    operator.wait_reconciled_since(0)
    assert cluster.phase('products') == 'Succeeded' and cluster.pytorchjobs() == []


def test_failed_pytorchjob_fails_the_job_with_kubeflows_reason(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('broken'))
    children(cluster, 'broken')
    cluster.kubeflow_reports('broken', 'Created', 'Running', 'Failed')
    failed = cluster.wait_phase('broken', 'Failed')
    assert failed['status']['reason'] == 'PyTorchJobFailed'
    assert 'broken is failed' in failed['status']['message']
    seen = operator.reconciliations()
    cluster.kubeflow_reports('broken', 'Created', 'Running')  # a late, stale report never revives it
    operator.wait_reconciled_since(seen)
    assert cluster.phase('broken') == 'Failed'
    assert any(e.type == 'Warning' and e.reason == 'Failed' for e in cluster.events('broken'))
    failures = {k: v for k, v in operator.metrics().items() if k.startswith('kubefusion_operator_job_failures_total')}
    assert failures == {'kubefusion_operator_job_failures_total{job_name="broken",namespace="ml-team",'
                        'reason="PyTorchJobFailed"}': 1}  # once, however often the Failed job is seen again


@pytest.mark.slow
def test_suspend_propagates_both_ways(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('held', suspend=True))
    pytorchjob, _ = children(cluster, 'held')
    assert pytorchjob['spec']['runPolicy']['suspend'] is True

    cluster.patch_job('held', {'spec': {'runPolicy': {'suspend': False}}})
    wait_for(lambda: cluster.pytorchjob('held')['spec']['runPolicy']['suspend'] is False, what='resume')
    cluster.kubeflow_reports('held', 'Created', 'Running')
    cluster.wait_phase('held', 'Running')

    # Kueue preempts: it suspends the PyTorchJob itself. The job shows it, and the operator does not undo it.
    cluster.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'held',
                                                  {'spec': {'runPolicy': {'suspend': True}}})
    cluster.kubeflow_reports('held', 'Created', 'Running', 'Suspended')
    suspended = cluster.wait_phase('held', 'Suspended')
    assert suspended['status']['reason'] == 'PyTorchJobSuspended'
    operator.wait_resync()  # still suspended, as Kueue wants
    assert cluster.pytorchjob('held')['spec']['runPolicy']['suspend'] is True

    # A mutable limit changes without touching Kueue's suspend.
    cluster.patch_job('held', {'spec': {'runPolicy': {'backoffLimit': 7}}})
    wait_for(lambda: cluster.pytorchjob('held')['spec']['runPolicy']['backoffLimit'] == 7, what='backoffLimit')
    assert cluster.pytorchjob('held')['spec']['runPolicy']['suspend'] is True


def test_delete_garbage_collects_children(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('short'))
    children(cluster, 'short')
    cluster.custom.delete_namespaced_custom_object('kubefusion.io', 'v1alpha1', NAMESPACE, 'multimodaltrainjobs',
                                                   'short')
    wait_for(lambda: cluster.pytorchjobs() == [] and cluster.configmaps() == [], what='children to be collected')
    wait_for(lambda: operator.metrics()['kubefusion_operator_jobs{phase="Pending"}'] == 0, what='gauge to drop')


@pytest.mark.slow
def test_restart_mid_flight_adopts_without_duplicates(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('long'))
    first, _ = children(cluster, 'long')
    cluster.kubeflow_reports('long', 'Created', 'Running')
    cluster.wait_phase('long', 'Running')

    operator.stop()
    # While the operator is away: Kubeflow finishes, and a ConfigMap of another job lost its owner reference.
    cluster.kubeflow_reports('long', 'Created', 'Running', 'Succeeded')
    other = cluster.create_job(job_body('other'))
    orphan = {'metadata': {'name': 'other-config', 'labels': {'kubefusion.io/job-name': 'other'}}, 'data': {}}
    cluster.core.create_namespaced_config_map(NAMESPACE, orphan)
    operator.start()

    cluster.wait_phase('long', 'Succeeded')
    adopted = wait_for(lambda: cluster.core.read_namespaced_config_map('other-config', NAMESPACE).metadata
                       .owner_references, what='adoption')
    assert adopted[0].uid == other['metadata']['uid']
    wait_for(lambda: 'job.yaml' in (cluster.core.read_namespaced_config_map('other-config', NAMESPACE).data or {}),
             what='the adopted ConfigMap to be filled')  # adoption and the data patch are two writes
    wait_for(lambda: len(cluster.pytorchjobs()) == 2, what='the other PyTorchJob')
    assert cluster.pytorchjob('long')['metadata']['uid'] == first['metadata']['uid']
    assert sorted(cm.metadata.name for cm in cluster.configmaps()) == ['long-config', 'other-config']
    metrics = operator.metrics()
    assert metrics['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 1  # only `other`'s
    assert metrics.get('kubefusion_operator_children_created_total{kind="ConfigMap"}', 0) == 0


def test_invalid_spec_is_refused_with_a_condition(cluster: Cluster, operator: OperatorProcess) -> None:
    body = job_body('bad')
    body['spec']['training'] = {'precision': 'fp8'}
    cluster.create_job(body)
    refused = wait_for(lambda: any(c['type'] == 'SpecValid' for c in
                                   (cluster.job('bad').get('status') or {}).get('conditions', [])) and cluster.job('bad'),
                       what='SpecValid condition')
    spec_valid = condition(refused, 'SpecValid')
    assert spec_valid['status'] == 'False' and spec_valid['reason'] == 'InvalidSpec'
    assert 'spec.training.precision' in spec_valid['message']
    assert refused['status']['phase'] == 'Pending' and refused['status']['reason'] == 'InvalidSpec'
    assert cluster.pytorchjobs() == []
    wait_for(lambda: any(e.reason == 'InvalidSpec' and e.type == 'Warning' for e in cluster.events('bad')),
             what='InvalidSpec event')
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="InvalidSpec"}'] >= 1


TRAINER_DEFAULT = 'registry.example.com/ml/kubefusion-trainer:2026.11.1'


def images(pytorchjob: dict[str, Any]) -> set[str]:
    return {c['image'] for replica in pytorchjob['spec']['pytorchReplicaSpecs'].values()
            for c in replica['template']['spec']['containers'] + replica['template']['spec']['initContainers']}


@pytest.mark.slow
def test_job_without_image_runs_the_operators_default_and_keeps_it(cluster: Cluster, kubeconfig: Path,
                                                                  tmp_path: Path) -> None:
    operator = OperatorProcess(kubeconfig, tmp_path / 'operator.log',
                               env={'KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE': TRAINER_DEFAULT})  # as the chart
    operator.start()
    try:
        body = job_body('imageless')
        del body['spec']['image']
        cluster.create_job(body)
        pytorchjob, configmap = children(cluster, 'imageless')
        assert images(pytorchjob) == {TRAINER_DEFAULT}
        assert yaml.safe_load(configmap.data['job.yaml'])['spec']['image'] == TRAINER_DEFAULT
        assert 'image' not in cluster.job('imageless')['spec']  # the user's spec is left as written
        wait_for(lambda: condition(cluster.job('imageless'), 'SpecValid').get('status') == 'True', what='SpecValid')

        # A new default (a chart upgrade) serves new jobs; the running one keeps the image it started with.
        operator.stop()
        operator.args = ('--default-trainer-image', 'registry.example.com/ml/kubefusion-trainer:2027.1.0')
        operator.start()
        body['metadata']['name'] = 'later'
        cluster.create_job(body)
        assert images(children(cluster, 'later')[0]) == {'registry.example.com/ml/kubefusion-trainer:2027.1.0'}
        operator.wait_resync()  # the first job was reconciled with the new default in place
        assert images(cluster.pytorchjob('imageless')) == {TRAINER_DEFAULT}
        assert condition(cluster.job('imageless'), 'SpecValid').get('status') == 'True'
        configmap = cluster.core.read_namespaced_config_map('imageless-config', NAMESPACE)
        assert yaml.safe_load(configmap.data['job.yaml'])['spec']['image'] == TRAINER_DEFAULT
    finally:
        operator.stop()


def test_job_without_image_and_without_a_default_is_refused(cluster: Cluster, operator: OperatorProcess) -> None:
    body = job_body('imageless')
    del body['spec']['image']
    cluster.create_job(body)
    refused = wait_for(lambda: (c := condition(cluster.job('imageless'), 'SpecValid')).get('status') == 'False' and c,
                       what='InvalidSpec')
    assert refused['reason'] == 'InvalidSpec'
    assert refused['message'].startswith('spec.image: is required')
    assert 'trainer.image.repository' in refused['message']
    assert 'KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE' in refused['message']
    assert cluster.pytorchjobs() == [] and cluster.configmaps() == []


def test_immutable_change_is_refused_and_reverting_clears_it(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('fixed'))
    children(cluster, 'fixed')
    cluster.patch_job('fixed', {'spec': {'resources': {'nodes': 3}}})
    refused = wait_for(lambda: (c := condition(cluster.job('fixed'), 'SpecValid')).get('status') == 'False' and c,
                       what='ImmutableFieldChanged')
    assert refused['reason'] == 'ImmutableFieldChanged' and 'spec.resources.nodes' in refused['message']
    assert sum(r['replicas'] for r in cluster.pytorchjob('fixed')['spec']['pytorchReplicaSpecs'].values()) == 2
    wait_for(lambda: any(e.reason == 'ImmutableFieldChanged' for e in cluster.events('fixed')), what='event')
    cluster.kubeflow_reports('fixed', 'Created', 'Running')  # news from Kubeflow do not hide the refusal
    cluster.wait_phase('fixed', 'Running')
    operator.wait_resync()
    assert condition(cluster.job('fixed'), 'SpecValid')['reason'] == 'ImmutableFieldChanged'
    cluster.patch_job('fixed', {'spec': {'resources': {'nodes': 2}}})
    wait_for(lambda: condition(cluster.job('fixed'), 'SpecValid').get('status') == 'True', what='SpecValid=True')


def test_no_backend_reports_what_to_install_then_recovers(bare_cluster: Cluster, kubeconfig: Path,
                                                          tmp_path: Path) -> None:
    cluster = bare_cluster
    operator = OperatorProcess(kubeconfig, tmp_path / 'operator.log')
    operator.start()
    try:
        cluster.create_job(job_body('early'))
        waiting = wait_for(lambda: condition(cluster.job('early'), 'BackendAvailable') and cluster.job('early'),
                           what='BackendAvailable condition')
        backend = condition(waiting, 'BackendAvailable')
        assert backend['status'] == 'False' and backend['reason'] == 'BackendUnavailable'
        assert 'training-operator' in backend['message'] and 'kubectl apply' in backend['message']
        assert waiting['status']['phase'] == 'Pending' and waiting['status']['reason'] == 'BackendUnavailable'
        assert operator.process is not None and operator.process.poll() is None  # no crash loop

        cluster.install_kubeflow()
        wait_for(lambda: cluster.pytorchjob('early'), what='the PyTorchJob after Kubeflow was installed')
        cluster.kubeflow_reports('early', 'Created', 'Running')
        recovered = cluster.wait_phase('early', 'Running')
        assert condition(recovered, 'BackendAvailable')['status'] == 'True'
        assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="BackendUnavailable"}'] >= 1
    finally:
        operator.stop()


@pytest.mark.slow
def test_api_errors_are_retried_not_lost(cluster: Cluster, operator: OperatorProcess) -> None:
    emulator = cluster.api.emulator
    assert emulator is not None
    emulator['post', emulator.resource('kubeflow.org', 'v1', 'pytorchjobs')][:2] << 500
    cluster.create_job(job_body('flaky'))
    wait_for(lambda: cluster.pytorchjob('flaky'), timeout=30, what='the PyTorchJob after two failures')
    assert len(cluster.pytorchjobs()) == 1
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ApiError500"}'] >= 1


@pytest.mark.slow
def test_hundred_jobs_make_exactly_hundred_pytorchjobs(cluster: Cluster, operator: OperatorProcess) -> None:
    for i in range(100):
        cluster.create_job(job_body(f'job-{i:03d}', nodes=1 + i % 3))
    wait_for(lambda: len(cluster.pytorchjobs()) == 100, timeout=120, what='100 PyTorchJobs')
    wait_for(lambda: all((j.get('status') or {}).get('pytorchJob') for j in cluster.custom.list_namespaced_custom_object(
        'kubefusion.io', 'v1alpha1', NAMESPACE, 'multimodaltrainjobs')['items']), timeout=60, what='100 statuses')
    operator.wait_resync()  # still exactly 100 of each
    names = sorted(p['metadata']['name'] for p in cluster.pytorchjobs())
    assert names == [f'job-{i:03d}' for i in range(100)]
    assert len(cluster.configmaps()) == 100
    assert operator.metrics()['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 100


def kubectl(kubeconfig: Path, *args: str) -> str:
    done = subprocess.run([KUBECTL, '--kubeconfig', str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def table_cells(header: str, row: str) -> dict[str, str]:
    """A `kubectl get` row by column, cut where the header's columns start (cells may be empty)."""
    names = header.split()
    starts = [header.index(name) for name in names] + [None]
    return dict(zip(names, (row[a:b].strip() for a, b in zip(starts, starts[1:]))))


CHART_TRAINER_IMAGE = 'registry.example.com/kubefusion-trainer:0.1.0'
"""The operator's default trainer image as the chart sets it (examples/job.yaml names none)."""


@pytest.fixture()
def chart_operator(kubeconfig: Path, tmp_path: Path) -> Any:
    """The operator with the settings the chart gives it: a default trainer image."""
    process = OperatorProcess(kubeconfig, tmp_path / 'operator.log',
                              env={'KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE': CHART_TRAINER_IMAGE})
    process.start()
    yield process
    process.stop()


def test_kubectl_apply_example_yields_an_acceptable_pytorchjob(cluster: Cluster, chart_operator: OperatorProcess,
                                                               kubeconfig: Path) -> None:
    example = yaml.safe_load((REPO / 'examples' / 'job.yaml').read_text())
    assert kubectl(kubeconfig, 'apply', '-f', str(REPO / 'examples' / 'job.yaml'), '--validate=false').strip() == \
        'multimodaltrainjob.kubefusion.io/products created'
    pytorchjob = wait_for(lambda: cluster.pytorchjob('products'), what='the PyTorchJob')

    # What Kubeflow's training operator reads: replica specs, the `pytorch` container, nprocPerNode as a string.
    spec = example['spec']
    nodes, gpus = spec['resources']['nodes'], spec['resources']['gpusPerNode']
    replica_specs = pytorchjob['spec']['pytorchReplicaSpecs']
    assert set(replica_specs) == {'Master', 'Worker'}
    assert replica_specs['Master']['replicas'] == 1 and replica_specs['Worker']['replicas'] == nodes - 1
    assert pytorchjob['spec']['nprocPerNode'] == str(gpus)
    world_size = sum(r['replicas'] for r in replica_specs.values()) * int(pytorchjob['spec']['nprocPerNode'])
    assert world_size == nodes * gpus == 8
    for replica in replica_specs.values():
        pod = replica['template']['spec']
        trainer = next(c for c in pod['containers'] if c['name'] == 'pytorch')
        assert trainer['resources']['limits']['nvidia.com/gpu'] == gpus
        assert trainer['command'][:3] == ['torchrun', '-m', 'kubefusion']
        assert [c['command'][:2] for c in pod['initContainers']] == [['kubefusion', 'preprocess']]
        assert pod['initContainers'][0]['image'] == trainer['image'] == CHART_TRAINER_IMAGE
        mounts = {m['mountPath'] for m in trainer['volumeMounts']}
        assert {'/etc/kubefusion', '/data', '/artifacts', '/checkpoints', '/dev/shm'} <= mounts
    assert pytorchjob['spec']['runPolicy']['backoffLimit'] == 3
    assert pytorchjob['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a'

    # Re-applying the unchanged file changes nothing; the job stays Pending until Kubeflow reports.
    assert 'unchanged' in kubectl(kubeconfig, 'apply', '-f', str(REPO / 'examples' / 'job.yaml'), '--validate=false')
    cluster.kubeflow_reports('products', 'Created', 'Running', 'Succeeded')
    cluster.wait_phase('products', 'Succeeded')
    table = kubectl(kubeconfig, 'get', 'mmtj', '-n', NAMESPACE)
    header, row = table.splitlines()[:2]
    cells = table_cells(header, row)
    assert list(cells) == ['NAME', 'PHASE', 'PROGRESS', 'ETA', 'VAL-TOP1', 'NODES', 'GPUS/NODE', 'REASON', 'AGE']
    # No trainer ran here, so no progress was reported: those columns are empty.
    assert cells == {'NAME': 'products', 'PHASE': 'Succeeded', 'PROGRESS': '', 'ETA': '', 'VAL-TOP1': '',
                     'NODES': '2', 'GPUS/NODE': '4', 'REASON': 'PyTorchJobSucceeded', 'AGE': cells['AGE']}
    assert cells['AGE'].endswith('s')
    assert len(cluster.pytorchjobs()) == 1


def test_a_child_the_api_refuses_is_reported_not_retried_forever(cluster: Cluster, operator: OperatorProcess) -> None:
    emulator = cluster.api.emulator
    assert emulator is not None
    refusal = {'apiVersion': 'v1', 'kind': 'Status', 'status': 'Failure', 'code': 422, 'reason': 'Invalid',
               'message': 'admission webhook "validator.training-operator.kubeflow.org" denied the request: '
                          'nprocPerNode: Invalid value'}
    emulator['post', emulator.resource('kubeflow.org', 'v1', 'pytorchjobs')] << 422 << refusal
    cluster.create_job(job_body('refused'))
    rejected = wait_for(lambda: (c := condition(cluster.job('refused'), 'SpecValid')).get('status') == 'False' and c,
                        what='ChildRejected')
    assert rejected['reason'] == 'ChildRejected' and 'denied the request' in rejected['message']
    assert cluster.pytorchjobs() == []
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ApiError422"}'] >= 1


def test_namespaced_operator_leaves_other_namespaces_alone(cluster: Cluster, kubeconfig: Path,
                                                           tmp_path: Path) -> None:
    cluster.create_namespace('elsewhere')
    operator = OperatorProcess(kubeconfig, tmp_path / 'operator.log', '--namespace', NAMESPACE)
    operator.start()
    try:
        cluster.create_job(job_body('mine'))
        cluster.create_job(job_body('theirs'), namespace='elsewhere')
        wait_for(lambda: cluster.pytorchjob('mine'), what='the watched namespace to be served')
        operator.wait_resync()
        assert cluster.pytorchjobs('elsewhere') == [] and 'status' not in cluster.job('theirs', 'elsewhere')
    finally:
        operator.stop()


def earlier_runs_pytorchjob(cluster: Cluster, name: str, *conditions: str) -> None:
    """What a deleted job of the same name leaves behind while garbage collection waits on its pods: its
    PyTorchJob, owned by a uid that no longer exists, held by a finalizer, with that run's final status."""
    old_spec = job_body(name, nodes=1)['spec']
    cluster.custom.create_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', {
        'apiVersion': 'kubeflow.org/v1', 'kind': 'PyTorchJob',
        'metadata': {'name': name, 'labels': {'kubefusion.io/job-name': name}, 'finalizers': ['example.com/pods'],
                     'annotations': {'kubefusion.io/applied-spec': json.dumps(old_spec)},
                     'ownerReferences': [{'apiVersion': 'kubefusion.io/v1alpha1', 'kind': 'MultimodalTrainJob',
                                          'name': name, 'uid': 'uid-of-the-earlier-run', 'controller': True,
                                          'blockOwnerDeletion': True}]},
        'spec': {}})
    if conditions:
        cluster.kubeflow_reports(name, *conditions)


@pytest.mark.slow
def test_recreated_job_waits_for_the_earlier_runs_pytorchjob_and_never_inherits_its_outcome(
        cluster: Cluster, operator: OperatorProcess) -> None:
    earlier_runs_pytorchjob(cluster, 'again', 'Created', 'Running', 'Succeeded')
    created = cluster.create_job(job_body('again', nodes=2))
    waiting = wait_for(lambda: (c := condition(cluster.job('again'), 'ChildrenReady')).get('status') == 'False' and c,
                       what='WaitingForPreviousRun')
    assert waiting['reason'] == 'WaitingForPreviousRun' and 'earlier run' in waiting['message']
    job = cluster.job('again')
    assert job['status']['phase'] == 'Pending' and job['status']['reason'] == 'WaitingForPreviousRun'
    assert condition(job, 'Succeeded') == {} and condition(job, 'SpecValid').get('reason') != 'ImmutableFieldChanged'
    assert 'pytorchJob' not in job['status']

    # Garbage collection finishes: the old PyTorchJob goes, ours is created, and the old outcome never shows.
    cluster.custom.delete_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'again')
    cluster.custom.patch_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'again',
                                                  {'metadata': {'finalizers': None}})
    ours = wait_for(lambda: (p := cluster.pytorchjob('again'))['metadata']['ownerReferences'][0]['uid']
                    == created['metadata']['uid'] and p, timeout=30, what='the new run\'s PyTorchJob')
    assert sum(r['replicas'] for r in ours['spec']['pytorchReplicaSpecs'].values()) == 2
    ready = wait_for(lambda: condition(cluster.job('again'), 'ChildrenReady').get('status') == 'True'
                     and cluster.job('again'), what='ChildrenReady=True')
    assert ready['status']['phase'] == 'Pending' and condition(ready, 'Succeeded') == {}
    cluster.kubeflow_reports('again', 'Created', 'Running')
    cluster.wait_phase('again', 'Running')


@pytest.mark.slow
def test_pytorchjob_finished_and_deleted_while_the_operator_was_away_is_not_trained_again(
        cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_body('gone', runPolicy={'ttlSecondsAfterFinished': 0}))
    first, _ = children(cluster, 'gone')
    cluster.kubeflow_reports('gone', 'Created', 'Running')
    cluster.wait_phase('gone', 'Running')
    operator.stop()
    cluster.kubeflow_reports('gone', 'Created', 'Running', 'Succeeded')
    cluster.custom.delete_namespaced_custom_object('kubeflow.org', 'v1', NAMESPACE, 'pytorchjobs', 'gone')
    operator.restart()

    lost = cluster.wait_phase('gone', 'Failed')
    assert lost['status']['reason'] == 'PyTorchJobLost'
    assert 'delete this MultimodalTrainJob and create it again' in lost['status']['message']
    failures = operator.metrics()
    operator.restart()  # finished jobs are not resynced; a restart reconciles every job once more
    operator.wait_reconciled_since(0)
    assert cluster.pytorchjobs() == [] and cluster.phase('gone') == 'Failed'
    assert failures['kubefusion_operator_job_failures_total{job_name="gone",namespace="ml-team",'
                    'reason="PyTorchJobLost"}'] == 1


def test_deleted_pytorchjob_keeps_the_outcome_its_last_state_reported(cluster: Cluster,
                                                                       operator: OperatorProcess) -> None:
    # Kubeflow writes the end while the PyTorchJob is already being deleted: the job keeps that outcome.
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


def test_unrelated_configmap_of_the_childs_name_is_left_alone(cluster: Cluster, operator: OperatorProcess) -> None:
    theirs = {'metadata': {'name': 'mine-config', 'labels': {'app': 'something-else'}}, 'data': {'keep': 'me'}}
    cluster.core.create_namespaced_config_map(NAMESPACE, theirs)
    cluster.create_job(job_body('mine'))
    conflict = wait_for(lambda: (c := condition(cluster.job('mine'), 'ChildrenReady')).get('status') == 'False' and c,
                        what='ChildConflict')
    assert conflict['reason'] == 'ChildConflict' and 'ConfigMap ml-team/mine-config' in conflict['message']
    assert cluster.job('mine')['status']['reason'] == 'ChildConflict'
    operator.wait_resync()
    configmap = cluster.core.read_namespaced_config_map('mine-config', NAMESPACE)
    assert configmap.data == {'keep': 'me'} and not configmap.metadata.owner_references
    assert cluster.pytorchjobs() == []
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ChildConflict"}'] >= 1


def test_running_jobs_configmap_is_never_rewritten(cluster: Cluster, operator: OperatorProcess) -> None:
    # An operator upgrade that renders job.yaml differently must not change what a restarting pod reads: what
    # was written when the PyTorchJob was made stays (here: the rendering of an "older operator").
    cluster.create_job(job_body('steady'))
    _, configmap = children(cluster, 'steady')
    older = configmap.data['job.yaml'].replace('products', 'products-as-an-older-operator-wrote-it')
    cluster.core.patch_namespaced_config_map('steady-config', NAMESPACE, {'data': {'job.yaml': older}})
    cluster.kubeflow_reports('steady', 'Created', 'Running')
    cluster.wait_phase('steady', 'Running')
    operator.wait_resync()
    assert cluster.core.read_namespaced_config_map('steady-config', NAMESPACE).data['job.yaml'] == older
    # A steady job is not written by resyncs at all (no status churn).
    before = (cluster.job('steady')['metadata']['resourceVersion'],
              cluster.pytorchjob('steady')['metadata']['resourceVersion'])
    operator.wait_resync()
    assert (cluster.job('steady')['metadata']['resourceVersion'],
            cluster.pytorchjob('steady')['metadata']['resourceVersion']) == before


def test_forbidden_child_is_retried_not_reported_as_a_bad_spec(cluster: Cluster, operator: OperatorProcess) -> None:
    emulator = cluster.api.emulator
    assert emulator is not None
    quota = {'apiVersion': 'v1', 'kind': 'Status', 'status': 'Failure', 'code': 403, 'reason': 'Forbidden',
             'message': 'pytorchjobs.kubeflow.org "quota" is forbidden: exceeded quota: ml-team-jobs'}
    emulator['post', emulator.resource('kubeflow.org', 'v1', 'pytorchjobs')][:2] << 403 << quota
    cluster.create_job(job_body('capped'))
    forbidden = wait_for(lambda: (c := condition(cluster.job('capped'), 'ChildrenReady')).get('reason')
                         == 'ChildCreationForbidden' and c, what='ChildCreationForbidden')
    assert forbidden['status'] == 'False' and 'exceeded quota' in forbidden['message']
    assert condition(cluster.job('capped'), 'SpecValid').get('status') != 'False'
    wait_for(lambda: cluster.pytorchjob('capped'), timeout=30, what='the PyTorchJob once the quota allows it')
    wait_for(lambda: condition(cluster.job('capped'), 'ChildrenReady').get('status') == 'True', what='ChildrenReady')
    assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="ChildCreationForbidden"}'] >= 1


@pytest.mark.slow
def test_suspending_a_queued_job_deactivates_its_kueue_workload(cluster: Cluster, operator: OperatorProcess) -> None:
    # Kueue un-suspends any job whose Workload is admitted: suspend must go through Workload.spec.active.
    cluster.install_kueue()
    cluster.create_job(job_body('queued', scheduling={'queue': 'team-a'}))
    pytorchjob, _ = children(cluster, 'queued')
    workload = cluster.kueue_admits(pytorchjob)['metadata']['name']

    cluster.patch_job('queued', {'spec': {'runPolicy': {'suspend': True}}})
    wait_for(lambda: cluster.workload(workload)['spec'].get('active') is False, what='the Workload deactivated')
    assert cluster.pytorchjob('queued')['spec']['runPolicy']['suspend'] is True
    # Kueue would admit an active Workload again: it stays inactive across resyncs.
    operator.wait_resync()
    assert cluster.workload(workload)['spec']['active'] is False

    cluster.patch_job('queued', {'spec': {'runPolicy': {'suspend': False}}})
    wait_for(lambda: cluster.workload(workload)['spec'].get('active') is True, what='the Workload back in the queue')
