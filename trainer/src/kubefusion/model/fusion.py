"""Fusion heads: ``[B, M, D]`` modality embeddings + ``[B, M]`` presence mask -> ``[B, hidden]``.

Missing modalities are already replaced by a learned "missing" embedding (see the classifier); each head is
also mask-aware, so it can tell a real embedding from the placeholder:

- :class:`ConcatFusion` (the article's): concatenation of the embeddings and the mask, then an MLP;
- :class:`GatedFusion`: per-modality projections scaled by sigmoid gates (per feature); absent modalities
  contribute nothing;
- :class:`AttentionFusion`: a small transformer over one token per modality plus a [FUSE] token; absent
  modalities are padding in the attention; the output is the mean of [FUSE] and the present tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from kubefusion.config import FusionConfig


class ConcatFusion(nn.Module):
    def __init__(self, spec: FusionConfig, num_modalities: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * (embed_dim + 1), spec.hidden), nn.GELU(), nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.hidden), nn.GELU(),
        )

    def forward(self, embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([embeddings.flatten(1), present.to(embeddings.dtype)], dim=1)
        return self.mlp(flat)


class GatedFusion(nn.Module):
    """Per-modality projections, each scaled by its own sigmoid gate computed from all embeddings and the mask
    (a gated multimodal unit). Gates do not compete (no softmax across modalities): a modality that learns
    slowly, such as text from scratch, keeps its gradient instead of being gated out by faster ones."""

    def __init__(self, spec: FusionConfig, num_modalities: int, embed_dim: int):
        super().__init__()
        self.project = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, spec.hidden), nn.GELU()) for _ in range(num_modalities))
        self.gate = nn.Linear(num_modalities * (embed_dim + 1), num_modalities * spec.hidden)
        self.out = nn.Sequential(nn.LayerNorm(spec.hidden), nn.Dropout(spec.dropout),
                                 nn.Linear(spec.hidden, spec.hidden), nn.GELU())

    def forward(self, embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        batch, modalities = present.shape
        projected = torch.stack([proj(embeddings[:, i]) for i, proj in enumerate(self.project)], dim=1)
        context = torch.cat([embeddings.flatten(1), present.to(embeddings.dtype)], dim=1)
        gates = torch.sigmoid(self.gate(context)).view(batch, modalities, -1)
        # An absent modality contributes nothing (its placeholder only informs the gates of the others).
        gates = gates * present.unsqueeze(-1).to(gates.dtype)
        return self.out((gates * projected).sum(dim=1))


class AttentionFusion(nn.Module):
    def __init__(self, spec: FusionConfig, num_modalities: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Linear(embed_dim, spec.hidden)
        self.modality_type = nn.Parameter(torch.zeros(num_modalities, spec.hidden))
        self.fuse_token = nn.Parameter(torch.zeros(1, 1, spec.hidden))
        nn.init.normal_(self.modality_type, std=0.02)
        nn.init.normal_(self.fuse_token, std=0.02)
        layer = nn.TransformerEncoderLayer(spec.hidden, spec.heads, dim_feedforward=2 * spec.hidden,
                                           dropout=spec.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.hidden)

    def forward(self, embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(embeddings) + self.modality_type
        tokens = torch.cat([self.fuse_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        # Padding mask: True = ignore. The [FUSE] token is always attended, so no row is fully masked.
        ignore = torch.cat([torch.zeros_like(present[:, :1]), ~present], dim=1)
        encoded = self.encoder(tokens, src_key_padding_mask=ignore)
        # Read out the mean of [FUSE] and the present modality tokens, not [FUSE] alone: through [FUSE] only,
        # attention softmax lets a fast-learning modality starve a slow one (text from scratch) of gradient.
        keep = (~ignore).unsqueeze(-1).to(encoded.dtype)
        return self.norm((encoded * keep).sum(dim=1) / keep.sum(dim=1))


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion}


def build_fusion(spec: FusionConfig, num_modalities: int, embed_dim: int) -> nn.Module:
    return FUSIONS[spec.type](spec, num_modalities, embed_dim)
