"""Pure builders: a MultimodalTrainJob's spec and metadata in, child manifests (plain dicts) out. The backends'
own children are built in :mod:`kubefusion_operator.backends`."""

from kubefusion_operator.builders.configmap import build_configmap, trainer_job_document
from kubefusion_operator.builders.defaults import with_defaults, with_image
from kubefusion_operator.builders.pod import world_size

__all__ = ["build_configmap", "trainer_job_document", "with_defaults", "with_image", "world_size"]
