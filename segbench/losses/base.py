"""Shared machinery of every segbench loss.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: ``[B, C, *spatial]`` raw network outputs (2D or 3D, any float dtype);
* ``target``: integer label map ``[B, *spatial]`` (``[B, 1, *spatial]`` accepted).

A loss subclasses :class:`SegLoss` and writes its formula in
:meth:`SegLoss.compute`, which receives a :class:`LossInputs`: the quantities
every loss shares (fp32 softmax / log-softmax, the checked target, the per-class
soft TP / FP / FN), computed lazily and at most once. A compound loss hands the
*same* ``LossInputs`` to each of its terms, so the softmax and the overlap sums
are computed once per step however many terms use them.

Losses may own learnable parameters (they are sub-modules of the LightningModule,
so the optimiser sees them) and may react to the training schedule through
:meth:`SegLoss.on_train_epoch_start`. Scalars returned by
:meth:`SegLoss.log_values` are logged under ``loss/<key>`` every step.

Notation used in the docstrings: voxel ``i``, class ``c``, softmax probability
``s_i^c``, one-hot ground truth ``g_i^c``; per-class soft counts
``TP_c = sum_i s g``, ``FP_c = sum_i s (1 - g)``, ``FN_c = sum_i (1 - s) g``,
summed over one sample (``batch=False``) or over the whole batch (``batch=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from .maps import TargetMap, TargetMapBuilder

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- target handling
def normalize_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return ``target`` as a long tensor ``[B, *spatial]``, checking its shape against ``logits``."""
    if logits.dim() < 3:
        raise ValueError(f"logits must be [B, C, *spatial], got shape {tuple(logits.shape)}")
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "expected an integer label map [B, *spatial] or [B, 1, *spatial]")
    if target.is_floating_point():
        target = target.round()
    return target.long()


def check_label_range(target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise ValueError when a label id is outside ``[0, num_classes)`` (``ignore_index`` excepted)."""
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(valid))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target holds label id {hi if hi >= num_classes else lo} but the logits have {num_classes} classes "
            f"(valid ids 0..{num_classes - 1}); check data.num_classes / the dataset's label map, "
            "or set the loss's ignore_index")


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, *spatial]`` long -> ``[B, C, *spatial]`` one-hot in ``dtype`` (by comparison, no scatter)."""
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * (target.dim() - 1)))
    return (target.unsqueeze(1) == classes).to(dtype)


def check_image(image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The input image as float32 ``[B, K, *spatial]`` (``[B, *spatial]`` accepted), detached,
    checked against the logits' batch and spatial shape."""
    if image.dim() == logits.dim() - 1:
        image = image.unsqueeze(1)
    if image.dim() != logits.dim() or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(f"image shape {tuple(image.shape)} does not match logits {tuple(logits.shape)}; "
                         "expected the network input [B, K, *spatial]")
    return image.detach().float()


# --------------------------------------------------------------------------- option checking
def check_option(name: str, value, *, choices: Sequence | None = None, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False):
    """Validate one option and return it; the ValueError names the option."""
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def is_sequence(value) -> bool:
    """A list-like option (list, tuple, OmegaConf ListConfig), not a string."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def parse_class_weights(value, num_classes: int | None, name: str = "class_weights",
                        strings: Sequence[str] = ()) -> torch.Tensor | str | None:
    """``None``, one of ``strings`` (a rule computed per batch) or a list of ``num_classes`` weights >= 0."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in strings:
            allowed = ", ".join(repr(s) for s in strings)
            raise ValueError(f"{name} must be null, a list of per-class weights{' or ' + allowed if allowed else ''}; "
                             f"got {value!r}")
        return value
    if not is_sequence(value):
        raise ValueError(f"{name} must be a list of per-class weights, got {value!r}")
    weights = [float(w) for w in value]
    if num_classes is not None and len(weights) != num_classes:
        raise ValueError(f"{name} has {len(weights)} entries but there are {num_classes} classes")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"{name} must be finite and >= 0, got {weights}")
    return torch.tensor(weights, dtype=torch.float32)


