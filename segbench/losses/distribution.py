"""Distribution-based losses: per-voxel terms computed from the log-softmax.

All of them read ``log s_i^{y_i}`` (``LossInputs.target_log_prob``), the
log-probability of each voxel's true class computed from the logits with
``log_softmax`` in fp32: ``log`` of a probability that underflowed to 0 never
appears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    REDUCTIONS,
    LossInputs,
    SegLoss,
    check_option,
    check_weight_length,
    class_sums,
    guarded_pow,
    is_sequence,
    parse_class_weights,
    reduce,
)
from .registry import register_loss

_POW_EPS = 1e-12


def inverse_frequency_weights(inputs: LossInputs) -> torch.Tensor:
    """Per-batch weights ``w_c = N / (K n_c)`` (``n_c`` voxels of class ``c``, ``K`` classes present).

    Absent classes get 0. The normalisation makes ``sum_i w_{y_i} = N``: the
    weighted loss keeps the scale of the plain CE, and dividing by ``N`` or by
    ``sum_i w_{y_i}`` gives the same value.
    """
    n = inputs.class_voxel_counts.sum(0)
    present = n > 0
    k = present.sum().clamp_min(1)
    return torch.where(present, n.sum() / (k * n.clamp_min(1)), torch.zeros_like(n))


class _PerVoxelLoss(SegLoss):
    """Common options of the per-voxel losses: ``class_weights``, ``ignore_index``, ``reduction``."""

    needs_log_probs = True
    weight_strings: tuple[str, ...] = ("inverse_frequency",)

    def __init__(self, class_weights=None, normalize_by: str = "voxels", ignore_index: int | None = None,
                 reduction: str = "mean", num_classes: int | None = None):
        super().__init__()
        weights = parse_class_weights(class_weights, num_classes, strings=self.weight_strings)
        if torch.is_tensor(weights):
            self.register_buffer("class_weight_tensor", weights, persistent=False)
            self.class_weights = "list"
        else:
            self.class_weight_tensor = None
            self.class_weights = weights
        self.normalize_by = check_option("normalize_by", normalize_by, choices=("voxels", "weights"))
        self.ignore_index = ignore_index
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)

    def class_weight_vector(self, inputs: LossInputs) -> torch.Tensor | None:
        if self.class_weights == "inverse_frequency":
            return inverse_frequency_weights(inputs)
        if self.class_weight_tensor is not None:
            check_weight_length(self.class_weight_tensor, inputs.num_classes)
            return self.class_weight_tensor
        return None

    def reduce_voxels(self, inputs: LossInputs, per_voxel: torch.Tensor,
                      voxel_weights: torch.Tensor | None) -> torch.Tensor:
        """Weighted per-voxel loss -> mean over valid voxels (normalised by ``N`` or by ``sum w``), sum or map."""
        if voxel_weights is not None:
            per_voxel = per_voxel * voxel_weights
        if self.reduction == "mean" and voxel_weights is not None and self.normalize_by == "weights":
            if inputs.valid is not None:
                voxel_weights = voxel_weights * inputs.valid
            total = (per_voxel if inputs.valid is None else per_voxel * inputs.valid).sum()
            return total / voxel_weights.sum().clamp_min(1e-12)
        return inputs.mean_over_voxels(per_voxel, self.reduction)

    def voxel_weights(self, inputs: LossInputs) -> torch.Tensor | None:
        weights = self.class_weight_vector(inputs)
        return None if weights is None else weights.to(inputs.logits.device)[inputs.target]


@register_loss("ce")
class CrossEntropyLoss(_PerVoxelLoss):
    """Cross-entropy ``L = -1/N sum_i w_{y_i} log s_i^{y_i}``.

    Args:
        class_weights: ``null`` (all 1), a list of ``C`` weights ``w_c``, or
            ``inverse_frequency`` (``w_c = N / (K n_c)`` from each batch's label
            counts, ``K`` classes present, absent classes 0; see
            :func:`inverse_frequency_weights`).
        normalize_by: ``voxels`` divides the weighted sum by ``N`` (the formula
            above); ``weights`` divides by ``sum_i w_{y_i}`` as torch's
            ``cross_entropy(weight=...)`` does with mean reduction. Identical
            without weights and for ``inverse_frequency``.
        label_smoothing: ``eps``; the per-voxel term becomes
            ``(1 - eps) (-log s^y) + eps mean_c (-log s^c)`` (times ``w_{y_i}``; torch
            instead weights each class inside the smoothing sum).
        ignore_index: label id whose voxels do not contribute (and are not counted in ``N``).
        reduction: ``mean`` (above), ``sum`` (no ``1/N``) or ``none`` (the ``[B, *spatial]`` map).
    """

    def __init__(self, class_weights=None, normalize_by: str = "voxels", label_smoothing: float = 0.0,
                 ignore_index: int | None = None, reduction: str = "mean", num_classes: int | None = None):
        super().__init__(class_weights, normalize_by, ignore_index, reduction, num_classes)
        self.label_smoothing = check_option("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)

    def per_voxel(self, inputs: LossInputs) -> torch.Tensor:
        nll = -inputs.target_log_prob
        if self.label_smoothing > 0:
            nll = (1 - self.label_smoothing) * nll - self.label_smoothing * inputs.log_probs.mean(1)
        return nll

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        return self.reduce_voxels(inputs, self.per_voxel(inputs), self.voxel_weights(inputs))


@register_loss("weighted_ce")
class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Weighted cross-entropy: :class:`CrossEntropyLoss` with ``class_weights: inverse_frequency`` by default.

    ``L = -1/N sum_i w_{y_i} log s_i^{y_i}``, ``w_c = N / (K n_c)`` per batch (so
    ``sum_i w_{y_i} = N`` and both ``normalize_by`` choices agree); pass a list
    for fixed weights (then ``normalize_by`` matters: ``voxels`` = ``1/N``,
    ``weights`` = torch's ``1 / sum_i w_{y_i}``). Ronneberger et al. 2015 (U-Net)
    and Long et al. 2015 use class-frequency balancing of this kind.
    """

    def __init__(self, class_weights="inverse_frequency", normalize_by: str = "voxels", label_smoothing: float = 0.0,
                 ignore_index: int | None = None, reduction: str = "mean", num_classes: int | None = None):
        super().__init__(class_weights, normalize_by, label_smoothing, ignore_index, reduction, num_classes)


