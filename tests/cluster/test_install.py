"""What a platform engineer meets first: the control plane's versions, ``helm install``, the CRD as kubectl shows
it, and a job from examples/ through Kubeflow's real training operator onto (simulated) GPU nodes."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from kube_harness import REPO, OperatorProcess, condition, wait_for

from .conftest import Installed, local_only
from .kube import Namespace


def go_mod_version(module: str) -> str:
    match = re.search(rf'^\s*(?:require\s+)?{re.escape(module)} (v\S+)', (REPO / 'cluster' / 'go.mod').read_text(), re.MULTILINE)
    assert match, module
    return match.group(1)


def test_versions_are_the_pinned_ones(control_plane) -> None:
    local_only(control_plane, 'its versions are not the pinned ones')
    kube = go_mod_version('k8s.io/kubernetes')
    versions = json.loads(control_plane.kubectl('version', '-o', 'json').stdout)
    assert versions['clientVersion']['gitVersion'] == kube
    assert versions['serverVersion']['gitVersion'] == kube
    assert control_plane.version()['gitVersion'] == kube
    major, minor = kube.lstrip('v').split('.')[:2]
    assert (versions['serverVersion']['major'], versions['serverVersion']['minor']) == (major, minor)
    etcd = subprocess.run([control_plane.binary('etcd'), '--version'], capture_output=True, text=True, check=True)
    assert f"etcd Version: {go_mod_version('go.etcd.io/etcd/server/v3').lstrip('v')}" in etcd.stdout


def test_helm_install_establishes_the_crd_with_columns_and_field_docs(control_plane, installed: Installed) -> None:
    assert 'STATUS: deployed' in installed.helm_output
    assert 'kubectl get mmtj -A -w' in installed.helm_output  # NOTES: how to watch a job
    crd = json.loads(control_plane.kubectl('get', 'crd', 'multimodaltrainjobs.kubefusion.io', '-o', 'json').stdout)
    status = {c['type']: c['status'] for c in crd['status']['conditions']}
    assert status['Established'] == 'True' and status['NamesAccepted'] == 'True'
    assert crd['status']['acceptedNames']['shortNames'] == ['mmtj']
    # The API server publishes a new CRD's OpenAPI a moment after Established: kubectl explain may miss it at first.
    explained = wait_for(lambda: (done := control_plane.kubectl('explain', 'mmtj.spec.model', check=False))
                         .returncode == 0 and done.stdout, timeout=60, what='kubectl explain mmtj.spec.model')
    ours = yaml.safe_load((REPO / 'manifests' / 'crd.yaml').read_text())
    model = ours['spec']['versions'][0]['schema']['openAPIV3Schema']['properties']['spec']['properties']['model']
    first_words = ' '.join(model['description'].split()[:6])
    assert first_words in ' '.join(explained.split())
    for field in model['properties']:
        assert re.search(rf'^\s+{field}\s', explained, re.MULTILINE), field
    assert 'No resources found' in control_plane.kubectl('get', 'kubefusion', '-A').stderr  # the category resolves


def test_operator_runs_as_the_charts_service_account(control_plane, installed: Installed) -> None:
    config = yaml.safe_load(installed.operator_kubeconfig.read_text())
    assert 'token' in config['users'][0]['user'] and 'client-certificate-data' not in config['users'][0]['user']
    who = json.loads(control_plane.kubectl('auth', 'whoami', '-o', 'json',
                                           kubeconfig=installed.operator_kubeconfig).stdout)
    assert who['status']['userInfo']['username'] == 'system:serviceaccount:kubefusion-system:kubefusion-operator'


def test_example_job_runs_on_gpu_nodes_through_the_training_operator_to_succeeded(
        ml_team: Namespace, operator: OperatorProcess) -> None:
    ns = ml_team
    example = REPO / 'examples' / 'job.yaml'
    assert ns.kubectl('apply', '-f', str(example)).stdout.strip() == 'multimodaltrainjob.kubefusion.io/products created'

    pytorchjob = wait_for(lambda: ns.pytorchjob('products'), what='the PyTorchJob')
    assert pytorchjob['metadata']['ownerReferences'][0]['kind'] == 'MultimodalTrainJob'
    assert wait_for(lambda: ns.core.read_namespaced_config_map('products-config', ns.name), what='ConfigMap')
    pods = ns.running_pods('products', 2, timeout=90)
    assert sorted(p.metadata.name for p in pods) == ['products-master-0', 'products-worker-0']
    for pod in pods:
        node = ns.core.read_node(pod.spec.node_name)
        assert node.metadata.labels['nvidia.com/gpu.product'] == 'NVIDIA-A100-SXM4-80GB'
        trainer = next(c for c in pod.spec.containers if c.name == 'pytorch')
        assert trainer.resources.limits['nvidia.com/gpu'] == '4'
        env = {e.name: e.value for e in trainer.env}
        assert env['PET_NNODES'] == '2' and env['PET_NPROC_PER_NODE'] == '4'  # what torchrun reads
    assert {s.metadata.name for s in ns.services('products')} == {'products-master-0', 'products-worker-0'}

    ns.wait_phase('products', 'Running', timeout=60)
    # Kubeflow reports Running with the Master up; the Worker's count follows in a later status write.
    running = wait_for(lambda: (job := ns.job('products'))['status'].get('active') == 2 and job, what='2 active')
    assert condition(running, 'Running')['status'] == 'True'
    (row,) = ns.table('mmtj')
    columns = [c['name'].upper() for c in yaml.safe_load((REPO / 'manifests' / 'crd.yaml').read_text())
               ['spec']['versions'][0]['additionalPrinterColumns'] if not c.get('priority')]
    assert list(row) == ['NAME', *columns]
    assert (row['NAME'], row['PHASE'], row['NODES'], row['GPUS/NODE'], row['REASON']) == \
        ('products', 'Running', '2', '4', 'PyTorchJobRunning')

    ns.end_pods('products', 0)
    done = ns.wait_phase('products', 'Succeeded', timeout=60)
    assert done['status']['reason'] == 'PyTorchJobSucceeded' and done['status']['completionTime']
    assert condition(done, 'Succeeded')['status'] == 'True'
    kubeflow = {c['type']: c for c in ns.pytorchjob('products')['status']['conditions']}
    assert condition(done, 'Succeeded')['message'] == kubeflow['Succeeded']['message']  # mirrored as Kubeflow wrote
    assert ns.table('mmtj', 'products')[0]['PHASE'] == 'Succeeded'
