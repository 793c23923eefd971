"""Compound losses: weighted sums of a distribution and a region term.

The terms are the library's own losses, evaluated on one shared
:class:`~segbench.losses.base.LossInputs`: one log-softmax, one set of soft
counts per step, whatever the number of terms.

Compound losses leave the background out of the region term by default
(``include_background: false``, nnU-Net's convention); the distribution term
always sees every class.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import CompoundLoss, LossInputs, SegLoss, check_option, check_weight_length, guarded_pow, parse_class_weights
from .distribution import CrossEntropyLoss, FocalLoss
from .region import DiceLoss, GeneralizedDiceLoss, dice_loss_exact, ratio
from .registry import register_loss

_POW_EPS_EXP_LOG = 1e-12  # clamp before the powers 0.3 of the exponential-logarithmic loss
_POW_EPS_UNIFIED = 1e-6   # clamp of 1 - mTI / 1 - s before the powers < 1 of the unified focal loss


_LOG_FLOOR_COMBO = math.log(1e-12)  # floor of log(1 - s) in the combo loss


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, accurate everywhere (Maechler 2012): ``log1p(-p)``
    where ``p < 1/2`` (``log(1 - p)`` would round ``1 - p`` to 1 for tiny ``p``) and
    ``log(-expm1(log_p))`` where ``p >= 1/2`` (exact ``1 - p`` near 1)."""
    half = -math.log(2.0)
    # each branch sees only its own range (clamped), so the branch not taken has finite gradients too
    small = torch.log1p(-torch.exp(log_p.clamp_max(half)))
    large = torch.log(-torch.expm1(log_p.clamp(min=half, max=-1e-30)))
    return torch.where(log_p < half, small, large)


def _check_lambda(name: str, value: float) -> float:
    return float(check_option(name, value, low=0.0))


