"""The multimodal classifier and its self-describing construction.

``MultimodalClassifier(pixel_values, input_ids, attention_mask, numeric, modality_mask) -> logits`` for any
subset of the modalities (the fused model uses all three; a single-modality baseline uses one and ignores
the other inputs). A modality that is absent for a sample (mask false: missing in the data, dropped by
modality dropout in training, or masked in an ablation) is replaced by a learned "missing" embedding, and the
fusion head sees the mask too.

Everything needed to rebuild the model lives in :meth:`MultimodalClassifier.describe` (stored in every
checkpoint as ``model_info``), so :func:`load_model_from_checkpoint` needs no backbone source on disk.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubefusion.config import MODALITIES, ModelConfig
from kubefusion.model.encoders import NumericEncoder, TextEncoder, VisionEncoder
from kubefusion.model.fusion import build_fusion


class MultimodalClassifier(nn.Module):
    def __init__(self, spec: ModelConfig, *, num_classes: int, num_numeric_features: int,
                 modalities: tuple[str, ...] = MODALITIES, saved_backbones: dict[str, dict] | None = None):
        super().__init__()
        unknown = set(modalities) - set(MODALITIES)
        if not modalities or unknown:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES} (got {modalities})")
        self.spec = spec
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.num_classes = num_classes
        self.num_numeric_features = num_numeric_features
        saved = saved_backbones or {}
        d = spec.embed_dim
        encoders: dict[str, nn.Module] = {}
        if "image" in self.modalities:
            encoders["image"] = VisionEncoder(spec.vision, d, saved.get("image"))
        if "text" in self.modalities:
            encoders["text"] = TextEncoder(spec.text, d, saved.get("text"))
        if "numeric" in self.modalities:
            encoders["numeric"] = NumericEncoder(spec.numeric, num_numeric_features, d)
        self.encoders = nn.ModuleDict(encoders)
        self.missing = nn.Parameter(torch.zeros(len(self.modalities), d))
        nn.init.normal_(self.missing, std=0.02)
        self.fusion = build_fusion(spec.fusion, len(self.modalities), d)
        self.modality_dropout = spec.fusion.modality_dropout if len(self.modalities) > 1 else 0.0
        self.head = nn.Sequential(nn.Dropout(spec.fusion.dropout), nn.Linear(spec.fusion.hidden, num_classes))
        # One linear classifier per modality on its own embedding (spec.model.fusion.unimodalLossWeight): their
        # losses keep every encoder learning when another modality alone already fits the training labels.
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m in self.modalities}) \
            if spec.fusion.unimodal_loss_weight > 0 and len(self.modalities) > 1 else None
        self._columns = [MODALITIES.index(m) for m in self.modalities]

    # ---- construction metadata --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What :func:`build_from_info` needs to rebuild this exact architecture."""
        backbones = {m: enc.backbone.config.to_dict() for m, enc in self.encoders.items() if hasattr(enc, "backbone")}
        return {"model_spec": _model_spec_dict(self.spec), "num_classes": self.num_classes,
                "num_numeric_features": self.num_numeric_features, "modalities": list(self.modalities),
                "backbone_configs": backbones}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the Hugging Face backbones (pretrained ones train at a lower learning rate)."""
        return [p for enc in self.encoders.values() if hasattr(enc, "backbone") for p in enc.backbone.parameters()]

    # ---- forward ----------------------------------------------------------------------------------------

    def present_mask(self, modality_mask: torch.Tensor) -> torch.Tensor:
        """Columns of the [B, 3] data mask for this model's modalities, after modality dropout in training."""
        present = modality_mask[:, self._columns].bool()
        if self.training and self.modality_dropout > 0:
            draw = torch.rand(present.shape, device=present.device)
            keep = present & (draw >= self.modality_dropout)
            # Never drop every modality of a sample (it would teach nothing): keep one present modality of it.
            one = torch.nn.functional.one_hot((draw * present).argmax(dim=1), present.shape[1]).bool() & present
            present = torch.where(keep.any(dim=1, keepdim=True), keep, one)
        return present

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                numeric: torch.Tensor, modality_mask: torch.Tensor, return_unimodal: bool = False):
        """Logits ``[B, C]``. With ``return_unimodal`` (training with unimodal heads) also each modality's own
        logits ``[B, M, C]`` and where that modality is in the data ``[B, M]`` (modality dropout aside: a dropped
        modality's embedding is still real, so its own head still learns from it)."""
        present = self.present_mask(modality_mask)
        embeddings = []
        for modality in self.modalities:
            encoder = self.encoders[modality]
            if modality == "image":
                embeddings.append(encoder(pixel_values))
            elif modality == "text":
                embeddings.append(encoder(input_ids, attention_mask))
            else:
                embeddings.append(encoder(numeric))
        stacked = torch.stack(embeddings, dim=1)
        missing = self.missing.to(stacked.dtype).unsqueeze(0).expand_as(stacked)
        logits = self.head(self.fusion(torch.where(present.unsqueeze(-1), stacked, missing), present))
        if not return_unimodal:
            return logits
        if self.unimodal_heads is None:
            raise ValueError("return_unimodal needs unimodal heads (spec.model.fusion.unimodalLossWeight > 0)")
        unimodal = torch.stack([self.unimodal_heads[m](stacked[:, i]) for i, m in enumerate(self.modalities)], dim=1)
        return logits, unimodal, modality_mask[:, self._columns].bool()


