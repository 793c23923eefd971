"""Distribution-based losses: per-voxel terms computed from log-softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SegLoss
from .registry import register_loss


@register_loss("ce")
class CrossEntropyLoss(SegLoss):
    """Cross-entropy  ``-1/N sum_i log s_i^{y_i}`` (log-softmax from logits, fp32).

    Args:
        class_weights: optional per-class weights ``w_c``. With weights the mean
            is normalised by ``N`` (``-1/N sum_i w_{y_i} log s_i^{y_i}``), not by
            ``sum_i w_{y_i}`` as torch's ``cross_entropy(weight=...)`` does.
        ignore_index: label id whose voxels do not contribute.
        label_smoothing: torch's label smoothing.
    """

    def __init__(self, class_weights: list[float] | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0, num_classes: int | None = None):
        super().__init__()
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if num_classes is not None and len(class_weights) != num_classes:
                raise ValueError(f"class_weights has {len(class_weights)} entries but there are {num_classes} classes")
            if any(w < 0 for w in class_weights):
                raise ValueError("class_weights must be >= 0")
            self.register_buffer("class_weights", torch.tensor(class_weights), persistent=False)
        else:
            self.class_weights = None
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = self.prepare(logits, target, self.ignore_index)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        per_voxel = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore,
                                    label_smoothing=self.label_smoothing)
        valid = target != ignore
        if self.class_weights is not None:
            if self.class_weights.numel() != logits.shape[1]:
                raise ValueError(f"class_weights has {self.class_weights.numel()} entries but logits have "
                                 f"{logits.shape[1]} classes")
            per_voxel = per_voxel * self.class_weights[target.clamp(0, logits.shape[1] - 1)]
        return per_voxel.sum() / valid.sum().clamp_min(1)
