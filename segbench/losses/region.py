"""Region-based losses: functions of the per-class soft TP / FP / FN.

Each loss is the few lines of its formula on :class:`~segbench.losses.base.SoftCounts`
(``TP``, ``FP = sum s - TP``, ``FN = sum g - TP``), which
:meth:`LossInputs.counts` computes once per batch and shares between terms.

Shared options (same names and meaning in every region loss):

* ``include_background``: score class 0 too (MONAI's default; nnU-Net drops it).
* ``smooth``: ``>= 0``, added to numerator and denominator of each ratio (1e-5 as
  MONAI): an absent class predicted absent scores a loss of 0, and 0/0 never occurs.
* ``batch``: pool the sums over the batch ("batch Dice", nnU-Net) instead of per sample.
* ``class_weights``: ``null`` or a list of ``C`` per-class weights indexed by label
  id (the background entry is dropped with ``include_background: false``),
  multiplying each class's loss before the reduction (MONAI's ``weight``; the
  mean divides by the number of entries, not by the sum of weights).
* ``reduction``: ``mean`` / ``sum`` over the (sample, class) entries, or ``none``
  for the per-class values, ``[B, C']`` (``[C']`` with ``batch``).
* ``ignore_index``: label id whose voxels count neither in ``s`` nor in ``g``.
"""

from __future__ import annotations

import torch

from .base import (
    REDUCTIONS,
    LossInputs,
    SegLoss,
    SoftCounts,
    check_option,
    check_weight_length,
    guarded_pow,
    is_sequence,
    parse_class_weights,
    reduce,
)
from .registry import register_loss

_TINY = 1e-12   # floor of denominators, only reached with smooth = 0
_POW_EPS = 1e-6  # clamp of 1 - index before a power < 1 (see guarded_pow)


def ratio(numerator: torch.Tensor, denominator: torch.Tensor, smooth: float) -> torch.Tensor:
    """``(numerator + smooth) / (denominator + smooth)``, denominator floored at 1e-12."""
    return (numerator + smooth) / (denominator + smooth).clamp_min(_TINY)


def dice_denominator(counts: SoftCounts, squared: bool) -> torch.Tensor:
    """``sum s + sum g`` or V-Net's ``sum s^2 + sum g^2`` (``g^2 = g`` for one-hot labels)."""
    return (counts.pred_sq_sum if squared else counts.pred_sum) + counts.target_sum


def dice_loss_exact(inputs: LossInputs, batch: bool, squared: bool, include_background: bool,
                    smooth: float) -> torch.Tensor:
    """The soft Dice loss ``1 - (2 TP + smooth) / (D + smooth)`` per class, float64, computed as
    ``(D - 2 TP) / (D + smooth)`` from :meth:`LossInputs.mismatch` (no cancellation near a
    perfect prediction, where ``1 - ratio`` in float32 keeps ~1e-7 of absolute error)."""
    counts = inputs.counts(batch, squared).select(include_background)
    mismatch = inputs.mismatch(batch, squared)
    if not include_background:
        mismatch = mismatch[..., 1:]
    return mismatch / (dice_denominator(counts, squared).double() + smooth).clamp_min(_TINY)


