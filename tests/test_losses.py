"""Specification of the loss library (segbench.losses).

Sections:
  1. registry and configs        5. generic properties of every registered loss
  2. parity with MONAI           6. invalid options
  3. hand-computed small cases   7. AFW-Dice (PROTOCOL.md A)
  4. shared computation

Tensors are tiny: the whole file runs in seconds on a CPU.

The hand-computed cases use ONE image of 2 x 2 pixels and 2 classes, written in
raster order (4 pixels):

    target           g^1 = [1, 1, 0, 0]     (g^0 = [0, 0, 1, 1])
    probabilities    s^1 = [.8, .6, .3, .1] (s^0 = [.2, .4, .7, .9])

    class 0: TP = .7 + .9 = 1.6   sum s = 2.2   sum g = 2   FP = .6   FN = .4
    class 1: TP = .8 + .6 = 1.4   sum s = 1.8   sum g = 2   FP = .4   FN = .6
    per-pixel CE -ln s^y = [.22314, .51083, .35667, .10536], mean .29900
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from segbench.losses import LossInputs, available_losses, build_loss, loss_options
from segbench.losses.registry import LOSSES

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "loss"
NAMES = ["background", "liver", "kidney", "pancreas"]
C = len(NAMES)


pytestmark = pytest.mark.usefixtures("one_thread")


def image_of(target: torch.Tensor) -> torch.Tensor:
    """A piecewise-constant input image ``[B, 1, *spatial]`` whose regions are the target's labels
    (intensity = label id / C): the image a perfect segmentation explains exactly."""
    return target.unsqueeze(1).float() / C


def make(name: str, **options):
    """The loss as training builds it. A loss that reads the input image (``needs_image``:
    ``level_set``) is given :func:`image_of` the target when a test calls it without one."""
    loss = build_loss(name, num_classes=C, class_names=NAMES, **options)
    if getattr(loss, "needs_image", False):
        forward = loss.forward
        loss.forward = lambda logits, target, maps=None, image=None: forward(
            logits, target, maps, image_of(target.reshape(logits.shape[:1] + logits.shape[2:]))
            if image is None else image)
    return loss


def random_case(spatial, classes=C, batch=2, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, *spatial, generator=g)
    target = torch.randint(0, classes, (batch, *spatial), generator=g)
    return logits, target


SPATIAL = {"2d": (6, 6), "3d": (4, 4, 4)}


def hand_case():
    """The 2-class, 4-pixel case of the module docstring: logits ``[1, 2, 2, 2]``, target ``[1, 2, 2]``."""
    s1 = torch.tensor([0.8, 0.6, 0.3, 0.1], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), torch.log(s1 / (1 - s1))]).float()
    return logits.reshape(1, 2, 2, 2), torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2)


CE_PIXELS = [-math.log(0.8), -math.log(0.6), -math.log(0.7), -math.log(0.9)]
CE_MEAN = sum(CE_PIXELS) / 4                       # 0.299001
DICE_0, DICE_1 = 1 - 3.2 / 4.2, 1 - 2.8 / 3.8      # 0.238095, 0.263158 (smooth 0)


def close(value, expected, rel=1e-5, abs_=1e-6):
    value = float(value)
    assert value == pytest.approx(expected, rel=rel, abs=abs_), (value, expected)


# ============================================================================ 1. registry, configs
def test_every_registered_loss_has_a_config_with_its_defaults():
    for name in available_losses():
        path = CONFIGS / f"{name}.yaml"
        assert path.exists(), f"configs/loss/{name}.yaml missing"
        lines = path.read_text().splitlines()
        assert 5 <= len(lines) <= 15, f"{path.name}: {len(lines)} lines (5-15 expected)"
        assert lines[0].startswith("#"), f"{path.name}: first line must be a comment naming the paper"
        cfg = yaml.safe_load(path.read_text())
        assert cfg.pop("name") == name
        assert sorted(cfg) == sorted(loss_options(name)), f"{path.name}: options differ from the loss's"
        import inspect
        params = inspect.signature(LOSSES[name].__init__).parameters
        for key, value in cfg.items():
            default = params[key].default
            if isinstance(default, float):
                assert value == pytest.approx(default), (name, key)
            else:
                assert value == default, (name, key, value, default)


def test_every_registered_loss_builds_from_its_config():
    for name in available_losses():
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        loss = build_loss(**cfg, num_classes=C, class_names=NAMES)
        assert isinstance(loss, torch.nn.Module)


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(ValueError, match="no option 'gama'"):
        build_loss("focal", gama=2.0)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("nope")


def test_context_is_forwarded_only_to_losses_that_take_it():
    assert make("dice").include_background  # DiceLoss takes num_classes: no error either way
    assert build_loss("topk_ce", num_classes=4, class_names=NAMES).k == 10.0


def test_docstrings_cite_a_paper_and_document_options():
    for name in available_losses():
        doc = LOSSES[name].__doc__ or ""
        assert len(doc) > 80, f"{name}: docstring too short"


# ============================================================================ 2. parity with MONAI
monai_losses = pytest.importorskip("monai.losses")


def both_ways():
    for dim in SPATIAL:
        for bg in (True, False):
            yield dim, bg


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
@pytest.mark.parametrize("variant", ["plain", "squared", "batch", "weighted", "none"])
def test_dice_matches_monai(dim, include_background, variant):
    logits, target = random_case(SPATIAL[dim])
    ours = dict(include_background=include_background, smooth=1e-5)
    theirs = dict(include_background=include_background, to_onehot_y=True, softmax=True, smooth_nr=1e-5,
                  smooth_dr=1e-5)
    if variant == "squared":
        ours["squared"] = theirs["squared_pred"] = True
    if variant == "batch":
        ours["batch"] = theirs["batch"] = True
    if variant == "weighted":  # ours: C weights by label id; MONAI: one per scored channel
        weights = [0.5, 1.0, 2.0, 3.0]
        ours["class_weights"] = weights
        theirs["weight"] = weights if include_background else weights[1:]
    if variant == "none":
        ours["reduction"] = theirs["reduction"] = "none"
    expected = monai_losses.DiceLoss(**theirs)(logits, target.unsqueeze(1))
    value = make("dice", **ours)(logits, target)
    torch.testing.assert_close(value, expected.reshape(value.shape), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
@pytest.mark.parametrize("squared", [False, True])
def test_jaccard_matches_monai_with_half_the_smooth(dim, include_background, squared):
    # MONAI: 1 - (2 TP + s) / (2 union + s)  ==  ours with smooth = s / 2
    logits, target = random_case(SPATIAL[dim], seed=1)
    expected = monai_losses.DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                     jaccard=True, squared_pred=squared, smooth_nr=1e-3, smooth_dr=1e-3)
    value = make("jaccard", include_background=include_background, squared=squared, smooth=0.5e-3)
    close(value(logits, target), float(expected(logits, target.unsqueeze(1))))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("weight_type", ["square", "simple"])
def test_generalized_dice_matches_monai_incl_absent_class(dim, include_background, batch, weight_type):
    logits, target = random_case(SPATIAL[dim], seed=2)
    target[target == 2] = 1  # class 2 absent: MONAI's "largest finite weight" rule
    target[0][target[0] == 3] = 0  # class 3 absent from sample 0 only
    expected = monai_losses.GeneralizedDiceLoss(include_background=include_background, to_onehot_y=True,
                                                softmax=True, batch=batch, w_type=weight_type)
    value = make("generalized_dice", include_background=include_background, batch=batch, weight_type=weight_type,
                 absent_weight="max", normalize_weights=False)
    close(value(logits, target), float(expected(logits, target.unsqueeze(1))))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
def test_generalized_dice_normalised_weights_only_rescale_the_smoothing(dim, include_background):
    logits, target = random_case(SPATIAL[dim], seed=3)
    a = make("generalized_dice", include_background=include_background, normalize_weights=True, smooth=0.0)
    b = make("generalized_dice", include_background=include_background, normalize_weights=False, smooth=0.0)
    close(a(logits, target), float(b(logits, target)))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.5, 0.5), (0.8, 0.1)])
def test_tversky_matches_monai(dim, include_background, alpha, beta):
    # same names, same meaning: alpha on FP, beta on FN
    logits, target = random_case(SPATIAL[dim], seed=4)
    expected = monai_losses.TverskyLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                        alpha=alpha, beta=beta)
    value = make("tversky", include_background=include_background, alpha=alpha, beta=beta)
    close(value(logits, target), float(expected(logits, target.unsqueeze(1))))


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("alpha", [None, 0.25, [0.1, 0.4, 0.2, 0.3]])
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_softmax_focal_matches_monai_with_background(dim, alpha, gamma):
    # MONAI's mean runs over the C channels too (only the target channel is non-zero): ours = C * MONAI
    logits, target = random_case(SPATIAL[dim], seed=5)
    theirs = monai_losses.FocalLoss(include_background=True, to_onehot_y=True, use_softmax=True, gamma=gamma,
                                    alpha=alpha)
    expected = C * float(theirs(logits, target.unsqueeze(1)))
    close(make("focal", gamma=gamma, alpha=alpha)(logits, target), expected)


@pytest.mark.parametrize("dim", SPATIAL)
def test_softmax_focal_without_background_is_monai_on_foreground_channels(dim):
    # MONAI(include_background=False) drops channel 0 BEFORE its softmax and zeroes the background
    # voxels. Equivalent configuration of ours: logits[:, 1:], labels - 1, background voxels ignored,
    # summed (MONAI's "none" map summed).
    logits, target = random_case(SPATIAL[dim], seed=6)
    theirs = monai_losses.FocalLoss(include_background=False, to_onehot_y=True, use_softmax=True, reduction="none")
    expected = float(theirs(logits, target.unsqueeze(1)).sum())
    shifted = torch.where(target == 0, torch.full_like(target, 255), target - 1)
    ours = make("focal", ignore_index=255, reduction="sum")
    close(ours(logits[:, 1:], shifted), expected)


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_matches_monai(dim, alpha):
    logits, target = random_case(SPATIAL[dim], seed=7)
    theirs = monai_losses.FocalLoss(include_background=True, to_onehot_y=True, use_softmax=False, alpha=alpha)
    close(make("focal", sigmoid=True, alpha=alpha)(logits, target), float(theirs(logits, target.unsqueeze(1))))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
@pytest.mark.parametrize("batch,squared", [(False, False), (True, True)])
def test_ce_dice_matches_monai_dice_ce(dim, include_background, batch, squared):
    logits, target = random_case(SPATIAL[dim], seed=8)
    theirs = monai_losses.DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                     batch=batch, squared_pred=squared, lambda_dice=0.7, lambda_ce=1.3)
    ours = make("ce_dice", include_background=include_background, batch=batch, squared=squared,
                lambda_dice=0.7, lambda_ce=1.3)
    close(ours(logits, target), float(theirs(logits, target.unsqueeze(1))))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
def test_focal_dice_parts_match_monai_dice_focal(dim, include_background):
    """MONAI's DiceFocalLoss computes its focal term with a SIGMOID (issue 8242) even with
    softmax=True: only its Dice part equals our focal_dice's Dice part; its focal part equals
    our ``focal(sigmoid=True)`` (our focal_dice uses the softmax focal loss on purpose)."""
    logits, target = random_case(SPATIAL[dim], seed=9)
    onehot = F.one_hot(target, C).movedim(-1, 1).float()
    for batch in (False, True):  # per sample (MONAI's default) and batch-pooled (focal_dice's)
        dice_only = monai_losses.DiceFocalLoss(include_background=include_background, softmax=True,
                                               lambda_focal=0.0, batch=batch)
        ours_dice = make("focal_dice", include_background=include_background, lambda_focal=0.0, batch=batch)
        close(ours_dice(logits, target), float(dice_only(logits, onehot)))
    focal_only = monai_losses.DiceFocalLoss(include_background=True, softmax=True, lambda_dice=0.0, gamma=1.5)
    close(make("focal", sigmoid=True, gamma=1.5)(logits, target), float(focal_only(logits, onehot)))


@pytest.mark.parametrize("dim,include_background", list(both_ways()))
def test_ce_gd_is_torch_ce_plus_monai_generalized_dice(dim, include_background):
    # MONAI ships no CE + GD: compare with torch's CE + MONAI's GeneralizedDiceLoss (raw 1/n^2 weights)
    logits, target = random_case(SPATIAL[dim], seed=13)
    target[target == 2] = 1  # an absent class
    for batch in (False, True):  # per sample (MONAI's default) and batch-pooled (ce_gd's)
        gd = monai_losses.GeneralizedDiceLoss(include_background=include_background, to_onehot_y=True,
                                              softmax=True, batch=batch)
        expected = 0.4 * F.cross_entropy(logits, target) + 1.5 * gd(logits, target.unsqueeze(1))
        ours = make("ce_gd", include_background=include_background, normalize_weights=False, lambda_ce=0.4,
                    lambda_gd=1.5, batch=batch)
        close(ours(logits, target), float(expected))


@pytest.mark.parametrize("dim", SPATIAL)
def test_asymmetric_unified_focal_matches_monai_binary(dim):
    """MONAI's AsymmetricUnifiedFocalLoss is binary, takes probabilities, and averages its focal term
    over the 2 channels: F_monai = L_mF / 2. With its weight w = 0.5:
        MONAI = 0.5 F_monai + 0.5 FT = 0.25 L_mF + 0.5 L_mFT,
    ours(lambda_focal = 1/3) = 1/3 L_mF + 2/3 L_mFT = 4/3 MONAI   (smooth 1e-7 = MONAI's epsilon)."""
    logits, target = random_case(SPATIAL[dim], classes=2, seed=10, scale=1.5)
    probs = logits.softmax(1)
    theirs = monai_losses.AsymmetricUnifiedFocalLoss(to_onehot_y=True, num_classes=2, weight=0.5, gamma=0.5,
                                                     delta=0.6)
    expected = 4 / 3 * float(theirs(probs, target.unsqueeze(1)))
    ours = build_loss("unified_focal", lambda_focal=1 / 3, delta=0.6, gamma=0.5, smooth=1e-7)
    close(ours(logits, target), expected, rel=2e-5)
    # and each term on its own
    from monai.losses.unified_focal_loss import AsymmetricFocalLoss, AsymmetricFocalTverskyLoss
    onehot = F.one_hot(target, 2).movedim(-1, 1).float()
    focal = AsymmetricFocalLoss(delta=0.6, gamma=0.5)(probs, onehot)
    tversky = AsymmetricFocalTverskyLoss(delta=0.6, gamma=0.5)(probs, onehot)
    close(build_loss("unified_focal", lambda_focal=1.0, delta=0.6, gamma=0.5)(logits, target), 2 * float(focal))
    close(build_loss("unified_focal", lambda_focal=0.0, delta=0.6, gamma=0.5, smooth=1e-7)(logits, target),
          float(tversky), rel=2e-5)


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("mode", ["default", "GDL"])
@pytest.mark.parametrize("matrix", [None, [[0, 1, 1, 1], [1, 0, .5, .7], [1, .5, 0, .6], [1, .7, .6, 0]]])
def test_generalized_wasserstein_dice_matches_monai(dim, mode, matrix):
    logits, target = random_case(SPATIAL[dim], seed=11)
    m = torch.tensor(matrix if matrix is not None else (1 - torch.eye(C)).tolist(), dtype=torch.float32)
    theirs = monai_losses.GeneralizedWassersteinDiceLoss(dist_matrix=m, weighting_mode=mode)
    ours = make("generalized_wasserstein_dice", dist_matrix=matrix, weighting_mode=mode)
    close(ours(logits, target), float(theirs(logits, target)))


@pytest.mark.parametrize("dim", SPATIAL)
def test_ignore_index_matches_monai_and_torch(dim):
    logits, target = random_case(SPATIAL[dim], seed=12)
    target[:, 0] = 255
    theirs = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, ignore_index=255)
    close(make("dice", ignore_index=255)(logits, target), float(theirs(logits, target.unsqueeze(1))))
    close(make("ce", ignore_index=255)(logits, target), float(F.cross_entropy(logits, target, ignore_index=255)))


