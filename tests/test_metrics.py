"""Specification of segbench.metrics: the METRICS.md cases, checked against medpy,
MONAI and hand arithmetic, the empty-mask rules of every convention, cropping
invariance and input validation.

Conventions used in the comments: "surface" = mask XOR 6-connected erosion (image
edge is background); d(P->G) = distances from P's surface voxels to G's surface.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from segbench.metrics import CONVENTIONS, METRIC_NAMES, case_status, describe, evaluate_case, hd_unit

medpy_binary = pytest.importorskip("medpy.metric.binary")
monai_metrics = pytest.importorskip("monai.metrics")


# ----------------------------------------------------------------------------- helpers


def box(shape, start, size, label=1, dtype=np.uint8):
    a = np.zeros(shape, dtype)
    a[tuple(slice(s, s + n) for s, n in zip(start, size))] = label
    return a


def ball(shape, center, radius2):
    grid = np.indices(shape)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return (r2 <= radius2).astype(np.uint8)


def as_monai(a: np.ndarray) -> torch.Tensor:
    """A label map as MONAI's metrics take it: (batch, channel, *spatial) float."""
    return torch.from_numpy(np.ascontiguousarray(a))[None, None].float()


def monai_hd95(p, g, spacing=None):
    sp = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(monai_metrics.compute_hausdorff_distance(as_monai(p), as_monai(g), include_background=True, percentile=95, spacing=sp))


def monai_assd(p, g, spacing=None):
    sp = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            monai_metrics.compute_average_surface_distance(as_monai(p), as_monai(g), include_background=True, symmetric=True, spacing=sp)
        )


def monai_dice(p, g):
    return float(monai_metrics.compute_dice(as_monai(p), as_monai(g), include_background=True))


def score(p, g, spacing=None, convention="default", **kw):
    return evaluate_case(p, g, spacing, [1], convention=convention, **kw)[1]


# ------------------------------------------------------------------ METRICS.md test cases


def test_cube_shifted_two_voxels():
    # GT: cube 10^3; P: the same cube shifted +2 along axis 0 (40^3, spacing 1).
    g = box((40,) * 3, (15, 15, 15), (10, 10, 10))
    p = box((40,) * 3, (17, 15, 15), (10, 10, 10))
    s = score(p, g)
    # TP = 8 * 100 -> DSC = 2 * 800 / 2000 = 0.8
    assert s["dsc"] == pytest.approx(0.8) == pytest.approx(medpy_binary.dc(p, g)) == pytest.approx(monai_dice(p, g))
    # Surface: 1000 - 8^3 = 488 voxels per cube. The two side-walls of P that stick out
    # (the top face 2 voxels beyond G) are at distance 2: HD = HD95 = 2.
    assert s["hd"] == 2.0
    assert s["hd95"] == 2.0 == medpy_binary.hd95(p, g) == pytest.approx(monai_hd95(p, g))
    # ASSD pooled over 976 surface voxels (medpy, MONAI symmetric): 0.6885...
    assert s["assd"] == pytest.approx(0.6885245901639344, abs=1e-12)
    assert s["assd"] == pytest.approx(medpy_binary.assd(p, g), abs=1e-12)
    assert s["assd"] == pytest.approx(monai_assd(p, g), abs=1e-5)  # MONAI works in float32
    assert s["nsd"] == 1.0  # every distance <= 2 mm


def test_spacing_is_in_array_axis_order():
    # Same shift (2 voxels) along axis 0 (z) with spacing (3, .8, .8): 2 * 3 mm = 6 mm.
    g = box((40,) * 3, (15, 15, 15), (10, 10, 10))
    p = box((40,) * 3, (17, 15, 15), (10, 10, 10))
    spacing = (3.0, 0.8, 0.8)
    s = score(p, g, spacing)
    assert s["hd95"] == 6.0 == medpy_binary.hd95(p, g, voxelspacing=spacing)
    assert s["hd95"] == pytest.approx(monai_hd95(p, g, spacing))
    assert s["hd"] == 6.0
    # Reversed spacing (the classic (x, y, z) vs (z, y, x) mistake) would give 2 * 0.8 = 1.6.
    assert score(p, g, spacing[::-1])["hd95"] == pytest.approx(1.6)
    assert s["assd"] == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing), abs=1e-12)


