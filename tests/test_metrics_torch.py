"""The torch (GPU) code path of segbench.metrics equals the scipy path.

No GPU is needed: the torch path is forced on CPU tensors with ``backend="torch"``;
on a CUDA machine the same tests also run on the device.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from segbench.metrics import CONVENTIONS, METRIC_NAMES, _numpy_backend, _torch_backend, evaluate_case
from segbench.metrics._stats import percentile_linear_torch

HAS_OPS_EDT = importlib.util.find_spec("segbench.ops.edt") is not None
EDT_IMPLS = ["bruteforce"] + (["ops"] if HAS_OPS_EDT else [])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def organ_like_labels(rng, shape, n_labels=3):
    """Label map with blobs of a few sizes (one large, smaller ones), some touching the edge."""
    grid = np.indices(shape).astype(np.float64)
    out = np.zeros(shape, np.int64)
    for lab in range(1, n_labels + 1):
        scale = [0.35, 0.15, 0.07][(lab - 1) % 3]
        for _ in range(rng.integers(1, 3)):
            c = [rng.uniform(0, s) for s in shape]
            r = [max(1.0, rng.uniform(0.5, 1.0) * scale * s) for s in shape]
            out[sum(((g - cc) / rr) ** 2 for g, cc, rr in zip(grid, c, r)) <= 1.0] = lab
    return out


def perturb(rng, labels):
    """A 'prediction': labels shifted by a voxel, with some random flips of whole blobs."""
    axis = int(rng.integers(0, labels.ndim))
    pred = np.roll(labels, int(rng.choice([-1, 1])), axis=axis)
    noise = rng.random(labels.shape) < 0.002
    pred[noise] = rng.integers(0, labels.max() + 1, size=int(noise.sum()))
    return pred


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("edt", EDT_IMPLS)
@pytest.mark.parametrize(
    "shape, spacing",
    [((64, 72), (2.0, 0.7)), ((40, 50), (0.5, 1.5)), ((14, 40, 36), (3.0, 0.8, 0.75)), ((20, 24, 28), (1.0, 1.0, 1.0))],
)
def test_torch_path_equals_scipy_path(shape, spacing, edt, device):
    rng = np.random.default_rng(sum(shape) + len(edt))
    gt = organ_like_labels(rng, shape)
    pred = perturb(rng, gt)
    labels = [1, 2, 3, 4]
    for conv in CONVENTIONS:
        sampling = np.asarray(spacing) if CONVENTIONS[conv].use_spacing else np.ones(len(shape))
        tol = 2.0 if CONVENTIONS[conv].nsd else None
        ref = _numpy_backend.evaluate_labels(pred, gt, labels, sampling, CONVENTIONS[conv].pooled_percentile, tol)
        got = _torch_backend.evaluate_labels(
            torch.from_numpy(pred).to(device),
            torch.from_numpy(gt).to(device),
            labels,
            sampling,
            CONVENTIONS[conv].pooled_percentile,
            tol,
            edt=edt,
        )
        for lab in labels:
            assert got[lab][:3] == ref[lab][:3]
            for a, b in zip(got[lab][3:], ref[lab][3:]):
                assert a == pytest.approx(b, abs=1e-6, nan_ok=True), (conv, lab)


@pytest.mark.parametrize("device", DEVICES)
def test_public_api_backend_torch(device):
    rng = np.random.default_rng(5)
    gt = organ_like_labels(rng, (12, 30, 34))
    pred = perturb(rng, gt)
    pred[pred == 3] = 0  # one organ missed entirely -> the one-empty rule
    spacing = (2.5, 0.9, 0.9)
    for conv in CONVENTIONS:
        a = evaluate_case(pred, gt, spacing, range(0, 6), convention=conv, backend="numpy", with_status=True)
        b = evaluate_case(
            torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device), spacing, range(0, 6), convention=conv,
            backend="torch", with_status=True,
        )
        for lab in a:
            assert [b[lab][k] for k in ("status", "pred_voxels", "gt_voxels")] == [
                a[lab][k] for k in ("status", "pred_voxels", "gt_voxels")
            ]
            for k in METRIC_NAMES:
                assert b[lab][k] == pytest.approx(a[lab][k], abs=1e-6, nan_ok=True)
    assert math.isnan(b[5]["dsc"])  # label 5 absent from both


@pytest.mark.parametrize("n", [1, 2, 3, 20, 21, 40, 101, 1000, 4097])
def test_torch_percentile_is_numpy_linear(n):
    rng = np.random.default_rng(n)
    x = np.round(rng.exponential(5.0, n), 3)  # ties, like voxel distances
    for q in (0.0, 50.0, 95.0, 99.0, 100.0):
        assert float(percentile_linear_torch(torch.from_numpy(x), q)) == np.percentile(x, q)


def test_torch_percentile_above_quantile_limit():
    # torch.quantile refuses more than 2**24 elements; the kthvalue path does not.
    n = (1 << 24) + 3
    x = torch.arange(n, dtype=torch.float64).flip(0) * 0.5
    assert float(percentile_linear_torch(x, 95.0)) == np.percentile(np.arange(n) * 0.5, 95.0)


def test_surface_matches_numpy():
    rng = np.random.default_rng(1)
    m = rng.random((9, 11, 13)) < 0.6
    assert np.array_equal(_torch_backend.surface(torch.from_numpy(m)).numpy(), _numpy_backend.surface(m))
    from scipy.ndimage import binary_erosion

    assert np.array_equal(_numpy_backend.surface(m), m ^ binary_erosion(m))
