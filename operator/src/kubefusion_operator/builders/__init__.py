"""Pure builders: a MultimodalTrainJob's spec and metadata in, child manifests (plain dicts) out."""

from kubefusion_operator.builders.configmap import build_configmap, trainer_job_document
from kubefusion_operator.builders.defaults import with_defaults, with_image
from kubefusion_operator.builders.pytorchjob import build_pytorchjob, run_policy_patch, world_size

__all__ = ["build_configmap", "build_pytorchjob", "run_policy_patch", "trainer_job_document", "with_defaults",
           "with_image", "world_size"]