# ============================================================================ 3. hand-computed cases
def test_hand_ce_and_class_weight_normalisation():
    logits, target = hand_case()
    close(make("ce")(logits, target), CE_MEAN)                                   # 0.299001
    # weights [1, 3]: sum_i w_{y_i} (-ln s) = 3 (.22314 + .51083) + (.35667 + .10536) = 2.66394
    weighted = 3 * (CE_PIXELS[0] + CE_PIXELS[1]) + CE_PIXELS[2] + CE_PIXELS[3]
    close(build_loss("ce", class_weights=[1, 3])(logits, target), weighted / 4)  # / N          = 0.665986
    close(build_loss("ce", class_weights=[1, 3], normalize_by="weights")(logits, target), weighted / 8)  # / sum w
    close(build_loss("ce", class_weights=[1, 3], normalize_by="weights")(logits, target),
          float(F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))))  # = torch's convention


def test_hand_inverse_frequency_weights():
    # target [1, 0, 0, 0]: n = [3, 1], N = 4, K = 2 -> w_0 = 4 / (2 * 3) = 2/3, w_1 = 4 / (2 * 1) = 2
    # (sum_i w_{y_i} = 2 + 3 * 2/3 = 4 = N). -ln s^y = [-ln .8, -ln .4, -ln .7, -ln .9]
    # L = (2 * .22314 + 2/3 * (.91629 + .35667 + .10536)) / 4 = 0.341293
    logits, _ = hand_case()
    target = torch.tensor([1, 0, 0, 0]).reshape(1, 2, 2)
    expected = (2 * -math.log(0.8) + 2 / 3 * -(math.log(0.4) + math.log(0.7) + math.log(0.9))) / 4
    close(build_loss("weighted_ce")(logits, target), expected)
    close(build_loss("weighted_ce", normalize_by="weights")(logits, target), expected)