def test_far_blob_pooled_vs_per_direction_percentile():
    # GT: cube 20^3 at [10, 30)^3; P = GT + a 7^3 blob at [42, 49)^3 (60^3, spacing 1).
    g = box((60,) * 3, (10, 10, 10), (20, 20, 20))
    p = g | box((60,) * 3, (42, 42, 42), (7, 7, 7))
    # Surfaces: cube 20^3 - 18^3 = 2168 voxels (shared by P and G), blob 7^3 - 5^3 = 218.
    # d(G->P): 2168 zeros. d(P->G): 2168 zeros + 218 blob distances.
    # medpy pools both: 4554 values of which 4336 are 0; P95 index 0.95 * 4553 = 4325.35 -> 0.
    assert medpy_binary.hd95(p, g) == 0.0
    assert score(p, g, convention="medpy")["hd95"] == 0.0
    # Per direction: d(P->G) has 2386 values, index 0.95 * 2385 = 2265.75 falls on the 98th
    # smallest blob distance, sqrt(13^2 + 15^2 + 19^2) = sqrt(755) = 27.477 (voxel (42, 44, 48)
    # against the cube corner (29, 29, 29)); its neighbour in the sorted list is equal.
    s = score(p, g)
    assert s["hd95"] == pytest.approx(math.sqrt(755), abs=1e-12)
    assert s["hd95"] == pytest.approx(monai_hd95(p, g), abs=1e-5)
    # HD: far blob corner (48, 48, 48) to cube corner (29, 29, 29): 19 * sqrt(3) = 32.909.
    assert s["hd"] == pytest.approx(19 * math.sqrt(3)) == pytest.approx(medpy_binary.hd(p, g))
    # TransUNet = medpy without spacing: 0 as well.
    assert score(p, g, convention="transunet")["hd95"] == 0.0


def test_spheres_radius_8_and_9():
    # GT: r^2 <= 64, P: r^2 <= 81, both centred in 40^3: surfaces one shell apart.
    g = ball((40,) * 3, (20, 20, 20), 64)
    p = ball((40,) * 3, (20, 20, 20), 81)
    s = score(p, g)
    assert s["hd95"] == pytest.approx(math.sqrt(2), abs=1e-12)
    assert s["hd95"] == pytest.approx(medpy_binary.hd95(p, g), abs=1e-12)
    assert s["hd95"] == pytest.approx(monai_hd95(p, g), abs=1e-5)
    assert s["assd"] == pytest.approx(1.1088789935380707, abs=1e-12)
    assert s["assd"] == pytest.approx(medpy_binary.assd(p, g), abs=1e-12)
    assert s["assd"] == pytest.approx(monai_assd(p, g), abs=1e-5)
    assert s["dsc"] == pytest.approx(medpy_binary.dc(p, g), abs=1e-15)


