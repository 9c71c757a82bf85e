"""The TrainJob backend on real components: Kubeflow Trainer v2.3 with JobSet v0.12 (and Kueue v0.19), built from
their Go modules, their webhooks served on loopback (cluster/kubeflow.py), pods run by kwok on fake GPU nodes.

Each scenario asserts what a user sees: ``kubectl apply`` of a MultimodalTrainJob, the TrainJob the operator
makes, what Trainer and JobSet make of it (JobSet, Job, pods on GPU nodes), and the phase, reason and conditions
on the MultimodalTrainJob. The operator runs as in the other cluster tests: out of cluster, with the chart's
ServiceAccount token (so the chart's RBAC is what it may do), installed by ``helm install``.

Control planes of their own (module-scoped): a Trainer-only cluster, and one with both Kubeflow backends and
Kueue; the scenario that starts with no backend at all gets a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kube_harness import REPO, OperatorProcess, condition, job_body, wait_for
from kubefusion_operator.backends import TRAINJOB as TRAINJOB_BACKEND

from .conftest import OPERATOR_USER, Installed, control_plane_or_skip, helm, install_chart, make_namespace, retire
from .kube import Namespace

import kubeflow  # noqa: E402  (cluster/kubeflow.py, on sys.path through conftest)

pytestmark = pytest.mark.slow

TRAINER_IMAGE = 'registry.example.com/kubefusion-trainer:0.1.0'
"""The chart's trainer.image here: the operator's default, the runtime's, and job_body()'s image."""
CHART_VALUES = ('--set', 'trainer.image.repository=registry.example.com/kubefusion-trainer')
TRAINJOB = ('trainer.kubeflow.org', 'v1alpha1', 'trainjobs')
JOBSET = ('jobset.x-k8s.io', 'v1alpha2', 'jobsets')
JOBSET_NAME_LABEL = 'jobset.sigs.k8s.io/jobset-name'  # JobSet's label on its Jobs' pods
KUEUE = ('kueue.x-k8s.io', 'v1beta2')
METRICS_PORT = 9402  # spec.monitoring.metricsPort's default, and the chart's trainJob.runtime.metricsPort


@dataclass
class Cluster:
    """A control plane with kubefusion installed by its chart, and the test's namespace on it."""

    installed: Installed
    ns: Namespace

    @property
    def cp(self) -> Any:
        return self.installed.cp

    def trainjob(self, name: str) -> dict[str, Any]:
        return self.ns.custom.get_namespaced_custom_object(*TRAINJOB[:2], self.ns.name, TRAINJOB[2], name)

    def jobset(self, name: str) -> dict[str, Any]:
        return self.ns.custom.get_namespaced_custom_object(*JOBSET[:2], self.ns.name, JOBSET[2], name)

    def pods(self, job: str) -> list[Any]:
        return self.ns.core.list_namespaced_pod(self.ns.name, label_selector=f'{JOBSET_NAME_LABEL}={job}').items

    def running_pods(self, job: str, count: int, timeout: float = 90) -> list[Any]:
        """Wait until the ``count`` pods JobSet made for ``job`` run on fake GPU nodes."""
        return wait_for(lambda: len(pods := [p for p in self.pods(job) if p.status.phase == 'Running']) == count
                        and pods, timeout, f'{count} running pods of TrainJob {job}')

    def end_pods(self, job: str, exit_code: int = 0) -> None:
        """Every container of ``job``'s pods exits with ``exit_code`` (kwok's stages: cluster/kwok/)."""
        self.ns.kubectl('annotate', 'pod', '-l', f'{JOBSET_NAME_LABEL}={job}', '--overwrite',
                        f'kwok.kubefusion.io/exit-code={exit_code}')


def operator_requests(cp: Any) -> tuple[set[tuple[str, str]], list[tuple[str, str, int]]]:
    """What the operator (the chart's ServiceAccount) asked the API server so far, from its audit log: the
    (group/resource, verb) pairs it was allowed, and the requests it was refused (403)."""
    allowed, denied = set(), []
    for event in cp.audit_events(OPERATOR_USER):
        ref, code = event.get('objectRef') or {}, (event.get('responseStatus') or {}).get('code', 0)
        resource = f"{ref.get('apiGroup', '')}/{ref.get('resource', '')}" + (
            f"/{ref['subresource']}" if ref.get('subresource') else '')
        if code == 403:
            denied.append((resource, event['verb'], code))
        elif ref.get('resource'):
            allowed.add((resource, event['verb']))
    return allowed, denied


