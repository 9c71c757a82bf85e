"""Fixtures of the cluster tier: a real control plane (cluster/controlplane.py) shared by the whole session.

The session starts it once (a few seconds once cluster/build.py has built the binaries, which happens on first
use), installs Kubeflow's training operator with its webhook and ``helm install``s charts/kubefusion. Each test
gets a namespace of its own (with the claims jobs mount) and, through ``operator``, the real
``kubefusion-operator`` running out of cluster with the chart's ServiceAccount token, watching that namespace.
See tests/cluster/README.md for the fixtures and for running the tier against kind or k3d.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kube_harness import REPO, OperatorProcess

from .kube import Namespace

sys.path.insert(0, str(REPO / 'cluster'))
import build  # noqa: E402
import controlplane  # noqa: E402

RELEASE_NAMESPACE = 'kubefusion-system'
OPERATOR_ACCOUNT = 'kubefusion-operator'  # the chart's ServiceAccount ("<release>-operator")
OPERATOR_USER = f'system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_ACCOUNT}'
CLAIMS = ('datasets', 'runs')  # what job_body() mounts
HELM = shutil.which('helm', path=str(REPO / '.tools' / 'bin')) or shutil.which('helm') or 'helm'


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


EXTERNAL = os.environ.get('KUBEFUSION_TEST_KUBECONFIG')
"""An admin kubeconfig of a cluster to run the tier against instead of the local control plane (kind, k3d)."""


def skip_without_own_control_plane() -> None:
    """Skip (one line) where a control plane of the test's own cannot start: Go missing and no build, or the
    tier pointed at another cluster."""
    if build.find() is None and shutil.which('go') is None:
        pytest.skip('cluster tier: Go is not installed, so the control plane cannot be built (cluster/README.md)')
    if EXTERNAL:
        pytest.skip('needs a control plane of its own, not the cluster of KUBEFUSION_TEST_KUBECONFIG')


def control_plane_or_skip(root: Path, **options: Any) -> controlplane.ControlPlane:
    """A started control plane of its own under ``root`` (else skipped: :func:`skip_without_own_control_plane`)."""
    skip_without_own_control_plane()
    cp = controlplane.ControlPlane(root, **options)
    cp.start()
    return cp


def local_only(cp: Any, why: str) -> None:
    """Skip a test that needs the local control plane (its versions, its audit log) against an external one."""
    if cp.external:
        pytest.skip(f'against KUBEFUSION_TEST_KUBECONFIG: {why}')


@pytest.fixture(scope='session')
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    """etcd, kube-apiserver, controller manager, scheduler and kwok (4 fake nodes x 4 GPUs), Kubeflow's training
    operator (PyTorchJob, webhook on loopback): for the whole session. With KUBEFUSION_TEST_KUBECONFIG, that
    cluster instead, with 4 fake GPU nodes added by a local kwok (its training operator must be installed)."""
    root = tmp_path_factory.mktemp('control-plane')
    if EXTERNAL:
        if build.find() is None and shutil.which('go') is None:
            pytest.skip('cluster tier: Go is not installed, so kwok cannot be built (cluster/README.md)')
        cp: controlplane.ControlPlane = controlplane.ExternalCluster(Path(EXTERNAL), root)
        cp.start()
    else:
        cp = control_plane_or_skip(root)
    try:
        cp.install_training_operator()
        yield cp
    finally:
        cp.stop()


@dataclass
class Installed:
    """charts/kubefusion as ``helm install`` left it, and the operator's credentials and settings from it."""

    cp: Any
    helm_output: str
    operator_kubeconfig: Path  # a TokenRequest token of the chart's ServiceAccount
    operator_env: dict[str, str]  # the chart Deployment's environment (the default trainer image, ...)

    def operator(self, log: Path, *args: str) -> OperatorProcess:
        """The real ``kubefusion-operator``, out of cluster, as the chart runs it (its ServiceAccount, its
        environment); ``args``: more flags, e.g. ``--namespace``. Started; stop it when done."""
        process = OperatorProcess(self.operator_kubeconfig, log, *args, env=self.operator_env)
        process.start()
        return process