def test_2d_square_medpy_2_monai_2003_is_pooling_not_interpolation():
    # GT: square 10x10 at [10, 20)^2; P: shifted +1 along axis 0, widened by 2 along axis 1
    # ([11, 21) x [10, 22)); spacing (2, .5).
    g = box((40, 40), (10, 10), (10, 10))
    p = box((40, 40), (11, 10), (10, 12))
    spacing = (2.0, 0.5)
    # d(P->G): 40 values, sorted index 0.95 * 39 = 37.05 lies between 2.0 and
    # sqrt(2^2 + .5^2) = 2.0616: 2 + 0.05 * 0.0616 = 2.00308.  d(G->P): 36 values, P95 = 2.
    # Per-direction max (segbench default, MONAI's torch.quantile, MetricsReloaded's
    # np.percentile - all "linear") -> 2.00308.
    expected = 2.0 + 0.05 * (math.sqrt(4.25) - 2.0)
    s = score(p, g, spacing)
    assert s["hd95"] == pytest.approx(expected, abs=1e-12)
    assert s["hd95"] == pytest.approx(monai_hd95(p, g, spacing), abs=1e-5)
    # medpy pools the 76 values: index 0.95 * 75 = 71.25 lies between two 2.0 -> exactly 2.
    assert score(p, g, spacing, convention="medpy")["hd95"] == 2.0 == medpy_binary.hd95(p, g, voxelspacing=spacing)
    # torch.quantile (MONAI) and np.percentile agree on the same distances; the 0.003 comes
    # from pooling the two directions (medpy) or not (MONAI), not from the interpolation.
    from segbench.metrics._numpy_backend import surface_distances

    d_pg, d_gp = surface_distances(p.astype(bool), g.astype(bool), np.array(spacing))
    assert float(torch.quantile(torch.from_numpy(d_pg), 0.95)) == pytest.approx(np.percentile(d_pg, 95), abs=1e-15)


# ---------------------------------------------------------------- conventions and medpy


def random_blobs(rng, shape, n_blobs, radius_range):
    """Union of random ellipsoids (organ-like, a few sizes) as a bool mask."""
    grid = np.indices(shape).astype(np.float64)
    out = np.zeros(shape, bool)
    for _ in range(n_blobs):
        c = [rng.uniform(0, s) for s in shape]
        r = [rng.uniform(*radius_range) for _ in shape]
        out |= sum(((gg - cc) / rr) ** 2 for gg, cc, rr in zip(grid, c, r)) <= 1.0
    return out


def transunet_reference(p, g):
    """TransUNet utils.calculate_metric_percase, verbatim logic, with medpy."""
    p = p.copy()
    g = g.copy()
    p[p > 0] = 1
    g[g > 0] = 1
    if p.sum() > 0 and g.sum() > 0:
        return medpy_binary.dc(p, g), medpy_binary.hd95(p, g)
    elif p.sum() > 0 and g.sum() == 0:
        return 1, 0
    else:
        return 0, 0


@pytest.mark.parametrize("shape", [(48, 52), (24, 30, 28)])
def test_transunet_equals_medpy_with_transunet_rules(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(6):
        g = random_blobs(rng, shape, 3, (2, 9)).astype(np.uint8)
        p = random_blobs(rng, shape, 3, (2, 9)).astype(np.uint8)
        if trial == 4:
            g[:] = 0
        if trial == 5:
            p[:] = 0
        s = score(p, g, spacing=[2.5] + [0.7] * (len(shape) - 1), convention="transunet")  # spacing ignored
        dsc, hd95 = transunet_reference(p, g)
        assert s["dsc"] == pytest.approx(dsc, rel=1e-15, abs=1e-15)
        assert s["hd95"] == pytest.approx(hd95, rel=1e-15, abs=1e-15)
        if p.any() and g.any():
            assert s["hd"] == medpy_binary.hd(p, g)
            assert s["assd"] == pytest.approx(medpy_binary.assd(p, g), rel=1e-14)
        assert math.isnan(s["nsd"])


@pytest.mark.parametrize("shape", [(50, 44), (26, 30, 22)])
def test_medpy_convention_equals_medpy_in_mm(shape):
    rng = np.random.default_rng(7 + len(shape))
    spacing = [3.0, 0.8, 0.6][-len(shape) :]
    for _ in range(4):
        g = random_blobs(rng, shape, 2, (3, 10))
        p = random_blobs(rng, shape, 2, (3, 10))
        if not (g.any() and p.any()):
            continue
        s = score(p.astype(np.uint8), g.astype(np.uint8), spacing, convention="medpy")
        assert s["hd95"] == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=spacing), rel=1e-14)
        assert s["hd"] == pytest.approx(medpy_binary.hd(p, g, voxelspacing=spacing), rel=1e-14)
        assert s["assd"] == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing), rel=1e-14)
        d = score(p.astype(np.uint8), g.astype(np.uint8), spacing)
        assert d["hd95"] == pytest.approx(monai_hd95(p, g, spacing), rel=1e-5)
        assert d["hd"] == s["hd"] and d["assd"] == s["assd"] and d["dsc"] == s["dsc"]


