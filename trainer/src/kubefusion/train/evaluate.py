"""Evaluation: top-1, top-5 (with >= 5 classes), macro-F1 and loss over a split, exact across ranks.

Each rank evaluates its shard and keeps sufficient statistics (a confusion matrix, top-5 hits, loss sum,
sample count) over the rows marked ``valid``; one all-reduce sums them, so padding that evens out the ranks
never counts and the result equals a single-process evaluation of the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from kubefusion.train.distributed import all_reduce_sum
from kubefusion.train.prefetch import BatchPreparer


@dataclass
class SplitStats:
    """Sufficient statistics of one split (summable across ranks)."""

    confusion: torch.Tensor
    """int64 [C, C]: rows are true labels, columns predictions."""
    top5_hits: int = 0
    loss_sum: float = 0.0

    @classmethod
    def empty(cls, num_classes: int) -> "SplitStats":
        return cls(torch.zeros(num_classes, num_classes, dtype=torch.int64))

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float().cpu(), labels.cpu()
        num_classes = self.confusion.shape[0]
        predictions = logits.argmax(dim=1)
        self.confusion += torch.bincount(labels * num_classes + predictions,
                                         minlength=num_classes * num_classes).view(num_classes, num_classes)
        k = min(5, num_classes)
        self.top5_hits += int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))

    def all_reduce(self) -> "SplitStats":
        scalars = all_reduce_sum(torch.tensor([self.top5_hits, self.loss_sum], dtype=torch.float64))
        return SplitStats(all_reduce_sum(self.confusion.clone()), int(scalars[0]), float(scalars[1]))

    def summary(self) -> dict[str, float | int | None]:
        """``{"top1", "top5" (None below 5 classes), "macro_f1", "loss", "samples"}``; accuracies in [0, 1]."""
        c = self.confusion.double()
        samples = int(c.sum())
        if samples == 0:
            return {"top1": None, "top5": None, "macro_f1": None, "loss": None, "samples": 0}
        tp = c.diag()
        true_count, predicted_count = c.sum(dim=1), c.sum(dim=0)
        # Like scikit-learn: average over classes that occur as a label or as a prediction.
        seen = (true_count + predicted_count) > 0
        f1 = 2 * tp / (true_count + predicted_count).clamp(min=1)
        return {
            "top1": float(tp.sum() / samples),
            "top5": float(self.top5_hits / samples) if c.shape[0] >= 5 else None,
            "macro_f1": float(f1[seen].mean()),
            "loss": self.loss_sum / samples,
            "samples": samples,
        }


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], prepare: BatchPreparer, *,
             num_classes: int, autocast, drop_modality: int | None = None) -> dict[str, float | int | None]:
    """Metrics of ``model`` over ``batches`` (all ranks together). ``prepare`` turns data batches into
    model inputs on the device (preprocessing a batch or two ahead); ``drop_modality`` masks that modality column for every sample (ablation)."""
    was_training = model.training
    model.eval()
    stats = SplitStats.empty(num_classes)
    stream = prepare.stream(batches)
    try:
        for inputs in stream:
            valid = inputs.pop("valid")
            labels = inputs.pop("label")
            if drop_modality is not None:
                inputs["modality_mask"] = inputs["modality_mask"].clone()
                inputs["modality_mask"][:, drop_modality] = False
            with autocast():
                logits = model(**inputs)
            stats.add(logits[valid], labels[valid])
    finally:
        stream.close()
        model.train(was_training)
    return stats.all_reduce().summary()