def test_hand_focal():
    # (1 - s^y)^2 (-ln s^y) = [.04 * .22314, .16 * .51083, .09 * .35667, .01 * .10536], mean 0.030953
    logits, target = hand_case()
    expected = sum((1 - p) ** 2 * -math.log(p) for p in (0.8, 0.6, 0.7, 0.9)) / 4
    close(build_loss("focal")(logits, target), expected)


def test_hand_topk():
    # k = 50 %: the 2 largest CEs .51083 and .35667 -> 0.433750
    logits, target = hand_case()
    close(build_loss("topk_ce", k=50)(logits, target), (CE_PIXELS[1] + CE_PIXELS[2]) / 2)


def test_hand_topk_threshold_variant():
    # CEs [.22314, .51083, .35667, .10536]; threshold t = .3 keeps .51083 and .35667 -> .433750,
    # t = .2 keeps three -> (.22314 + .51083 + .35667) / 3 = .363547; t = .6 keeps none -> 0
    logits, target = hand_case()
    close(build_loss("topk_ce", threshold=0.3)(logits, target), (CE_PIXELS[1] + CE_PIXELS[2]) / 2)
    close(build_loss("topk_ce", threshold=0.2)(logits, target), sum(CE_PIXELS[:3]) / 3)
    x = logits.clone().requires_grad_(True)
    none_left = build_loss("topk_ce", threshold=0.6)(x, target)
    none_left.backward()
    assert float(none_left) == 0.0 and torch.isfinite(x.grad).all()
    # the probability reading: t = -ln .7 keeps the pixels whose target probability is below .7 (.6 only;
    # .7 itself is not strictly below)
    close(build_loss("topk_ce", threshold=-math.log(0.7) + 1e-6)(logits, target), CE_PIXELS[1])
    # an ignored pixel is never kept: ignore pixel 1 (CE .51083), t = .3 keeps .35667 alone
    ignored = target.clone()
    ignored[0, 0, 1] = 9
    close(build_loss("topk_ce", threshold=0.3, ignore_index=9)(logits, ignored), CE_PIXELS[2])


def test_hand_wang_focal_dice():
    # Wang & Chung: sum over foreground classes of 1 - DSC^(1/beta). Class 1: DSC = 2.8 / 3.8 = .736842
    # beta = 2: 1 - sqrt(.736842) = 1 - .858395 = .141605 (plain Dice loss: .263158)
    logits, target = hand_case()
    close(build_loss("wang_focal_dice", smooth=0)(logits, target), 1 - math.sqrt(2.8 / 3.8))
    close(build_loss("wang_focal_dice", smooth=0, beta=1.0)(logits, target), DICE_1)
    # background included: + 1 - sqrt(3.2 / 4.2)
    close(build_loss("wang_focal_dice", smooth=0, include_background=True)(logits, target),
          2 - math.sqrt(2.8 / 3.8) - math.sqrt(3.2 / 4.2))
    # a worse class gains more from the same Dice improvement (the focal effect): d/dD of 1 - D^(1/2)
    # is -1 / (2 sqrt(D)), larger in magnitude at D = .25 (1) than at D = .81 (.556)
    assert 1 / (2 * math.sqrt(0.25)) > 1 / (2 * math.sqrt(0.81))
    assert "focal_dice" in available_losses() and build_loss("focal_dice").__class__ is not \
        build_loss("wang_focal_dice").__class__


