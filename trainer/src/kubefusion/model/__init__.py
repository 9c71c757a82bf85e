"""The model: encoders (vision, text, numeric), fusion heads and the multimodal classifier.

``load_model_from_checkpoint(path) -> (model in eval mode, info)`` is what export and serving use.
"""

from kubefusion.model.classifier import (
    MultimodalClassifier,
    build_from_info,
    build_model,
    load_model_from_checkpoint,
)

__all__ = ["MultimodalClassifier", "build_from_info", "build_model", "load_model_from_checkpoint"]
