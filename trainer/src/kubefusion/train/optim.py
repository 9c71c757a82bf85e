"""AdamW with per-group learning rates and a warm-up + cosine schedule.

Groups: pretrained backbones train at ``learning_rate * encoder_lr_multiplier`` (they already know a lot and
large steps would erase it); everything trained from scratch (random-init backbones, pooling, projections,
fusion, head) at ``learning_rate``. Biases and normalisation weights get no weight decay. Frozen backbones
are left out entirely and stay in eval mode while the rest trains (no BatchNorm drift, no dropout).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from kubefusion.config import ModelConfig, TrainingConfig
from kubefusion.model import MultimodalClassifier


def freeze_backbones(model: MultimodalClassifier, spec: ModelConfig) -> None:
    frozen = {"image": spec.vision.freeze, "text": spec.text.freeze}
    for modality, encoder in model.encoders.items():
        if frozen.get(modality) and hasattr(encoder, "backbone"):
            encoder.freeze_backbone()


def warmup_frozen_encoders(model: MultimodalClassifier, spec: ModelConfig, training: TrainingConfig) -> list:
    """Encoders whose pretrained backbone sits out the first ``frozen_backbone_epochs`` (a new head on top of
    a pretrained network first learns to read it; large random-head gradients would otherwise damage the
    pretrained layers in the first steps). Random-init and ``freeze: true`` backbones are left alone."""
    if training.frozen_backbone_epochs <= 0:
        return []
    held = {"image": spec.vision.pretrained and not spec.vision.freeze,
            "text": spec.text.pretrained and not spec.text.freeze}
    return [enc for m, enc in model.encoders.items() if held.get(m) and hasattr(enc, "backbone")]


def build_optimizer(model: MultimodalClassifier, spec: ModelConfig, training: TrainingConfig) -> torch.optim.AdamW:
    pretrained = {"image": spec.vision.pretrained, "text": spec.text.pretrained}
    slow_ids = {id(p) for m, enc in model.encoders.items()
                if pretrained.get(m) and hasattr(enc, "backbone") for p in enc.backbone.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.dim() < 2 or name.endswith(".bias") or "norm" in name.lower()
        groups.setdefault((id(param) in slow_ids, no_decay), []).append(param)
    param_groups = []
    for (slow, no_decay), params in sorted(groups.items()):
        lr = training.learning_rate * (training.encoder_lr_multiplier if slow else 1.0)
        param_groups.append({"params": params, "lr": lr, "initial_lr": lr,
                             "weight_decay": 0.0 if no_decay else training.weight_decay})
    return torch.optim.AdamW(param_groups, lr=training.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def warmup_cosine(total_steps: int, warmup_fraction: float, floor: float = 0.0):
    """Multiplier of the peak learning rate at optimizer step ``s``: linear warm-up, then cosine to ``floor``."""
    warmup = max(1, int(round(total_steps * warmup_fraction))) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, training: TrainingConfig) -> LambdaLR:
    return LambdaLR(optimizer, warmup_cosine(total_steps, training.warmup_fraction))