@register_loss("ce_dice")
class CEDiceLoss(CompoundLoss):
    """``L = lambda_ce * CE + lambda_dice * Dice`` (nnU-Net's default: 1:1, Dice without
    background; TransUNet's baseline uses 0.5:0.5).

    CE as :class:`~segbench.losses.distribution.CrossEntropyLoss`, Dice as
    :class:`~segbench.losses.region.DiceLoss` (Milletari et al. 2016) with
    ``include_background``, ``smooth``, ``batch``, ``squared``. Equals MONAI's
    ``DiceCELoss(softmax=True, to_onehot_y=True)`` with the same Dice options.
    ``batch`` defaults to True, as nnU-Net's and TransUNet's baselines pool the Dice sums over
    the batch: per-slice Dice rewards never predicting a small organ on the many 2D slices that
    do not show it (its Dice is 1 when both are empty), and the organ is then never learned.
    """

    def __init__(self, lambda_ce: float = 1.0, lambda_dice: float = 1.0, include_background: bool = False,
                 smooth: float = 1e-5, batch: bool = True, squared: bool = False, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.terms = nn.ModuleDict({
            "ce": CrossEntropyLoss(ignore_index=ignore_index),
            "dice": DiceLoss(include_background=include_background, smooth=smooth, batch=batch, squared=squared,
                             ignore_index=ignore_index),
        })
        self.weights = {"ce": _check_lambda("lambda_ce", lambda_ce), "dice": _check_lambda("lambda_dice", lambda_dice)}


@register_loss("focal_dice")
class FocalDiceLoss(CompoundLoss):
    """``L = lambda_focal * Focal + lambda_dice * Dice`` (Zhu et al. 2019, AnatomyNet, uses focal + Dice).

    Focal is the **softmax** focal loss (Lin et al. 2017) of
    :class:`~segbench.losses.distribution.FocalLoss` (``gamma``, ``alpha``).
    MONAI's ``DiceFocalLoss`` uses a *sigmoid* focal term even with
    ``softmax=True`` (MONAI issue 8242); its Dice part equals ours.
    ``batch`` defaults to True (batch Dice), pooled as ``ce_dice`` and ``afw_dice`` are, so that
    the baselines of the AFW-Dice paper's Tables 1 and 2 differ in their loss only (see
    :class:`CEDiceLoss` for why per-slice Dice handicaps small organs).
    """

    def __init__(self, lambda_focal: float = 1.0, lambda_dice: float = 1.0, gamma: float = 2.0, alpha=None,
                 include_background: bool = False, smooth: float = 1e-5, batch: bool = True, squared: bool = False,
                 ignore_index: int | None = None, num_classes: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.terms = nn.ModuleDict({
            "focal": FocalLoss(gamma=gamma, alpha=alpha, ignore_index=ignore_index, num_classes=num_classes),
            "dice": DiceLoss(include_background=include_background, smooth=smooth, batch=batch, squared=squared,
                             ignore_index=ignore_index),
        })
        self.weights = {"focal": _check_lambda("lambda_focal", lambda_focal),
                        "dice": _check_lambda("lambda_dice", lambda_dice)}


@register_loss("ce_gd")
class CEGeneralizedDiceLoss(CompoundLoss):
    """``L = lambda_ce * CE + lambda_gd * GeneralizedDice`` (Sudre et al. 2017 for the GD term).

    GD options as :class:`~segbench.losses.region.GeneralizedDiceLoss`:
    ``weight_type``, ``absent_weight``, ``normalize_weights``, ``include_background``,
    ``smooth``, ``batch``. ``batch`` defaults to True: the sums and the class weights
    ``1 / n_c^2`` are pooled over the batch, as the other Table 1 / 2 baselines pool theirs.
    """

    def __init__(self, lambda_ce: float = 1.0, lambda_gd: float = 1.0, weight_type: str = "square",
                 absent_weight: str = "max", normalize_weights: bool = True, include_background: bool = False,
                 smooth: float = 1e-5, batch: bool = True, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.terms = nn.ModuleDict({
            "ce": CrossEntropyLoss(ignore_index=ignore_index),
            "gd": GeneralizedDiceLoss(weight_type=weight_type, absent_weight=absent_weight,
                                      normalize_weights=normalize_weights, include_background=include_background,
                                      smooth=smooth, batch=batch, ignore_index=ignore_index),
        })
        self.weights = {"ce": _check_lambda("lambda_ce", lambda_ce), "gd": _check_lambda("lambda_gd", lambda_gd)}


@register_loss("combo")
class ComboLoss(SegLoss):
    """Combo loss (Taghanaki et al. 2019, "Combo loss: handling input and output imbalance
    in multi-organ segmentation").

    ``L = alpha * WCE - (1 - alpha) * mean_c DSC_c`` with the per-class binary weighted CE
    ``WCE = -1/N sum_i sum_c [beta g log s + (1 - beta)(1 - g) log(1 - s)]`` and the soft Dice
    coefficient ``DSC_c = (2 TP_c + smooth) / (sum s + sum g + smooth)``.

    Args:
        alpha: in ``[0, 1]``, the weight of the **CE** term, as in the paper and in
            unified-focal-loss's code (the survey text of Ma's taxonomy says it weights
            the Dice term: it does not).
        beta: in ``[0, 1]``, weight of the positive (``g = 1``) term of the CE;
            ``beta < 0.5`` penalises false positives more, ``> 0.5`` false negatives.
        include_background, smooth, batch: of the Dice term.

    The paper sums the Dice coefficients over the ``K`` classes; the mean (as
    unified-focal-loss) keeps the scale independent of ``K``. The loss is negative
    near the optimum: a perfect prediction scores ``-(1 - alpha)``.
    ``log(1 - s)`` is computed from ``log s`` without cancellation (:func:`log1mexp`: ``log1p(-s)``
    for small ``s``, ``log(-expm1(log s))`` near 1) and floored at ``log(1e-12)`` (a saturated
    wrong class would give -inf).
    """

    needs_log_probs = True

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, include_background: bool = True,
                 smooth: float = 1e-5, batch: bool = False):
        super().__init__()
        self.alpha = float(check_option("alpha", alpha, low=0.0, high=1.0))
        self.beta = float(check_option("beta", beta, low=0.0, high=1.0))
        self.dice = DiceLoss(include_background=include_background, smooth=smooth, batch=batch)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        log_not_p = log1mexp(inputs.log_probs).clamp_min(_LOG_FLOOR_COMBO)  # log(1 - s), all classes
        # sum_c (1 - g) log(1 - s): the target class's entry zeroed, not subtracted from the sum (the
        # target's log(1 - s^y) ~ -20 near a perfect voxel would swamp the others' ~ -1e-9)
        off_target = log_not_p.scatter(1, inputs.target.unsqueeze(1), 0.0).sum(1)
        per_voxel = -(self.beta * inputs.target_log_prob + (1 - self.beta) * off_target)
        wce = inputs.mean_over_voxels(per_voxel)
        counts = self.dice.counts(inputs)
        dsc = ratio(2 * counts.tp, counts.pred_sum + counts.target_sum, self.dice.smooth)
        return self.alpha * wce - (1 - self.alpha) * dsc.mean()

    def perfect_value(self, num_classes: int) -> float:
        return -(1 - self.alpha)


@register_loss("exp_log")
class ExponentialLogarithmicLoss(SegLoss):
    """Exponential logarithmic loss (Wong et al. 2018, "3D segmentation with exponential
    logarithmic loss for highly unbalanced object sizes").

    ``L = lambda_dice * E_c[(-ln Dice_c)^gamma_dice] + lambda_ce * E_i[w_{y_i} (-ln s_i^{y_i})^gamma_ce]``,
    ``Dice_c = (2 TP_c + smooth) / (sum s + sum g + smooth)``: the expectation over
    classes is taken **per class, outside the power** as in the paper (SegLoss instead
    raises the log of the *mean* Dice, and does not raise the CE).

    Args:
        lambda_dice, lambda_ce: 0.8 / 0.2 in the paper.
        gamma_dice, gamma_ce: ``> 0``, 0.3 in the paper.
        class_weights: ``inverse_sqrt_frequency`` (the paper's
            ``w_l = (sum_k f_k / f_l)^0.5``, label frequencies ``f`` counted per batch,
            absent labels 0), a list of ``C`` weights, or ``null`` (all 1).
        include_background, smooth, batch: of the Dice term (the paper's pseudo-count is 1).

    Both powers ``< 1`` have unbounded derivatives at 0 (a perfect class or voxel):
    their bases are clamped at 1e-12 before the power. ``-ln Dice_c`` is computed as
    ``-log1p(-L_c)`` from the Dice loss ``L_c = (D - 2 TP) / (D + smooth)`` in float64, exact
    near a perfect prediction (``-ln(1 - L)`` would round ``1 - L`` first).
    """

    needs_log_probs = True

    def __init__(self, lambda_dice: float = 0.8, lambda_ce: float = 0.2, gamma_dice: float = 0.3,
                 gamma_ce: float = 0.3, class_weights="inverse_sqrt_frequency", include_background: bool = True,
                 smooth: float = 1.0, batch: bool = False, num_classes: int | None = None):
        super().__init__()
        self.lambda_dice = _check_lambda("lambda_dice", lambda_dice)
        self.lambda_ce = _check_lambda("lambda_ce", lambda_ce)
        self.gamma_dice = float(check_option("gamma_dice", gamma_dice, low=0.0, low_open=True))
        self.gamma_ce = float(check_option("gamma_ce", gamma_ce, low=0.0, low_open=True))
        self.dice = DiceLoss(include_background=include_background, smooth=smooth, batch=batch)
        weights = parse_class_weights(class_weights, num_classes, strings=("inverse_sqrt_frequency",))
        self.sqrt_frequency = weights == "inverse_sqrt_frequency"
        self.register_buffer("fixed_weights", weights if torch.is_tensor(weights) else None, persistent=False)

    def voxel_weights(self, inputs: LossInputs) -> torch.Tensor | None:
        if self.sqrt_frequency:
            f = inputs.class_voxel_counts.sum(0)
            w = torch.where(f > 0, (f.sum() / f.clamp_min(1)).sqrt(), torch.zeros_like(f))
        elif self.fixed_weights is not None:
            check_weight_length(self.fixed_weights, inputs.num_classes)
            w = self.fixed_weights.to(inputs.logits.device)
        else:
            return None
        return w[inputs.target]

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        # -ln Dice_c = -log1p(-L_c), L_c the Dice loss computed without cancellation (float64):
        # -ln(1 - L) rounds 1 - L first and loses L's digits near a perfect prediction
        d = self.dice
        loss = dice_loss_exact(inputs, d.batch, d.squared, d.include_background, d.smooth)
        neg_log_dice = -torch.log1p(-loss.clamp_max(1 - 1e-15))
        dice_term = guarded_pow(neg_log_dice, self.gamma_dice, _POW_EPS_EXP_LOG).mean().float()
        ce = guarded_pow(-inputs.target_log_prob, self.gamma_ce, _POW_EPS_EXP_LOG)
        weights = self.voxel_weights(inputs)
        if weights is not None:
            ce = ce * weights
        return self.lambda_dice * dice_term + self.lambda_ce * inputs.mean_over_voxels(ce)

    def perfect_value(self, num_classes: int) -> float:
        # both clamped powers sit at their floor (the CE one times the mean voxel weight, ~1)
        return self.lambda_dice * _POW_EPS_EXP_LOG ** self.gamma_dice


@register_loss("unified_focal")
class UnifiedFocalLoss(SegLoss):
    """Unified focal loss (Yeung et al. 2022, "Unified focal loss: generalising Dice and cross
    entropy-based losses to handle class imbalanced medical image segmentation").

    ``L = lambda_focal * L_mF + (1 - lambda_focal) * L_mFT`` with

    * modified focal: ``L_mF = -1/N sum_i d_{y_i} (1 - s_i^{y_i})^gamma log s_i^{y_i}``,
      ``d = 1 - delta`` for the background and ``delta`` for the other classes;
      ``asymmetric`` drops the factor ``(1 - s)^gamma`` for the foreground classes
      (suppresses only the background);
    * modified focal Tversky: ``mTI_c = (TP + smooth) / (TP + delta FN + (1 - delta) FP + smooth)``,
      ``L_mFT = mean_c (1 - mTI_c)^(1 - gamma)``; ``asymmetric`` leaves the background
      at ``1 - mTI_0`` (enhances only the foreground).

    Args:
        lambda_focal: in ``[0, 1]``; the paper writes ``lambda`` on the focal term, the
            unified-focal-loss code on the focal Tversky term; identical at the default 0.5.
        delta: in ``[0, 1]``, 0.6 (the paper's best; MONAI defaults to 0.7).
        gamma: in ``[0, 1)``, 0.5 (0.2 in some versions of the code).
        asymmetric: the asymmetric variant (background = class 0) or the symmetric one.
        smooth, batch: of the Tversky index (per sample, as the code: ``smooth`` 1e-6).

    Multi-class as the code: every foreground class is treated alike. MONAI's
    ``AsymmetricUnifiedFocalLoss`` is binary, takes probabilities, and averages its
    focal term over the two channels too (its value is half of ``L_mF``).
    ``1 - s`` and ``1 - mTI`` are clamped at 1e-6 before the powers ``< 1``.
    """

    needs_log_probs = True

    def __init__(self, lambda_focal: float = 0.5, delta: float = 0.6, gamma: float = 0.5, asymmetric: bool = True,
                 smooth: float = 1e-6, batch: bool = False):
        super().__init__()
        self.lambda_focal = float(check_option("lambda_focal", lambda_focal, low=0.0, high=1.0))
        self.delta = float(check_option("delta", delta, low=0.0, high=1.0))
        self.gamma = float(check_option("gamma", gamma, low=0.0, high=1.0, high_open=True))
        self.asymmetric = bool(asymmetric)
        self.smooth = float(check_option("smooth", smooth, low=0.0))
        self.batch = bool(batch)

    def focal_term(self, inputs: LossInputs) -> torch.Tensor:
        log_p = inputs.target_log_prob
        modulated = guarded_pow(-torch.expm1(log_p), self.gamma, _POW_EPS_UNIFIED) * -log_p
        background = inputs.target == 0
        foreground = -log_p if self.asymmetric else modulated
        per_voxel = torch.where(background, (1 - self.delta) * modulated, self.delta * foreground)
        return inputs.mean_over_voxels(per_voxel)

    def focal_tversky_term(self, inputs: LossInputs) -> torch.Tensor:
        counts = inputs.counts(self.batch)
        tp = counts.tp
        mti = ratio(tp, tp + self.delta * counts.fn + (1 - self.delta) * counts.fp, self.smooth)
        enhanced = guarded_pow(1 - mti, 1 - self.gamma, _POW_EPS_UNIFIED)
        if self.asymmetric:
            enhanced = torch.cat([1 - mti[..., :1], enhanced[..., 1:]], dim=-1)
        return enhanced.mean()

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        return (self.lambda_focal * self.focal_term(inputs)
                + (1 - self.lambda_focal) * self.focal_tversky_term(inputs))

    def perfect_value(self, num_classes: int) -> float:
        # the clamped powers of the enhanced classes sit at their floor 1e-6^(1 - gamma)
        enhanced = num_classes - 1 if self.asymmetric else num_classes
        return (1 - self.lambda_focal) * enhanced / num_classes * _POW_EPS_UNIFIED ** (1 - self.gamma)
