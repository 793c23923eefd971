"""Specification of the boundary-based losses (segbench.losses.boundary).

Sections:
  1. boundary loss (Kervadec): hand values, spacing, absent classes, schedule
  2. Hausdorff losses (Karimi & Salcudean): DT vs MONAI, ER / CV by hand, FFT ball means
  3. active contour, level set (Mumford-Shah), clDice, distance-penalised CE: hand values, references
  4. properties on a structured batch, 2D and 3D, for every boundary loss
  5. invalid options

The line case used by several hand computations: ONE image of 1 x 6 pixels, 2 classes,

    target g^1 = [0, 1, 1, 1, 0, 0]
    s^1        = [.2, .8, .9, .7, .4, .3]      (s^0 = 1 - s^1)

    signed distance of class 1 (phi = edt(~G) ~G - (edt(G) - 1) G):
        inside  edt(G)  at pixels 1, 2, 3 = 1, 2, 1   -> -(d - 1) = 0, -1, 0
        outside edt(~G) at pixels 0, 4, 5 = 1, 1, 2
        phi = [1, 0, -1, 0, 1, 2]
    Dice (smooth 1e-5, negligible here): class 1 TP = 2.4, sum s = 3.3, sum g = 3 -> 1 - 4.8/6.3 = .238095
                                         class 0 TP = 2.1, sum s = 2.7, sum g = 3 -> 1 - 4.2/5.7 = .263158
    mean Dice loss (background included, the dice loss's default) = .250627
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from segbench.losses import LossInputs, build_loss
from segbench.losses.boundary import ball_means, mumford_shah, soft_skeleton

pytestmark = pytest.mark.usefixtures("one_thread")


BOUNDARY_LOSSES = ["boundary", "hausdorff_dt", "hausdorff_er", "hausdorff_cv", "active_contour", "level_set",
                   "cldice", "dpce"]


def close(value, expected, rel=1e-5, abs_=1e-6):
    value = float(value)
    assert value == pytest.approx(expected, rel=rel, abs=abs_), (value, expected)


def with_image_of_target(loss):
    """``loss``, given a piecewise-constant input image of the target's labels (intensity = label id)
    whenever it reads the image (``level_set``) and a test calls it without one."""
    if getattr(loss, "needs_image", False):
        forward = loss.forward
        loss.forward = lambda logits, target, maps=None, image=None: forward(
            logits, target, maps, target.unsqueeze(1).float() if image is None else image)
    return loss


def binary_logits(s1) -> torch.Tensor:
    """Logits ``[1, 2, *shape]`` whose softmax gives ``s^1 = s1`` (and ``s^0 = 1 - s1``)."""
    s1 = torch.as_tensor(s1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(s1), torch.log(s1 / (1 - s1))]).float().unsqueeze(0)


LINE_S1 = [[0.2, 0.8, 0.9, 0.7, 0.4, 0.3]]
LINE_TARGET = torch.tensor([[[0, 1, 1, 1, 0, 0]]])
LINE_DICE = (1 - 4.8 / 6.3 + 1 - 4.2 / 5.7) / 2  # .250627


def blob_batch(spatial, classes=4, batch=2, seed=0):
    """Logits and a target of a few boxes per sample (the last class absent if classes > 2), any dimension."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(batch, *spatial, dtype=torch.long)
    for b in range(batch):
        for c in range(1, max(2, classes - 1)):
            lo = [int(torch.randint(0, n // 2, (1,), generator=g)) for n in spatial]
            box = tuple(slice(low, low + n // 3) for low, n in zip(lo, spatial))
            target[(b, *box)] = c
    logits = torch.randn(batch, classes, *spatial, generator=g)
    return logits, target


SPATIAL = {"2d": (24, 20), "3d": (10, 12, 8)}


# ============================================================================ 1. boundary loss
def test_boundary_term_hand_value():
    # L_B = mean(phi * s^1) = (1*.2 + 0*.8 - 1*.9 + 0*.7 + 1*.4 + 2*.3) / 6 = .3 / 6 = .05
    loss = build_loss("boundary", num_classes=2)
    logits = binary_logits(LINE_S1)
    inputs = LossInputs(logits, LINE_TARGET)
    close(loss.terms["boundary"].compute(inputs), 0.05)
    # epoch 0 of the reference schedule (steal): region weight 1, alpha = .01 -> .250627 + .0005
    close(loss(logits, LINE_TARGET), LINE_DICE + 0.01 * 0.05)
    # rebalance: (1 - .01) * .250627 + .01 * .05 = .248620
    close(build_loss("boundary", num_classes=2, schedule="rebalance", alpha_max=1.0)(logits, LINE_TARGET),
          0.99 * LINE_DICE + 0.01 * 0.05)


def test_boundary_spacing_scales_distances_as_the_reference():
    # spacing (1, 2): outside edt = 2, 2, 4; inside edt = 2, 4, 2 -> -(d - 1) = -1, -3, -1
    # phi = [2, -1, -3, -1, 2, 4]; L_B = (.4 - .8 - 2.7 - .7 + .8 + 1.2) / 6 = -1.8 / 6 = -.3
    loss = build_loss("boundary", spacing=[1.0, 2.0])
    close(loss.terms["boundary"].compute(LossInputs(binary_logits(LINE_S1), LINE_TARGET)), -0.3)


def test_boundary_absent_class_contributes_zero():
    # 3 classes, class 2 absent: its phi is 0, so L_B = (class-1 sum + 0) / (2 classes * 6 pixels)
    s = torch.tensor([[0.2, 0.8, 0.9, 0.7, 0.4, 0.3]])
    probs = torch.stack([(1 - s) * 0.5, s, (1 - s) * 0.5])  # class 2 gets half of the rest
    logits = probs.log().unsqueeze(0)
    loss = build_loss("boundary", num_classes=3)
    close(loss.terms["boundary"].compute(LossInputs(logits, LINE_TARGET)), 0.3 / 12)
    # empty foreground: every phi is 0
    assert float(loss.terms["boundary"].compute(LossInputs(logits, torch.zeros_like(LINE_TARGET)))) == 0.0


def test_boundary_default_schedule_is_the_reference_codes_steal_weight():
    # LIVIA-ETS scheduler.py StealWeight(0.01) on the weights [1, .01], applied after every epoch:
    # epoch e trains with region max(.1, 1 - .01 e) and boundary .01 + .01 e (no upper bound)
    loss = build_loss("boundary", num_classes=2)
    assert loss.schedule == "steal"
    assert loss.log_values() == {"alpha": pytest.approx(0.01), "region_weight": pytest.approx(1.0)}
    expected = {0: (1.0, 0.01), 10: (0.90, 0.11), 89: (0.11, 0.90), 90: (0.10, 0.91), 99: (0.10, 1.00),
                149: (0.10, 1.50)}
    for epoch, (region, boundary) in expected.items():
        loss.on_train_epoch_start(epoch, 150)
        assert loss.weights == {"region": pytest.approx(region), "boundary": pytest.approx(boundary)}, epoch
    # the last epoch of a 150-epoch run: .1 * .250627 + 1.5 * .05 = .100063
    close(loss(binary_logits(LINE_S1), LINE_TARGET), 0.1 * LINE_DICE + 1.5 * 0.05)
    # the same weights as the reference's recursion w <- (max(.1, w_R - .01), w_B + .01)
    w_region, w_boundary = 1.0, 0.01
    for epoch in range(150):
        loss.on_train_epoch_start(epoch, 150)
        assert loss.weights["region"] == pytest.approx(w_region)
        assert loss.weights["boundary"] == pytest.approx(w_boundary)
        w_region, w_boundary = max(0.1, w_region - 0.01), w_boundary + 0.01


def test_boundary_schedule_through_the_epoch_hook():
    loss = build_loss("boundary", num_classes=2, schedule="rebalance", alpha_max=1.0)
    assert loss.log_values() == {"alpha": pytest.approx(0.01), "region_weight": pytest.approx(0.99)}
    loss.on_train_epoch_start(9, 100)       # alpha = .01 + 9 * .01 = .10
    assert loss.alpha == pytest.approx(0.10)
    assert loss.weights == {"region": pytest.approx(0.90), "boundary": pytest.approx(0.10)}
    loss.on_train_epoch_start(49, 100)      # alpha = .50: .5 * .250627 + .5 * .05 = .150313
    close(loss(binary_logits(LINE_S1), LINE_TARGET), 0.5 * LINE_DICE + 0.5 * 0.05)
    loss.on_train_epoch_start(500, 1000)    # capped at alpha_max = 1: the region term is dropped
    assert loss.alpha == 1.0 and loss.weights["region"] == 0.0
    capped = build_loss("boundary", schedule="rebalance", alpha_max=0.05)
    capped.on_train_epoch_start(20, 100)
    assert capped.log_values() == {"alpha": pytest.approx(0.05), "region_weight": pytest.approx(0.95)}
    # increase: L_R + alpha L_B, unbounded with alpha_max null
    increase = build_loss("boundary", schedule="increase", alpha_max=None, alpha_start=0.5, alpha_step=0.5)
    increase.on_train_epoch_start(3, 10)    # alpha = .5 + 3 * .5 = 2
    assert increase.weights == {"region": 1.0, "boundary": pytest.approx(2.0)}
    close(increase(binary_logits(LINE_S1), LINE_TARGET), LINE_DICE + 2.0 * 0.05)


def test_boundary_region_loss_by_name_and_options():
    loss = build_loss("boundary", region="generalized_dice", region_options={"include_background": False},
                      num_classes=2)
    gd = build_loss("generalized_dice", include_background=False)
    logits = binary_logits(LINE_S1)
    close(loss(logits, LINE_TARGET), float(gd(logits, LINE_TARGET)) + 0.01 * 0.05)


@pytest.mark.parametrize("dim", SPATIAL)
def test_boundary_term_matches_monai(dim):
    # MONAI >= 1.5 ships BoundaryLoss with the same LIVIA map (-(edt(G) - 1) inside, edt(~G) outside,
    # 0 for a class without a boundary) and mean reduction over batch, classes and voxels
    monai_losses = pytest.importorskip("monai.losses")
    if not hasattr(monai_losses, "BoundaryLoss"):
        pytest.skip("this MONAI has no BoundaryLoss")
    logits, target = blob_batch(SPATIAL[dim], seed=3)
    loss = build_loss("boundary", num_classes=4)
    theirs = monai_losses.BoundaryLoss(include_background=False, to_onehot_y=True, softmax=True)
    expected = float(theirs(logits, target.unsqueeze(1)))
    close(loss.terms["boundary"](logits, target), expected)
    assert abs(expected) > 1e-3  # a real comparison, not 0 == 0
    # the compound at epoch 0: 1 * Dice (background included, segbench's dice default) + .01 * L_B
    dice = monai_losses.DiceLoss(to_onehot_y=True, softmax=True)
    close(loss(logits, target), float(dice(logits, target.unsqueeze(1))) + 0.01 * expected)


def test_distance_maps_do_not_depend_on_the_edt_kernel(monkeypatch):
    # on the CPU the maps come from scipy's compiled EDT; on CUDA from the torch kernels. Forcing the
    # torch envelope kernel (what a GPU run computes) must give the same loss values.
    import segbench.ops.edt as edt

    logits, target = blob_batch(SPATIAL["2d"])
    for name in BOUNDARY_LOSSES:
        loss = with_image_of_target(build_loss(name, num_classes=4))
        with_scipy = float(loss(logits, target))
        real = edt._squared_edt
        monkeypatch.setattr(edt, "_squared_edt",
                            lambda m, sp, nd, dt, method, *a, real=real: real(m, sp, nd, dt, "envelope", *a))
        with_torch = float(loss(logits, target))
        monkeypatch.setattr(edt, "_squared_edt", real)
        assert with_torch == pytest.approx(with_scipy, rel=1e-6, abs=1e-9), name


# ============================================================================ 2. Hausdorff losses
monai_losses = pytest.importorskip("monai.losses")


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("include_background", [False, True])
def test_hausdorff_dt_matches_monai(dim, include_background):
    logits, target = blob_batch(SPATIAL[dim], seed=1)
    logits = 3 * logits
    ours = build_loss("hausdorff_dt", include_background=include_background, lambda_dice=0.0)(logits, target)
    monai = monai_losses.HausdorffDTLoss(include_background=include_background, to_onehot_y=True, softmax=True)
    expected = monai(logits, target.unsqueeze(1))
    close(ours, float(expected), rel=1e-5)
    # with the Dice term: + MONAI's DiceLoss (same smoothing 1e-5)
    dice = monai_losses.DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True)
    close(build_loss("hausdorff_dt", include_background=include_background)(logits, target),
          float(expected + dice(logits, target.unsqueeze(1))), rel=1e-5)


def test_hausdorff_dt_no_boundary_extent_by_hand():
    # the line case with s^1 = .1 everywhere: class 1 is predicted nowhere (q > .5 is empty)
    # d_p = edt(G) + edt(~G) = [1, 1, 2, 1, 1, 2]; (p - q)^2 = [.01, .81, .81, .81, .01, .01]
    # zero (MONAI):   weights d_p^2 = [1, 1, 4, 1, 1, 4]        -> (.01 + .81 + 3.24 + .81 + .01 + .04) / 6 = .82
    # extent:         d_q = sqrt(1^2 + 6^2), d_q^2 = 37         -> weights [38, 38, 41, 38, 38, 41]
    #                 (.38 + 30.78 + 33.21 + 30.78 + .38 + .41) / 6 = 95.94 / 6 = 15.99
    logits = binary_logits([[0.1] * 6])
    zero = build_loss("hausdorff_dt", num_classes=2, lambda_dice=0.0)
    extent = build_loss("hausdorff_dt", num_classes=2, lambda_dice=0.0, no_boundary="extent")
    close(zero(logits, LINE_TARGET), 0.82)
    close(extent(logits, LINE_TARGET), 15.99)
    # a predicted boundary, or a class absent from the ground truth: both options agree
    close(extent(binary_logits(LINE_S1), LINE_TARGET), float(zero(binary_logits(LINE_S1), LINE_TARGET)))
    empty = torch.zeros_like(LINE_TARGET)
    close(extent(logits, empty), float(zero(logits, empty)))
    with pytest.raises(ValueError, match="no_boundary"):
        build_loss("hausdorff_dt", no_boundary="inf")


def test_hausdorff_dt_extent_keeps_rising_until_the_organ_is_gone():
    # a 6 x 6 square organ in a 24 x 24 image, predicted with its first k rows missing (k = 0..6):
    # MONAI's rule makes the loss drop when the last row goes; 'extent' makes it the largest value
    target = torch.zeros(1, 24, 24, dtype=torch.long)
    target[0, 9:15, 9:15] = 1
    values = {"zero": [], "extent": []}
    for k in range(7):
        s1 = torch.full((24, 24), 0.05)
        s1[9 + k:15, 9:15] = 0.95
        for rule in values:
            loss = build_loss("hausdorff_dt", num_classes=2, lambda_dice=0.0, no_boundary=rule)
            values[rule].append(float(loss(binary_logits(s1), target)))
    assert values["zero"][6] < values["zero"][5]
    assert all(a < b for a, b in zip(values["extent"], values["extent"][1:]))


def test_hausdorff_dt_with_spacing_uses_the_scaled_maps():
    logits, target = blob_batch((16, 14), classes=2, batch=1, seed=2)
    spacing = (2.0, 0.5)
    q = logits.softmax(1)[0, 1].numpy()
    p = (target[0] == 1).numpy()

    def unsigned(mask):
        return ndimage.distance_transform_edt(mask, sampling=spacing) + ndimage.distance_transform_edt(
            ~mask, sampling=spacing)

    expected = np.mean((p - q) ** 2 * (unsigned(p) ** 2 + unsigned(q > 0.5) ** 2))
    close(build_loss("hausdorff_dt", lambda_dice=0.0, spacing=list(spacing))(logits, target), expected)


def _error_square(size: int, square: slice | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ground truth; the prediction of class 1 is 1 on ``square`` x ``square`` (0 elsewhere)."""
    s1 = torch.full((size, size), 1e-6)
    s1[square, square] = 1 - 1e-6
    return binary_logits(s1), torch.zeros(1, size, size, dtype=torch.long)


def test_hausdorff_er_min_erosion_by_hand():
    # error = 1 on the whole 5 x 5 image (zero padding outside):
    #   eroded once: the inner 3 x 3 (9 pixels); twice: the centre (1); three times: nothing
    #   L = (1^2 * 9 + 2^2 * 1) / 25 = 13 / 25 = .52
    logits, target = _error_square(5, slice(0, 5))
    loss = build_loss("hausdorff_er", erosion="min", lambda_dice=0.0)
    close(loss(logits, target), 13 / 25, rel=1e-4)
    # a 3 x 3 error square in the middle: only its centre survives one erosion -> 1 / 25
    logits, target = _error_square(5, slice(1, 4))
    close(loss(logits, target), 1 / 25, rel=1e-4)


def _eroded_by_views(x: torch.Tensor) -> torch.Tensor:
    """Reference erosion: minimum of the voxel and its 2 nd face neighbours, 0 outside."""
    nd = x.dim() - 1
    padded = F.pad(x.unsqueeze(1), [1, 1] * nd).squeeze(1)
    centre = [slice(None)] + [slice(1, -1)] * nd
    out = padded[tuple(centre)]
    for a in range(nd):
        for window in (slice(0, -2), slice(2, None)):
            view = list(centre)
            view[1 + a] = window
            out = torch.minimum(out, padded[tuple(view)])
    return out


@pytest.mark.parametrize("spatial", [(9, 11), (5, 7, 6)], ids=["2d", "3d"])
def test_min_erosion_weights_equal_the_differentiable_erosion_chain(spatial):
    # distinct positive values (no ties, none with the 0 outside): sum_k k^a sum_i erode^k(x)_i and
    # its gradient, through autograd of the plain min chain, against the linear form x * W
    from segbench.losses.boundary import min_erosion_weights

    n = math.prod(spatial)
    order = torch.randperm(2 * n, generator=torch.Generator().manual_seed(0)).float()
    x = (1 + order / (2 * n)).view(2, *spatial)
    ref_x = x.clone().requires_grad_(True)
    level, total = ref_x, 0.0
    for k in range(1, 5):
        level = _eroded_by_views(level)
        total = total + k ** 2.0 * level.sum()
    total.backward()
    weights = min_erosion_weights(x, len(spatial), 4, 2.0)
    assert float((x * weights).sum()) == pytest.approx(float(total), rel=1e-6)
    assert torch.equal(weights, ref_x.grad)


def test_hausdorff_er_soft_erosion_by_hand():
    # 3 x 3 error square in a 5 x 5 image, one soft erosion (cross / 5, max(x - .5, 0), rescale to [0, 1]):
    #   centre 5/5 -> .5, edge middles 4/5 -> .3, corners 3/5 -> .1, outside <= 1/5 -> 0
    #   rescaled by max .5: 1, .6 (x4), .2 (x4): sum 4.2 -> L = 4.2 / 25 = .168
    logits, target = _error_square(5, slice(1, 4))
    loss = build_loss("hausdorff_er", erosion="soft", erosions=1, lambda_dice=0.0)
    close(loss(logits, target), 4.2 / 25, rel=1e-4)


def test_hausdorff_cv_single_false_positive_by_hand():
    # empty ground truth, one predicted pixel at the centre of 5 x 5: (p - q)^2 = q, f_{q\p} = q^3 = 1 there,
    # f_{p\q} = 0. Terms at the pixel: f_s(B_r * p^C) = f_s(1) = .5 (the r-disc is all background);
    # f_s(B_r * q) = f_s(1/5) = 0 (r = 1: 5 pixels in the disc). L = r^2 * .5 / 25
    logits, target = _error_square(5, slice(2, 3))
    close(build_loss("hausdorff_cv", radii=[1], lambda_dice=0.0)(logits, target), 0.5 / 25, rel=1e-4)
    # r = 2 (13 pixels): 4 * .5 / 25; radii add up
    close(build_loss("hausdorff_cv", radii=[2], lambda_dice=0.0)(logits, target), 2.0 / 25, rel=1e-4)
    close(build_loss("hausdorff_cv", radii=[1, 2], lambda_dice=0.0)(logits, target), 2.5 / 25, rel=1e-4)


@pytest.mark.parametrize("spatial", [(13, 17), (7, 9, 6)])
def test_ball_means_equal_a_direct_convolution(spatial):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, *spatial, generator=g, dtype=torch.float64)
    radii = [1, 2, 4, 9]  # 9: larger than some axes
    for r, got in zip(radii, ball_means(x, radii)):
        offsets = torch.arange(-r, r + 1)
        grids = torch.meshgrid(*([offsets] * len(spatial)), indexing="ij")
        kernel = (sum(o ** 2 for o in grids) <= r * r).double()
        kernel = (kernel / kernel.sum())[None, None].repeat(3, 1, *([1] * len(spatial)))
        conv = F.conv2d if len(spatial) == 2 else F.conv3d
        expected = conv(x, kernel, padding=r, groups=3)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_balance_dice_sets_lambda_from_the_previous_epoch():
    logits, target = blob_batch(SPATIAL["2d"], seed=4)
    loss = build_loss("hausdorff_dt", balance_dice=True, lambda_dice=1.0)
    inputs = LossInputs(logits, target)
    hd, dice = float(loss.terms["main"].compute(inputs)), float(loss.terms["dice"].compute(inputs))
    for _ in range(3):
        loss(logits, target)
    loss.eval()
    loss(2 * logits, target)  # validation steps do not count
    loss.train()
    loss.on_train_epoch_start(1, 10)
    assert loss.log_values()["lambda_dice"] == pytest.approx(hd / dice, rel=1e-5)
    close(loss(logits, target), hd + hd / dice * dice)


# ============================================================================ 3. contour / level set / clDice / dpce
SQUARE_S1 = [[0.8, 0.6], [0.3, 0.1]]          # the 2 x 2 case of test_losses.py
SQUARE_TARGET = torch.tensor([[[1, 1], [0, 0]]])
SQUARE_CE = -(math.log(0.8) + math.log(0.6) + math.log(0.7) + math.log(0.9)) / 4  # .299001


def test_active_contour_by_hand():
    # u = s^1, v = g^1. Forward differences on the common 1 x 1 grid:
    #   rows: u[1,0] - u[0,0] = .3 - .8 = -.5;  columns: u[0,1] - u[0,0] = .6 - .8 = -.2
    #   Length = sqrt(.25 + .04 + 1e-8) = .538516
    # Region = mean u (v - 1)^2 + mean (1 - u) v^2 = (.3 + .1)/4 + (.2 + .4)/4 = .1 + .15 = .25
    # L = CE + 1 * (Length + 1 * Region) = .299001 + .788516 = 1.087517
    # (two pixels per class: the inverse-frequency weights N / (K n_c) = 4 / (2 * 2) are 1, WCE = CE)
    loss = build_loss("active_contour")
    close(loss(binary_logits(SQUARE_S1), SQUARE_TARGET), SQUARE_CE + math.sqrt(0.29 + 1e-8) + 0.25)
    close(build_loss("active_contour", lambda_contour=2.0, lambda_region=0.5)(binary_logits(SQUARE_S1), SQUARE_TARGET),
          SQUARE_CE + 2 * (math.sqrt(0.29 + 1e-8) + 0.5 * 0.25))


def test_active_contour_adds_the_seeds_weighted_ce():
    # target [[1, 0], [0, 0]]: n_1 = 1, n_0 = 3, K = 2, N = 4 -> w_1 = 4 / (2 * 1) = 2, w_0 = 4 / (2 * 3) = 2/3
    # WCE = (2 (-ln .8) + 2/3 (-ln .4 - ln .7 - ln .9)) / 4 = (.446287 + 2/3 * 1.378326) / 4 = .341293
    # Length = sqrt(.25 + .04 + 1e-8) as above; Region = (0 + .6 + .3 + .1) / 4 + .2 / 4 = .25 + .05 = .3
    target = torch.tensor([[[1, 0], [0, 0]]])
    wce = (2 * -math.log(0.8) + 2 / 3 * -(math.log(0.4) + math.log(0.7) + math.log(0.9))) / 4
    contour = math.sqrt(0.29 + 1e-8) + 0.3
    close(build_loss("active_contour")(binary_logits(SQUARE_S1), target), wce + contour)
    # ce_weights: null is the plain CE
    ce = -(math.log(0.8) + math.log(0.4) + math.log(0.7) + math.log(0.9)) / 4
    close(build_loss("active_contour", ce_weights=None)(binary_logits(SQUARE_S1), target), ce + contour)


SQUARE_IMAGE = torch.tensor([[[[0.9, 0.7], [0.2, 0.0]]]])  # input intensities [1, 1, 2, 2]


def test_level_set_fits_the_image_intensities_by_hand():
    # Kim & Ye: x = the image [.9, .7, .2, 0] (raster); y^1 = [.8, .6, .3, .1], y^0 = 1 - y^1
    # region 1: mass 1.8, sum y1 x = .72 + .42 + .06 = 1.2, sum y1 x^2 = .648 + .294 + .012 = .954
    #           fit = .954 - 1.2^2 / 1.8 = .154
    # region 0: mass 2.2, sum y0 x = .18 + .28 + .14 = .6, sum y0 x^2 = .162 + .196 + .028 = .386
    #           fit = .386 - .36 / 2.2 = .222364
    # TV = 2.8 (as below), * .1 = .28;  MS = (.154 + .222364 + .28) / 4 = .164091;  L = CE + MS = .463092
    ms = (0.154 + (0.386 - 0.36 / 2.2) + 0.28) / 4
    loss = build_loss("level_set")
    assert loss.needs_image
    logits = binary_logits(SQUARE_S1)
    close(loss(logits, SQUARE_TARGET, image=SQUARE_IMAGE), SQUARE_CE + ms)
    close(loss(logits, SQUARE_TARGET, image=SQUARE_IMAGE[:, 0]), SQUARE_CE + ms)  # [B, H, W] accepted
    # the fit follows the image, not the labels: the same intensities moved, another value
    moved = SQUARE_IMAGE.flatten()[[3, 0, 1, 2]].reshape(1, 1, 2, 2)
    assert float(loss(logits, SQUARE_TARGET, image=moved)) != pytest.approx(SQUARE_CE + ms)
    with pytest.raises(ValueError, match="image"):
        loss(logits, SQUARE_TARGET)  # no image: a clear error, not a silent fallback
    with pytest.raises(ValueError, match="image shape"):
        loss(logits, SQUARE_TARGET, image=torch.zeros(1, 1, 3, 3))


def test_level_set_stays_usable_on_unlabelled_pixels():
    # ignore_index marks unlabelled pixels: the CE leaves them out, the Mumford-Shah term (label-free) keeps them
    ms = (0.154 + (0.386 - 0.36 / 2.2) + 0.28) / 4
    loss = build_loss("level_set", ignore_index=255)
    logits = binary_logits(SQUARE_S1).requires_grad_(True)
    unlabelled = torch.full_like(SQUARE_TARGET, 255)
    value = loss(logits, unlabelled, image=SQUARE_IMAGE)
    close(value, ms)  # no label at all: the functional alone
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0  # it still trains
    # one pixel unlabelled: CE over the 3 labelled ones (-ln .8, -ln .6, -ln .7), MS unchanged
    partly = SQUARE_TARGET.clone()
    partly[0, 1, 1] = 255
    ce3 = -(math.log(0.8) + math.log(0.6) + math.log(0.7)) / 3
    close(loss(binary_logits(SQUARE_S1), partly, image=SQUARE_IMAGE), ce3 + ms)


def test_level_set_by_hand():
    # x = one-hot target (2 channels); y^1 = [.8, .6, .3, .1], y^0 = 1 - y^1; raster order
    # region 1: mass 1.8, c_1 = (sum y1 g0, sum y1 g1) / 1.8 = (.4, 1.4) / 1.8
    #           fit = sum y1 |x|^2 - |(.4, 1.4)|^2 / 1.8 = 1.8 - 2.12 / 1.8 = .622222
    # region 0: mass 2.2, moments (1.6, .6): fit = 2.2 - 2.92 / 2.2 = .872727
    # TV: y1 rows |.3-.8| + |.1-.6| = 1.0, columns |.6-.8| + |.1-.3| = .4 -> 1.4; y0 the same -> 2.8
    # MS = (.622222 + .872727 + .1 * 2.8) / 4 pixels = .443737;  L = CE + 1 * MS = .742738
    fit = (1.8 - 2.12 / 1.8) + (2.2 - 2.92 / 2.2)
    loss = build_loss("level_set", fit="target")  # the supervised variant: x = the one-hot target
    assert not loss.needs_image
    close(loss(binary_logits(SQUARE_S1), SQUARE_TARGET), SQUARE_CE + (fit + 0.28) / 4)


def test_mumford_shah_closed_form_equals_the_definition():
    g = torch.Generator().manual_seed(5)
    probs = torch.rand(2, 3, 6, 5, generator=g, dtype=torch.float64).softmax(1)
    image = torch.rand(2, 2, 6, 5, generator=g, dtype=torch.float64)  # 2-channel image
    got = mumford_shah(probs, image, lambda_tv=0.3)
    y, x = probs.flatten(2), image.flatten(2)
    centroids = torch.einsum("bnv,bkv->bnk", y, x) / y.sum(2, keepdim=True)
    fit = (y.unsqueeze(2) * (x.unsqueeze(1) - centroids.unsqueeze(3)).square()).sum((2, 3))
    tv = (probs.diff(dim=2).abs().sum((2, 3)) + probs.diff(dim=3).abs().sum((2, 3)))
    torch.testing.assert_close(got, ((fit + 0.3 * tv) / 30).sum(1))


def test_soft_skeleton_of_a_bar_is_its_centre_line():
    bar = torch.zeros(1, 1, 7, 12)
    bar[..., 2:5, 1:11] = 1  # 3 pixels thick
    expected = torch.zeros(7, 12)
    expected[3, 2:10] = 1
    torch.testing.assert_close(soft_skeleton(bar, 3)[0, 0], expected)


@pytest.mark.parametrize("dim", SPATIAL)
def test_cldice_term_matches_monai_for_one_foreground_class(dim):
    logits, target = blob_batch(SPATIAL[dim], classes=2, seed=6)
    logits = 3 * logits
    loss = build_loss("cldice", alpha=1.0)  # clDice term only
    monai = monai_losses.SoftclDiceLoss(iter_=3, smooth_nr=1.0, smooth_dr=1.0, smooth=1e-10,
                                        include_background=False, softmax=True, to_onehot_y=True)
    close(loss(logits, target), float(monai(logits, target.unsqueeze(1))), rel=1e-5)


def test_cldice_missed_structure_by_hand():
    # the bar of the skeleton test, predicted absent: Tprec = (0 + 1) / (0 + 1) = 1,
    # Tsens = (0 + 1) / (8 + 1) = 1/9 (skeleton of 8 pixels); clDice = 2 * 1/9 / (1 + 1/9) = .2
    target = torch.zeros(1, 7, 12, dtype=torch.long)
    target[:, 2:5, 1:11] = 1
    logits = binary_logits(torch.full((7, 12), 1e-6))
    close(build_loss("cldice", alpha=1.0)(logits, target), 1 - 0.2, rel=1e-5)


def test_dpce_by_hand_on_the_line():
    # class 1 pixels 1, 2, 3: d = 1, 2, 1, M = 2, m = 1 -> Phi = (M - d) / (M - m) = 1, 0, 1
    # class 0 pixels 0, 4, 5: d = 1, 1, 2, M = 2, m = 1 -> Phi = 1, 1, 0
    # L = mean((1 + Phi) * CE) with CE = -ln s^y
    s1 = torch.tensor(LINE_S1[0], dtype=torch.float64)
    ce = -torch.log(torch.where(LINE_TARGET[0, 0] == 1, s1, 1 - s1))
    weights = torch.tensor([2.0, 2.0, 1.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    loss = build_loss("dpce")
    close(loss(binary_logits(LINE_S1), LINE_TARGET), float((weights * ce).mean()))


def test_dpce_binary_map_is_seglosss():
    logits, target = blob_batch((20, 18), classes=2, batch=2, seed=7)
    loss = build_loss("dpce")
    phi = loss.penalty_map(LossInputs(logits, target)).numpy()
    for b in range(2):
        pos = target[b].numpy() == 1
        neg = ~pos
        pos_edt = ndimage.distance_transform_edt(pos)
        neg_edt = ndimage.distance_transform_edt(neg)
        # SegLoss compute_edts_forPenalizedLoss, line by line: the flipped map is divided by its OWN
        # maximum, max(edt) - 1 (the smallest edt inside a mask is 1), not by max(edt)
        pos_flipped = (np.max(pos_edt) - pos_edt) * pos
        neg_flipped = (np.max(neg_edt) - neg_edt) * neg
        expected = pos_flipped / np.max(pos_flipped) + neg_flipped / np.max(neg_flipped)
        np.testing.assert_allclose(phi[b], expected, atol=1e-6)
        assert phi[b].max() == pytest.approx(1.0)  # the boundary layer weighs 2 = 1 + Phi


def test_dpce_reference_value_on_a_square():
    # a 3 x 3 square of class 1 in a 5 x 5 image: inside d = 1 on the ring, 2 at the centre: M = 2, m = 1
    #   Phi = 1 on the 8 ring pixels, 0 at the centre
    # outside (16 pixels): d = 1 on the 12 edge-adjacent + 4 diagonal pixels? no: the corners of the image
    #   are at distance sqrt(2) from the square's corners; edt values: 12 pixels at 1, 4 corners at sqrt(2)
    #   M = sqrt(2), m = 1 -> Phi = (sqrt 2 - d) / (sqrt 2 - 1) = 1 on the 12, 0 at the 4 corners
    target = torch.zeros(1, 5, 5, dtype=torch.long)
    target[0, 1:4, 1:4] = 1
    phi = build_loss("dpce").penalty_map(LossInputs(torch.zeros(1, 2, 5, 5), target))[0]
    expected = torch.ones(5, 5)
    expected[2, 2] = 0.0
    expected[[0, 0, 4, 4], [0, 4, 0, 4]] = 0.0
    torch.testing.assert_close(phi, expected)
    # with equal logits every CE is ln 2: L = ln 2 * mean(1 + Phi) = ln 2 * (25 + 20) / 25
    close(build_loss("dpce")(torch.zeros(1, 2, 5, 5), target), math.log(2) * 45 / 25)


def test_dpce_class_without_inner_voxels_weighs_its_boundary():
    # a one-pixel-wide line: every voxel is on the boundary (M = m = 1): Phi = 1 (SegLoss: 0/0 = NaN)
    target = torch.zeros(1, 5, 5, dtype=torch.long)
    target[0, 2, :] = 1
    phi = build_loss("dpce").penalty_map(LossInputs(torch.zeros(1, 2, 5, 5), target))[0]
    assert torch.equal(phi[2], torch.ones(5))


def test_dpce_without_boundary_is_plain_ce():
    logits, _ = blob_batch((8, 8), classes=3, batch=1)
    target = torch.zeros(1, 8, 8, dtype=torch.long)  # one class fills the image: Phi = 0
    close(build_loss("dpce")(logits, target), float(F.cross_entropy(logits, target)))


# ============================================================================ 4. properties
VARIANTS = [(name, {}) for name in BOUNDARY_LOSSES] + [
    ("boundary", {"schedule": "increase", "spacing": None}),
    ("boundary", {"schedule": "rebalance", "alpha_max": 1.0}),
    ("level_set", {"fit": "target"}),
    ("active_contour", {"ce_weights": None}),
    ("hausdorff_er", {"erosion": "min"}),
    ("hausdorff_dt", {"include_background": True}),
]


def perfect_logits(target, classes=4, margin=40.0):
    return margin * F.one_hot(target, classes).movedim(-1, 1).float() - margin / 2


@pytest.mark.parametrize("dim", SPATIAL)
@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{'-'.join(o) or 'default'}" for n, o in VARIANTS])
def test_properties_on_a_structured_batch(name, options, dim):
    logits, target = blob_batch(SPATIAL[dim], seed=8)
    loss = with_image_of_target(build_loss(name, num_classes=4, **options))
    loss.on_train_epoch_start(10, 100)  # boundary: alpha = .11, a visible boundary term
    # the perfect prediction is the minimum (lower than the random start)
    at_optimum = float(loss(perfect_logits(target), target))
    assert at_optimum < float(loss(logits, target))
    expected = loss.perfect_value(4)
    if expected is not None:
        assert at_optimum == pytest.approx(expected, abs=1e-4)
    # gradient steps on the fixed batch decrease the loss
    x = logits.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=0.1)
    values = []
    for _ in range(5):
        optimiser.zero_grad()
        value = loss(x, target)
        value.backward()
        assert torch.isfinite(x.grad).all()
        optimiser.step()
        values.append(float(value))
    assert values[-1] < values[0], values
    # finite value and gradient in the corner cases
    cases = {
        "empty_foreground": (logits, torch.zeros_like(target)),
        "perfect": (perfect_logits(target), target),
        "extreme_logits": (1e4 * torch.sign(logits), target),
    }
    for kind, (case_logits, case_target) in cases.items():
        x = case_logits.clone().requires_grad_(True)
        value = loss(x, case_target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all(), kind
    x = logits.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.to(torch.bfloat16), target)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(x.grad).all()


# ============================================================================ 5. invalid options
INVALID = [
    ("boundary", {"schedule": "linear"}, "schedule"),
    ("boundary", {"alpha_start": -0.1}, "alpha_start"),
    ("boundary", {"alpha_step": -0.01}, "alpha_step"),
    ("boundary", {"schedule": "rebalance", "alpha_max": 1.5}, "alpha_max"),
    ("boundary", {"schedule": "rebalance", "alpha_max": None}, "alpha_max"),
    ("boundary", {"region_floor": -0.1}, "region_floor"),
    ("boundary", {"region": "gdice_typo"}, "region"),
    ("boundary", {"region_options": {"gamma": 2.0}}, "region_options"),
    ("boundary", {"spacing": [1.0, 0.0]}, "spacing"),
    ("boundary", {"spacing": 1.0}, "spacing"),
    ("hausdorff_dt", {"alpha": -1.0}, "alpha"),
    ("hausdorff_dt", {"lambda_dice": -1.0}, "lambda_dice"),
    ("hausdorff_er", {"erosions": 0}, "erosions"),
    ("hausdorff_er", {"erosion": "max"}, "erosion"),
    ("hausdorff_cv", {"radii": []}, "radii"),
    ("hausdorff_cv", {"radii": [0, 3]}, "radii"),
    ("active_contour", {"lambda_contour": -1.0}, "lambda_contour"),
    ("active_contour", {"lambda_region": -1.0}, "lambda_region"),
    ("active_contour", {"epsilon": 0.0}, "epsilon"),
    ("level_set", {"lambda_ms": -1.0}, "lambda_ms"),
    ("level_set", {"lambda_tv": -1.0}, "lambda_tv"),
    ("level_set", {"fit": "onehot"}, "fit"),
    ("cldice", {"alpha": 1.5}, "alpha"),
    ("cldice", {"iterations": -1}, "iterations"),
    ("cldice", {"smooth": 0.0}, "smooth"),
    ("dpce", {"spacing": [-1.0, 1.0]}, "spacing"),
]


@pytest.mark.parametrize("name,options,option", INVALID, ids=[f"{n}-{o}" for n, _, o in INVALID])
def test_invalid_option_raises_naming_it(name, options, option):
    with pytest.raises(ValueError, match=option):
        build_loss(name, num_classes=4, **options)


def test_spacing_of_the_wrong_length_is_caught_at_call_time():
    logits, target = blob_batch(SPATIAL["3d"])
    with pytest.raises(ValueError, match="spacing"):
        build_loss("hausdorff_dt", spacing=[1.0, 1.0])(logits, target)