def _model_spec_dict(spec: ModelConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(spec)


def _model_spec_from_dict(raw: dict[str, Any]) -> ModelConfig:
    from kubefusion.config import FusionConfig, NumericConfig, TextConfig, VisionConfig

    return ModelConfig(vision=VisionConfig(**raw["vision"]), text=TextConfig(**raw["text"]),
                       numeric=NumericConfig(**raw["numeric"]), fusion=FusionConfig(**raw["fusion"]),
                       embed_dim=raw["embed_dim"], num_classes=raw.get("num_classes"))


def build_model(spec: ModelConfig, *, num_classes: int, num_numeric_features: int,
                modalities: tuple[str, ...] = MODALITIES) -> MultimodalClassifier:
    """A fresh model as the job asks: backbones from their local sources (pretrained or random)."""
    return MultimodalClassifier(spec, num_classes=num_classes, num_numeric_features=num_numeric_features,
                                modalities=modalities)


def build_from_info(info: dict[str, Any]) -> MultimodalClassifier:
    """Rebuild the architecture recorded by :meth:`MultimodalClassifier.describe` (random weights; no files)."""
    return MultimodalClassifier(_model_spec_from_dict(info["model_spec"]), num_classes=info["num_classes"],
                                num_numeric_features=info["num_numeric_features"],
                                modalities=tuple(info["modalities"]), saved_backbones=info["backbone_configs"])


def load_model_from_checkpoint(path: str | Path) -> tuple[MultimodalClassifier, dict[str, Any]]:
    """Load a trained model for inference or export.

    ``path`` is a checkpoint file (``model.pt`` or a training checkpoint) or a folder (its ``model.pt``, else
    its newest valid training checkpoint). Returns the model in eval mode on CPU and an info dict:
    ``model_info`` keys (``num_classes``, ``modalities``, ...) plus ``classes``, ``numeric_columns``,
    ``content_key``, ``config`` (the MultimodalTrainJob document; ``config.job_from_dict`` reads it), ``step``
    and ``path``.
    """
    from kubefusion.train.checkpoint import read_model_file

    payload, source = read_model_file(Path(path))
    info = copy.deepcopy(payload["model_info"])
    model = build_from_info(info)
    model.load_state_dict(payload["model"])
    model.eval()
    info.update({"config": payload.get("config"), "step": payload.get("step"), "path": str(source)})
    return model, info
