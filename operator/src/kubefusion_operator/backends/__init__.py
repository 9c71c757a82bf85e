"""The Kubeflow APIs a MultimodalTrainJob runs on, one module per backend behind one interface
(:class:`~kubefusion_operator.backends.base.Backend`): ``PyTorchJob`` (training operator v1) and ``TrainJob``
(Trainer v2 on JobSet)."""

from kubefusion_operator import api
from kubefusion_operator.backends.base import Backend, Observed, choose
from kubefusion_operator.backends.pytorchjob import PYTORCHJOB, build_pytorchjob, run_policy_patch
from kubefusion_operator.backends.trainjob import TRAINJOB, build_trainjob, runtime_conflicts

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (PYTORCHJOB, TRAINJOB)}
"""Every backend by its ``spec.backend`` name, in the order ``Auto`` considers them."""

__all__ = ["BACKENDS", "PYTORCHJOB", "TRAINJOB", "Backend", "Observed", "build_pytorchjob", "build_trainjob",
           "choose", "run_policy_patch", "runtime_conflicts", "unavailable_message"]


def unavailable_message(requested: str | None, served: dict[str, bool], runtime: str) -> str:
    """Why no backend ``requested`` (a backend's name, or ``Auto``) may use is available, and how to install one.

    ``served`` maps each backend considered to whether its API is served; a TrainJob backend that is served is
    unavailable only for want of the ClusterTrainingRuntime ``runtime``."""
    wanted = [BACKENDS[requested]] if requested in BACKENDS else list(BACKENDS.values())

    def why(backend: Backend) -> str:
        if served.get(backend.name):
            return (f"{backend.api_version} {backend.kind} is served but the {api.CLUSTER_TRAINING_RUNTIME_KIND} "
                    f"{runtime} it runs on is missing")
        return f"{backend.api_version} {backend.kind} is not served"

    if len(wanted) == 1:
        head = f"spec.backend is {wanted[0].name} and {why(wanted[0])} by this cluster: install {wanted[0].install}"
    else:
        head = ("no backend is available (" + "; ".join(why(b) for b in wanted) + "): install "
                + ", or ".join(b.install for b in reversed(wanted)))
    return head + "; retrying with back-off"
