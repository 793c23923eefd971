"""The Asymmetric Focal Weighted Dice loss (Guo, Lin, Pan, Jiang 2024, "Segmentation of
abdominal CT images with Asymmetric Focal Weighted Dice loss"), see PROTOCOL.md section A.

Two registered names:

* ``afw_dice``: the equations as printed (eq. 5-7): plain Dice denominator, CE + AFW 1:1;
* ``afw_dice_code``: the authors' public code (HyperSegUNet ``utils.py::DiceLoss_weights``
  + ``train_afw.py``): squared denominator, 0.5 CE + 0.5 AFW.

Both expose every option; only the defaults differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, SegLoss, check_option, is_sequence
from .region import dice_loss_exact
from .registry import register_loss


def resolve_classes(spec, num_classes: int, class_names: list[str] | None, name: str) -> list[int]:
    """``"all"`` (every foreground class), or a list of class names / label ids -> sorted ids."""
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"{name} must be 'all' or a list of class names / ids, got {spec!r}")
        return list(range(1, num_classes))
    if not is_sequence(spec):
        raise ValueError(f"{name} must be 'all' or a list of class names / ids, got {spec!r}")
    ids = []
    for item in spec:
        if isinstance(item, str):
            if class_names is None:
                raise ValueError(f"{name} names class {item!r} but no class_names are known; use label ids")
            if item not in class_names:
                raise ValueError(f"{name}: unknown class name {item!r}; classes are {list(class_names)}")
            ids.append(list(class_names).index(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < num_classes:
                raise ValueError(f"{name}: class id {item} outside 0..{num_classes - 1}")
            ids.append(item)
        else:
            raise ValueError(f"{name}: {item!r} is neither a class name nor a label id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} lists a class twice: {list(spec)}")
    return sorted(ids)


@register_loss("afw_dice")
class AFWDiceLoss(SegLoss):
    """Asymmetric Focal Weighted Dice + CE (Guo et al. 2024), the equations as printed.

    Per scored class ``c`` (the background included by default, as in the paper's
    sum over ``C`` classes and in the code):

        L_c     = 1 - (2 sum_i s_i^c g_i^c + smooth) / (sum_i (s_i^c + g_i^c) + smooth)
        L_AFW   = sum_{c not in r} w_c L_c + sum_{c in r} w_c clamp(L_c, clamp_min)^gamma + R(s)
        L       = lambda_ce CE + lambda_afw L_AFW

    with ``r`` the focused ("rare") classes, ``w_c = 1 / sigma_c^2 = exp(-s_c)`` and the
    learnable ``s_c = log sigma_c^2`` (initialised 0, ``nn.Parameter`` of this module,
    so they sit in the network's optimiser and receive its weight decay, as in the
    authors' code).

    Args:
        gamma: ``>= 0``, the focal exponent of the focused classes (0.25 best in the
            paper; 1 = plain Dice). ``gamma = 0`` (Figure 3's first point) makes every focused
            term the constant ``clamp(L_c)^0 = 1``: no gradient reaches the logits through
            them and the loss is CE plus the unfocused classes' Dice (the background's, with
            every organ focused) -- the paper's "degenerates to roughly CE alone".
        focused_classes: ``all`` (every foreground class, the paper's best ``r``), or a
            list of class names (from the training module's ``class_names``) or label
            ids; ``[]`` focuses none.
        asymmetric: ``true``: the focused classes get ``L^gamma``, the others ``L``
            (the paper's asymmetric structure, background unfocused). ``false``: the
            symmetric structure of Table 4, read as in the unified focal loss
            (Yeung 2022) from which the paper takes the term: every scored class,
            the background included, gets ``L^gamma`` (``focused_classes`` must then
            stay ``all``). The other reading of "symmetric" -- plain Dice for every
            class -- is ``gamma: 1`` (the paper: "gamma = 1 is the symmetric structure").
        uncertainty: learn the homoscedastic weights ``w_c = exp(-s_c)``; ``false``:
            ``w_c = 1`` and no regulariser (Table 3's ablation).
        regularizer: ``R(s)``: ``log_prod`` = ``ln(prod_c sigma_c^2 + 1)`` (eq. 6 as
            printed, and the code; ``softplus(sum_c s_c)``), or ``sum_log`` =
            ``sum_c ln(sigma_c^2 + 1)`` (eq. 2, Liebel & Koerner's form). At the
            optimum over ``s``: ``w_c T_c = sigmoid(sum_k s_k)`` for every class with
            ``log_prod`` (all weighted terms equal), ``w_c T_c = sigmoid(s_c)`` with
            ``sum_log``, ``T_c`` the (powered) Dice term of class ``c``.
        squared: V-Net's denominator ``sum s^2 + sum g^2`` (the code) instead of ``sum s + g``.
        batch: pool the sums over the batch (the printed sums run over all voxels ``i``;
            the code pools the batch too); ``false``: per sample, then the batch mean.
        smooth: the ``eps`` of the Dice term (the paper's Equation 4 / eq. 5; 1e-5 as the code),
            placed in **both** the numerator and the denominator, ``(2 TP + eps) / (D + eps)``,
            as printed and as the code: a class absent from both prediction and ground truth
            then has ``L_c = 0``, and ``1 - Dice = (D - 2 TP) / (D + eps)`` exactly (how
            :meth:`dice_losses` computes it). MONAI's ``smooth_nr`` / ``smooth_dr`` likewise.
        clamp_min: the floor of ``L_c`` before ``L_c^gamma`` when ``gamma < 1``: the
            derivative ``gamma L^(gamma - 1)`` is unbounded as ``L -> 0`` (a perfectly
            segmented class); the code's ``pow(L, 0.25)`` gives ``0 * inf = NaN`` there.
            Below the floor the term is constant (``clamp_min^gamma`` = 0.032 at the
            defaults) and passes no gradient; above it the gradient is at most
            ``gamma clamp_min^(gamma - 1)`` (7.9e3 at the defaults).
        lambda_ce, lambda_afw: the paper prints ``CE + AFW`` (1, 1); the code uses 0.5, 0.5.
        include_background: score class 0 (unfocused in the asymmetric structure).
        reduction: ``sum`` over the scored classes (eq. 7, the code) or ``mean``
            (the weighted sum divided by the number of scored classes; ``R`` is not).

    ``log_values()`` reports ``sigma2/<class name>`` = ``exp(s_c)`` per scored class.
    """

    needs_log_probs = True

    def __init__(self, gamma: float = 0.25, focused_classes="all", asymmetric: bool = True,
                 uncertainty: bool = True, regularizer: str = "log_prod", squared: bool = False, batch: bool = True,
                 smooth: float = 1e-5, clamp_min: float = 1e-6, lambda_ce: float = 1.0, lambda_afw: float = 1.0,
                 include_background: bool = True, reduction: str = "sum", num_classes: int | None = None,
                 class_names: list[str] | None = None):
        super().__init__()
        self.gamma = float(check_option("gamma", gamma, low=0.0))
        self.asymmetric = bool(asymmetric)
        self.uncertainty = bool(uncertainty)
        self.regularizer = check_option("regularizer", regularizer, choices=("log_prod", "sum_log"))
        self.squared = bool(squared)
        self.batch = bool(batch)
        self.smooth = float(check_option("smooth", smooth, low=0.0))
        self.clamp_min = float(check_option("clamp_min", clamp_min, low=0.0, low_open=True))
        self.lambda_ce = float(check_option("lambda_ce", lambda_ce, low=0.0))
        self.lambda_afw = float(check_option("lambda_afw", lambda_afw, low=0.0))
        self.include_background = bool(include_background)
        self.reduction = check_option("reduction", reduction, choices=("sum", "mean"))

        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if num_classes is not None and len(class_names) != num_classes:
                raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}")
            num_classes = len(class_names)
        if num_classes is None:
            raise ValueError("afw_dice needs num_classes (or class_names): its per-class weights and focused "
                             "classes are fixed at construction; build it with build_loss(..., num_classes=C)")
        check_option("num_classes", num_classes, low=2)
        self.num_classes = int(num_classes)
        self.class_names = class_names or [f"class{c}" for c in range(self.num_classes)]

        first = 0 if self.include_background else 1
        self.scored = list(range(first, self.num_classes))
        if not self.asymmetric:
            if focused_classes != "all":
                raise ValueError("focused_classes must stay 'all' with asymmetric: false (the symmetric structure "
                                 f"focuses every scored class), got {focused_classes!r}")
            focused = set(self.scored)
        else:
            focused = set(resolve_classes(focused_classes, self.num_classes, class_names, "focused_classes"))
            if not self.include_background and 0 in focused:
                raise ValueError("focused_classes contains the background (0) but include_background is false")
        self.focused_ids = sorted(focused)
        self.register_buffer("focused", torch.tensor([c in focused for c in self.scored]), persistent=False)
        if self.uncertainty:
            self.log_sigma2 = nn.Parameter(torch.zeros(len(self.scored)))
        else:
            self.register_parameter("log_sigma2", None)

    # the pieces of the formula ---------------------------------------------------------------
    def dice_losses(self, inputs: LossInputs) -> torch.Tensor:
        """``L_c`` of the scored classes, ``[C']`` (``[B, C']`` without ``batch``).

        Computed as ``1 - Dice`` directly: ``L_c = (D_c - 2 TP_c) / (D_c + eps)`` with the
        mismatch ``D_c - 2 TP_c`` = ``sum |s - g|`` (``sum (s - g)^2`` when ``squared``) of
        :meth:`LossInputs.mismatch`, summed voxel by voxel in float64. Near a perfect prediction
        ``1 - ratio`` in float32 would be the difference of two numbers equal to ~7 digits:
        after the power 0.25 its rounding error grows to ~1e-3 of the loss.
        """
        return dice_loss_exact(inputs, self.batch, self.squared, self.include_background, self.smooth).float()

    def focal_terms(self, dice_losses: torch.Tensor) -> torch.Tensor:
        """``T_c``: ``clamp(L_c)^gamma`` for the focused classes, ``L_c`` for the others."""
        if self.gamma == 1.0:
            return dice_losses
        powered = dice_losses.clamp_min(self.clamp_min).pow(self.gamma) if self.gamma < 1 \
            else dice_losses.pow(self.gamma)
        return torch.where(self.focused, powered, dice_losses)

    def class_weights(self) -> torch.Tensor | None:
        """``w_c = exp(-s_c)`` (``None`` without uncertainty)."""
        return None if self.log_sigma2 is None else torch.exp(-self.log_sigma2)

    def regularization(self) -> torch.Tensor | float:
        if self.log_sigma2 is None:
            return 0.0
        if self.regularizer == "log_prod":  # ln(prod exp(s_c) + 1) = softplus(sum s_c), overflow-free
            return F.softplus(self.log_sigma2.sum())
        return F.softplus(self.log_sigma2).sum()

    def afw_term(self, inputs: LossInputs) -> torch.Tensor:
        terms = self.focal_terms(self.dice_losses(inputs))
        weights = self.class_weights()
        if weights is not None:
            terms = terms * weights
        per_sample = terms.sum(-1) if self.reduction == "sum" else terms.mean(-1)
        return per_sample.mean() + self.regularization()

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        ce = inputs.mean_over_voxels(-inputs.target_log_prob)
        return self.lambda_ce * ce + self.lambda_afw * self.afw_term(inputs)

    # hooks -------------------------------------------------------------------------------------
    def log_values(self) -> dict[str, torch.Tensor]:
        if self.log_sigma2 is None:
            return {}
        sigma2 = torch.exp(self.log_sigma2.detach())  # stays on the device: no host sync per step
        return {f"sigma2/{self.class_names[c]}": v for c, v in zip(self.scored, sigma2.unbind())}

    def perfect_value(self, num_classes: int) -> float:
        """``lambda_afw (sum_{focused} w_c clamp_min^gamma + R(s))`` at the current ``s``."""
        with torch.no_grad():
            floor = self.clamp_min ** self.gamma if self.gamma < 1 else 0.0
            weights = self.class_weights()
            focused = self.focused.float()
            if weights is not None:
                focused = focused * weights.detach().cpu()
            total = float(focused.sum()) * floor
            if self.reduction == "mean":
                total /= len(self.scored)
            return self.lambda_afw * (total + float(self.regularization()))


@register_loss("afw_dice_code")
class AFWDiceCodeLoss(AFWDiceLoss):
    """AFW-Dice + CE as in the authors' public code (HyperSegUNet ``DiceLoss_weights``, ``train_afw.py``).

    Same formula and options as :class:`AFWDiceLoss`; the defaults reproduce the code:
    per-class Dice with squared denominator ``1 - (2 sum p g + 1e-5) / (sum p^2 + sum g^2 + 1e-5)``
    pooled over the batch, ``s_c = log sigma_c^2`` initialised 0 with weights
    ``exp(-s_c)``, background unfocused and every foreground class raised to 0.25,
    one joint regulariser ``ln(prod_c sigma_c^2 + 1)``, total ``0.5 CE + 0.5 AFW``.
    Deliberate deviation: ``clamp(L, 1e-6)^0.25`` where the code's ``pow(L, 0.25)``
    yields NaN gradients for a perfectly segmented class.
    """

    def __init__(self, gamma: float = 0.25, focused_classes="all", asymmetric: bool = True,
                 uncertainty: bool = True, regularizer: str = "log_prod", squared: bool = True, batch: bool = True,
                 smooth: float = 1e-5, clamp_min: float = 1e-6, lambda_ce: float = 0.5, lambda_afw: float = 0.5,
                 include_background: bool = True, reduction: str = "sum", num_classes: int | None = None,
                 class_names: list[str] | None = None):
        super().__init__(gamma, focused_classes, asymmetric, uncertainty, regularizer, squared, batch, smooth,
                         clamp_min, lambda_ce, lambda_afw, include_background, reduction, num_classes, class_names)
