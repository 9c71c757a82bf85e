"""The trainer's libraries load together in the order the trainer uses them."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_tensorflow_then_transformers_models_do_not_crash_the_process():
    # The order of `kubefusion train`: the tf.data pipeline imports TensorFlow, then the model imports
    # transformers, which reaches torch._dynamo (and Triton, unless kubefusion marked it absent).
    code = ("import kubefusion, tensorflow, transformers.modeling_utils, torch._dynamo; "
            "from torch.utils._triton import has_triton_package; print('loaded', has_triton_package())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "loaded False" in done.stdout
