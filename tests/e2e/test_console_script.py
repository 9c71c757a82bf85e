"""The ``kubefusion-operator`` console script as a user meets it: help, bad settings, no cluster, a slim import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(sys.executable).parent / 'kubefusion-operator')


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env={'PATH': '/usr/bin:/bin', 'HOME': '/nonexistent', **(env or {})})


def test_help_names_the_flags() -> None:
    done = run('--help')
    assert done.returncode == 0
    for flag in ('--namespace', '--liveness', '--metrics-port', '--peering', '--backend-retry-seconds'):
        assert flag in done.stdout


def test_a_bad_setting_is_one_line_not_a_traceback() -> None:
    done = run(env={'KUBEFUSION_OPERATOR_METRICS_PORT': 'eighty'})
    assert done.returncode == 2
    assert done.stderr.strip() == "kubefusion-operator: KUBEFUSION_OPERATOR_METRICS_PORT: not a valid int: 'eighty'"


def test_no_cluster_credentials_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    done = run(env={'KUBECONFIG': str(tmp_path / 'missing')})
    assert done.returncode == 1
    assert done.stderr.startswith('kubefusion-operator: no Kubernetes credentials') and 'Traceback' not in done.stderr


def test_the_operator_imports_neither_torch_nor_tensorflow_nor_the_trainer() -> None:
    probe = ('import sys, kubefusion_operator.__main__, kubefusion_operator.handlers; '
             'print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "tensorflow", "kubefusion"}))')
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_settings_come_from_the_environment_and_back_off_exponentially() -> None:
    from kubefusion_operator.options import Options

    options = Options.from_env({'KUBEFUSION_OPERATOR_BACKEND_RETRY_SECONDS': '10',
                                'KUBEFUSION_OPERATOR_BACKEND_RETRY_MAX_SECONDS': '60',
                                'KUBEFUSION_OPERATOR_METRICS_PORT': '9090', 'UNRELATED': 'x'})
    assert options.metrics_port == 9090
    assert [options.backend_retry_delay(retry) for retry in range(5)] == [10, 20, 40, 60, 60]
    assert Options.from_env(options.to_env()) == options
    with pytest.raises(ValueError, match='KUBEFUSION_OPERATOR_RESYNC_SECONDS: must be > 0'):
        Options.from_env({'KUBEFUSION_OPERATOR_RESYNC_SECONDS': '0'})