def pod_monitor(cp: Any) -> dict[str, Any]:
    """The chart's PodMonitor (monitoring on): how Prometheus finds the training ranks the dashboard and the
    alerts read."""
    rendered = helm(cp, 'template', 'kubefusion', str(REPO / 'charts' / 'kubefusion'), '--set',
                    'monitoring.enabled=true', '--show-only', 'templates/podmonitor.yaml').stdout
    return yaml.safe_load(rendered)


def scraped(monitor: dict[str, Any], pod: Any) -> dict[str, int]:
    """The ports of ``pod`` that ``monitor`` scrapes, by name ({} where its selector does not select the pod)."""
    labels, selector = pod.metadata.labels or {}, monitor['spec']['selector']
    exists = [e['key'] for e in selector.get('matchExpressions', []) if e['operator'] == 'Exists']
    if any(labels.get(k) != v for k, v in selector['matchLabels'].items()) or any(k not in labels for k in exists):
        return {}
    names = {e['port'] for e in monitor['spec']['podMetricsEndpoints']}
    return {p.name: p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name in names}


def series_labels(pod: Any) -> dict[str, str]:
    """What the trainer labels its series with (namespace, job_name), as its container's environment says."""
    (trainer,) = pod.spec.containers
    env = {e.name: e.value for e in trainer.env or []}
    return {'namespace': env['KUBEFUSION_NAMESPACE'], 'job_name': env['KUBEFUSION_JOB_NAME']}


def started_plane(tmp_path_factory: pytest.TempPathFactory, name: str) -> Any:
    return control_plane_or_skip(tmp_path_factory.mktemp(name))


def plane_with(tmp_path_factory: pytest.TempPathFactory, name: str, *installs: Callable[[Any], Any]
               ) -> Iterator[Installed]:
    """A control plane of its own with ``installs`` done in order, then the chart installed (so that
    ``trainJob.runtime.create: auto`` sees what is there); stopped afterwards."""
    cp = started_plane(tmp_path_factory, name)
    try:
        for install in installs:
            install(cp)
        yield install_chart(cp, tmp_path_factory.mktemp(f'{name}-operator'), *CHART_VALUES)
    finally:
        cp.stop()


@contextlib.contextmanager
def operator_for(installed: Installed, log: Path, **env: str) -> Iterator[OperatorProcess]:
    """The real operator as the chart runs it (``env``: settings changed from the chart's), stopped when done.
    Jobs need no running operator to be deleted (no finalizer), so namespaces are retired after it stops."""
    process = OperatorProcess(installed.operator_kubeconfig, log, env={**installed.operator_env, **env})
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def namespace_on(installed: Installed, request: pytest.FixtureRequest, *claims: str) -> Iterator[Namespace]:
    """A fresh namespace on ``installed``'s control plane (claims ``datasets`` and ``runs`` unless said),
    retired afterwards."""
    slug = re.sub(r'[^a-z0-9]+', '-', request.node.name.lower().removeprefix('test_'))[:40].strip('-')
    ns = make_namespace(installed.cp, f'tj-{slug}', claims or ('datasets', 'runs'))
    try:
        yield ns
    finally:
        retire(installed.cp, ns.name)


# ------------------------------------------------------------------------------------ a Trainer-only cluster


@pytest.fixture(scope='module')
def trainer_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """JobSet and Kubeflow Trainer, no training operator v1; the chart installed after them, so its
    ``trainJob.runtime.create: auto`` finds Trainer and installs the ClusterTrainingRuntime."""
    yield from plane_with(tmp_path_factory, 'trainer-only', kubeflow.install_jobset, kubeflow.install_trainer)


