"""The model: encoders (vision, text, numeric), fusion heads and the multimodal classifier.

``load_model_from_checkpoint(path) -> (model in eval mode, info)`` is what export and serving use.
"""

from kubefusion.model.backbones import check_model_sources

__all__ = ["MultimodalClassifier", "build_from_info", "build_model", "check_model_sources",
           "load_model_from_checkpoint"]


def __getattr__(name: str):
    # The classifier pulls in torch and transformers; check_model_sources (used before any process starts)
    # must not, so the rest is imported on first use.
    if name in __all__:
        from kubefusion.model import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
