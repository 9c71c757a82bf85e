"""The TrainJob backend and the choice between backends: the real operator against the API emulator with
Kubeflow Trainer v2's CRDs and kubefusion's ClusterTrainingRuntime (as the chart renders it).

The test plays Kubeflow Trainer (it writes the TrainJob's status) and Kueue. Trainer's and JobSet's own
controllers and webhooks run for real in the cluster tier (tests/cluster); here the operator's side of the
contract is checked, including what a real control plane cannot be made to do on demand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubefusion_operator.backends import TRAINJOB

from .harness import NAMESPACE, REPO, Cluster, OperatorProcess, job_body, wait_for
from .test_operator import CHART_TRAINER_IMAGE, condition, kubectl, table_cells

COMPLETE = ('Complete', 'True', 'AllJobsCompleted')
FAILED = ('Failed', 'True', 'FailedJobs')
SUSPENDED = ('Suspended', 'True', 'Suspended')


@pytest.fixture()
def trainer_cluster(bare_cluster: Cluster) -> Cluster:
    """A cluster with Kubeflow Trainer v2 and kubefusion's runtime, and no training operator v1."""
    bare_cluster.install_trainer()
    return bare_cluster


@pytest.fixture()
def trainer_operator(kubeconfig: Path, tmp_path: Path, trainer_cluster: Cluster) -> Any:
    """The operator with the chart's settings (its default trainer image is the runtime's image)."""
    process = OperatorProcess(kubeconfig, tmp_path / 'operator.log',
                              env={'KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE': CHART_TRAINER_IMAGE})
    process.start()
    yield process
    process.stop()


def node_patch(trainjob: dict[str, Any]) -> dict[str, Any]:
    (patch,) = trainjob['spec']['runtimePatches']
    (node,) = patch['trainingRuntimeSpec']['template']['spec']['replicatedJobs']
    return node['template']['spec']['template']