@pytest.fixture()
def on_trainer(trainer_only: Installed, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with namespace_on(trainer_only, request) as ns:
        yield Cluster(trainer_only, ns)


@pytest.fixture()
def trainer_operator(trainer_only: Installed, tmp_path: Path) -> Iterator[OperatorProcess]:
    with operator_for(trainer_only, tmp_path / 'operator.log') as process:
        yield process


def test_example_job_unchanged_runs_as_a_trainjob_on_gpu_nodes_to_succeeded(
        trainer_only: Installed, trainer_operator: OperatorProcess, request: pytest.FixtureRequest) -> None:
    """A user on a Trainer-v2-only cluster applies examples/job.yaml as it is: Auto takes TrainJob, Trainer and
    JobSet make one Job of two indexed pods with four GPUs each, torchrun gets its PET_* variables, and the job
    goes Running and then Succeeded."""
    assert 'ClusterTrainingRuntime kubefusion installed with this release' in trainer_only.helm_output
    example = yaml.safe_load((REPO / 'examples' / 'job.yaml').read_text())
    namespace = example['metadata']['namespace']
    ns = make_namespace(trainer_only.cp, namespace, ('datasets', 'products-runs'))
    cluster = Cluster(trainer_only, ns)
    try:
        assert trainer_only.cp.kubectl('apply', '-f', str(REPO / 'examples' / 'job.yaml')).stdout.strip() == \
            'multimodaltrainjob.kubefusion.io/products created'
        trainjob = wait_for(lambda: cluster.trainjob('products'), timeout=60, what='the TrainJob')
        assert trainjob['spec']['runtimeRef']['name'] == 'kubefusion'
        assert [p['manager'] for p in trainjob['spec']['runtimePatches']] == ['kubefusion.io/operator']
        assert 'time' in trainjob['spec']['runtimePatches'][0]  # Trainer's webhook stamped it: webhooks ran

        pods = cluster.running_pods('products', 2)
        assert {p.spec.node_name for p in pods} <= {f'gpu-node-{i}' for i in range(4)}
        for pod in pods:
            (node,) = pod.spec.containers
            assert (node.name, node.image) == ('node', TRAINER_IMAGE)
            assert node.resources.limits['nvidia.com/gpu'] == '4'
            env = {e.name: e.value for e in node.env}
            assert (env['PET_NNODES'], env['PET_NPROC_PER_NODE'], env['PET_MASTER_ADDR']) == \
                ('2', '4', 'products-node-0-0.products')
            assert env['KUBEFUSION_JOB_NAME'] == 'products'
            (init,) = pod.spec.init_containers
            assert (init.name, init.image, init.command[:2]) == ('preprocess', TRAINER_IMAGE, ['kubefusion', 'preprocess'])
            assert {m.mount_path for m in node.volume_mounts} >= {'/etc/kubefusion', '/data', '/artifacts',
                                                                  '/checkpoints', '/dev/shm'}
            claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes
                      if v.persistent_volume_claim}
            assert claims == {'data': 'datasets', 'checkpoints': 'products-runs'}
            assert pod.metadata.labels['kubefusion.io/job-name'] == 'products'  # the PodMonitor selects on it
            assert pod.spec.security_context.run_as_user == 1000

        running = ns.wait_phase('products', 'Running', timeout=60)
        assert (running['status']['backend'], running['status']['trainJob']) == ('TrainJob', 'products')
        assert running['status']['reason'] == 'TrainJobRunning' and running['status']['gpus'] == 8
        assert condition(running, 'BackendAvailable')['status'] == 'True'
        (row,) = ns.table('mmtj', 'products', '-o', 'wide')
        assert (row['PHASE'], row['BACKEND'], row['REASON']) == ('Running', 'TrainJob', 'TrainJobRunning')

        cluster.end_pods('products', 0)
        done = ns.wait_phase('products', 'Succeeded', timeout=90)
        trainer = {c['type']: c for c in cluster.trainjob('products')['status']['conditions']}
        assert done['status']['reason'] == trainer['Complete']['reason']
        assert done['status']['message'] == trainer['Complete']['message']  # Trainer's words (JobSet's)
        assert condition(done, 'Running')['status'] == 'False' and done['status']['completionTime']
    finally:
        retire(trainer_only.cp, namespace)