def test_nsd_counts_surface_voxels_within_tolerance():
    # Cube shifted 2 voxels along axis 0 with spacing (3, .8, .8): distances in mm are
    # 0 (shared walls), 3 and 6 along the shift. NSD(tau) = share of the 976 surface
    # voxels of both masks with distance <= tau.
    g = box((40,) * 3, (15, 15, 15), (10, 10, 10))
    p = box((40,) * 3, (17, 15, 15), (10, 10, 10))
    from segbench.metrics._numpy_backend import surface_distances

    d_pg, d_gp = surface_distances(p.astype(bool), g.astype(bool), np.array([3.0, 0.8, 0.8]))
    both = np.concatenate([d_pg, d_gp])
    for tau in (0.0, 2.0, 3.0, 5.9, 6.0):
        s = evaluate_case(p, g, (3.0, 0.8, 0.8), [1], nsd_tolerance_mm=tau)[1]
        assert s["nsd"] == pytest.approx(np.mean(both <= tau))
    assert evaluate_case(p, g, (3.0, 0.8, 0.8), [1], nsd_tolerance_mm=6.0)[1]["nsd"] == 1.0
    assert evaluate_case(p, g, (3.0, 0.8, 0.8), [1], nsd_tolerance_mm=2.0)[1]["nsd"] == pytest.approx(672 / 976)


# ---------------------------------------------------------------------------- empty masks


@pytest.mark.parametrize("shape", [(30, 40), (12, 30, 40)])
@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_empty_masks(shape, convention):
    spacing = [2.0, 0.5, 0.75][-len(shape) :]
    obj = box(shape, (2,) * len(shape), (5,) * len(shape))
    empty = np.zeros(shape, np.uint8)
    # Volume diagonal: sqrt(sum((shape * spacing)^2)) in mm (voxels for transunet).
    unit = spacing if CONVENTIONS[convention].use_spacing else [1.0] * len(shape)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, unit)))
    both = score(empty, empty, spacing, convention)
    gt_empty = score(obj, empty, spacing, convention)
    pred_empty = score(empty, obj, spacing, convention)
    if convention == "transunet":
        # calculate_metric_percase: pred>0 & gt==0 -> (1, 0); else (pred empty) -> (0, 0),
        # also when both are empty (medpy.dc alone would say 1.0 there).
        assert (gt_empty["dsc"], gt_empty["hd95"], gt_empty["hd"], gt_empty["assd"]) == (1.0, 0.0, 0.0, 0.0)
        assert (pred_empty["dsc"], pred_empty["hd95"], pred_empty["hd"], pred_empty["assd"]) == (0.0, 0.0, 0.0, 0.0)
        assert (both["dsc"], both["hd95"], both["hd"], both["assd"]) == (0.0, 0.0, 0.0, 0.0)
        assert transunet_reference(empty, empty) == (0, 0)
        assert all(math.isnan(s["nsd"]) for s in (both, gt_empty, pred_empty))
    else:
        assert all(math.isnan(both[k]) for k in METRIC_NAMES)
        for s in (gt_empty, pred_empty):
            assert s["dsc"] == 0.0 and s["nsd"] == 0.0
            assert s["hd"] == s["hd95"] == s["assd"] == pytest.approx(diag, abs=1e-12)
    # medpy raises where segbench applies a rule.
    with pytest.raises(RuntimeError):
        medpy_binary.hd95(obj, empty)