@register_loss("focal")
class FocalLoss(SegLoss):
    """Focal loss (Lin et al. 2017, "Focal loss for dense object detection").

    Softmax form: ``L = -1/N sum_i alpha_{y_i} (1 - s_i^{y_i})^gamma log s_i^{y_i}``.

    Sigmoid form (``sigmoid: true``, Lin's original, each class an independent
    binary problem with ``p = sigmoid(logit)``):
    ``L = -1/(N C) sum_{i,c} alpha_t (1 - p_t)^gamma log p_t``, ``p_t = p`` where
    ``g = 1`` and ``1 - p`` elsewhere.

    Args:
        gamma: focusing exponent (2 in the paper; 0 gives CE).
        alpha: ``null`` (no balancing), a number in ``[0, 1]`` (weight ``alpha`` for the
            foreground classes and ``1 - alpha`` for the background, class 0 -- with
            ``sigmoid``: ``alpha`` for positives, ``1 - alpha`` for negatives, as Lin),
            or a list of ``C`` per-class weights (with ``sigmoid`` applied to positives only).
        sigmoid: use the sigmoid form above.
        ignore_index: label id whose voxels do not contribute.
        reduction: ``mean``, ``sum`` or ``none`` (``[B, *spatial]`` map, ``[B, C, *spatial]`` with sigmoid).

    Normalisation: MONAI's ``FocalLoss(use_softmax=True)`` averages over the ``C``
    channels too (its value is this one divided by ``C``), and with
    ``include_background=False`` it re-normalises the softmax over the foreground
    channels only; here the softmax is always over all classes (drop the
    background with ``alpha: [0, 1, ...]``).
    """

    needs_log_probs = True

    def __init__(self, gamma: float = 2.0, alpha=None, sigmoid: bool = False, ignore_index: int | None = None,
                 reduction: str = "mean", num_classes: int | None = None):
        super().__init__()
        self.gamma = float(check_option("gamma", gamma, low=0.0))
        self.alpha_scalar = None
        alpha_vector = None
        if is_sequence(alpha):
            alpha_vector = parse_class_weights(alpha, num_classes, name="alpha")
        elif alpha is not None:
            self.alpha_scalar = float(check_option("alpha", alpha, low=0.0, high=1.0))
        self.register_buffer("alpha_vector", alpha_vector, persistent=False)
        self.sigmoid = bool(sigmoid)
        self.ignore_index = ignore_index
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)

    def class_alpha(self, num_classes: int, device) -> torch.Tensor | None:
        if self.alpha_vector is not None:
            check_weight_length(self.alpha_vector, num_classes, "alpha")
            return self.alpha_vector.to(device)
        if self.alpha_scalar is not None:
            alpha = torch.full((num_classes,), self.alpha_scalar, device=device)
            alpha[0] = 1 - self.alpha_scalar
            return alpha
        return None

    def modulation(self, one_minus_p: torch.Tensor) -> torch.Tensor:
        """``(1 - p)^gamma``, clamped below ``gamma = 1`` where the derivative at ``p = 1`` is infinite."""
        if self.gamma == 0:
            return torch.ones_like(one_minus_p)
        return guarded_pow(one_minus_p, self.gamma, _POW_EPS)

    def per_voxel(self, inputs: LossInputs) -> torch.Tensor:
        log_p = inputs.target_log_prob
        loss = -self.modulation(-torch.expm1(log_p)) * log_p  # 1 - p = -expm1(log p), exact near p = 1
        alpha = self.class_alpha(inputs.num_classes, log_p.device)
        return loss if alpha is None else loss * alpha[inputs.target]

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        if self.sigmoid:
            return self._sigmoid_focal(inputs)
        return inputs.mean_over_voxels(self.per_voxel(inputs), self.reduction)

    def _sigmoid_focal(self, inputs: LossInputs) -> torch.Tensor:
        x, g = inputs.logits, inputs.onehot
        log_pt = -F.binary_cross_entropy_with_logits(x, g, reduction="none")  # log p_t, stable
        one_minus_pt = torch.sigmoid(-x * (2 * g - 1))
        loss = -self.modulation(one_minus_pt) * log_pt
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.alpha_vector is not None:
            check_weight_length(self.alpha_vector, inputs.num_classes, "alpha")
            loss = loss * torch.where(g > 0, self.alpha_vector.to(x.device).view(shape), torch.ones_like(g))
        elif self.alpha_scalar is not None:
            loss = loss * (g * self.alpha_scalar + (1 - g) * (1 - self.alpha_scalar))
        if inputs.valid is not None:
            loss = loss * inputs.valid.unsqueeze(1)
        if self.reduction == "mean":
            n = inputs.num_valid
            n = n.clamp_min(1) if torch.is_tensor(n) else max(n, 1)
            return loss.sum() / (n * inputs.num_classes)
        return loss.sum() if self.reduction == "sum" else loss