def test_auto_takes_trainjob_where_only_trainer_is_installed_and_mirrors_it_to_succeeded(
        trainer_cluster: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster = trainer_cluster
    created = cluster.create_job(job_body('products', scheduling={'queue': 'team-a'}))
    trainjob = wait_for(lambda: cluster.trainjob('products'), what='the TrainJob')

    assert trainjob['metadata']['ownerReferences'][0]['uid'] == created['metadata']['uid']
    assert trainjob['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a'
    assert trainjob['spec']['runtimeRef'] == {'apiGroup': 'trainer.kubeflow.org', 'kind': 'ClusterTrainingRuntime',
                                              'name': 'kubefusion'}
    trainer = trainjob['spec']['trainer']
    assert (trainer['numNodes'], trainer['numProcPerNode']) == (2, 4)
    assert trainer['resourcesPerNode']['limits']['nvidia.com/gpu'] == 4
    assert trainer['command'][:3] == ['torchrun', '-m', 'kubefusion']
    template = node_patch(trainjob)
    assert template['metadata']['labels']['kubefusion.io/job-name'] == 'products'
    assert {v['name'] for v in template['spec']['volumes']} == {'job-config', 'data', 'artifacts', 'checkpoints',
                                                                'dshm'}
    assert [c['name'] for c in template['spec']['initContainers']] == ['preprocess']
    assert trainjob['spec']['runtimePatches'][0]['manager'] == 'kubefusion.io/operator'

    pending = cluster.wait_phase('products', 'Pending')
    assert pending['status']['backend'] == 'TrainJob' and pending['status']['trainJob'] == 'products'
    assert pending['status']['reason'] == 'WaitingForTrainer'
    cluster.trainer_reports('products', active=1)
    cluster.wait_phase('products', 'Created')
    cluster.trainer_reports('products', active=1, ready=1)
    running = cluster.wait_phase('products', 'Running')
    assert running['status']['startTime'] and running['status']['gpus'] == 8
    cluster.trainer_reports('products', conditions=(COMPLETE,), active=0, ready=0, succeeded=1)
    done = cluster.wait_phase('products', 'Succeeded')
    assert done['status']['reason'] == 'AllJobsCompleted' and done['status']['completionTime']
    assert condition(done, 'Running')['status'] == 'False'
    assert len(cluster.trainjobs()) == 1


def test_failed_trainjob_fails_the_job_with_trainers_reason(trainer_cluster: Cluster,
                                                            trainer_operator: OperatorProcess) -> None:
    cluster = trainer_cluster
    cluster.create_job(job_body('broken'))
    wait_for(lambda: cluster.trainjob('broken'), what='the TrainJob')
    cluster.trainer_reports('broken', active=1, ready=1)
    cluster.wait_phase('broken', 'Running')
    cluster.trainer_reports('broken', conditions=(FAILED,), active=0, failed=1)
    failed = cluster.wait_phase('broken', 'Failed')
    assert failed['status']['reason'] == 'FailedJobs' and 'broken' in failed['status']['message']
    failures = {k: v for k, v in trainer_operator.metrics().items()
                if k.startswith('kubefusion_operator_job_failures_total')}
    assert failures == {'kubefusion_operator_job_failures_total{job_name="broken",namespace="ml-team",'
                        'reason="FailedJobs"}': 1}


@pytest.mark.slow
def test_suspend_and_resume_patch_only_spec_suspend_and_keep_kueues_patch(
        trainer_cluster: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster = trainer_cluster
    cluster.install_kueue()
    cluster.create_job(job_body('held', scheduling={'queue': 'team-a'}))
    trainjob = wait_for(lambda: cluster.trainjob('held'), what='the TrainJob')
    # Kueue's webhook suspends a queued TrainJob and appends its own runtime patch; Kueue admits it later.
    kueue_patch = {'manager': 'kueue.x-k8s.io/manager', 'trainingRuntimeSpec': {'template': {'spec': {}}}}
    cluster.custom.patch_namespaced_custom_object('trainer.kubeflow.org', 'v1alpha1', NAMESPACE, 'trainjobs', 'held', {
        'spec': {'suspend': True, 'runtimePatches': trainjob['spec']['runtimePatches'] + [kueue_patch]}})
    cluster.trainer_reports('held', conditions=(SUSPENDED,), active=0)
    queued = cluster.wait_phase('held', 'Suspended')
    assert queued['status']['reason'] == 'Queued'
    assert 'waiting for Kueue to admit it through LocalQueue team-a' in queued['status']['message']
    assert (condition(queued, 'Admitted')['status'], condition(queued, 'Admitted')['reason']) == ('False', 'Queued')
    trainer_operator.wait_resync()  # the operator does not fight the queue
    assert cluster.trainjob('held')['spec']['suspend'] is True
    workload = cluster.kueue_admits(cluster.trainjob('held'))['metadata']['name']
    cluster.trainer_reports('held', conditions=(('Suspended', 'False', 'Resumed'),), active=1, ready=1)
    admitted = cluster.wait_phase('held', 'Running')
    assert condition(admitted, 'Admitted')['status'] == 'True'

    # The user suspends: spec.suspend and the Workload's spec.active; the rest of the spec is never rewritten.
    before = cluster.trainjob('held')['spec']
    cluster.patch_job('held', {'spec': {'runPolicy': {'suspend': True}}})
    wait_for(lambda: cluster.trainjob('held')['spec']['suspend'] is True, what='suspend')
    wait_for(lambda: cluster.workload(workload)['spec'].get('active') is False, what='the Workload deactivated')
    after = cluster.trainjob('held')['spec']
    assert {k: v for k, v in after.items() if k != 'suspend'} == {k: v for k, v in before.items() if k != 'suspend'}
    assert [p['manager'] for p in after['runtimePatches']] == ['kubefusion.io/operator', 'kueue.x-k8s.io/manager']

    cluster.patch_job('held', {'spec': {'runPolicy': {'suspend': False}}})
    wait_for(lambda: cluster.trainjob('held')['spec']['suspend'] is False, what='resume')
    wait_for(lambda: cluster.workload(workload)['spec'].get('active') is True, what='the Workload back in the queue')

    # A limit a TrainJob cannot take after creation is refused, and the TrainJob is left as it is.
    cluster.patch_job('held', {'spec': {'runPolicy': {'backoffLimit': 7}}})
    refused = wait_for(lambda: (c := condition(cluster.job('held'), 'SpecValid')).get('status') == 'False' and c,
                       what='ImmutableFieldChanged')
    assert refused['reason'] == 'ImmutableFieldChanged' and 'spec.runPolicy.backoffLimit' in refused['message']
    assert 'only runPolicy.suspend may change' in refused['message']


def test_what_the_runtime_decides_differently_is_refused_before_anything_is_made(
        trainer_cluster: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster = trainer_cluster
    cluster.create_job(job_body('picky', image='registry.example.com/mine:1',
                                scheduling={'priorityClassName': 'high'}))
    refused = wait_for(lambda: (c := condition(cluster.job('picky'), 'SpecValid')).get('status') == 'False' and c,
                       what='NotSupportedByBackend')
    assert refused['reason'] == 'NotSupportedByBackend'
    assert 'spec.image' in refused['message'] and 'spec.scheduling.priorityClassName' in refused['message']
    assert 'spec.backend: PyTorchJob' in refused['message']
    assert cluster.trainjobs() == [] and cluster.configmaps() == []
    assert cluster.job('picky')['status']['phase'] == 'Pending'


@pytest.mark.slow
def test_backend_preference_and_explicit_choice_where_both_are_installed(
        bare_cluster: Cluster, kubeconfig: Path, tmp_path: Path) -> None:
    cluster = bare_cluster
    cluster.install_kubeflow()
    cluster.install_trainer()
    operator = OperatorProcess(kubeconfig, tmp_path / 'operator.log')
    operator.start()
    try:
        cluster.create_job(job_body('auto'))
        cluster.create_job(job_body('explicit', backend='TrainJob'))
        wait_for(lambda: cluster.pytorchjob('auto'), what='Auto: the PyTorchJob (the default preference)')
        wait_for(lambda: cluster.trainjob('explicit'), what='spec.backend TrainJob: the TrainJob')
        operator.stop()
        operator.env['KUBEFUSION_OPERATOR_PREFERRED_BACKEND'] = 'TrainJob'  # the chart's operator.preferredBackend
        operator.start()
        cluster.create_job(job_body('preferred'))
        wait_for(lambda: cluster.trainjob('preferred'), what='Auto with TrainJob preferred: the TrainJob')
        operator.wait_resync()  # the preference never moves a job that has its child
        assert [p['metadata']['name'] for p in cluster.pytorchjobs()] == ['auto']
        assert sorted(t['metadata']['name'] for t in cluster.trainjobs()) == ['explicit', 'preferred']
        assert {n: cluster.job(n)['status']['backend'] for n in ('auto', 'explicit', 'preferred')} == {
            'auto': 'PyTorchJob', 'explicit': 'TrainJob', 'preferred': 'TrainJob'}
    finally:
        operator.stop()


@pytest.mark.slow
def test_nothing_installed_names_both_then_trainer_without_runtime_then_picked_up(
        bare_cluster: Cluster, kubeconfig: Path, tmp_path: Path) -> None:
    cluster = bare_cluster
    operator = OperatorProcess(kubeconfig, tmp_path / 'operator.log')
    operator.start()
    try:
        cluster.create_job(job_body('early'))
        missing = wait_for(lambda: (c := condition(cluster.job('early'), 'BackendAvailable')).get('status') == 'False'
                           and c, what='BackendUnavailable')
        assert missing['reason'] == 'BackendUnavailable'
        assert 'kubeflow/trainer.git' in missing['message'] and 'training-operator.git' in missing['message']

        cluster.install_trainer(runtime=False)
        no_runtime = wait_for(lambda: 'ClusterTrainingRuntime kubefusion it runs on is missing' in
                              condition(cluster.job('early'), 'BackendAvailable').get('message', '')
                              and condition(cluster.job('early'), 'BackendAvailable'), what='the runtime is missing')
        assert 'manifests/trainjob/' in no_runtime['message']
        assert cluster.trainjobs() == []

        cluster.install_runtime()
        wait_for(lambda: cluster.trainjob('early'), timeout=30, what='the TrainJob once the runtime is there')
        ready = wait_for(lambda: condition(cluster.job('early'), 'BackendAvailable').get('status') == 'True'
                         and cluster.job('early'), what='BackendAvailable=True')
        assert ready['status']['backend'] == 'TrainJob'
    finally:
        operator.stop()


@pytest.mark.slow
def test_a_trainjob_made_before_a_lost_status_write_is_adopted_not_made_twice(
        trainer_cluster: Cluster, trainer_operator: OperatorProcess) -> None:
    # The operator created the TrainJob and died before recording it; meanwhile the training operator v1 was
    # installed too. The restarted operator must find the TrainJob, not create a PyTorchJob beside it.
    cluster = trainer_cluster
    trainer_operator.stop()
    created = cluster.create_job(job_body('twice'))
    body = TRAINJOB.build(job_body('twice')['spec'], {**created['metadata'], 'namespace': NAMESPACE},
                          runtime='kubefusion')
    body['metadata']['annotations'] = {'kubefusion.io/applied-spec': json.dumps(job_body('twice')['spec'])}
    cluster.custom.create_namespaced_custom_object('trainer.kubeflow.org', 'v1alpha1', NAMESPACE, 'trainjobs', body)
    cluster.install_kubeflow()
    trainer_operator.start()
    adopted = wait_for(lambda: cluster.job('twice').get('status', {}).get('backend') and cluster.job('twice'),
                       what='the status to record the backend')
    assert adopted['status']['backend'] == 'TrainJob' and adopted['status']['trainJob'] == 'twice'
    trainer_operator.wait_resync()
    assert cluster.pytorchjobs() == [] and len(cluster.trainjobs()) == 1


@pytest.mark.parametrize('example, name, nodes, gpus', [('job.yaml', 'products', 2, 4),
                                                        ('trainjob.yaml', 'demo-trainjob', 2, 1)])
def test_kubectl_apply_examples_unchanged_on_a_trainer_only_cluster(
        example: str, name: str, nodes: int, gpus: int, trainer_cluster: Cluster,
        trainer_operator: OperatorProcess, kubeconfig: Path) -> None:
    cluster = trainer_cluster
    path = REPO / 'examples' / example
    assert kubectl(kubeconfig, 'apply', '-f', str(path), '--validate=false').strip() == \
        f'multimodaltrainjob.kubefusion.io/{name} created'
    trainjob = wait_for(lambda: cluster.trainjob(name), what='the TrainJob')
    trainer = trainjob['spec']['trainer']
    assert (trainer['numNodes'], trainer['numProcPerNode'], trainer['image']) == (nodes, gpus, CHART_TRAINER_IMAGE)
    assert trainjob['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a'
    cluster.trainer_reports(name, active=1, ready=1)
    cluster.trainer_reports(name, conditions=(COMPLETE,), active=0, succeeded=1)
    cluster.wait_phase(name, 'Succeeded')
    header, row = kubectl(kubeconfig, 'get', 'mmtj', '-n', NAMESPACE, '-o', 'wide').splitlines()[:2]
    columns = table_cells(header, row)
    assert (columns['PHASE'], columns['BACKEND'], columns['REASON']) == ('Succeeded', 'TrainJob', 'AllJobsCompleted')