def helm(cp: Any, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([HELM, '--kubeconfig', str(cp.kubeconfig), *args], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {done.stderr.strip()}")
    return done


def install_chart(cp: Any, folder: Path, *values: str) -> Installed:
    """``helm install kubefusion charts/kubefusion`` (CRD, RBAC, ServiceAccount, Deployment; ``values``: more
    ``helm`` flags). The Deployment is scaled to 0: the operator of the tests runs out of cluster with the
    ServiceAccount's token (written under ``folder``) instead (a pod on a kwok node would run nothing)."""
    done = helm(cp, 'upgrade', '--install', 'kubefusion', str(REPO / 'charts' / 'kubefusion'), '--namespace',
                RELEASE_NAMESPACE, '--create-namespace', *values)
    cp.kubectl('-n', RELEASE_NAMESPACE, 'scale', 'deployment', '--all', '--replicas=0')
    cp.wait_established('multimodaltrainjobs.kubefusion.io')
    token = cp.service_account_kubeconfig(RELEASE_NAMESPACE, OPERATOR_ACCOUNT, folder / 'kubeconfig')
    deployment = json.loads(cp.kubectl('-n', RELEASE_NAMESPACE, 'get', 'deployment', '-o', 'json').stdout)
    (container,) = deployment['items'][0]['spec']['template']['spec']['containers']
    env = {e['name']: e['value'] for e in container.get('env', []) if 'value' in e}
    return Installed(cp, done.stdout, token, env)


@pytest.fixture(scope='session')
def installed(control_plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """charts/kubefusion installed on the session's control plane (:func:`install_chart`)."""
    return install_chart(control_plane, tmp_path_factory.mktemp('operator'))


_numbers = itertools.count(1)


def make_namespace(cp: Any, name: str, claims: tuple[str, ...] = CLAIMS) -> Namespace:
    """Namespace ``name``, with PersistentVolumeClaims ``claims`` bound (jobs mount them)."""
    cp.kubectl('create', 'namespace', name)
    if claims:
        cp.provide_claims(name, *claims)
    return Namespace(cp, name, cp.api_client())


@pytest.fixture()
def namespace(control_plane: controlplane.ControlPlane, installed: Installed,
              request: pytest.FixtureRequest) -> Iterator[Namespace]:
    """A fresh namespace for this test, with bound claims ``datasets`` and ``runs``. Afterwards its jobs are
    deleted (so the next test's operator, which watches every namespace, never sees them) and then the
    namespace (in the background: the namespace controller removes the rest)."""
    slug = re.sub(r'[^a-z0-9]+', '-', request.node.name.lower().removeprefix('test_'))[:40].strip('-')
    ns = make_namespace(control_plane, f't{next(_numbers)}-{slug}')
    yield ns
    retire(control_plane, ns.name)


def retire(cp: Any, namespace: str) -> None:
    # One request for all its jobs (they carry no finalizer: gone at once), then the namespace in the background.
    cp.kubectl('delete', '--raw', f'/apis/kubefusion.io/v1alpha1/namespaces/{namespace}/multimodaltrainjobs')
    cp.kubectl('delete', 'namespace', namespace, '--wait=false', check=False)


@pytest.fixture()
def operator(installed: Installed, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """The real ``kubefusion-operator`` as the chart runs it by default: its ServiceAccount, every namespace."""
    process = installed.operator(tmp_path / 'operator.log')
    yield process
    process.stop()
    if getattr(request.node, 'rep_call', None) is not None and request.node.rep_call.failed:
        print(f'--- operator log (tail) ---\n{process.tail()}')


@pytest.fixture()
def ml_team(control_plane: controlplane.ControlPlane, installed: Installed) -> Iterator[Namespace]:
    """Namespace ``ml-team`` as examples/job.yaml expects it: claims ``datasets`` and ``products-runs`` and the
    PriorityClass ``high``."""
    control_plane.apply({'apiVersion': 'scheduling.k8s.io/v1', 'kind': 'PriorityClass', 'metadata': {'name': 'high'},
                         'value': 100000, 'description': 'examples/job.yaml asks for it'})
    ns = make_namespace(control_plane, 'ml-team', ('datasets', 'products-runs'))
    yield ns
    retire(control_plane, ns.name)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'rep_{report.when}', report)


os.environ.setdefault('NO_PROXY', '127.0.0.1,localhost')