def test_hand_sensitivity_specificity():
    # class 1: sum_{g=1} (1-s)^2 = .04 + .16 = .2 -> /2 = .1 ; sum_{g=0} s^2 = .09 + .01 = .1 -> /2 = .05
    #          SS_1 = .05 * .1 + .95 * .05 = .0525
    # class 0: sum_{g=1} (1-s)^2 = .09 + .01 = .1 -> .05   ; sum_{g=0} s^2 = .04 + .16 = .2 -> .1
    #          SS_0 = .05 * .05 + .95 * .1 = .0975          -> mean 0.075
    logits, target = hand_case()
    loss = build_loss("sensitivity_specificity", smooth=0.0, reduction="none")
    torch.testing.assert_close(loss(logits, target), torch.tensor([[0.0975, 0.0525]]))


def test_hand_region_losses():
    logits, target = hand_case()
    # Dice: 1 - 3.2/4.2 = .238095, 1 - 2.8/3.8 = .263158
    torch.testing.assert_close(build_loss("dice", smooth=0, reduction="none")(logits, target),
                               torch.tensor([[DICE_0, DICE_1]]))
    # Jaccard: 1 - 1.6/(2.2 + 2 - 1.6) = .384615, 1 - 1.4/(1.8 + 2 - 1.4) = .416667 -> mean .400641
    close(build_loss("jaccard", smooth=0)(logits, target), (1 - 1.6 / 2.6 + 1 - 1.4 / 2.4) / 2)
    # Tversky (.3 FP, .7 FN): 1 - 1.6/(1.6 + .3*.6 + .7*.4) = 1 - 1.6/2.06 = .223301,
    #                         1 - 1.4/(1.4 + .3*.4 + .7*.6) = 1 - 1.4/1.94 = .278351 -> mean .250826
    tv = [1 - 1.6 / 2.06, 1 - 1.4 / 1.94]
    close(build_loss("tversky", smooth=0)(logits, target), sum(tv) / 2)
    # Focal Tversky gamma 4/3: per class ^0.75 -> .324839, .383216 -> mean .354028
    close(build_loss("focal_tversky", smooth=0)(logits, target), sum(x ** 0.75 for x in tv) / 2)
    # F-beta, beta 1.5 (b2 = 2.25): 1 - 3.25*1.6/(5.2 + 2.25*.4 + .6) = 1 - 5.2/6.7 = .223881,
    #                               1 - 4.55/(4.55 + 2.25*.6 + .4) = 1 - 4.55/6.3 = .277778
    close(build_loss("asymmetric_similarity", smooth=0)(logits, target), (1 - 5.2 / 6.7 + 1 - 4.55 / 6.3) / 2)
    # log cosh Dice: log cosh .238095 = .028081, log cosh .263158 = .034234 -> .031157
    close(build_loss("log_cosh_dice", smooth=0)(logits, target),
          (math.log(math.cosh(DICE_0)) + math.log(math.cosh(DICE_1))) / 2)
    # generalised Dice, w = 1/2^2 for both: 1 - 2 (1.6 + 1.4)/4 / ((4.2 + 3.8)/4) = 1 - 6/8 = .25
    close(build_loss("generalized_dice", smooth=0)(logits, target), 0.25)


def test_hand_generalized_dice_absent_class_rules():
    # 3 classes, class 2 absent; 2 pixels: s = [[.7, .2, .1], [.1, .6, .3]], labels [0, 1]
    # n = [1, 1, 0]: w = [1, 1, inf]. TP = [.7, .6, 0], sum s + sum g = [1.8, 1.8, .4]
    #   max rule : w_2 = 1 -> 1 - 2 (.7 + .6) / (1.8 + 1.8 + .4) = 1 - 2.6/4.0 = .35
    #   zero rule: w_2 = 0 -> 1 - 2.6/3.6 = .277778
    s = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    logits = s.log().T.reshape(1, 3, 1, 2)
    target = torch.tensor([[[0, 1]]])
    close(build_loss("generalized_dice", smooth=0, absent_weight="max")(logits, target), 0.35)
    close(build_loss("generalized_dice", smooth=0, absent_weight="zero")(logits, target), 1 - 2.6 / 3.6)


def test_hand_lovasz_softmax():
    # errors |g - s| are [.2, .4, .3, .1] for both classes.
    # class 1, sorted .4(g1) .3(g0) .2(g1) .1(g0): J = 1 - I/U = 1/2, 2/3, 1, 1
    #    -> steps [.5, .166667, .333333, 0] -> .4*.5 + .3*.166667 + .2*.333333 = .316667
    # class 0, sorted .4(g0) .3(g1) .2(g0) .1(g1): J = 1/3, 2/3, 3/4, 1
    #    -> steps [.333333, .333333, .083333, .25] -> .133333 + .1 + .016667 + .025 = .275
    # mean .295833
    logits, target = hand_case()
    close(build_loss("lovasz_softmax")(logits, target), (0.2 + 0.05 + 0.2 / 3 + 0.275) / 2)


def test_hand_combo():
    # 2 classes: 1 - s^c for the wrong class IS s^y, so WCE = CE for every beta:
    # L = .5 * .299001 - .5 * (1 - .250627) = -.225186
    logits, target = hand_case()
    close(build_loss("combo", smooth=0, beta=0.7)(logits, target), 0.5 * CE_MEAN - 0.5 * (1 - (DICE_0 + DICE_1) / 2))
    # 3 classes, one voxel s = [.5, .3, .2], label 0, alpha 1 (WCE only), beta .7:
    # -(.7 ln .5 + .3 (ln .7 + ln .8)) = .659149
    logits3 = torch.tensor([0.5, 0.3, 0.2]).log().reshape(1, 3, 1, 1)
    close(build_loss("combo", alpha=1.0, beta=0.7)(logits3, torch.zeros(1, 1, 1, dtype=torch.long)),
          -(0.7 * math.log(0.5) + 0.3 * (math.log(0.7) + math.log(0.8))))


def test_hand_exp_log():
    # smooth 1: Dice_0 = (3.2 + 1)/(4.2 + 1) = .807692, Dice_1 = (2.8 + 1)/(3.8 + 1) = .791667
    # (-ln Dice)^.3 = .629310, .646473 -> mean .637891
    # f = [2, 2] -> w = sqrt(4/2) = 1.414214; (-ln s^y)^.3 = [.637640, .817489, .733976, .509100]
    # CE term 1.414214 * mean = .953959;  L = .8 * .637891 + .2 * .953959 = .701105
    logits, target = hand_case()
    dice_term = sum((-math.log(d)) ** 0.3 for d in (4.2 / 5.2, 3.8 / 4.8)) / 2
    ce_term = math.sqrt(2) * sum(c ** 0.3 for c in CE_PIXELS) / 4
    close(build_loss("exp_log")(logits, target), 0.8 * dice_term + 0.2 * ce_term)


def test_hand_unified_focal():
    # delta .6, gamma .5, smooth 0.
    # focal: fg pixels .6 * (-ln s) = .133886, .306495; bg pixels .4 (1 - s)^.5 (-ln s) = .078144, .013327
    #        asymmetric mean .132963
    # mTI_0 = 1.6/(1.6 + .6*.4 + .4*.6) = .769231, mTI_1 = 1.4/(1.4 + .6*.6 + .4*.4) = .729167
    #        asymmetric FT = mean(1 - .769231, (1 - .729167)^.5) = mean(.230769, .520416) = .375593
    # L = .5 * .132963 + .5 * .375593 = .254278
    logits, target = hand_case()
    close(build_loss("unified_focal", smooth=0)(logits, target), 0.2542779624392056)
    # symmetric: the fg pixels get (1 - s)^.5 too: .059876, .193845 -> focal mean .086298;
    #            FT = mean(.230769^.5, .520416) = .500400 -> L = .293349
    close(build_loss("unified_focal", smooth=0, asymmetric=False)(logits, target), 0.293349131086039)