def test_status_and_absent_labels():
    g = box((20, 20), (2, 2), (4, 4), label=3)
    p = box((20, 20), (2, 2), (4, 4), label=3) + box((20, 20), (10, 10), (3, 3), label=5)
    out = evaluate_case(p, g, None, [3, 5, 7, 0], with_status=True)
    assert out[3]["status"] == "ok" and out[3]["dsc"] == 1.0 and out[3]["hd95"] == 0.0
    assert out[5]["status"] == "gt_empty" and (out[5]["pred_voxels"], out[5]["gt_voxels"]) == (9, 0)
    assert (out[3]["pred_voxels"], out[3]["gt_voxels"]) == (16, 16)
    assert out[0]["pred_voxels"] == 400 - 16 - 9 and out[0]["gt_voxels"] == 400 - 16
    assert out[7]["status"] == "both_empty" and math.isnan(out[7]["dsc"])
    assert out[0]["status"] == "ok"  # background is a label like any other
    assert out[0]["dsc"] == pytest.approx(medpy_binary.dc(p == 0, g == 0))
    assert [case_status(a, b) for a, b in [(1, 1), (1, 0), (0, 1), (0, 0)]] == [
        "ok",
        "gt_empty",
        "pred_empty",
        "both_empty",
    ]


def test_describe_and_units():
    assert hd_unit("default") == "mm" and hd_unit("medpy") == "mm" and hd_unit("transunet") == "voxels"
    for name in CONVENTIONS:
        text = describe(name)
        assert text.startswith(name + ":") and "\n" not in text
    with pytest.raises(ValueError, match="default, transunet, medpy"):
        describe("monai")


@pytest.mark.parametrize("method", ["edt", "kdtree", "local"])
@pytest.mark.parametrize("shape, spacing", [((40, 46), (2.0, 0.6)), ((16, 30, 26), (3.0, 0.8, 0.7))])
def test_both_exact_distance_methods_match_medpy(method, shape, spacing):
    # The CPU path picks scipy's EDT (small or thin crops) or a k-d tree over surface
    # voxels (large compact organs) by a cost model; both must give medpy's numbers.
    from segbench.metrics import _numpy_backend

    rng = np.random.default_rng(len(shape) + len(method))
    for _ in range(3):
        g = random_blobs(rng, shape, 3, (2, 9))
        p = random_blobs(rng, shape, 3, (2, 9))
        if not (g.any() and p.any()):
            continue
        d_pg, d_gp = _numpy_backend.surface_distances(p, g, np.asarray(spacing), method)
        ref = _numpy_backend.surface_distances(p, g, np.asarray(spacing), "edt")
        np.testing.assert_allclose(d_pg, ref[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(d_gp, ref[1], rtol=0, atol=1e-12)
        stats = _numpy_backend.evaluate_labels(
            p.astype(np.uint8), g.astype(np.uint8), [1], np.asarray(spacing), True, None, distance_method=method
        )[1]
        assert stats.hd95 == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=spacing), rel=1e-14)
        assert stats.assd == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing), rel=1e-14)
        assert stats.hd == pytest.approx(medpy_binary.hd(p, g, voxelspacing=spacing), rel=1e-14)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.78, 0.78), (0.7, 3.0, 1.1), (2.0, 0.5)])
def test_local_search_offsets_are_complete_and_sorted(spacing):
    # "local" returns the length of the first offset (by length) that hits the other
    # surface: exact only if the list holds EVERY offset up to its last length.
    from segbench.metrics import _numpy_backend

    sampling = np.asarray(spacing)
    offsets, lengths = _numpy_backend._sorted_offsets(sampling)
    assert np.all(np.diff(lengths) >= 0) and lengths[0] == 0.0
    big = np.stack(np.meshgrid(*[np.arange(-40, 41)] * len(spacing), indexing="ij"), -1).reshape(-1, len(spacing))
    big_len = _numpy_backend._offset_length(big, sampling)
    assert np.count_nonzero(big_len <= lengths[-1]) == len(offsets)
    assert 100 < len(offsets) <= _numpy_backend._LOCAL_MAX_OFFSETS