def test_a_failing_pod_fails_the_job_with_the_reason(on_trainer: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster, ns = on_trainer, on_trainer.ns
    ns.create_job(job_body('broken'))
    pods = cluster.running_pods('broken', 2)
    ns.kubectl('annotate', 'pod', pods[0].metadata.name, '--overwrite', 'kwok.kubefusion.io/exit-code=1')

    # The trainer container crashes again and again: the Job's backoffLimit (3, the runtime's) runs out.
    failed = ns.wait_phase('broken', 'Failed', timeout=120)
    trainer = {c['type']: c for c in cluster.trainjob('broken')['status']['conditions']}
    assert failed['status']['reason'] == trainer['Failed']['reason'] == 'FailedJobs'
    assert failed['status']['message'] == trainer['Failed']['message']
    assert 'broken-node-0' in failed['status']['message']  # JobSet names the Job that failed
    assert condition(failed, 'Failed')['status'] == 'True'
    assert trainer_operator.metrics()['kubefusion_operator_job_failures_total{job_name="broken",namespace="%s",'
                                      'reason="FailedJobs"}' % ns.name] == 1


def test_suspend_stops_the_pods_and_resume_starts_them_again(on_trainer: Cluster,
                                                              trainer_operator: OperatorProcess) -> None:
    cluster, ns = on_trainer, on_trainer.ns
    ns.create_job(job_body('held'))
    cluster.running_pods('held', 2)
    ns.wait_phase('held', 'Running', timeout=60)
    created = cluster.trainjob('held')['spec']

    ns.patch_job('held', {'spec': {'runPolicy': {'suspend': True}}})
    suspended = ns.wait_phase('held', 'Suspended', timeout=60)
    assert suspended['status']['reason'] == 'Suspended' and condition(suspended, 'Suspended')['status'] == 'True'
    assert cluster.jobset('held')['spec']['suspend'] is True
    wait_for(lambda: cluster.pods('held') == [], timeout=60, what='the suspended pods to be deleted')
    # Only spec.suspend changed: the spec written at creation is never rewritten (Trainer would refuse it).
    assert {k: v for k, v in cluster.trainjob('held')['spec'].items() if k != 'suspend'} == \
        {k: v for k, v in created.items() if k != 'suspend'}

    ns.patch_job('held', {'spec': {'runPolicy': {'suspend': False}}})
    cluster.running_pods('held', 2)
    resumed = ns.wait_phase('held', 'Running', timeout=60)
    assert condition(resumed, 'Suspended')['reason'] == 'Resumed'

    # A limit a TrainJob cannot take after creation (Trainer fixes it) is refused; the TrainJob is left alone.
    ns.patch_job('held', {'spec': {'runPolicy': {'backoffLimit': 7}}})
    refused = wait_for(lambda: (c := condition(ns.job('held'), 'SpecValid')).get('status') == 'False' and c,
                       timeout=60, what='ImmutableFieldChanged')
    assert refused['reason'] == 'ImmutableFieldChanged' and 'spec.runPolicy.backoffLimit' in refused['message']
    assert 'only runPolicy.suspend may change' in refused['message']
    ns.patch_job('held', {'spec': {'runPolicy': {'backoffLimit': 3}}})
    cluster.end_pods('held', 0)
    ns.wait_phase('held', 'Succeeded', timeout=90)

    # The chart's RBAC was enough, and its Trainer rules are what the operator used.
    allowed, denied = operator_requests(cluster.cp)
    assert denied == []
    assert {verb for resource, verb in allowed if resource == 'trainer.kubeflow.org/trainjobs'} == \
        {'get', 'list', 'watch', 'create', 'patch'}
    assert {verb for resource, verb in allowed if resource == 'trainer.kubeflow.org/clustertrainingruntimes'} == \
        {'get'}


def test_what_only_the_runtime_decides_is_refused_and_a_named_backend_is_waited_for(
        on_trainer: Cluster, trainer_operator: OperatorProcess) -> None:
    """A job asking for a priority class the ClusterTrainingRuntime does not give is refused with the ways out,
    before anything is made; one asking for a PyTorchJob waits for it instead of taking the TrainJob."""
    cluster, ns = on_trainer, on_trainer.ns
    ns.create_job(job_body('picky', scheduling={'priorityClassName': 'high'}))
    refused = wait_for(lambda: (c := condition(ns.job('picky'), 'SpecValid')).get('status') == 'False' and c,
                       timeout=60, what='NotSupportedByBackend')
    assert refused['reason'] == 'NotSupportedByBackend' and 'spec.scheduling.priorityClassName' in refused['message']
    ns.create_job(job_body('v1', backend='PyTorchJob'))
    waiting = wait_for(lambda: (c := condition(ns.job('v1'), 'BackendAvailable')).get('status') == 'False' and c,
                       timeout=60, what='BackendUnavailable for spec.backend PyTorchJob')
    assert 'training-operator.git' in waiting['message'] and 'trainer.git' not in waiting['message']
    trainer_operator.wait_resync()  # nothing appears meanwhile
    for name in ('picky', 'v1'):
        with pytest.raises(kubernetes.client.ApiException) as missing:
            cluster.trainjob(name)
        assert missing.value.status == 404


def test_delete_removes_the_trainjob_jobset_jobs_and_pods_through_the_garbage_collector(
        on_trainer: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster, ns = on_trainer, on_trainer.ns
    ns.create_job(job_body('short'))
    cluster.running_pods('short', 2)
    assert cluster.jobset('short') and ns.configmaps()
    ns.delete_job('short')

    def gone() -> bool:
        jobs = ns.custom.list_namespaced_custom_object(*TRAINJOB[:2], ns.name, TRAINJOB[2])['items']
        jobsets = ns.custom.list_namespaced_custom_object(*JOBSET[:2], ns.name, JOBSET[2])['items']
        return not jobs and not jobsets and not cluster.pods('short') and not ns.configmaps()
    wait_for(gone, timeout=90, what='the garbage collector to remove TrainJob, JobSet, Jobs, pods and ConfigMap')


def test_operator_killed_mid_flight_loses_no_status_and_makes_no_second_trainjob(
        on_trainer: Cluster, trainer_operator: OperatorProcess) -> None:
    cluster, ns = on_trainer, on_trainer.ns
    ns.create_job(job_body('long'))
    cluster.running_pods('long', 2)
    ns.wait_phase('long', 'Running', timeout=60)
    first = cluster.trainjob('long')['metadata']['uid']
    assert trainer_operator.process is not None
    trainer_operator.process.kill()  # SIGKILL: no clean shutdown, as when its node dies
    trainer_operator.process.wait()

    # While it is away the training finishes, and another job is created.
    cluster.end_pods('long', 0)
    wait_for(lambda: any(c['type'] == 'Complete' and c['status'] == 'True' for c in
                         cluster.trainjob('long').get('status', {}).get('conditions', [])),
             timeout=90, what='Trainer to see the run complete')
    ns.create_job(job_body('other', nodes=1))
    assert ns.phase('long') == 'Running'  # nobody mirrored it yet

    trainer_operator.restart()
    done = ns.wait_phase('long', 'Succeeded', timeout=60)
    assert done['status']['backend'] == 'TrainJob' and cluster.trainjob('long')['metadata']['uid'] == first
    cluster.running_pods('other', 1)
    names = sorted(t['metadata']['name'] for t in
                   ns.custom.list_namespaced_custom_object(*TRAINJOB[:2], ns.name, TRAINJOB[2])['items'])
    assert names == ['long', 'other']
    assert trainer_operator.metrics()['kubefusion_operator_children_created_total{kind="TrainJob"}'] == 1


def test_a_trainjob_pod_reports_progress_with_its_own_token_into_the_job(
        on_trainer: Cluster, trainer_operator: OperatorProcess, tmp_path: Path) -> None:
    """Live progress on the TrainJob backend: the pod Trainer and JobSet make carries the endpoint and the
    job-audience token the operator put in the TrainJob (trainer.env, runtime patch), and a report sent with a
    token bound to that pod (the trainer's own sender) shows in ``kubectl get mmtj``."""
    from kubefusion.train import progress as live

    from .test_progress import audience, pod_token

    ns = on_trainer.ns
    ns.create_job(job_body('reporting', nodes=1))
    (pod,) = on_trainer.running_pods('reporting', 1)
    (node,) = pod.spec.containers
    env = {e.name: e.value for e in node.env}
    path = f'/apis/{audience(ns.name, "reporting")}'
    told = on_trainer.installed.operator_env['KUBEFUSION_OPERATOR_PROGRESS_URL']
    assert env['KUBEFUSION_PROGRESS_URL'] == told + path
    assert '/var/run/secrets/kubefusion.io/progress' in {m.mount_path for m in node.volume_mounts}
    (volume,) = [v for v in pod.spec.volumes if v.name == 'progress-token']
    assert volume.projected.sources[0].service_account_token.audience == audience(ns.name, 'reporting')
    (init,) = pod.spec.init_containers
    assert not [e for e in init.env or [] if e.name.startswith('KUBEFUSION_PROGRESS')]

    token = tmp_path / 'token'
    token.write_text(pod_token(ns, pod, audience(ns.name, 'reporting')))
    tracker = live.ProgressTracker(['fused'], steps_per_stage=100, epochs=1)
    tracker.stage_started('fused', 0, 0)
    tracker.steps_done(5, 0, 50.0)
    live.OperatorEndpoint(f'http://127.0.0.1:{trainer_operator.progress_port}{path}', str(token)).deliver(
        tracker.report())
    progress = wait_for(lambda: (ns.job('reporting').get('status') or {}).get('progress'), 40, 'the report written')
    assert progress['step'] == 5 and progress['stale'] is False
    (row,) = ns.table('mmtj', 'reporting')
    assert (row['PHASE'], row['PROGRESS']) == ('Running', '5%')


@pytest.mark.parametrize('verb, what, answer', [
    ('create', 'trainjobs.trainer.kubeflow.org', 'yes'), ('patch', 'trainjobs.trainer.kubeflow.org', 'yes'),
    ('get', 'clustertrainingruntimes.trainer.kubeflow.org', 'yes'),
    ('delete', 'trainjobs.trainer.kubeflow.org', 'no'), ('update', 'trainjobs.trainer.kubeflow.org', 'no'),
    ('patch', 'trainjobs.trainer.kubeflow.org --subresource=status', 'no'),
    ('create', 'clustertrainingruntimes.trainer.kubeflow.org', 'no'),
    ('patch', 'clustertrainingruntimes.trainer.kubeflow.org', 'no'),
    ('list', 'clustertrainingruntimes.trainer.kubeflow.org', 'no'),
    ('create', 'trainingruntimes.trainer.kubeflow.org', 'no'), ('get', 'jobsets.jobset.x-k8s.io', 'no'),
    ('create', 'jobsets.jobset.x-k8s.io', 'no'), ('get', 'jobs.batch', 'no'), ('create', 'jobs.batch', 'no'),
])
def test_on_trainer_the_operator_may_make_trainjobs_and_read_its_runtime_and_nothing_more(
        trainer_only: Installed, verb: str, what: str, answer: str) -> None:
    """Least privilege where Trainer's kinds are served: no delete or status write of a TrainJob (Trainer owns
    its status, the garbage collector removes it), the runtime only read by name, nothing of what Trainer and
    JobSet make from it."""
    done = trainer_only.cp.kubectl('auth', 'can-i', verb, *what.split(), '-A',
                                   kubeconfig=trainer_only.operator_kubeconfig, check=False)
    assert done.stdout.strip() == answer, (verb, what, done.stdout, done.stderr)


# --------------------------------------------------------------------------- nothing installed, then Trainer


def test_nothing_installed_says_backend_unavailable_then_the_job_runs_once_trainer_is_installed(
        tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> None:
    cp = started_plane(tmp_path_factory, 'bare')
    try:
        installed = install_chart(cp, tmp_path_factory.mktemp('bare-operator'), *CHART_VALUES)
        assert 'ClusterTrainingRuntime kubefusion was not installed' in installed.helm_output
        with namespace_on(installed, request) as ns:
            with operator_for(installed, tmp_path_factory.mktemp('bare-log') / 'operator.log') as operator:
                ns.create_job(job_body('early'))
                missing = wait_for(lambda: (c := condition(ns.job('early'), 'BackendAvailable')).get('status')
                                   == 'False' and c, timeout=60, what='BackendUnavailable')
                assert missing['reason'] == 'BackendUnavailable'
                assert 'kubeflow/trainer.git' in missing['message'] and 'training-operator.git' in missing['message']
                assert ns.job('early')['status']['phase'] == 'Pending'

                kubeflow.install_jobset(cp)
                kubeflow.install_trainer(cp)
                wait_for(lambda: 'ClusterTrainingRuntime kubefusion it runs on is missing'
                         in condition(ns.job('early'), 'BackendAvailable').get('message', ''), timeout=60,
                         what='the runtime to be named as what is missing')
                # What the NOTES said: helm upgrade once Trainer is there adds the runtime.
                done = cp.kubectl('get', 'clustertrainingruntimes', '-o', 'name').stdout
                assert done.strip() == ''
                helm(cp, 'upgrade', 'kubefusion', str(REPO / 'charts' / 'kubefusion'), '--namespace',
                     'kubefusion-system', '--reuse-values')
                cluster = Cluster(installed, ns)
                wait_for(lambda: cluster.trainjob('early'), timeout=60, what='the TrainJob once the runtime is there')
                cluster.running_pods('early', 2)
                running = ns.wait_phase('early', 'Running', timeout=60)
                assert condition(running, 'BackendAvailable')['status'] == 'True'
                assert running['status']['backend'] == 'TrainJob'
                assert operator.metrics()['kubefusion_operator_reconcile_errors_total{reason="BackendUnavailable"}'] >= 1
    finally:
        cp.stop()


# ----------------------------------------------------------------------- both backends, queued through Kueue


@pytest.fixture(scope='module')
def with_kueue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The training operator v1 and Trainer v2 (with JobSet) side by side, and Kueue with both integrations on
    (Kueue 0.19 ships with its PyTorchJob integration off)."""
    yield from plane_with(tmp_path_factory, 'kueue', lambda cp: cp.install_training_operator(),
                          kubeflow.install_jobset, kubeflow.install_trainer,
                          lambda cp: kubeflow.install_kueue(cp, kubeflow.KUEUE_FRAMEWORKS))


@pytest.fixture()
def on_kueue(with_kueue: Installed, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with namespace_on(with_kueue, request) as ns:
        yield Cluster(with_kueue, ns)


def queue_objects(namespace: str, gpus: int) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue with ``gpus`` GPUs of quota for ``namespace``, and LocalQueue team-a."""
    return [
        {'apiVersion': '/'.join(KUEUE), 'kind': 'ResourceFlavor', 'metadata': {'name': 'gpu'}},
        {'apiVersion': '/'.join(KUEUE), 'kind': 'ClusterQueue', 'metadata': {'name': f'{namespace}-gpus'},
         'spec': {'namespaceSelector': {'matchLabels': {'kubernetes.io/metadata.name': namespace}},
                  'resourceGroups': [{'coveredResources': ['nvidia.com/gpu'], 'flavors': [
                      {'name': 'gpu', 'resources': [{'name': 'nvidia.com/gpu', 'nominalQuota': gpus}]}]}]}},
        {'apiVersion': '/'.join(KUEUE), 'kind': 'LocalQueue', 'metadata': {'name': 'team-a', 'namespace': namespace},
         'spec': {'clusterQueue': f'{namespace}-gpus'}},
    ]


def test_queued_jobs_wait_until_a_cluster_queue_with_gpu_quota_admits_them_on_both_backends(
        on_kueue: Cluster, with_kueue: Installed, tmp_path: Path) -> None:
    cluster, ns = on_kueue, on_kueue.ns
    cluster.cp.apply(*queue_objects(ns.name, gpus=0))
    with operator_for(with_kueue, tmp_path / 'operator.log') as operator:
        ns.create_job(job_body('v1', backend='PyTorchJob', scheduling={'queue': 'team-a'}))
        ns.create_job(job_body('v2', backend='TrainJob', scheduling={'queue': 'team-a'}))
        for name in ('v1', 'v2'):
            held = wait_for(lambda name=name: 'insufficient quota' in (ns.job(name).get('status') or {}).get(
                'message', '') and ns.job(name), timeout=90, what=f'{name} to be held by Kueue')
            assert (held['status']['phase'], held['status']['reason']) == ('Suspended', 'Queued')
            assert 'LocalQueue team-a' in held['status']['message'] and 'nvidia.com/gpu' in held['status']['message']
            assert (condition(held, 'Admitted')['status'], condition(held, 'Admitted')['reason']) == ('False', 'Queued')
        assert ns.pytorchjob('v1')['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a'
        assert cluster.trainjob('v2')['spec']['suspend'] is True  # Kueue's webhook, not the operator, set it
        assert ns.pods() == [] and cluster.pods('v2') == []
        operator.wait_resync()  # the operator does not fight the queue
        assert ns.pytorchjob('v1')['spec']['runPolicy']['suspend'] is True

        # Quota for both jobs (2 nodes x 4 GPUs each): Kueue admits them, they run.
        cluster.cp.kubectl('patch', 'clusterqueue', f'{ns.name}-gpus', '--type', 'json', '-p', json.dumps(
            [{'op': 'replace', 'path': '/spec/resourceGroups/0/flavors/0/resources/0/nominalQuota', 'value': 16}]))
        ns.running_pods('v1', 2)
        cluster.running_pods('v2', 2)
        for name in ('v1', 'v2'):
            running = ns.wait_phase(name, 'Running', timeout=90)
            assert (condition(running, 'Admitted')['status'], condition(running, 'Admitted')['reason']) == \
                ('True', 'Admitted')
        patches = [p['manager'] for p in cluster.trainjob('v2')['spec']['runtimePatches']]
        assert patches == ['kubefusion.io/operator', 'kueue.x-k8s.io/manager']  # Kueue's own patch kept

        # Suspending a queued job goes through its Workload: Kueue keeps it out and releases the quota.
        ns.patch_job('v2', {'spec': {'runPolicy': {'suspend': True}}})
        suspended = ns.wait_phase('v2', 'Suspended', timeout=60)
        assert condition(suspended, 'Admitted')['reason'] == 'Deactivated'
        workloads = ns.custom.list_namespaced_custom_object(*KUEUE, ns.name, 'workloads')['items']
        (workload,) = [w for w in workloads if w['metadata']['ownerReferences'][0]['kind'] == 'TrainJob']
        assert workload['spec']['active'] is False
        wait_for(lambda: cluster.pods('v2') == [], timeout=60, what='the suspended TrainJob\'s pods to go')
        operator.wait_resync()
        assert ns.phase('v2') == 'Suspended'  # Kueue did not start it again
    allowed, denied = operator_requests(cluster.cp)
    assert denied == []
    assert {('kueue.x-k8s.io/workloads', 'list'), ('kueue.x-k8s.io/workloads', 'patch')} <= allowed


def test_both_backends_installed_auto_takes_the_preference_and_an_unrecorded_trainjob_is_adopted(
        on_kueue: Cluster, with_kueue: Installed, tmp_path: Path) -> None:
    cluster, ns = on_kueue, on_kueue.ns
    # One node of one GPU each: every job of this test runs at once on the cluster's 16 GPUs, beside nothing else.
    small = {'nodes': 1, 'gpus': 1}
    with operator_for(with_kueue, tmp_path / 'default.log'):  # the chart's default: PyTorchJob preferred
        ns.create_job(job_body('auto', **small))
        ns.create_job(job_body('named', backend='TrainJob', **small))
        wait_for(lambda: ns.pytorchjob('auto'), timeout=60, what='Auto: a PyTorchJob')
        wait_for(lambda: cluster.trainjob('named'), timeout=60, what='spec.backend TrainJob: a TrainJob')

    # helm upgrade --set operator.preferredBackend=TrainJob: new jobs take a TrainJob, jobs that have their child
    # keep their backend.
    preferring_chart = install_chart(cluster.cp, tmp_path, *CHART_VALUES,
                                     '--set', 'operator.preferredBackend=TrainJob')
    try:
        assert preferring_chart.operator_env['KUBEFUSION_OPERATOR_PREFERRED_BACKEND'] == 'TrainJob'
        with operator_for(preferring_chart, tmp_path / 'preferring.log') as preferring:
            ns.create_job(job_body('preferred', **small))
            wait_for(lambda: cluster.trainjob('preferred'), timeout=60,
                     what='Auto with TrainJob preferred: a TrainJob')
            for name in ('auto', 'named', 'preferred'):
                ns.wait_phase(name, 'Running', timeout=90)
            # The dashboard and the alerts mean the same on both: the chart's PodMonitor selects the pods of either
            # child, rank 0 on the same port, and their series carry the same namespace and job_name labels.
            monitor = pod_monitor(cluster.cp)
            (master,), (node,) = ns.running_pods('auto', 1), cluster.running_pods('named', 1)
            assert scraped(monitor, master) == {'metrics-0': METRICS_PORT}
            assert scraped(monitor, node)['metrics-0'] == METRICS_PORT
            assert series_labels(master) == {'namespace': ns.name, 'job_name': 'auto'}
            assert series_labels(node) == {'namespace': ns.name, 'job_name': 'named'}
            preferring.wait_resync()
            assert {n: ns.job(n)['status']['backend'] for n in ('auto', 'named', 'preferred')} == \
                {'auto': 'PyTorchJob', 'named': 'TrainJob', 'preferred': 'TrainJob'}
            assert [p['metadata']['name'] for p in ns.pytorchjobs()] == ['auto']
    finally:
        install_chart(cluster.cp, tmp_path, *CHART_VALUES)  # the chart's default again, for the next tests

    # An operator that made a TrainJob and died before recording it: the next one (preferring PyTorchJob, with
    # both served) finds the TrainJob and adopts it, and never makes a PyTorchJob beside it.
    created = ns.create_job(job_body('twice', **small))
    spec = {**job_body('twice', **small)['spec'], 'image': TRAINER_IMAGE}
    body = TRAINJOB_BACKEND.build(spec, {**created['metadata'], 'namespace': ns.name}, runtime='kubefusion')
    body['metadata']['annotations'] = {'kubefusion.io/applied-spec': json.dumps(spec, sort_keys=True)}
    ns.custom.create_namespaced_custom_object(*TRAINJOB[:2], ns.name, TRAINJOB[2], body)
    with operator_for(with_kueue, tmp_path / 'restarted.log') as operator:
        adopted = wait_for(lambda: (ns.job('twice').get('status') or {}).get('backend') and ns.job('twice'),
                           timeout=60, what='the unrecorded TrainJob to be adopted')
        assert (adopted['status']['backend'], adopted['status']['trainJob']) == ('TrainJob', 'twice')
        cluster.running_pods('twice', 1)
        ns.wait_phase('twice', 'Running', timeout=60)
        operator.wait_resync()
        assert [p['metadata']['name'] for p in ns.pytorchjobs()] == ['auto']
        assert operator.metrics().get('kubefusion_operator_children_created_total{kind="PyTorchJob"}', 0) == 0


def test_trainjob_example_waits_in_its_queue_then_runs(with_kueue: Installed, tmp_path: Path) -> None:
    """examples/trainjob.yaml as it is: the TrainJob backend by name, through Kueue's LocalQueue team-a."""
    example = yaml.safe_load((REPO / 'examples' / 'trainjob.yaml').read_text())
    namespace, name = example['metadata']['namespace'], example['metadata']['name']
    ns = make_namespace(with_kueue.cp, namespace, ('demo-runs',))
    cluster = Cluster(with_kueue, ns)
    try:
        with_kueue.cp.apply(*queue_objects(namespace, gpus=2))
        with operator_for(with_kueue, tmp_path / 'operator.log') as operator:
            with_kueue.cp.kubectl('apply', '-f', str(REPO / 'examples' / 'trainjob.yaml'))
            pods = cluster.running_pods(name, 2)
            assert all(p.spec.containers[0].resources.limits['nvidia.com/gpu'] == '1' for p in pods)
            running = ns.wait_phase(name, 'Running', timeout=60)
            assert running['status']['backend'] == 'TrainJob' and condition(running, 'Admitted')['status'] == 'True'
            cluster.end_pods(name, 0)
            ns.wait_phase(name, 'Succeeded', timeout=90)
    finally:
        retire(with_kueue.cp, namespace)