# ============================================================================ 4. shared computation
class _CountSoftmax(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("softmax", "log_softmax", "_softmax", "_log_softmax"):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["ce_dice", "focal_dice", "ce_gd", "combo", "exp_log", "unified_focal",
                                  "afw_dice", "afw_dice_code", "dice", "ce"])
def test_one_softmax_per_call(name):
    logits, target = random_case(SPATIAL["2d"])
    with _CountSoftmax() as counter:
        make(name)(logits, target)
    assert counter.calls == 1


def test_counts_are_shared_between_terms():
    logits, target = random_case(SPATIAL["2d"])
    inputs = LossInputs(logits, target)
    assert inputs.counts(batch=True) is inputs.counts(batch=True)
    torch.testing.assert_close(inputs.counts(batch=True).tp, inputs.counts(batch=False).tp.sum(0))
    onehot = F.one_hot(target, C).movedim(-1, 1).float()
    probs = logits.softmax(1)
    torch.testing.assert_close(inputs.counts().tp, (probs * onehot).sum((2, 3)))
    torch.testing.assert_close(inputs.counts(squared=True).pred_sq_sum, (probs ** 2).sum((2, 3)))


def test_target_with_channel_dim_and_float_labels_are_accepted():
    logits, target = random_case(SPATIAL["3d"])
    loss = make("ce_dice")
    close(loss(logits, target.unsqueeze(1).float()), float(loss(logits, target)))


# ============================================================================ 5. every registered loss
def perfect_logits(target, classes=C, margin=40.0):
    return margin * F.one_hot(target, classes).movedim(-1, 1).float() - margin / 2


def full_target(spatial, batch=2):
    """A label map where every class is present in every sample."""
    n = math.prod(spatial)
    labels = torch.arange(n) % C
    return torch.stack([labels[torch.randperm(n, generator=torch.Generator().manual_seed(b))]
                        for b in range(batch)]).reshape(batch, *spatial)


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("name", available_losses())
def test_perfect_prediction_is_the_minimum(name, dim):
    loss = make(name)
    for target in (full_target(SPATIAL[dim]), random_case(SPATIAL[dim], classes=C - 1)[1]):  # 2nd: class absent
        at_optimum = float(loss(perfect_logits(target), target))
        random_logits = random_case(SPATIAL[dim], seed=3)[0]
        assert at_optimum <= float(loss(random_logits, target)) + 1e-6
        expected = loss.perfect_value(C) if hasattr(loss, "perfect_value") else None
        if expected is not None:
            assert at_optimum == pytest.approx(expected, abs=1e-3), name


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("name", available_losses())
def test_gradient_steps_decrease_the_loss(name, dim):
    logits, target = random_case(SPATIAL[dim], seed=4, scale=1.0)
    logits.requires_grad_(True)
    loss = make(name)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    values = []
    for _ in range(4):
        optimiser.zero_grad()
        value = loss(logits, target)
        value.backward()
        optimiser.step()
        values.append(float(value))
    assert values[-1] < values[0], (name, values)


def _scenario(kind, spatial):
    logits, target = random_case(spatial, seed=5)
    if kind == "absent_class":
        target = target.clamp_max(C - 2)
    elif kind == "empty_foreground":
        target = torch.zeros_like(target)
    elif kind == "perfect":
        logits = perfect_logits(target)
    elif kind == "extreme_logits":
        logits = 1e4 * torch.sign(logits)
    elif kind == "dead_channel":  # a class with probability exactly 0 everywhere
        logits[:, C - 1] = -1e4
    elif kind == "fp16_input":
        logits = logits.half()
    return logits, target


@pytest.mark.parametrize("kind", ["absent_class", "empty_foreground", "perfect", "extreme_logits", "dead_channel",
                                  "fp16_input", "bf16_autocast"])
@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("name", available_losses())
def test_value_and_gradient_stay_finite(name, dim, kind):
    logits, target = _scenario(kind, SPATIAL[dim])
    logits = logits.detach().requires_grad_(True)
    loss = make(name)
    if kind == "bf16_autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(logits.to(torch.bfloat16), target)
    else:
        value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value).all(), (name, kind, value)
    assert torch.isfinite(logits.grad).all(), (name, kind)
    for key, p in loss.named_parameters():
        if p.requires_grad:  # a learnable parameter the loss does not reach would never be trained
            assert p.grad is not None, (name, kind, key, "no gradient")
            assert torch.isfinite(p.grad).all(), (name, kind, key)


@pytest.mark.parametrize("name", available_losses())
def test_hooks_and_state_dict(name):
    # what the LightningModule relies on: the epoch hook, log values that are Python numbers or detached
    # 0-dim tensors (left on the device: reading them each step would be a host sync), a checkpointable state
    import copy
    loss = make(name)
    loss.on_train_epoch_start(0, 10)
    logits, target = random_case(SPATIAL["2d"])
    loss(logits, target)
    values = loss.log_values()
    assert isinstance(values, dict) and all(
        isinstance(v, float) or (torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad) for v in values.values())
    clone = copy.deepcopy(loss)
    clone.load_state_dict(loss.state_dict())
    close(clone(logits, target), float(loss(logits, target)))


@pytest.mark.parametrize("name", available_losses())
def test_label_ids_beyond_the_classes_are_rejected(name):
    logits, target = random_case(SPATIAL["2d"])
    target[0, 0, 0] = C
    with pytest.raises(ValueError, match="label id"):
        make(name)(logits, target)


@pytest.mark.parametrize("name", [n for n in available_losses()
                                  if "reduction" in loss_options(n) and LOSSES[n].__module__.endswith("region")])
def test_reduction_none_gives_per_class_values(name):
    logits, target = random_case(SPATIAL["2d"])
    per_sample = {"batch": False} if "batch" in loss_options(name) else {}  # [B, C'] rather than [C']
    per_class = make(name, reduction="none", **per_sample)(logits, target)
    assert per_class.shape[0] == 2
    close(make(name, reduction="mean", **per_sample)(logits, target), float(per_class.mean()))
    close(make(name, reduction="sum", **per_sample)(logits, target), float(per_class.sum()), rel=1e-5)


