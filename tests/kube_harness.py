"""What the operator's end-to-end tiers share: the real ``kubefusion-operator`` as a subprocess, a job body, a
condition lookup and polling. ``tests/cluster`` runs it against a real control plane, ``tests/e2e`` against the
API emulator (faults a real server cannot produce on demand)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import requests

REPO = Path(__file__).resolve().parents[1]


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = 'condition') -> Any:
    """Poll until ``check()`` returns something truthy (API errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except kubernetes.client.ApiException as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f'timed out after {timeout}s waiting for {what}; last: {last!r}')


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1: all bound at once, so the kernel never hands out one twice
    (picking them one by one could give the metrics and liveness endpoints the same port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def job_body(name: str, *, nodes: int = 2, gpus: int = 4, suspend: bool = False, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        'apiVersion': 'kubefusion.io/v1alpha1', 'kind': 'MultimodalTrainJob', 'metadata': {'name': name},
        'spec': {'image': 'registry.example.com/kubefusion-trainer:0.1.0',
                 'data': {'source': {'persistentVolumeClaim': {'claimName': 'datasets'}}, 'path': 'products/'},
                 'resources': {'nodes': nodes, 'gpusPerNode': gpus},
                 # Several nodes need a volume all pods share for checkpoints (a ReadWriteMany claim).
                 'storage': {'checkpoints': {'persistentVolumeClaim': {'claimName': 'runs'}}},
                 'runPolicy': {'suspend': suspend}}}
    body['spec'].update(spec)
    return body


class OperatorProcess:
    """The real ``kubefusion-operator`` console script as a subprocess."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        """``kubeconfig``: the operator's credentials (an RBAC-restricted token, or the admin one); ``args``:
        more command-line flags (``--namespace``); ``env``: ``KUBEFUSION_OPERATOR_*`` settings, as the
        Deployment sets them (none is inherited from the test's own environment)."""
        self.kubeconfig, self.log, self.args, self.env = kubeconfig, log, args, dict(env or {})
        self.metrics_port, self.liveness_port, self.progress_port = free_ports(3)
        self.resync_seconds = 3.0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        script = shutil.which('kubefusion-operator', path=str(Path(sys.executable).parent)) or 'kubefusion-operator'
        env = {k: v for k, v in os.environ.items() if not k.startswith('KUBEFUSION_OPERATOR_')}
        env.update(KUBECONFIG=str(self.kubeconfig), NO_PROXY='127.0.0.1',
                   KUBEFUSION_OPERATOR_BACKEND_RETRY_MAX_SECONDS='1', **self.env)
        with self.log.open('ab') as log:
            self.process = subprocess.Popen(
                [script, '--liveness', f'http://127.0.0.1:{self.liveness_port}/healthz',
                 '--metrics-port', str(self.metrics_port), '--metrics-address', '127.0.0.1',
                 '--progress-port', str(self.progress_port), '--progress-address', '127.0.0.1',
                 '--backend-retry-seconds', '0.5', '--resync-seconds', str(self.resync_seconds), *self.args],
                env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                return requests.get(f'http://127.0.0.1:{self.liveness_port}/healthz', timeout=1).ok
            except requests.RequestException:
                return False
        wait_for(healthy, timeout, 'the operator to report healthy')

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.metrics_port, self.liveness_port, self.progress_port = free_ports(3)  # the old process's ports may linger in TIME_WAIT
        self.start()

    def reconciliations(self) -> float:
        return self.metrics().get('kubefusion_operator_reconcile_duration_seconds_count', 0.0)

    def wait_resync(self, timeout: float = 20) -> None:
        """Return once a reconciliation has finished after a whole resync period from now: every job has been
        reconciled again since the call, so a negative check ("nothing changed") afterwards means something."""
        time.sleep(self.resync_seconds)
        self.wait_reconciled_since(self.reconciliations(), timeout)

    def wait_reconciled_since(self, seen: float, timeout: float = 20) -> None:
        """Wait until a reconciliation or status mirroring has finished since the count was ``seen``."""
        wait_for(lambda: self.reconciliations() > seen, timeout, f'a reconciliation after the {seen:.0f}th')

    def metrics(self) -> dict[str, float]:
        """The scraped samples, by their full name with labels: ``name{label="value"}``."""
        from prometheus_client.parser import text_string_to_metric_families
        text = requests.get(f'http://127.0.0.1:{self.metrics_port}/metrics', timeout=5).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ','.join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f'{sample.name}{{{labels}}}' if labels else sample.name] = sample.value
        return samples

    def tail(self, lines: int = 60) -> str:
        return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:]) if self.log.exists() else ''


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of that type, or {} while there is none."""
    return next((c for c in (job.get('status') or {}).get('conditions', []) if c['type'] == type_), {})
