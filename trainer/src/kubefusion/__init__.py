"""kubefusion trainer: multimodal (image + text + numeric) classification.

Layout: ``data`` (reading, joining, tf.data), ``preprocess`` (TF graph -> ONNX), ``model`` (encoders, fusion),
``train`` (DDP loop, checkpoints, evaluation, metrics), ``serve`` (ONNX export and prediction),
``local`` (runs a job file on one machine), ``cli`` (the ``kubefusion`` command).
"""

__version__ = "0.1.0"

import sys as _sys

# TensorFlow 2.21 and Triton 3.7 (pulled in by torch) each carry their own LLVM; Triton loaded after TensorFlow runs its static
# initialisers against TensorFlow's LLVM symbols and segfaults the process. Nothing here uses Triton (no torch.compile, no custom kernels), but transformers reaches it through
# torch._dynamo on import; marking it absent makes torch treat Triton as not installed. A process that
# imported Triton before kubefusion keeps it (that load order is safe).
if "triton" not in _sys.modules:
    _sys.modules["triton"] = None  # type: ignore[assignment]