@pytest.mark.parametrize("chunk", [1 << 21, 50])
def test_local_search_with_far_points_equals_edt(chunk, monkeypatch):
    # Far blob: its surface voxels are beyond the offset list and go to the k-d tree.
    g = box((60,) * 3, (10, 10, 10), (20, 20, 20)).astype(bool)
    p = g | box((60,) * 3, (42, 42, 42), (7, 7, 7)).astype(bool)
    p[12:14, 12:30, 5:10] = True  # a near protrusion, resolved by the offset search
    from segbench.metrics import _numpy_backend

    monkeypatch.setattr(_numpy_backend, "_LOCAL_CHUNK", chunk)  # 50: many small gathers

    for spacing in ((1.0, 1.0, 1.0), (3.0, 0.8, 0.8)):
        local = _numpy_backend.surface_distances(p, g, np.asarray(spacing), "local")
        edt = _numpy_backend.surface_distances(p, g, np.asarray(spacing), "edt")
        for a, b in zip(local, edt):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ cropping


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_crop_invariance_and_image_edge(convention):
    # Masks touching the image edge: the edge is background, so voxels on it are surface
    # (as in medpy/MONAI). Embedding the pair in a larger zero volume keeps the same
    # surface voxels (they are still next to a background voxel) and the same distances.
    rng = np.random.default_rng(3)
    shape = (18, 26, 22)
    spacing = (2.5, 0.7, 0.9)
    gt_map = random_blobs(rng, shape, 3, (3, 9)).astype(np.uint8)
    pred_map = random_blobs(rng, shape, 3, (3, 9)).astype(np.uint8)
    gt_map[0, :5, :5] = 1  # touches three image faces
    pred_map[-1, -4:, :] = 1  # a full row along the last face
    a = evaluate_case(pred_map, gt_map, spacing, [1], convention=convention)[1]
    big_p = np.pad(pred_map, ((3, 5), (0, 7), (2, 2)))
    big_g = np.pad(gt_map, ((3, 5), (0, 7), (2, 2)))
    b = evaluate_case(big_p, big_g, spacing, [1], convention=convention)[1]
    for k in ("dsc", "hd", "hd95", "assd", "nsd"):
        if not CONVENTIONS[convention].nsd and k == "nsd":
            continue
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    # And against medpy on the full (uncropped) volumes.
    sp = spacing if CONVENTIONS[convention].use_spacing else None
    assert a["assd"] == pytest.approx(medpy_binary.assd(pred_map, gt_map, voxelspacing=sp), abs=1e-12)
    assert a["hd"] == pytest.approx(medpy_binary.hd(pred_map, gt_map, voxelspacing=sp), abs=1e-12)