# ============================================================================ 6. invalid options
INVALID = [
    ("afw_dice", {"gamma": -0.25}, "gamma"),
    ("afw_dice", {"gamma": -1.0}, "gamma"),
    ("afw_dice", {"focused_classes": ["pancrea"]}, "focused_classes"),
    ("afw_dice", {"focused_classes": [C]}, "focused_classes"),
    ("afw_dice", {"focused_classes": "some"}, "focused_classes"),
    ("afw_dice", {"asymmetric": False, "focused_classes": ["liver"]}, "focused_classes"),
    ("afw_dice", {"include_background": False, "focused_classes": ["background"]}, "focused_classes"),
    ("afw_dice", {"regularizer": "log_sum"}, "regularizer"),
    ("afw_dice", {"clamp_min": 0.0}, "clamp_min"),
    ("afw_dice", {"lambda_ce": -1.0}, "lambda_ce"),
    ("afw_dice", {"reduction": "none"}, "reduction"),
    ("ce", {"class_weights": [1.0, 2.0]}, "class_weights"),
    ("ce", {"class_weights": [1.0, -2.0, 1.0, 1.0]}, "class_weights"),
    ("ce", {"class_weights": "median_frequency"}, "class_weights"),
    ("ce", {"normalize_by": "classes"}, "normalize_by"),
    ("ce", {"label_smoothing": 1.0}, "label_smoothing"),
    ("dice", {"class_weights": [1.0, 2.0, 3.0]}, "class_weights"),
    ("dice", {"smooth": -1e-5}, "smooth"),
    ("dice", {"reduction": "avg"}, "reduction"),
    ("tversky", {"alpha": 1.5}, "alpha"),
    ("tversky", {"beta": -0.1}, "beta"),
    ("focal_tversky", {"gamma": 0.0}, "gamma"),
    ("focal", {"gamma": -1.0}, "gamma"),
    ("focal", {"alpha": 2.0}, "alpha"),
    ("focal", {"alpha": [0.5, 0.5]}, "alpha"),
    ("combo", {"alpha": 1.2}, "alpha"),
    ("combo", {"beta": -0.5}, "beta"),
    ("unified_focal", {"delta": 1.5}, "delta"),
    ("unified_focal", {"gamma": 1.0}, "gamma"),
    ("unified_focal", {"lambda_focal": 2.0}, "lambda_focal"),
    ("exp_log", {"gamma_dice": 0.0}, "gamma_dice"),
    ("exp_log", {"class_weights": [1.0]}, "class_weights"),
    ("topk_ce", {"k": 0.0}, "k"),
    ("topk_ce", {"k": 150.0}, "k"),
    ("topk_ce", {"threshold": -0.1}, "threshold"),
    ("wang_focal_dice", {"beta": 0.0}, "beta"),
    ("level_set", {"fit": "labels"}, "fit"),
    ("active_contour", {"ce_weights": "median"}, "ce_weights|class_weights"),
    ("boundary", {"schedule": "linear"}, "schedule"),
    ("boundary", {"region_floor": 1.5}, "region_floor"),
    ("sensitivity_specificity", {"sensitivity_weight": 2.0}, "sensitivity_weight"),
    ("generalized_dice", {"weight_type": "cube"}, "weight_type"),
    ("generalized_dice", {"absent_weight": "one"}, "absent_weight"),
    ("lovasz_softmax", {"classes": "some"}, "classes"),
    ("generalized_wasserstein_dice", {"dist_matrix": [[0, 1], [1, 0]]}, "dist_matrix"),
    ("generalized_wasserstein_dice", {"weighting_mode": "gdl"}, "weighting_mode"),
    ("asymmetric_similarity", {"beta": 0.0}, "beta"),
    ("ce_dice", {"lambda_dice": -1.0}, "lambda_dice"),
]


@pytest.mark.parametrize("name,options,option", INVALID, ids=[f"{n}-{o}" for n, _, o in INVALID])
def test_invalid_option_raises_naming_it(name, options, option):
    with pytest.raises(ValueError, match=option):
        make(name, **options)


def test_class_weights_of_wrong_length_are_caught_at_call_time_without_context():
    logits, target = random_case(SPATIAL["2d"])
    for name in ("ce", "dice", "focal"):
        key = "alpha" if name == "focal" else "class_weights"
        with pytest.raises(ValueError, match=key):
            build_loss(name, **{key: [1.0, 2.0]})(logits, target)


def test_list_options_accept_hydra_list_configs():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"name": "afw_dice", "focused_classes": ["pancreas", 1]})
    loss = build_loss(**cfg, num_classes=C, class_names=OmegaConf.create(NAMES))
    assert loss.focused_ids == [1, 3]
    cfg = OmegaConf.create({"name": "dice", "class_weights": [1, 2, 3, 4]})
    logits, target = random_case(SPATIAL["2d"])
    close(build_loss(**cfg, num_classes=C)(logits, target),
          float(make("dice", class_weights=[1.0, 2.0, 3.0, 4.0])(logits, target)))


def test_afw_needs_the_number_of_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("afw_dice")


# ============================================================================ 7. AFW-Dice
def afw(**options):
    return build_loss("afw_dice", num_classes=2, class_names=["background", "organ"], **options)


def test_afw_without_uncertainty_and_gamma_1_is_ce_plus_dice():
    # CE .299001 + (sum) Dice .238095 + .263158 = .800254 ; (mean) .299001 + .250627 = .549628
    logits, target = hand_case()
    close(afw(uncertainty=False, gamma=1.0, smooth=0)(logits, target), CE_MEAN + DICE_0 + DICE_1)
    close(afw(uncertainty=False, gamma=1.0, smooth=0, reduction="mean")(logits, target),
          CE_MEAN + (DICE_0 + DICE_1) / 2)
    # = our ce + batch Dice summed over classes, for any input
    x, t = random_case(SPATIAL["3d"], seed=21)
    expected = make("ce")(x, t) + make("dice", batch=True, reduction="sum")(x, t)
    close(make("afw_dice", uncertainty=False, gamma=1.0)(x, t), float(expected))


def test_afw_focal_structures_by_hand():
    logits, target = hand_case()
    # asymmetric, focused = all foreground: CE + L_0 + L_1^.25 = .299001 + .238095 + .716233 = 1.253329
    close(afw(uncertainty=False, smooth=0)(logits, target), CE_MEAN + DICE_0 + DICE_1 ** 0.25)
    # focused none: plain sum
    close(afw(uncertainty=False, smooth=0, focused_classes=[])(logits, target), CE_MEAN + DICE_0 + DICE_1)
    # symmetric: every class ^.25: .299001 + .698534 + .716233 = 1.713768
    close(afw(uncertainty=False, smooth=0, asymmetric=False)(logits, target),
          CE_MEAN + DICE_0 ** 0.25 + DICE_1 ** 0.25)


@pytest.mark.parametrize("regularizer,expected_reg", [
    ("log_prod", math.log(math.exp(0.3 - 0.2) + 1)),                      # ln(e^.1 + 1) = .744397
    ("sum_log", math.log(math.exp(0.3) + 1) + math.log(math.exp(-0.2) + 1)),  # .854355 + .598139 = 1.452494
])
def test_afw_uncertainty_weights_and_regularisers_by_hand(regularizer, expected_reg):
    # s = [.3, -.2]: w = [e^-.3, e^.2] = [.740818, 1.221403]
    # L = CE + .740818 * .238095 + 1.221403 * .263158^.25 + R
    logits, target = hand_case()
    loss = afw(smooth=0, regularizer=regularizer)
    with torch.no_grad():
        loss.log_sigma2.copy_(torch.tensor([0.3, -0.2]))
    expected = CE_MEAN + math.exp(-0.3) * DICE_0 + math.exp(0.2) * DICE_1 ** 0.25 + expected_reg
    close(loss(logits, target), expected)
    values = {key: float(value) for key, value in loss.log_values().items()}
    assert values == pytest.approx({"sigma2/background": math.exp(0.3), "sigma2/organ": math.exp(-0.2)})


