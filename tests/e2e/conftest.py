"""Fixtures for the end-to-end tests: a Kubernetes API emulator on 127.0.0.1 and clients bound to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from .emulator import EmulatorThread


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
