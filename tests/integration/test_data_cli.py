"""The data commands as a user runs them: separate processes, real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KUBEFUSION = str(Path(sys.executable).with_name("kubefusion"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_synth_then_validate_reports_every_record_joined(tmp_path):
    out = tmp_path / "d"
    synth = subprocess.run([KUBEFUSION, "data", "synth", "--out", str(out), "--samples", "2000"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert synth.returncode == 0, synth.stderr
    assert "all three 0.9738" in synth.stdout
    validate = subprocess.run([KUBEFUSION, "data", "validate", str(out), "--json"],
                              capture_output=True, text=True, env=ENV, timeout=300)
    assert validate.returncode == 0, validate.stderr
    report = json.loads(validate.stdout)
    assert report["joined"] == 2000 and report["bad_total"] == 0 and report["ood"]["joined"] == 400


def test_validate_does_not_import_torch_or_transformers(tmp_path):
    from conftest import id_coded_dataset

    root = id_coded_dataset(tmp_path / "d", 4)
    code = ("import sys, io, contextlib; from kubefusion.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): rc = main(['data', 'validate', {str(root)!r}])\n"
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.stdout.split("\n")[-2] == "0 []", done.stderr
