"""The three encoders. Each maps its modality to one ``[B, embed_dim]`` vector.

- :class:`VisionEncoder`: a Hugging Face vision backbone (ResNet-50 by default, via ``ResNetModel``) whose
  spatial feature map is pooled by :class:`AttentionPool` (the article's "ResNet50 + attention") or a mean.
- :class:`TextEncoder`: a Hugging Face text backbone (BERT by default) pooled by [CLS] or a masked mean.
- :class:`NumericEncoder`: an MLP with LayerNorm over standardised columns plus a missing-value indicator.
"""

from __future__ import annotations

import torch
from torch import nn

from kubefusion.config import NumericConfig, TextConfig, VisionConfig
from kubefusion.model.backbones import load_backbone


def _hidden_width(config) -> int:
    for attr in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    sizes = getattr(config, "hidden_sizes", None)  # ResNet-style conv nets: the last stage's channels
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"cannot tell the output width of {type(config).__name__}")


class AttentionPool(nn.Module):
    """Additive attention over positions: a learned score per position, softmax, weighted sum."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, C]
        weights = torch.softmax(self.score(tokens).squeeze(-1).float(), dim=1).to(tokens.dtype)
        return torch.einsum("bn,bnc->bc", weights, tokens)


class _BackboneEncoder(nn.Module):
    """An encoder around a Hugging Face ``backbone`` that can be frozen.

    A frozen backbone stays in eval mode even while the model trains: its BatchNorm statistics would otherwise
    drift with every batch and its dropout would stay on, so "frozen" weights would still change behaviour."""

    backbone: nn.Module
    frozen: bool

    def freeze_backbone(self) -> None:
        self.frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        """End of a frozen warm-up (``spec.training.frozenBackboneEpochs``): the backbone trains again."""
        self.frozen = False
        self.backbone.requires_grad_(True)
        self.backbone.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


class VisionEncoder(_BackboneEncoder):
    def __init__(self, spec: VisionConfig, embed_dim: int, saved_config: dict | None = None):
        super().__init__()
        self.backbone = load_backbone(spec.backbone, pretrained=spec.pretrained, field="spec.model.vision.backbone",
                                      saved_config=saved_config)
        if getattr(self.backbone, "pooler", None) is not None:
            # We pool last_hidden_state ourselves (attention or mean), so the backbone's own pooler is dead
            # weight: a ViT's dense pooler would get no gradient, which DDP rejects on the next step. Identity,
            # not None: ResNetModel calls its pooler unconditionally.
            self.backbone.pooler = nn.Identity()
        self.frozen = False
        width = _hidden_width(self.backbone.config)
        self.pool = AttentionPool(width) if spec.pooling == "attention" else None
        self.project = nn.Sequential(nn.Linear(width, embed_dim), nn.LayerNorm(embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixel_values=pixel_values).last_hidden_state
        # Conv nets give [B, C, H, W]; transformers give [B, N, C]. Pool over positions either way.
        tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features
        pooled = self.pool(tokens) if self.pool is not None else tokens.mean(dim=1)
        return self.project(pooled)


class TextEncoder(_BackboneEncoder):
    def __init__(self, spec: TextConfig, embed_dim: int, saved_config: dict | None = None):
        super().__init__()
        self.backbone = load_backbone(spec.backbone, pretrained=spec.pretrained, field="spec.model.text.backbone",
                                      saved_config=saved_config)
        self.pooling = spec.pooling
        self.frozen = False
        if spec.pooling == "mean" and getattr(self.backbone, "pooler", None) is not None:
            # An unused pooler would leave parameters without gradients, which DDP rejects.
            self.backbone.pooler = None
        width = _hidden_width(self.backbone.config)
        self.project = nn.Sequential(nn.Linear(width, embed_dim), nn.LayerNorm(embed_dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "cls":
            pooler_output = getattr(out, "pooler_output", None)
            pooled = pooler_output if pooler_output is not None else out.last_hidden_state[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            # A missing text has an all-zero mask; clamp so the (later replaced) vector stays finite.
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.project(pooled)


class NumericEncoder(nn.Module):
    """Standardised columns (NaN = missing) -> MLP. NaNs become 0 plus a per-column "was missing" flag."""

    def __init__(self, spec: NumericConfig, num_features: int, embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * num_features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, int(hidden)), nn.LayerNorm(int(hidden)), nn.GELU(), nn.Dropout(spec.dropout)]
            width = int(hidden)
        layers += [nn.Linear(width, embed_dim), nn.LayerNorm(embed_dim)]
        self.mlp = nn.Sequential(*layers)
        self.num_features = num_features

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(numeric)
        values = torch.where(missing, torch.zeros_like(numeric), numeric)
        return self.mlp(torch.cat([values, missing.to(values.dtype)], dim=1))