def test_multilabel_matches_per_label_binary():
    rng = np.random.default_rng(11)
    shape = (20, 34, 30)
    gt = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    for lab, (lo, hi) in enumerate([(2, 4), (4, 8), (1.5, 3)], start=1):
        gt[random_blobs(rng, shape, 2, (lo, hi))] = lab
        pred[random_blobs(rng, shape, 2, (lo, hi))] = lab
    spacing = (3.0, 0.75, 0.75)
    multi = evaluate_case(pred, gt, spacing, [1, 2, 3])
    for lab in (1, 2, 3):
        single = evaluate_case((pred == lab).astype(np.uint8), (gt == lab).astype(np.uint8), spacing, [1])[1]
        for k in METRIC_NAMES:
            assert multi[lab][k] == pytest.approx(single[k], abs=1e-12, nan_ok=True)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gt=np.zeros((5, 6, 8), np.uint8)), r"^gt: shape"),
        (dict(spacing=(1.0, 1.0)), r"^spacing: expected 3 values"),
        (dict(spacing=(1.0, 0.0, 1.0)), r"^spacing: every value must be finite and > 0"),
        (dict(spacing=(1.0, -2.0, 1.0)), r"^spacing:"),
        (dict(convention="monai"), r"^convention: .*valid: default, transunet, medpy"),
        (dict(pred=np.full((5, 6, 7), 0.5)), r"^pred: float label map holds non-integer"),
        (dict(gt=np.full((5, 6, 7), 1.2, np.float32)), r"^gt: float label map"),
        (dict(nsd_tolerance_mm=-1), r"^nsd_tolerance_mm:"),
        (dict(labels=[1.5]), r"^labels:"),
        (dict(labels=["liver"]), r"^labels:"),
        (dict(labels=[1, 1]), r"^labels: duplicate"),
        (dict(pred=np.zeros((5, 6, 7), complex)), r"^pred: expected an integer label map"),
        (dict(pred=np.zeros(7, np.uint8), gt=np.zeros(7, np.uint8), spacing=None), r"^pred: expected a 2D or 3D"),
    ],
)
def test_validation(kwargs, match):
    args = dict(pred=np.zeros((5, 6, 7), np.uint8), gt=np.zeros((5, 6, 7), np.uint8), spacing=(1.0, 1.0, 1.0), labels=[1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as err:
        evaluate_case(**args)
    assert "\n" not in str(err.value)


def test_accepts_torch_float_and_bool_inputs():
    g = box((20, 20), (5, 5), (6, 6))
    p = box((20, 20), (6, 5), (6, 6))
    ref = score(p, g)
    assert score(torch.from_numpy(p), torch.from_numpy(g)) == ref
    assert score(p.astype(np.float32), g.astype(np.float64)) == ref
    assert score(p.astype(bool), g.astype(bool)) == ref
    assert all(isinstance(v, float) for v in ref.values())


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_every_convention_at_once_equals_each_alone_and_shares_the_distances(backend, monkeypatch):
    """``evaluate_case_conventions`` (what every test pass runs: default + transunet + medpy) gives each
    convention's numbers bit for bit, and computes the surface distances once per voxel grid: twice for a
    spacing that is not 1 (mm and voxels), once where it is (data without spacing: both measure voxels)."""
    from segbench.metrics import _numpy_backend, _torch_backend, evaluate_case_conventions

    rng = np.random.default_rng(3)
    g = random_blobs(rng, (20, 24, 22), 3, (2, 7)).astype(np.uint8) * 2
    p = random_blobs(rng, (20, 24, 22), 3, (2, 7)).astype(np.uint8) * 2
    g[2:5, 2:6, 2:6], p[3:6, 2:6, 3:7] = 1, 1  # label 1 present in both, label 2 blobs, label 3 in neither
    labels = [1, 2, 3]
    calls = []
    module = _numpy_backend if backend == "numpy" else _torch_backend
    name = "surface_distances" if backend == "numpy" else "_edt_distances"
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    for spacing, grids in (((2.5, 0.8, 0.7), 2), ((1.0, 1.0, 1.0), 1)):
        calls.clear()
        together = evaluate_case_conventions(p, g, spacing, labels, ["default", "transunet", "medpy"],
                                             backend=backend, with_status=True)
        per_grid = len(calls)
        for conv in ("default", "transunet", "medpy"):
            alone = evaluate_case(p, g, spacing, labels, convention=conv, backend=backend, with_status=True)
            for lab in labels:
                assert together[conv][lab].keys() == alone[lab].keys()
                for key, value in alone[lab].items():
                    got = together[conv][lab][key]
                    both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(got)
                    assert got == value or both_nan, (spacing, conv, lab, key, got, value)
        # 2 labels with both masks non-empty; numpy: one call per label and grid, torch: two (P->G, G->P)
        assert per_grid == grids * 2 * (1 if backend == "numpy" else 2), (spacing, per_grid)