def check_weight_length(weights: torch.Tensor, expected: int, name: str = "class_weights") -> None:
    if weights.numel() != expected:
        raise ValueError(f"{name} has {weights.numel()} entries but the loss scores {expected} classes")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` / ``sum`` over every entry, or ``none`` (returned as is)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def guarded_pow(x: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    """``clamp(x, min=eps) ** exponent`` for ``exponent < 1``, plain ``x ** exponent`` otherwise.

    For ``exponent < 1`` the derivative ``exponent * x**(exponent - 1)`` is unbounded
    as ``x -> 0`` (a perfectly segmented class): clamping keeps the value finite
    (``eps**exponent``) and the gradient zero there instead of ``0 * inf = NaN``.
    """
    if exponent >= 1.0:  # bounded derivative: no clamp needed
        return x if exponent == 1.0 else x.pow(exponent)
    return x.clamp_min(eps).pow(exponent)


# --------------------------------------------------------------------------- shared quantities
def class_sums(values: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``sum_{i: y_i = c} values_i`` per sample and class, ``[B, C]``, differentiable in ``values``.

    ``values`` and ``target`` are ``[B, *spatial]``. The scatter-add accumulates
    sequentially, so it runs in float64: in float32 a 96^3 volume loses ~1e-4 of
    relative precision (a dense ``(s * g).sum()`` uses pairwise summation instead).
    """
    B = values.shape[0]
    sums = torch.zeros(B, num_classes, dtype=torch.float64, device=values.device)
    return sums.scatter_add(1, target.reshape(B, -1), values.reshape(B, -1).double()).to(values.dtype)


@dataclass(frozen=True)
class SoftCounts:
    """Per-class soft counts, ``[B, C]`` (per sample) or ``[C]`` (batch pooled); all classes."""

    tp: torch.Tensor          # sum s g
    pred_sum: torch.Tensor    # sum s
    target_sum: torch.Tensor  # sum g  (voxel count of the class)
    pred_sq_sum: torch.Tensor | None = None  # sum s^2 (for squared denominators)

    @property
    def fp(self) -> torch.Tensor:
        return self.pred_sum - self.tp

    @property
    def fn(self) -> torch.Tensor:
        return self.target_sum - self.tp

    def drop_background(self) -> SoftCounts:
        def cut(x):
            return None if x is None else x[..., 1:]
        return SoftCounts(cut(self.tp), cut(self.pred_sum), cut(self.target_sum), cut(self.pred_sq_sum))

    def select(self, include_background: bool) -> SoftCounts:
        return self if include_background else self.drop_background()


class LossInputs:
    """The quantities shared by every loss for one ``(logits, target)`` pair, computed lazily once.

    Everything is fp32 (softmax in half precision is unsafe) and computed with
    autocast disabled. Voxels labelled ``ignore_index`` are excluded everywhere:
    their target is replaced by 0 for indexing and :attr:`valid` masks them.

    Attributes:
        logits: ``[B, C, *spatial]`` float32.
        target: ``[B, *spatial]`` long, ignored voxels set to 0.
        valid: ``[B, *spatial]`` bool mask of the voxels that count, or ``None`` (all count).
        maps: target-only maps handed in by the caller (the data pipeline), keyed by
            :attr:`TargetMap.key`, or ``None``; read through :meth:`target_map`.
        image: the network's input ``[B, K, *spatial]`` float32 (no gradient), or ``None`` when
            the caller gave none; read by the losses whose ``needs_image`` is true (``level_set``).
    """

    def __init__(self, logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None,
                 log_domain: bool = False, maps: dict[str, torch.Tensor] | None = None,
                 image: torch.Tensor | None = None, check_labels: bool = True):
        target = normalize_target(logits, target)
        if check_labels:
            check_label_range(target, logits.shape[1], ignore_index)
        self.logits = logits.float()
        self.num_classes = logits.shape[1]
        self.batch_size = logits.shape[0]
        self.ignore_index = ignore_index
        # With log_domain the probabilities are exp(log_softmax) so that a compound loss
        # with a log-likelihood term runs one softmax pass, not two.
        self.log_domain = log_domain
        if ignore_index is not None:
            valid = target != ignore_index
            self.valid: torch.Tensor | None = valid
            self.target = torch.where(valid, target, torch.zeros_like(target))
        else:
            self.valid = None
            self.target = target
        self._counts: dict[tuple, SoftCounts | torch.Tensor] = {}
        self.maps = maps
        self._maps: dict[str, torch.Tensor] = {}
        self.image = None if image is None else check_image(image, logits)

    def target_map(self, spec: TargetMap) -> torch.Tensor:
        """The map ``spec`` of this target (float32, no gradient): the caller's precomputed one
        when ``maps`` holds it, otherwise computed here on the target's device; once per step."""
        if spec.key not in self._maps:
            given = None if self.maps is None else self.maps.get(spec.key)
            if given is not None:
                expected = spec.shape(self.target.shape, self.num_classes)
                if tuple(given.shape) != expected:
                    raise ValueError(f"maps[{spec.key!r}] has shape {tuple(given.shape)}, expected {expected} for "
                                     f"this target; it was computed for another label map or loss")
                value = given.to(device=self.target.device, dtype=torch.float32)
            else:
                with torch.no_grad():
                    value = spec.compute(self.target, self.num_classes, self.valid)
            self._maps[spec.key] = value
        return self._maps[spec.key]

    # per-voxel quantities ------------------------------------------------------------------
    @cached_property
    def log_probs(self) -> torch.Tensor:
        """``log s``, ``[B, C, *spatial]`` (log-softmax of the logits)."""
        return self.logits.log_softmax(1)

    @cached_property
    def probs(self) -> torch.Tensor:
        """``s``, ``[B, C, *spatial]``."""
        if self.log_domain:
            return self.log_probs.exp()
        return self.logits.softmax(1)

    @cached_property
    def target_log_prob(self) -> torch.Tensor:
        """``log s_i^{y_i}``, ``[B, *spatial]``: minus the per-voxel cross-entropy."""
        return self.log_probs.gather(1, self.target.unsqueeze(1)).squeeze(1)

    @cached_property
    def target_prob(self) -> torch.Tensor:
        """``s_i^{y_i}``, ``[B, *spatial]``."""
        if "target_log_prob" in self.__dict__ or self.log_domain:
            return self.target_log_prob.exp()
        return self.probs.gather(1, self.target.unsqueeze(1)).squeeze(1)

    @cached_property
    def onehot(self) -> torch.Tensor:
        """``g``, ``[B, C, *spatial]`` float32, all-zero at ignored voxels."""
        g = one_hot(self.target, self.num_classes)
        if self.valid is not None:
            g = g * self.valid.unsqueeze(1)
        return g

    @cached_property
    def valid_float(self) -> torch.Tensor | None:
        return None if self.valid is None else self.valid.float()

    @cached_property
    def num_valid(self) -> torch.Tensor | int:
        """Number of voxels that count (a tensor when some are ignored)."""
        if self.valid is None:
            return self.target.numel()
        return self.valid.sum()

    def mean_over_voxels(self, per_voxel: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Reduce a ``[B, *spatial]`` per-voxel loss: mean over valid voxels, sum, or the masked map."""
        if self.valid is not None:
            per_voxel = per_voxel * self.valid
        if reduction == "mean":
            n = self.num_valid
            return per_voxel.sum() / (n.clamp_min(1) if torch.is_tensor(n) else max(n, 1))
        if reduction == "sum":
            return per_voxel.sum()
        return per_voxel

    # per-class quantities ------------------------------------------------------------------
    @cached_property
    def class_voxel_counts(self) -> torch.Tensor:
        """``sum_i g_i^c`` per sample, ``[B, C]`` float32 (not differentiable: it is the target)."""
        B, C = self.batch_size, self.num_classes
        flat = self.target.reshape(B, -1)
        if self.valid is not None:
            return class_sums(self.valid_float, self.target, C)
        offsets = torch.arange(B, device=flat.device).unsqueeze(1) * C
        return torch.bincount((flat + offsets).reshape(-1), minlength=B * C).reshape(B, C).float()

    def counts(self, batch: bool = False, squared: bool = False) -> SoftCounts:
        """Soft counts of every class, per sample ``[B, C]`` or pooled over the batch ``[C]``.

        ``TP_c`` is accumulated from the probability of each voxel's *target* class
        (gather + scatter-add): the ``[B, C, *spatial]`` product ``s * g`` is never
        materialised. ``squared`` adds ``sum s^2`` for V-Net's squared denominator.
        """
        key = (batch, squared)
        if key in self._counts:
            return self._counts[key]
        if batch:
            per_sample = self.counts(False, squared)
            result = SoftCounts(*(None if x is None else x.sum(0) for x in (
                per_sample.tp, per_sample.pred_sum, per_sample.target_sum, per_sample.pred_sq_sum)))
        elif squared:
            plain = self.counts(False, False)
            result = SoftCounts(plain.tp, plain.pred_sum, plain.target_sum,
                                self.flat_probs.square().sum(2, dtype=torch.float64).float())  # float64 accumulation
        else:
            p_target = self.target_prob if self.valid is None else self.target_prob * self.valid
            tp = class_sums(p_target, self.target, self.num_classes)
            result = SoftCounts(tp, self.flat_probs.sum(2), self.class_voxel_counts)
        self._counts[key] = result
        return result

    def mismatch(self, batch: bool = False, squared: bool = False) -> torch.Tensor:
        """``sum_i |s_i^c - g_i^c|`` (``squared``: ``sum_i (s_i^c - g_i^c)^2``) per class, float64,
        ``[B, C]`` or pooled ``[C]``: the Dice denominator minus ``2 TP``, without the cancellation.

        ``1 - (2 TP + eps) / (D + eps) = (D - 2 TP) / (D + eps)`` exactly, with ``D - 2 TP`` =
        ``sum s + sum g - 2 sum s g`` = ``sum |s - g|`` (one-hot ``g``), or ``sum (s - g)^2`` for
        V-Net's ``D = sum s^2 + sum g^2``. Near a perfect prediction ``D`` and ``2 TP`` agree to
        ~7 digits, so their float32 difference is mostly rounding; here each voxel's term is
        ``s^c`` off its class and ``1 - s^y = sum_{c != y} s^c`` on it (each small probability is
        accurate to float32's relative precision, ``1 - s^y`` computed from ``s^y`` would not be),
        summed in float64. Ignored voxels have ``s = 0`` in :attr:`flat_probs`: they add nothing.
        """
        key = ("mismatch", batch, squared)
        if key in self._counts:
            return self._counts[key]
        if batch:
            result = self.mismatch(False, squared).sum(0)
        else:
            index = self.target.reshape(self.batch_size, 1, -1)
            others = self.flat_probs.scatter(1, index, 0.0)           # s^c off the target class
            miss = others.sum(1, keepdim=True)                        # 1 - s^y as the sum of the others
            q = others.scatter(1, index, miss).double()               # |s - g| per class and voxel
            result = (q.square() if squared else q).sum(2)
        self._counts[key] = result
        return result

    @cached_property
    def flat_probs(self) -> torch.Tensor:
        """``s`` as ``[B, C, N]``, zero at ignored voxels."""
        p = self.probs.reshape(self.batch_size, self.num_classes, -1)
        if self.valid is not None:
            p = p * self.valid_float.reshape(self.batch_size, 1, -1)
        return p


# --------------------------------------------------------------------------- the base class
class SegLoss(nn.Module):
    """Base class of every segbench loss, and of a user's own (public API).

    Subclasses implement :meth:`compute` (the formula, from a :class:`LossInputs`);
    :meth:`forward` builds the inputs with autocast disabled. The smallest complete loss, soft
    Dice over the organs, in the user's own ``my_module.py``::

        from segbench.losses import LossInputs, SegLoss

        class MyLoss(SegLoss):
            def __init__(self, smooth: float = 1e-5):
                super().__init__()
                self.smooth = smooth

            def compute(self, inputs: LossInputs):
                s = inputs.probs[:, 1:]                     # softmax of inputs.logits, [B, C-1, *spatial]
                g = inputs.onehot[:, 1:]                    # inputs.target one-hot, same shape
                dims = tuple(range(2, s.dim()))
                tp = (s * g).sum(dims)
                dice = (2 * tp + self.smooth) / (s.sum(dims) + g.sum(dims) + self.smooth)
                return 1 - dice.mean()

    and ``loss/my_loss.yaml`` in the user's config directory: ``_target_: my_module.MyLoss`` and
    ``smooth: 1.0e-5`` (docs/extending.md). ``inputs`` also offers the per-class
    soft ``TP / FP / FN`` (:meth:`LossInputs.counts`), ``log_probs``, the per-voxel mean that skips
    ignored voxels (:meth:`LossInputs.mean_over_voxels`) and distance maps of the target
    (:meth:`LossInputs.target_map`). A constructor argument named ``num_classes`` or ``class_names``
    is filled in from the data config. Class attributes:

    * ``needs_log_probs``: the formula uses ``log s`` (CE-like terms); a compound
      loss then derives ``s`` from ``log s`` instead of a second softmax.
    * ``needs_image``: the formula reads the network's input image
      (:attr:`LossInputs.image`); the caller passes it as ``loss(logits, target, image=x)``
      (:class:`segbench.module.SegModule` always does).
    * ``ignore_index`` (instance attribute, default ``None``): label id whose
      voxels do not contribute.
    * ``check_labels`` (default ``True``): every call raises a ValueError naming a label id
      outside ``[0, C)``. The check reads the target's minimum and maximum back to the host,
      which on a GPU waits for the queued work; the training module turns it off once the data
      module has checked every case's label ids where it loaded them
      (:meth:`segbench.module.SegModule.setup`).
    """

    registered_name: str = ""
    needs_log_probs: bool = False
    needs_image: bool = False
    ignore_index: int | None = None
    check_labels: bool = True

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Called by the training loop before every epoch (schedules live here)."""

    def log_values(self) -> dict[str, float | torch.Tensor]:
        """Scalars worth logging (learnable weights, schedule values): Python numbers, or
        0-dim tensors left on the device (detached), never read back to the host here."""
        return {}

    def perfect_value(self, num_classes: int) -> float | None:
        """The loss at a perfect prediction of ``num_classes`` classes, its minimum
        (``None``: depends on the data, e.g. on distance maps).

        The test-suite checks that a large-margin one-hot prediction reaches it.
        Losses whose minimum is not 0 (Combo, AFW-Dice's regulariser, the clamped
        powers ``eps**gamma``) override this.
        """
        return 0.0

    def target_maps(self) -> list[TargetMap]:
        """The target-only maps :meth:`compute` reads (:mod:`segbench.losses.maps`); none by default."""
        return []

    def map_builder(self, num_classes: int) -> TargetMapBuilder | None:
        """What the data pipeline calls to precompute :meth:`target_maps` per sample; ``None``
        when the loss uses none."""
        maps = tuple(self.target_maps())
        return TargetMapBuilder(maps, int(num_classes), self.ignore_index) if maps else None

    def make_inputs(self, logits: torch.Tensor, target: torch.Tensor,
                    maps: dict[str, torch.Tensor] | None = None, image: torch.Tensor | None = None) -> LossInputs:
        return LossInputs(logits, target, ignore_index=self.ignore_index, log_domain=self.needs_log_probs,
                          maps=maps, image=image, check_labels=self.check_labels)

    def compute(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                maps: dict[str, torch.Tensor] | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``logits`` against ``target``; ``maps``: precomputed target-only maps
        (:meth:`map_builder`'s output, batched), used instead of computing them here; ``image``:
        the network's input, read by losses with ``needs_image`` (ignored by the others)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.compute(self.make_inputs(logits, target, maps, image))

    def prepare(self, logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits and a checked long target (for losses that do not use :class:`LossInputs`)."""
        target = normalize_target(logits, target)
        if self.check_labels:
            check_label_range(target, logits.shape[1], ignore_index)
        return logits.float(), target


class ModuleLoss(SegLoss):
    """A plain ``nn.Module`` loss (``module(logits, target) -> scalar``) inside segbench's training loop.

    ``logits``: ``[B, C, *spatial]`` as the network returns them; ``target``: the batch's
    ``[B, *spatial]`` long label map (MONAI's losses want ``[B, 1, *spatial]``: subclass
    :class:`SegLoss` for those). It gets SegLoss's hooks: no schedule, nothing extra logged, no
    precomputed maps.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                maps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.module(logits, target)

    def perfect_value(self, num_classes: int) -> float | None:
        return None  # unknown


class CompoundLoss(SegLoss):
    """Weighted sum ``sum_k lambda_k L_k`` of terms that share one :class:`LossInputs`.

    Subclasses set ``self.terms = nn.ModuleDict(...)`` and ``self.weights = {name: lambda}``.
    """

    terms: nn.ModuleDict
    weights: dict[str, float]

    @property
    def needs_log_probs(self) -> bool:  # type: ignore[override]
        return any(term.needs_log_probs for term in self.terms.values())

    @property
    def needs_image(self) -> bool:  # type: ignore[override]
        return any(term.needs_image for term in self.terms.values())

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        total = None
        for name, term in self.terms.items():
            weight = self.weights[name]
            if weight == 0:
                continue
            value = weight * term.compute(inputs)
            total = value if total is None else total + value
        if total is None:  # every weight 0: a zero that still depends on the logits
            return inputs.logits.sum() * 0.0
        return total

    def perfect_value(self, num_classes: int) -> float | None:
        total = 0.0
        for name, term in self.terms.items():
            value = term.perfect_value(num_classes)
            if value is None:
                return None
            total += self.weights[name] * value
        return total

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        for term in self.terms.values():
            term.on_train_epoch_start(epoch, max_epochs)

    def target_maps(self) -> list[TargetMap]:
        return list(dict.fromkeys(spec for term in self.terms.values() for spec in term.target_maps()))

    def log_values(self) -> dict[str, float | torch.Tensor]:
        values = {}
        for term in self.terms.values():
            values.update(term.log_values())
        return values
