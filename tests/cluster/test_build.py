"""cluster/go.mod's replace block is what cluster/replaces.py derives from k8s.io/kubernetes' own go.mod."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kube_harness import REPO

pytestmark = pytest.mark.skipif(shutil.which('go') is None, reason='cluster tier: Go is not installed')
SCRIPT = REPO / 'cluster' / 'replaces.py'


def check(go_mod: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), '--check', '--go-mod', str(go_mod)], capture_output=True,
                          text=True, timeout=300)


def test_committed_replaces_match_the_generator() -> None:
    done = check(REPO / 'cluster' / 'go.mod')
    assert done.returncode == 0, done.stderr


def test_a_drifted_replace_block_is_named(tmp_path: Path) -> None:
    text = (REPO / 'cluster' / 'go.mod').read_text()
    drifted = '\n'.join(line for line in text.splitlines() if 'k8s.io/kubectl =>' not in line)
    drifted = drifted.replace('k8s.io/api => k8s.io/api v0.', 'k8s.io/api => k8s.io/api v9.')
    (tmp_path / 'go.mod').write_text(drifted)
    done = check(tmp_path / 'go.mod')
    assert done.returncode == 1
    assert 'missing k8s.io/kubectl' in done.stderr and 'k8s.io/api => k8s.io/api v9.' in done.stderr
    assert 'run python3 cluster/replaces.py' in done.stderr
