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
    for done in (synth, validate):  # TensorFlow's start-up chatter stays out of the user's terminal
        assert not [line for line in done.stderr.splitlines() if "oneDNN" in line or "absl" in line], done.stderr


def test_validate_does_not_import_torch_or_transformers(id_dataset):
    # The fixture, not `from conftest import ...`: with several conftest.py files that import is ambiguous.
    root = id_dataset(4)
    code = ("import sys, io, contextlib; from kubefusion.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): rc = main(['data', 'validate', {str(root)!r}])\n"
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.stdout.split("\n")[-2] == "0 []", done.stderr


def test_an_import_error_message_still_reaches_stderr(tmp_path):
    """The quiet import filters two known lines only: anything else TensorFlow prints while loading shows."""
    code = ("import os, sys\n"
            "from kubefusion.data import _tf\n"
            "class Loud:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'tensorflow':\n"
            "            os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
            "            os.write(2, b'E0000 something real went wrong\\n')\n"
            "        return None\n"
            "sys.meta_path.insert(0, Loud())\n"
            "_tf.tensorflow()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "something real went wrong" in done.stderr
    assert "absl" not in done.stderr and "oneDNN" not in done.stderr


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_synth_to_an_unwritable_place_is_one_error_line(tmp_path, where):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "x"
    done = subprocess.run([KUBEFUSION, "data", "synth", "--out", str(out), "--samples", "5"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    expected = "exists and is not a folder" if where == "file" else f"cannot create it: {blocker} is a file"
    assert done.stderr.startswith(f"error: {out}: {expected}")
