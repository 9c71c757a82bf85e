"""Fixtures for the end-to-end tests: a Kubernetes API emulator on 127.0.0.1 and clients bound to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from .emulator import EmulatorThread
from .harness import NAMESPACE, REPO, Cluster, OperatorProcess


@pytest.fixture()
def k8s_api() -> Iterator[EmulatorThread]:
    """A fresh emulator per test (starting one takes milliseconds), served on a free port of 127.0.0.1."""
    with EmulatorThread() as api:
        yield api


@pytest.fixture()
def kubeconfig(k8s_api: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = k8s_api.write_kubeconfig(tmp_path / 'kubeconfig')
    monkeypatch.setenv('KUBECONFIG', str(path))
    return path


@pytest.fixture()
def api_client(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    """The official Python client, configured from the kubeconfig (not from the process-wide default)."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


os.environ.setdefault('NO_PROXY', '127.0.0.1,localhost')


@pytest.fixture()
def bare_cluster(k8s_api: EmulatorThread, api_client: kubernetes.client.ApiClient) -> Cluster:
    """The emulator with the MultimodalTrainJob CRD (manifests/crd.yaml) and namespace ml-team, no Kubeflow."""
    c = Cluster(k8s_api, api_client)
    for document in yaml.safe_load_all((REPO / 'manifests' / 'crd.yaml').read_text()):
        if document:
            c.crds.create_custom_resource_definition(document)
    c.create_namespace(NAMESPACE)
    return c


@pytest.fixture()
def cluster(bare_cluster: Cluster) -> Cluster:
    """A cluster with Kubeflow's training operator (its PyTorchJob CRD) installed before the operator starts."""
    bare_cluster.install_kubeflow()
    return bare_cluster


@pytest.fixture()
def operator(kubeconfig: Path, tmp_path: Path, cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, tmp_path / 'operator.log')
    process.start()
    yield process
    process.stop()
    if request.node.rep_call.failed if hasattr(request.node, 'rep_call') else False:
        print(f'--- operator log (tail) ---\n{process.tail()}')


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'rep_{report.when}', report)

