"""kubefusion's Kubernetes operator: a ``MultimodalTrainJob`` becomes a Kubeflow ``PyTorchJob``.

The pure parts (no I/O, no kopf) are importable on their own: :mod:`kubefusion_operator.api` (names, phases,
conditions), :mod:`kubefusion_operator.builders` (child manifests), :mod:`kubefusion_operator.status`
(PyTorchJob -> status) and :mod:`kubefusion_operator.validation`. The package never imports torch,
TensorFlow or the trainer package: its contract with the trainer is the CRD, the ConfigMap's ``job.yaml`` and
the trainer image's command line.
"""

__version__ = "0.1.0"
