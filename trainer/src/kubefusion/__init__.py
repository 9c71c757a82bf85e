"""kubefusion trainer: multimodal (image + text + numeric) classification.

Layout: ``data`` (reading, joining, tf.data), ``preprocess`` (TF graph -> ONNX), ``model`` (encoders, fusion),
``train`` (DDP loop, checkpoints, evaluation, metrics), ``serve`` (ONNX export and prediction),
``local`` (runs a job file on one machine), ``cli`` (the ``kubefusion`` command).
"""

__version__ = "0.1.0"