@register_loss("topk_ce")
class TopKCrossEntropyLoss(SegLoss):
    """Top-k cross-entropy (Wu et al. 2016, "Bridging category-level and instance-level
    semantic image segmentation"; nnU-Net's ``TopK10``).

    ``L = 1/|K| sum_{i in K} -log s_i^{y_i}``, ``K`` the ``k`` % voxels of the whole
    batch with the largest CE (at least one voxel).

    Threshold variant (``threshold: t``, SegLoss's probability-threshold TopK): ``K`` is
    instead the set of voxels whose CE exceeds ``t``, i.e. whose target-class probability
    is below ``exp(-t)`` (``t = -ln 0.7 = 0.357`` keeps the voxels predicted with less than
    70 % confidence). Its size varies from batch to batch; no voxel above ``t`` gives a
    loss of 0 (the batch is learned already).

    Args:
        k: percentage of voxels kept, in ``(0, 100]`` (10 in nnU-Net); unused with ``threshold``.
        threshold: ``null`` (keep the ``k`` %) or ``t >= 0``: keep the voxels with CE ``> t``.
        ignore_index: label id whose voxels are never selected.
    """

    needs_log_probs = True

    def __init__(self, k: float = 10.0, threshold: float | None = None, ignore_index: int | None = None):
        super().__init__()
        self.k = float(check_option("k", k, low=0.0, high=100.0, low_open=True))
        self.threshold = None if threshold is None else float(check_option("threshold", threshold, low=0.0))
        self.ignore_index = ignore_index

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        if self.threshold is not None:
            return self._above_threshold(inputs)
        ce = -inputs.target_log_prob.reshape(-1)
        n_valid = ce.numel()
        if inputs.valid is not None:
            valid = inputs.valid.reshape(-1)
            n_valid = int(valid.sum())
            ce = torch.where(valid, ce, torch.full_like(ce, -1.0))  # CE >= 0: ignored voxels rank last
            if n_valid == 0:
                return ce.sum() * 0.0
        n_keep = max(1, int(n_valid * self.k / 100))
        return ce.topk(n_keep, sorted=False).values.mean()

    def _above_threshold(self, inputs: LossInputs) -> torch.Tensor:
        """Mean CE over the voxels whose CE exceeds ``threshold`` (a mask: no host sync)."""
        ce = -inputs.target_log_prob
        keep = ce > self.threshold
        if inputs.valid is not None:
            keep = keep & inputs.valid
        kept = torch.where(keep, ce, torch.zeros_like(ce))
        return kept.sum() / keep.sum().clamp_min(1)