class OverlapLoss(SegLoss):
    """A per-class loss ``f(TP_c, FP_c, FN_c)`` with the shared options (see the module docstring).

    Subclasses implement :meth:`formula`; :meth:`per_class` returns its values
    ``[B, C']`` (or ``[C']`` with ``batch``) for compound losses to reuse.
    """

    squared: bool = False

    def __init__(self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False,
                 class_weights=None, reduction: str = "mean", ignore_index: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        self.include_background = bool(include_background)
        self.smooth = float(check_option("smooth", smooth, low=0.0))
        self.batch = bool(batch)
        self.register_buffer("class_weights", parse_class_weights(class_weights, num_classes), persistent=False)
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)
        self.ignore_index = ignore_index

    def formula(self, counts: SoftCounts) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def counts(self, inputs: LossInputs) -> SoftCounts:
        return inputs.counts(self.batch, self.squared).select(self.include_background)

    def per_class(self, inputs: LossInputs) -> torch.Tensor:
        return self.formula(self.counts(inputs))

    def weighted(self, values: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.class_weights is None:
            return values
        check_weight_length(self.class_weights, num_classes)
        weights = self.class_weights if self.include_background else self.class_weights[1:]
        return values * weights.to(values.device)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        return reduce(self.weighted(self.per_class(inputs), inputs.num_classes), self.reduction)


@register_loss("dice")
class DiceLoss(OverlapLoss):
    """Soft Dice loss (Milletari et al. 2016, "V-Net").

    ``L_c = 1 - (2 TP_c + smooth) / (sum_i s_i^c + sum_i g_i^c + smooth)``, reduced over classes
    (and samples). ``squared: true`` is V-Net's denominator ``sum s^2 + sum g^2``
    (MONAI's ``squared_pred``; SegLoss's ``square=True`` is something else).
    Equals MONAI's ``DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=smooth_dr=smooth)``.
    """

    def __init__(self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False,
                 squared: bool = False, class_weights=None, reduction: str = "mean",
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__(include_background, smooth, batch, class_weights, reduction, ignore_index, num_classes)
        self.squared = bool(squared)

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        return 1 - ratio(2 * counts.tp, dice_denominator(counts, self.squared), self.smooth)


@register_loss("jaccard")
class JaccardLoss(OverlapLoss):
    """Soft Jaccard / IoU loss (Rahman & Wang 2016, "Optimizing intersection-over-union in
    deep neural networks for image segmentation").

    ``L_c = 1 - (TP_c + smooth) / (TP_c + FP_c + FN_c + smooth)``; the union is
    ``sum s + sum g - TP`` (``squared``: ``sum s^2 + sum g^2 - TP``).
    MONAI's ``DiceLoss(jaccard=True)`` writes ``(2 TP + s) / (2 union + s)``:
    it equals this loss with ``smooth = s / 2``.
    """

    def __init__(self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False,
                 squared: bool = False, class_weights=None, reduction: str = "mean",
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__(include_background, smooth, batch, class_weights, reduction, ignore_index, num_classes)
        self.squared = bool(squared)

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        return 1 - ratio(counts.tp, dice_denominator(counts, self.squared) - counts.tp, self.smooth)


def _check_fp_fn_weight(name: str, value: float) -> float:
    return float(check_option(name, value, low=0.0, high=1.0))


@register_loss("tversky")
class TverskyLoss(OverlapLoss):
    """Tversky loss (Salehi et al. 2017, "Tversky loss function for image segmentation
    using 3D fully convolutional deep networks").

    ``L_c = 1 - (TP_c + smooth) / (TP_c + alpha FP_c + beta FN_c + smooth)``.

    Args:
        alpha: weight of the false positives, in ``[0, 1]``.
        beta: weight of the false negatives, in ``[0, 1]``.

    Defaults conflict between references: the paper (and SegLoss, hard-coded) uses
    ``alpha = 0.3, beta = 0.7`` (penalise FN more: better recall), MONAI and
    segmentation_models_pytorch default to 0.5 / 0.5 (= Dice), unified-focal-loss
    writes ``delta = 0.7`` on the FN. segbench follows the paper: 0.3 / 0.7.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, include_background: bool = True,
                 smooth: float = 1e-5, batch: bool = False, class_weights=None, reduction: str = "mean",
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__(include_background, smooth, batch, class_weights, reduction, ignore_index, num_classes)
        self.alpha = _check_fp_fn_weight("alpha", alpha)
        self.beta = _check_fp_fn_weight("beta", beta)

    def index(self, counts: SoftCounts) -> torch.Tensor:
        """The Tversky index ``TI_c``."""
        tp = counts.tp
        return ratio(tp, tp + self.alpha * counts.fp + self.beta * counts.fn, self.smooth)

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        return 1 - self.index(counts)


@register_loss("focal_tversky")
class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (Abraham & Khan 2019, "A novel focal Tversky loss function with
    improved attention U-Net for lesion segmentation").

    ``L_c = (1 - TI_c)^(1/gamma)``, ``TI_c`` the Tversky index (see :class:`TverskyLoss`),
    then reduced over classes: the exponent is applied **per class** as in the paper
    and unified-focal-loss (segmentation_models_pytorch applies it after the class
    mean, its issue 734).

    Args:
        gamma: ``> 0``; the paper searches ``[1, 3]`` and uses ``4/3``, i.e. the
            exponent ``1/gamma = 0.75`` that SegLoss writes directly.
        alpha, beta: FP / FN weights, 0.3 / 0.7 (the paper's ``alpha = 0.7`` is on the FN).

    With ``1/gamma < 1`` the derivative of ``x^(1/gamma)`` is unbounded at ``x = 0``
    (a perfect class): ``1 - TI`` is clamped at 1e-6 before the power, so a perfect
    prediction scores ``1e-6^(1/gamma)`` per class (about 3e-5 at gamma 4/3).
    """

    def __init__(self, gamma: float = 4 / 3, alpha: float = 0.3, beta: float = 0.7, include_background: bool = True,
                 smooth: float = 1e-5, batch: bool = False, class_weights=None, reduction: str = "mean",
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__(alpha, beta, include_background, smooth, batch, class_weights, reduction, ignore_index,
                         num_classes)
        self.gamma = float(check_option("gamma", gamma, low=0.0, low_open=True))

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        return guarded_pow(1 - self.index(counts), 1 / self.gamma, _POW_EPS)

    def perfect_value(self, num_classes: int) -> float:
        return _POW_EPS ** (1 / self.gamma) if self.gamma > 1 else 0.0  # reduction "mean"


@register_loss("asymmetric_similarity")
class AsymmetricSimilarityLoss(OverlapLoss):
    """Asymmetric similarity loss (Hashemi et al. 2018, "Asymmetric loss functions and deep
    densely-connected networks for highly-imbalanced medical image segmentation").

    ``L_c = 1 - ((1 + beta^2) TP_c + smooth) / ((1 + beta^2) TP_c + beta^2 FN_c + FP_c + smooth)``,
    the soft F-beta score; ``beta = 1`` is Dice, larger ``beta`` favours recall.

    Args:
        beta: ``> 0``; 1.5 in the paper. (Not Tversky's ``beta``: this is Tversky with
            ``alpha = 1 / (1 + beta^2)`` on FP and ``beta^2 / (1 + beta^2)`` on FN.)
    """

    def __init__(self, beta: float = 1.5, include_background: bool = True, smooth: float = 1e-5,
                 batch: bool = False, class_weights=None, reduction: str = "mean",
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__(include_background, smooth, batch, class_weights, reduction, ignore_index, num_classes)
        self.beta = float(check_option("beta", beta, low=0.0, low_open=True))

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        b2 = self.beta ** 2
        tp = (1 + b2) * counts.tp
        return 1 - ratio(tp, tp + b2 * counts.fn + counts.fp, self.smooth)


@register_loss("wang_focal_dice")
class WangFocalDiceLoss(OverlapLoss):
    """Focal Dice loss of Wang & Chung 2018 ("Focal dice loss and image dilation for brain tumor
    segmentation"; the AFW-Dice paper's reference 29) -- not ``focal_dice``, which is focal CE + Dice.

    ``L = sum_c (1 - DSC_c^(1/beta))``, ``DSC_c = (2 TP_c + smooth) / (sum s + sum g + smooth)``,
    over the structures of interest (background left out, as the paper). With ``beta > 1`` the
    well-segmented classes (``DSC`` near 1) are down-weighted: the gradient
    ``(1/beta) DSC^(1/beta - 1)`` grows as ``DSC`` falls, focusing on the hard classes (the
    focal idea on classes, not voxels); ``beta = 1`` is the Dice loss.

    Args:
        beta: ``> 0``; 2 is segbench's default.
        include_background: score class 0 too (false: the paper's "structures of interest").
        batch: pool the sums over the batch (default, as the Table 1 / 2 baselines).
        reduction: ``sum`` over classes (the paper), ``mean`` or ``none``.
        smooth, class_weights, ignore_index: as the other region losses.

    For ``1/beta < 1`` the derivative is unbounded at ``DSC = 0`` (a class predicted nowhere
    with ``smooth = 0``): ``DSC`` is clamped at 1e-6 before the power.
    """

    def __init__(self, beta: float = 2.0, include_background: bool = False, smooth: float = 1e-5,
                 batch: bool = True, class_weights=None, reduction: str = "sum", ignore_index: int | None = None,
                 num_classes: int | None = None):
        super().__init__(include_background, smooth, batch, class_weights, reduction, ignore_index, num_classes)
        self.beta = float(check_option("beta", beta, low=0.0, low_open=True))

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        dsc = ratio(2 * counts.tp, dice_denominator(counts, self.squared), self.smooth)
        return 1 - guarded_pow(dsc, 1 / self.beta, _POW_EPS)


@register_loss("log_cosh_dice")
class LogCoshDiceLoss(DiceLoss):
    """Log-cosh Dice loss (Jadon 2020, "A survey of loss functions for semantic segmentation").

    ``L_c = log(cosh(D_c))`` with ``D_c`` the soft Dice loss of class ``c`` (see
    :class:`DiceLoss`, same options), then reduced over classes. Jadon applies it
    to one binary Dice loss; per class is the multi-class reading (as for focal
    Tversky). ``log cosh x ~ x^2 / 2`` near 0: a smoothed Dice.
    """

    def formula(self, counts: SoftCounts) -> torch.Tensor:
        dice = super().formula(counts)
        # log(cosh(x)) = x + log1p(exp(-2x)) - log 2, stable for every x
        return dice + torch.log1p(torch.exp(-2 * dice)) - 0.6931471805599453


@register_loss("generalized_dice")
class GeneralizedDiceLoss(SegLoss):
    """Generalised Dice loss (Sudre et al. 2017, "Generalised Dice overlap as a deep learning
    loss function for highly unbalanced segmentations").

    ``L = 1 - (2 sum_c w_c TP_c + smooth) / (sum_c w_c (sum_i s_i^c + sum_i g_i^c) + smooth)``,
    ``w_c = 1 / (sum_i g_i^c)^2``, per sample (mean over the batch) or batch pooled.

    Args:
        weight_type: ``square`` (Sudre, ``1/n^2``), ``simple`` (``1/n``) or ``uniform`` (1).
        absent_weight: the weight of a class absent from the ground truth
            (``n = 0``, ``w = inf``, NaN otherwise): ``max`` gives it the largest
            finite weight of the same sample (of the batch with ``batch``), MONAI's
            rule; ``zero`` drops it (its false positives are then not penalised).
            SegLoss / boundary-loss code effectively use ~1e20 (1 / (0 + 1e-10)^2),
            which makes an absent class dominate -- the reason SegLoss's benchmark
            reports a multi-organ DSC of 0.013 with GDice.
        normalize_weights: divide the weights by their sum over classes. The ratio
            is invariant to the scale of ``w``, except for ``smooth``: with raw
            ``1/n^2`` weights the weighted sums are of order ``1/n_min`` and a
            smooth of 1e-5 is not negligible for large organs. ``true`` (default)
            makes ``smooth`` act as in plain Dice; ``false`` is MONAI's
            ``GeneralizedDiceLoss`` exactly.
        include_background, smooth, batch, reduction, ignore_index: as the other
            region losses (``reduction: none`` gives ``[B]``, or a scalar with ``batch``).
    """

    def __init__(self, weight_type: str = "square", absent_weight: str = "max", normalize_weights: bool = True,
                 include_background: bool = True, smooth: float = 1e-5, batch: bool = False,
                 reduction: str = "mean", ignore_index: int | None = None):
        super().__init__()
        self.weight_type = check_option("weight_type", weight_type, choices=("square", "simple", "uniform"))
        self.absent_weight = check_option("absent_weight", absent_weight, choices=("max", "zero"))
        self.normalize_weights = bool(normalize_weights)
        self.include_background = bool(include_background)
        self.smooth = float(check_option("smooth", smooth, low=0.0))
        self.batch = bool(batch)
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)
        self.ignore_index = ignore_index

    def class_weights(self, target_sum: torch.Tensor) -> torch.Tensor:
        """``w_c`` from the class volumes ``[B, C']`` or ``[C']`` (not differentiated)."""
        if self.weight_type == "uniform":
            w = torch.ones_like(target_sum)
        else:
            w = 1 / (target_sum.square() if self.weight_type == "square" else target_sum)
        absent = target_sum == 0
        w = torch.where(absent, torch.zeros_like(w), w)
        if self.absent_weight == "max":
            w = torch.where(absent, w.amax(-1, keepdim=True), w)
        if self.normalize_weights:
            w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return w

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        counts = inputs.counts(self.batch).select(self.include_background)
        w = self.class_weights(counts.target_sum)
        numerator = 2 * (w * counts.tp).sum(-1)
        denominator = (w * (counts.pred_sum + counts.target_sum)).sum(-1)
        return reduce(1 - ratio(numerator, denominator, self.smooth), self.reduction)


@register_loss("lovasz_softmax")
class LovaszSoftmaxLoss(SegLoss):
    """Lovasz-softmax loss (Berman et al. 2018, "The Lovasz-Softmax loss: a tractable
    surrogate for the optimization of the intersection-over-union measure").

    Per class: errors ``e_i = |g_i^c - s_i^c|`` sorted in decreasing order,
    ``L_c = sum_k e_(k) * (J(k) - J(k - 1))`` with ``J(k) = 1 - I_k / U_k`` the Jaccard
    loss of the ``k`` largest errors (the Lovasz extension of the Jaccard loss),
    then the mean over classes. O(N log N) per class (one batched sort).

    Args:
        classes: ``present`` averages over the classes present in the ground truth
            (the paper's code default), ``all`` over every class (absent ones
            penalise their false positives).
        per_image: one loss per image, averaged (otherwise the batch is pooled, as the paper's default).
        include_background: score class 0 too (the paper does).
        ignore_index: label id whose voxels are left out.

    Applied to the softmax probabilities, as the paper and segmentation_models_pytorch;
    SegLoss feeds it the logits.
    """

    def __init__(self, classes: str = "present", per_image: bool = False, include_background: bool = True,
                 ignore_index: int | None = None):
        super().__init__()
        self.classes = check_option("classes", classes, choices=("present", "all"))
        self.per_image = bool(per_image)
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        B, C = inputs.batch_size, inputs.num_classes
        p = inputs.probs.reshape(B, C, -1)
        g = inputs.onehot.reshape(B, C, -1)
        if inputs.valid is not None:  # an ignored voxel gets error 0: it sorts last and adds nothing
            p = p * inputs.valid_float.reshape(B, 1, -1)
        if not self.include_background:
            p, g = p[:, 1:], g[:, 1:]
        if not self.per_image:  # [1, C', B*N]
            p = p.transpose(0, 1).reshape(1, p.shape[1], -1)
            g = g.transpose(0, 1).reshape(1, g.shape[1], -1)
        errors = (g - p).abs()
        errors, order = errors.sort(dim=-1, descending=True)
        g_sorted = g.gather(-1, order)
        positives = g_sorted.sum(-1, keepdim=True)
        intersection = positives - g_sorted.cumsum(-1)
        union = positives + (1 - g_sorted).cumsum(-1)
        jaccard = 1 - intersection / union
        gradient = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
        per_class = (errors * gradient).sum(-1)  # [B or 1, C']
        if self.classes == "all":
            return per_class.mean()
        present = (positives.squeeze(-1) > 0).float()
        per_image = (per_class * present).sum(-1) / present.sum(-1).clamp_min(1)
        return per_image.mean()


@register_loss("generalized_wasserstein_dice")
class GeneralizedWassersteinDiceLoss(SegLoss):
    """Generalised Wasserstein Dice loss (Fidon et al. 2017, "Generalised Wasserstein Dice
    score for imbalanced multi-class segmentation using holistic convolutional networks").

    Per voxel, the Wasserstein distance between the prediction and the label under a
    class distance matrix ``M`` (``M[y, y] = 0``, max 1): ``W_i = sum_c M[y_i, c] s_i^c``.
    ``TP = sum_i a_{y_i} (1 - W_i)``; ``L = 1 - (2 TP + smooth) / (2 TP + sum_i W_i + smooth)``
    per sample, mean over the batch.

    Args:
        dist_matrix: ``C x C`` list of lists (scaled so its maximum is 1), or ``null``
            for 0 on the diagonal and 1 elsewhere.
        weighting_mode: ``default`` (the paper: ``a = 0`` for the background, 1 for the
            other classes) or ``GDL`` (``a_c = 1 / (n_c + 1)``, and the denominator
            ``sum_i a_{y_i} (2 - W_i)``; Tilborghs et al. 2020).
        smooth, reduction: as the other region losses (``none`` gives ``[B]``).
    Equals MONAI's ``GeneralizedWassersteinDiceLoss`` (with ``smooth_nr = smooth_dr``).
    """

    def __init__(self, dist_matrix=None, weighting_mode: str = "default", smooth: float = 1e-5,
                 reduction: str = "mean", num_classes: int | None = None):
        super().__init__()
        if dist_matrix is not None:
            if not is_sequence(dist_matrix) or not all(is_sequence(row) for row in dist_matrix):
                raise ValueError(f"dist_matrix must be a C x C list of lists, got {dist_matrix!r}")
            m = torch.tensor([[float(v) for v in row] for row in dist_matrix])
            if m.dim() != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"dist_matrix must be square, got shape {tuple(m.shape)}")
            if num_classes is not None and m.shape[0] != num_classes:
                raise ValueError(f"dist_matrix is {m.shape[0]} x {m.shape[0]} but there are {num_classes} classes")
            if (m < 0).any() or m.max() <= 0 or (m.diagonal() != 0).any():
                raise ValueError("dist_matrix must be >= 0 with a zero diagonal and a positive maximum")
            m = m / m.max()
        else:
            m = None
        self.register_buffer("dist_matrix", m, persistent=False)
        self.weighting_mode = check_option("weighting_mode", weighting_mode, choices=("default", "GDL"))
        self.smooth = float(check_option("smooth", smooth, low=0.0))
        self.reduction = check_option("reduction", reduction, choices=REDUCTIONS)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        B, C = inputs.batch_size, inputs.num_classes
        t = inputs.target.reshape(B, -1)
        if self.dist_matrix is None:  # W = 1 - s^y
            wass = 1 - inputs.target_prob.reshape(B, -1)
        else:
            if self.dist_matrix.shape[0] != C:
                raise ValueError(f"dist_matrix is {self.dist_matrix.shape[0]} x {self.dist_matrix.shape[0]} "
                                 f"but the logits have {C} classes")
            p = inputs.probs.reshape(B, C, -1)
            by_label = torch.einsum("kc,bcn->bkn", self.dist_matrix.to(p), p)  # W if the label were k
            wass = by_label.gather(1, t.unsqueeze(1)).squeeze(1)
        if self.weighting_mode == "default":
            alpha = torch.ones(B, C, device=t.device)
            alpha[:, 0] = 0
        else:
            alpha = 1 / (inputs.class_voxel_counts + 1)
        a = alpha.gather(1, t)
        tp = (a * (1 - wass)).sum(1)
        if self.weighting_mode == "default":
            denominator = 2 * tp + wass.sum(1)
        else:
            denominator = (a * (2 - wass)).sum(1)
        return reduce(1 - ratio(2 * tp, denominator, self.smooth), self.reduction)
