"""A job's life through Kubeflow's real training operator, pods on kwok's fake GPU nodes: the phases a user
sees with ``kubectl get mmtj``, failure, suspend and resume, deletion by the garbage collector, and an operator
killed mid-flight."""

from __future__ import annotations

import pytest
import yaml

from kube_harness import REPO, OperatorProcess, condition, job_body, wait_for

from .conftest import Installed
from .kube import Namespace


def started(ns: Namespace, name: str, pods: int = 2, **spec: object) -> dict:
    """``name`` created and running: PyTorchJob made, its pods running, the job Running."""
    ns.create_job(job_body(name, nodes=pods, **spec))
    ns.running_pods(name, pods)
    return ns.wait_phase(name, 'Running')


@pytest.mark.slow
def test_a_failing_pod_fails_the_job_with_kubeflows_reason(namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'broken', runPolicy={'backoffLimit': 2})
    ns.end_pods('broken', 1, replica='master')  # the trainer crashes; the kubelet (kwok) restarts it

    failed = ns.wait_phase('broken', 'Failed', timeout=60)
    kubeflow = {c['type']: c for c in ns.pytorchjob('broken')['status']['conditions']}
    assert failed['status']['reason'] == 'PyTorchJobFailed'
    assert failed['status']['message'] == kubeflow['Failed']['message']
    assert 'backoff limit' in failed['status']['message']
    assert condition(failed, 'Failed')['status'] == 'True' and condition(failed, 'Running')['status'] == 'False'
    assert any(e.type == 'Warning' and e.reason == 'Failed' for e in ns.events('broken'))
    assert operator.metrics()['kubefusion_operator_job_failures_total{job_name="broken",namespace="%s",'
                              'reason="PyTorchJobFailed"}' % ns.name] == 1
    # cleanPodPolicy Running (the default): Kubeflow removes the pods that were still running
    wait_for(lambda: ns.pods('broken') == [] or all(p.status.phase != 'Running' for p in ns.pods('broken')),
             what='the running pods to be cleaned up')


@pytest.mark.slow
def test_suspend_stops_the_pods_and_resume_starts_them_again(namespace: Namespace,
                                                              operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'held')
    ns.patch_job('held', {'spec': {'runPolicy': {'suspend': True}}})
    suspended = ns.wait_phase('held', 'Suspended', timeout=60)
    assert suspended['status']['reason'] == 'PyTorchJobSuspended'
    assert ns.pytorchjob('held')['spec']['runPolicy']['suspend'] is True
    wait_for(lambda: ns.pods('held') == [], timeout=60, what='Kubeflow to delete the suspended pods')

    ns.patch_job('held', {'spec': {'runPolicy': {'suspend': False}}})
    ns.running_pods('held', 2)
    resumed = ns.wait_phase('held', 'Running', timeout=60)
    assert condition(resumed, 'Suspended').get('status') == 'False'
    ns.end_pods('held', 0)
    ns.wait_phase('held', 'Succeeded', timeout=60)


def test_delete_removes_every_child_through_the_garbage_collector_even_without_the_operator(
        namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'short')
    assert ns.services('short') and ns.configmaps()
    assert not ns.job('short')['metadata'].get('finalizers')  # nothing waits for the operator
    operator.stop()  # uninstalled, or down: deleting a job (or its namespace) must not hang
    ns.kubectl('delete', 'mmtj', 'short', '--wait', '--timeout=20s')
    wait_for(lambda: not ns.pytorchjobs() and not ns.configmaps() and not ns.pods() and not ns.services(),
             timeout=60, what='the garbage collector to remove the PyTorchJob, ConfigMap, pods and Services')


@pytest.mark.slow
def test_operator_killed_mid_flight_loses_no_status_and_makes_no_second_child(
        namespace: Namespace, installed: Installed, operator: OperatorProcess) -> None:
    ns = namespace
    started(ns, 'long')
    first = ns.pytorchjob('long')['metadata']['uid']
    assert operator.process is not None
    operator.process.kill()  # SIGKILL: no clean shutdown, as when its node dies
    operator.process.wait()

    # While it is away the training finishes, and another job is created.
    ns.end_pods('long', 0)
    wait_for(lambda: {c['type']: c['status'] for c in ns.pytorchjob('long').get('status', {}).get('conditions', [])}
             .get('Succeeded') == 'True', timeout=60, what='Kubeflow to see the run succeed')
    ns.create_job(job_body('other', nodes=1))
    assert ns.phase('long') == 'Running'  # nobody mirrored it yet

    operator.restart()
    done = ns.wait_phase('long', 'Succeeded')
    assert done['status']['reason'] == 'PyTorchJobSucceeded'
    assert ns.pytorchjob('long')['metadata']['uid'] == first
    ns.running_pods('other', 1)
    assert sorted(p['metadata']['name'] for p in ns.pytorchjobs()) == ['long', 'other']
    assert sorted(c.metadata.name for c in ns.configmaps()) == ['long-config', 'other-config']
    metrics = operator.metrics()
    assert metrics['kubefusion_operator_children_created_total{kind="PyTorchJob"}'] == 1  # only `other`'s


@pytest.mark.slow
def test_local_demo_job_runs_on_the_cluster_with_the_charts_default_image(
        namespace: Namespace, operator: OperatorProcess, installed: Installed) -> None:
    ns = namespace
    assert ns.kubectl('apply', '-f', str(REPO / 'examples' / 'local-job.yaml')).returncode == 0
    demo = yaml.safe_load((REPO / 'examples' / 'local-job.yaml').read_text())
    pods = ns.running_pods('demo', demo['spec']['resources']['nodes'])
    image = installed.operator_env['KUBEFUSION_OPERATOR_DEFAULT_TRAINER_IMAGE']
    assert {c.image for p in pods for c in p.spec.containers + p.spec.init_containers
            if c.name in ('pytorch', 'preprocess')} == {image}
    ns.wait_phase('demo', 'Running')
    ns.end_pods('demo', 0)
    ns.wait_phase('demo', 'Succeeded', timeout=60)


@pytest.mark.slow
def test_the_status_follows_kubeflow_at_once_without_waiting_for_a_resync(installed: Installed,
                                                                          namespace: Namespace,
                                                                          tmp_path) -> None:
    # kwok starts pods at once, so Kubeflow reports Running while the operator is still finishing the
    # reconciliation that created the PyTorchJob: that reconciliation's status write must not undo the report.
    operator = installed.operator(tmp_path / 'operator.log', '--resync-seconds', '3600')
    try:
        names = [f'quick-{i}' for i in range(4)]
        for name in names:  # queued (no Kueue here): the reconciliation also looks for a Workload, as in the example
            namespace.create_job(job_body(name, nodes=1, scheduling={'queue': 'team-a'}))
        for name in names:
            namespace.running_pods(name, 1)
            namespace.wait_phase(name, 'Running', timeout=20)
    finally:
        operator.stop()