@register_loss("sensitivity_specificity")
class SensitivitySpecificityLoss(SegLoss):
    """Sensitivity-specificity loss (Brosch et al. 2015, "Deep convolutional encoder
    networks for multiple sclerosis lesion segmentation").

    Per class ``c``:
    ``SS_c = w sum_i (g - s)^2 g / (sum_i g + smooth) + (1 - w) sum_i (g - s)^2 (1 - g) / (sum_i (1 - g) + smooth)``,
    ``L = mean_c SS_c``. The first term is the squared error on the class's voxels
    (sensitivity), the second on the other voxels (specificity).

    Args:
        sensitivity_weight: ``w`` in ``[0, 1]``; Brosch and NiftyNet use 0.05
            (SegLoss hard-codes 0.1). Small ``w`` weights the specificity term
            because the background dominates the voxel count.
        include_background: score class 0 too.
        smooth: added to both denominators (``>= 0``).
        batch: pool the sums over the batch instead of per sample.
        reduction: ``mean`` / ``sum`` over (sample,) class entries, or ``none`` (``[B, C]`` or ``[C]``).
    """

    def __init__(self, sensitivity_weight: float = 0.05, include_background: bool = True, smooth: float = 1e-5,
                 batch: bool = False, reduction: str = "mean"):
        super().__init__()
        self.sensitivity_weight = check_option("sensitivity_weight", sensitivity_weight, low=0.0, high=1.0)
        self.include_background = include_background
        self.smooth = check_option("smooth", smooth, low=0.0)
        self.batch = batch
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        B, C = inputs.batch_size, inputs.num_classes
        counts = inputs.counts(batch=False, squared=True)
        t = inputs.target.reshape(B, -1)
        p_t = inputs.target_prob.reshape(B, -1)
        if inputs.valid is not None:
            m = inputs.valid_float.reshape(B, -1)
            n_voxels = m.sum(1, keepdim=True)
        else:
            m = None
            n_voxels = torch.full((B, 1), float(t.shape[1]), device=t.device)
        miss = (1 - p_t).square()      # (g - s)^2 on the class's own voxels
        own_sq = p_t.square()          # s^2 on the class's own voxels
        if m is not None:
            miss, own_sq = miss * m, own_sq * m
        miss = class_sums(miss, t, C)
        false_alarm = counts.pred_sq_sum - class_sums(own_sq, t, C)  # s^2 off the class
        positives = counts.target_sum
        negatives = n_voxels - positives
        if self.batch:
            miss, false_alarm, positives, negatives = (x.sum(0) for x in (miss, false_alarm, positives, negatives))
        w = self.sensitivity_weight
        loss = w * miss / (positives + self.smooth).clamp_min(1e-12) \
            + (1 - w) * false_alarm / (negatives + self.smooth).clamp_min(1e-12)
        if not self.include_background:
            loss = loss[..., 1:]
        return reduce(loss, self.reduction)