def test_afw_sigmas_are_parameters_and_receive_gradients():
    logits, target = random_case(SPATIAL["2d"])
    loss = make("afw_dice")
    params = dict(loss.named_parameters())
    assert list(params) == ["log_sigma2"] and params["log_sigma2"].shape == (C,)
    assert torch.equal(params["log_sigma2"].detach(), torch.zeros(C))
    loss(logits, target).backward()
    assert params["log_sigma2"].grad is not None and (params["log_sigma2"].grad.abs() > 0).all()
    assert set(loss.log_values()) == {f"sigma2/{n}" for n in NAMES}
    assert not list(make("afw_dice", uncertainty=False).parameters())


@pytest.mark.parametrize("regularizer", ["log_prod", "sum_log"])
def test_afw_gradient_in_s_matches_the_formula(regularizer):
    # d/ds_c [sum_k e^-s_k T_k + R(s)] = -e^-s_c T_c + dR/ds_c ; dR/ds_c = sigmoid(sum s) or sigmoid(s_c)
    logits, target = random_case(SPATIAL["2d"], seed=22)
    loss = make("afw_dice", regularizer=regularizer)
    with torch.no_grad():
        loss.log_sigma2.copy_(torch.tensor([0.5, -0.3, 0.2, 1.0]))
    loss(logits, target).backward()
    with torch.no_grad():
        inputs = LossInputs(logits, target)
        terms = loss.focal_terms(loss.dice_losses(inputs))
        s = loss.log_sigma2
        d_reg = torch.sigmoid(s.sum()).expand(C) if regularizer == "log_prod" else torch.sigmoid(s)
        expected = -torch.exp(-s) * terms + d_reg
    torch.testing.assert_close(loss.log_sigma2.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("regularizer", ["log_prod", "sum_log"])
def test_afw_optimum_of_the_weights_is_the_stationary_point(regularizer):
    """Minimising over s alone (predictions fixed) reaches the point where d/ds = 0:
    log_prod: e^-s_c T_c = sigmoid(sum_k s_k) for every c -- all weighted terms are EQUAL;
    sum_log:  e^-s_c T_c = sigmoid(s_c), i.e. w_c = (sqrt(1 + 4 / T_c) - 1) / 2."""
    logits, target = random_case(SPATIAL["2d"], seed=23)
    loss = make("afw_dice", regularizer=regularizer, lambda_ce=0.0)
    optimiser = torch.optim.LBFGS([loss.log_sigma2], lr=1.0, max_iter=200, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = loss(logits, target)
        value.backward()
        return value

    optimiser.step(closure)
    s = loss.log_sigma2.detach()
    with torch.no_grad():
        terms = loss.focal_terms(loss.dice_losses(LossInputs(logits, target)))
    weighted = torch.exp(-s) * terms
    if regularizer == "log_prod":
        torch.testing.assert_close(weighted, torch.sigmoid(s.sum()).expand(C), rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(weighted, torch.sigmoid(s), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.exp(-s), (torch.sqrt(1 + 4 / terms) - 1) / 2, rtol=1e-4, atol=1e-6)
    # numerically: the central difference of the loss in each s_c vanishes there
    for c in range(C):
        with torch.no_grad():
            values = []
            for h in (1e-3, -1e-3):
                loss.log_sigma2[c] += h
                values.append(float(loss(logits, target).double()))
                loss.log_sigma2[c] -= h
        assert abs(values[0] - values[1]) / 2e-3 < 1e-3


def test_afw_without_background_and_per_sample():
    # no background: 3 weights; per sample (batch false) = mean over samples of each sample's AFW
    logits, target = random_case(SPATIAL["2d"], seed=26)
    loss = make("afw_dice", include_background=False, batch=False, lambda_ce=0.0, uncertainty=False)
    assert loss.focused_ids == [1, 2, 3]
    per_sample = [make("afw_dice", include_background=False, lambda_ce=0.0, uncertainty=False)(
        logits[b:b + 1], target[b:b + 1]) for b in range(2)]
    close(loss(logits, target), float(sum(per_sample) / 2))
    assert make("afw_dice", include_background=False).log_sigma2.shape == (C - 1,)


def test_afw_focused_classes_by_name_or_id():
    logits, target = random_case(SPATIAL["2d"], seed=24)
    by_name = make("afw_dice", focused_classes=["pancreas", "kidney"])
    by_id = make("afw_dice", focused_classes=[3, 2])
    assert by_name.focused_ids == [2, 3]
    close(by_name(logits, target), float(by_id(logits, target)))
    assert make("afw_dice").focused_ids == [1, 2, 3]  # "all" = every foreground class


def test_afw_dice_code_reproduces_the_authors_code():
    """Re-statement of HyperSegUNet DiceLoss_weights + train_afw.py (fixed s to test the weights)."""
    logits, target = random_case(SPATIAL["2d"], seed=25)
    s = torch.tensor([0.2, -0.4, 0.1, 0.3])
    loss = make("afw_dice_code")
    with torch.no_grad():
        loss.log_sigma2.copy_(s)
    probs = logits.softmax(1)
    per_class = []
    for c in range(C):  # squared denominator, summed over the whole batch, smooth 1e-5
        p, g = probs[:, c], (target == c).float()
        per_class.append(1 - (2 * (p * g).sum() + 1e-5) / ((p * p).sum() + (g * g).sum() + 1e-5))
    losses = torch.stack(per_class)
    coeffs = torch.exp(s)**-1
    afw_code = (coeffs[1:] * losses[1:] ** 0.25).sum() + torch.log(torch.exp(s).prod() + 1) + coeffs[0] * losses[0]
    expected = 0.5 * F.cross_entropy(logits, target) + 0.5 * afw_code
    close(loss(logits, target), float(expected))


def near_perfect_case(margin):
    """Two 32 x 32 samples of 4 classes, logits ``margin * g`` plus noise (seeded)."""
    target = torch.randint(0, C, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    noise = 0.5 * torch.randn(2, C, 32, 32, generator=torch.Generator().manual_seed(1))
    return margin * F.one_hot(target, C).movedim(-1, 1).float() + noise, target


def afw_float64(logits, target, squared, lam, gamma=0.25, clamp=1e-6):
    """AFW-Dice (every weight 1 at s = 0, regulariser ln 2, every organ focused) in float64."""
    p = logits.double().softmax(1)
    g = F.one_hot(target, C).movedim(-1, 1).double()
    dims = (0, 2, 3)
    denominator = ((p * p).sum(dims) if squared else p.sum(dims)) + g.sum(dims)
    dice_loss = 1 - (2 * (p * g).sum(dims) + 1e-5) / (denominator + 1e-5)
    terms = torch.cat([dice_loss[:1], dice_loss[1:].clamp_min(clamp) ** gamma])
    ce = -(p.log() * g).sum(1).mean()
    return float(lam * ce + lam * (terms.sum() + math.log(2))), dice_loss


@pytest.mark.parametrize("name,squared,lam,margin", [("afw_dice_code", True, 0.5, 8.0), ("afw_dice", False, 1.0, 15.0)])
def test_afw_near_a_perfect_prediction_matches_float64(name, squared, lam, margin):
    # near a perfect prediction D_c and 2 TP_c agree to ~7 digits: 1 - ratio in float32 (sum s^2 as
    # vector_norm(s)^2) was off by 2.3e-3 (code, margin 8) / 2.9e-4 (printed, margin 15) of the loss;
    # the mismatch sum |s - g| (or (s - g)^2) in float64 is exact to float32's resolution
    logits, target = near_perfect_case(margin)
    expected, dice_loss = afw_float64(logits, target, squared, lam)
    assert 1e-9 < float(dice_loss[1:].max()) < 1e-3  # a near-perfect, not a clamped, case
    loss = make(name)
    close(loss(logits, target), expected, rel=1e-6, abs_=0.0)
    got = loss.dice_losses(LossInputs(logits, target, log_domain=True)).double()
    torch.testing.assert_close(got, dice_loss, rtol=1e-4, atol=0.0)


def afw_numpy(logits, target, squared, lam, batch, dtype):
    """AFW-Dice at its defaults (every weight ``exp(-0) = 1``, regulariser ``ln(prod exp(0) + 1) = ln 2``, the
    background unfocused, every organ focused, gamma 0.25, clamp 1e-6, smooth 1e-5) written out in numpy with
    every sum in ``dtype``: ``s`` = softmax, ``g`` = one-hot, per class (pooled over the batch with ``batch``)

        L_c = 1 - (2 sum s g + eps) / (sum s + sum g + eps)        (``sum s^2`` with ``squared``)
        L   = lam CE + lam (L_0 + sum_{c >= 1} clamp(L_c, 1e-6)^0.25 + ln 2)

    Returns the loss and ``L_c``."""
    x = logits.numpy().astype(dtype)
    shifted = x - x.max(axis=1, keepdims=True)
    log_s = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=dtype))
    s = np.exp(log_s)
    g = (target.numpy()[:, None] == np.arange(C)[None, :, None, None]).astype(dtype)
    axes = (0, 2, 3) if batch else (2, 3)
    eps, one = dtype(1e-5), dtype(1)
    tp = (s * g).sum(axes, dtype=dtype)
    denominator = (s * s if squared else s).sum(axes, dtype=dtype) + g.sum(axes, dtype=dtype)
    dice_loss = one - (2 * tp + eps) / (denominator + eps)
    focal = np.maximum(dice_loss[..., 1:], dtype(1e-6)) ** dtype(0.25)
    terms = np.concatenate([dice_loss[..., :1], focal], axis=-1)
    afw = np.mean(terms.sum(axis=-1, dtype=dtype), dtype=dtype) + np.log(dtype(2))
    ce = np.mean(-(log_s * g).sum(axis=1, dtype=dtype), dtype=dtype)
    return float(dtype(lam) * ce + dtype(lam) * afw), dice_loss


@pytest.mark.parametrize("name,squared,lam,batch,margin", [
    ("afw_dice", False, 1.0, True, 12.0),
    ("afw_dice", False, 1.0, False, 12.0),
    ("afw_dice_code", True, 0.5, True, 7.0),
])
def test_afw_sums_in_float64_near_a_perfect_prediction(name, squared, lam, batch, margin):
    # Near a perfect prediction sum s + sum g and 2 sum s g agree to ~5 digits; summed in float32 their difference
    # is mostly rounding (the test's own float32 evaluation misses by ~1e-3..1e-2 of the loss), which the power
    # 0.25 then magnifies. AFW-Dice sums |s - g| voxel by voxel in float64 (LossInputs.mismatch): it must match
    # the float64 reference to float32's resolution.
    logits, target = near_perfect_case(margin)
    expected, dice_loss = afw_numpy(logits, target, squared, lam, batch, np.float64)
    assert 1e-5 < dice_loss[..., 1:].min() and dice_loss.max() < 1e-4  # near-perfect, above the clamp
    tolerance = 1e-6 * expected
    in_float32, _ = afw_numpy(logits, target, squared, lam, batch, np.float32)
    assert abs(in_float32 - expected) > 100 * tolerance  # float32 sums are far off: the case can tell
    loss = make(name, batch=batch)
    assert abs(float(loss(logits, target)) - expected) < tolerance
    got = loss.dice_losses(LossInputs(logits, target, log_domain=True)).double().numpy()
    np.testing.assert_allclose(got, dice_loss, rtol=1e-5, atol=0)


def test_afw_gamma_0_runs_and_is_ce_plus_the_backgrounds_dice():
    # Figure 3's first point. gamma = 0: every focused term is clamp(L)^0 = 1, a constant; the loss is
    # CE + L_0 (the unfocused background's Dice loss) + (C - 1) + ln 2 (s = 0), and its gradient is
    # CE's plus the background Dice's: "degenerates to roughly CE alone"
    logits, target = random_case(SPATIAL["2d"], seed=11)
    x = logits.clone().requires_grad_(True)
    value = make("afw_dice", gamma=0.0)(x, target)
    value.backward()
    y = logits.clone().requires_grad_(True)
    ce = F.cross_entropy(y, target)
    background = make("dice", batch=True, reduction="none")(y, target)[0]
    reference = ce + background
    reference.backward()
    close(value, float(reference) + (C - 1) + math.log(2))
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)
    # at a perfect prediction too (clamped terms, 0^0 never evaluated)
    perfect = perfect_logits(target).requires_grad_(True)
    v = make("afw_dice", gamma=0.0)(perfect, target)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(perfect.grad).all()


def test_combo_near_a_perfect_prediction_matches_float64():
    # alpha = 1, beta = 0: the false-positive half of the weighted CE, -mean sum_{c != y} log(1 - s^c).
    # Off-target log(1 - s) with s ~ 1e-7 needs log1p(-s); the target's own log(1 - s^y) ~ -16 must
    # not be added to the class sum and subtracted again (the old code's error here: ~25 %).
    # (beta > 0 adds -log s^y, whose float32 log-softmax is as good as the logits' magnitude allows.)
    logits, target = near_perfect_case(15.0)
    p = logits.double().softmax(1)
    g = F.one_hot(target, C).movedim(-1, 1).double()
    expected = -((1 - g) * torch.log1p(-p)).sum(1).mean()
    close(make("combo", alpha=1.0, beta=0.0)(logits, target), float(expected), rel=1e-5, abs_=0.0)


def test_exp_log_near_a_perfect_prediction_matches_float64():
    # -ln Dice_c = -log1p(-L_c) with L_c ~ 1e-6: -ln(1 - L) in float32 keeps ~1 digit of L
    logits, target = near_perfect_case(15.0)
    p = logits.double().softmax(1)
    g = F.one_hot(target, C).movedim(-1, 1).double()
    dims = (2, 3)
    dice = (2 * (p * g).sum(dims) + 1.0) / (p.sum(dims) + g.sum(dims) + 1.0)     # per sample, smooth 1
    dice_term = (-torch.log(dice)).clamp_min(1e-12).pow(0.3).mean()
    loss = make("exp_log", class_weights=None, lambda_ce=0.0)
    close(loss(logits, target), float(0.8 * dice_term), rel=1e-5, abs_=0.0)


def test_afw_clamp_keeps_the_perfect_class_finite():
    # gamma .25 at L = 0: the code's pow gives a NaN gradient, ours clamps at 1e-6 (value 1e-6^.25 = .031623)
    target = full_target(SPATIAL["2d"])
    logits = perfect_logits(target).requires_grad_(True)
    loss = make("afw_dice", uncertainty=False, lambda_ce=0.0)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    close(value, (C - 1) * 1e-6 ** 0.25, abs_=1e-5)
