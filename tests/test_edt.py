"""segbench.ops.edt: exact Euclidean distance transforms, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.ops.edt import distance_transform_edt, signed_distance, unsigned_distance

pytestmark = pytest.mark.usefixtures("one_thread")


METHODS = ("auto", "envelope", "brute", "scipy")


def random_mask(rng, shape, p_fg):
    mask = rng.random(shape) < p_fg
    mask.flat[0] = False  # at least one zero voxel: scipy's all-ones case differs on purpose
    return mask


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape, spacing", [
    ((37, 53), None),
    ((37, 53), (0.7, 2.3)),
    ((11, 17, 23), None),
    ((11, 17, 23), (2.5, 0.8, 1.1)),
    ((64,), (1.5,)),
    ((5, 1, 9), None),  # an axis of length 1
])
@pytest.mark.parametrize("p_fg", [0.5, 0.97])  # dense zeros / sparse zeros (long distances)
def test_matches_scipy_float64(method, shape, spacing, p_fg):
    rng = np.random.default_rng(hash((shape, p_fg)) % 2 ** 32)
    mask = random_mask(rng, shape, p_fg)
    expected = ndimage.distance_transform_edt(mask, sampling=spacing)
    got = distance_transform_edt(torch.from_numpy(mask), spacing, method=method)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_float32_relative_error(method):
    rng = np.random.default_rng(1)
    mask = random_mask(rng, (9, 31, 29), 0.95)
    spacing = (3.0, 0.75, 0.75)
    expected = ndimage.distance_transform_edt(mask, sampling=spacing)
    got = distance_transform_edt(torch.from_numpy(mask), spacing, dtype=torch.float32, method=method)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_batch_axes_are_independent_samples():
    rng = np.random.default_rng(2)
    mask = rng.random((2, 3, 20, 24)) < 0.9
    got = distance_transform_edt(torch.from_numpy(mask), spatial_dims=2)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got[i, j].numpy(), ndimage.distance_transform_edt(mask[i, j]), atol=1e-9)
    # a spacing sequence fixes the number of spatial axes too
    got_spacing = distance_transform_edt(torch.from_numpy(mask), (1.0, 1.0))
    assert torch.equal(got, got_spacing)


def test_scalar_spacing_applies_to_every_axis():
    rng = np.random.default_rng(3)
    mask = random_mask(rng, (12, 14, 10), 0.9)
    got = distance_transform_edt(torch.from_numpy(mask), 0.5)
    np.testing.assert_allclose(got.numpy(), ndimage.distance_transform_edt(mask, sampling=0.5), atol=1e-9)


def test_mask_dtypes_nonzero_is_foreground():
    mask = np.array([[0, 2, 3, 0, -1, 5]])
    expected = ndimage.distance_transform_edt(mask != 0)
    for tensor in (torch.tensor(mask), torch.tensor(mask).float(), torch.tensor(mask != 0), torch.tensor(mask).long()):
        np.testing.assert_allclose(distance_transform_edt(tensor).numpy(), expected)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_mask_is_zero_and_no_zero_sample_is_inf(method):
    zeros = torch.zeros(2, 6, 7, dtype=torch.bool)
    got = distance_transform_edt(zeros, spatial_dims=2, method=method)
    assert torch.equal(got, torch.zeros(2, 6, 7, dtype=torch.float64))
    # sample 0 has no zero voxel: no distance is defined -> inf (scipy would measure to a phantom
    # zero at index (-1, 0)); sample 1 is unaffected
    mask = torch.ones(2, 6, 7, dtype=torch.bool)
    mask[1, 3, 3] = False
    got = distance_transform_edt(mask, spatial_dims=2, method=method)
    assert torch.isinf(got[0]).all()
    np.testing.assert_allclose(got[1].numpy(), ndimage.distance_transform_edt(mask[1].numpy()), atol=1e-9)


def test_hand_computed_distances():
    # one zero voxel at (0, 0) in a 2 x 3 grid, spacing (2, 1):
    #   row 0: 0, 1, 2;  row 1: 2, sqrt(4 + 1) = 2.236, sqrt(4 + 4) = 2.828
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 0] = False
    got = distance_transform_edt(mask, (2.0, 1.0))
    expected = torch.tensor([[0.0, 1.0, 2.0], [2.0, 5 ** 0.5, 8 ** 0.5]], dtype=torch.float64)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("method", METHODS)
def test_chunking_does_not_change_the_result(method):
    rng = np.random.default_rng(4)
    mask = torch.from_numpy(random_mask(rng, (3, 17, 19), 0.9))
    whole = distance_transform_edt(mask, spatial_dims=2, method=method)
    chunked = distance_transform_edt(mask, spatial_dims=2, method=method, max_chunk_elements=50)
    assert torch.equal(whole, chunked)


def test_signed_distance_follows_the_livia_convention():
    rng = np.random.default_rng(5)
    masks = rng.random((3, 16, 18)) < 0.4
    masks[1] = False  # empty: no boundary -> 0
    masks[2] = True   # full: no boundary -> 0
    spacing = (1.5, 0.5)
    got = signed_distance(torch.from_numpy(masks), spacing, dtype=torch.float64)
    g = masks[0]
    # phi = edt(~G) * ~G - (edt(G) - 1) * G  (LIVIA-ETS boundary-loss, one_hot2dist)
    expected = (ndimage.distance_transform_edt(~g, sampling=spacing) * ~g
                - (ndimage.distance_transform_edt(g, sampling=spacing) - 1) * g)
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-9)
    assert (got[1:] == 0).all()
    # in voxel units: <= 0 inside, >= 1 outside (with spacing 0.5 the inner layer would be +0.5)
    phi = signed_distance(torch.from_numpy(g))
    assert (phi[torch.from_numpy(g)] <= 0).all() and (phi[torch.from_numpy(~g)] >= 1).all()


def test_signed_distance_hand_computed():
    # G = the middle three voxels of a 1 x 5 line: inside -(d - 1) = 0, -1, 0; outside 1
    g = torch.tensor([[0, 1, 1, 1, 0]], dtype=torch.bool)
    assert signed_distance(g).tolist() == [[1.0, 0.0, -1.0, 0.0, 1.0]]


def test_unsigned_distance_is_edt_of_both_sides():
    rng = np.random.default_rng(6)
    masks = rng.random((2, 4, 12, 10)) < 0.5
    masks[0, 1] = True
    got = unsigned_distance(torch.from_numpy(masks), spatial_dims=2, dtype=torch.float64)
    for i in range(2):
        for j in range(4):
            g = masks[i, j]
            expected = 0 * g if g.all() else ndimage.distance_transform_edt(g) + ndimage.distance_transform_edt(~g)
            np.testing.assert_allclose(got[i, j].numpy(), expected, atol=1e-9)
    assert got.dtype == torch.float64 and (got[0, 1] == 0).all()


@pytest.mark.parametrize("kwargs, word", [
    (dict(spacing=(1.0, 2.0, 3.0)), "spacing"),
    (dict(spacing=(1.0, -2.0)), "spacing"),
    (dict(spacing=0.0), "spacing"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(method="fast"), "method"),
    (dict(spatial_dims=3), "spatial_dims"),
    (dict(max_chunk_elements=0), "max_chunk_elements"),
])
def test_invalid_arguments_name_the_option(kwargs, word):
    with pytest.raises(ValueError, match=word):
        distance_transform_edt(torch.ones(4, 5), **kwargs)


def test_empty_tensor():
    assert distance_transform_edt(torch.ones(0, 4, 5), spatial_dims=2).shape == (0, 4, 5)
