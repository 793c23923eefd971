"""Flips and rotations of a whole batch in one operation on the batch's device, parameter for parameter the
loader path's MONAI transforms; and the 3D patch centres of MONAI's ``RandCropByPosNegLabeld``.

The loader path (:func:`segbench.data.datamodule.build_augmentation`) augments one sample at a time in loader
workers: ``RandFlipd`` along spatial axis 0, 1 (, 2), each with ``data.augment.flip_prob``, then
``RandRotated`` with ``data.augment.rotate_prob`` by an angle drawn uniformly from
``[-rotate_range_deg, rotate_range_deg]`` (radians), about the first spatial axis in 3D (the axial plane),
bilinear image, nearest label, zero padding, ``keep_size=True``, ``align_corners=False``.

The device path (:mod:`segbench.data.device`) draws the same parameters for a whole batch on the CPU
(:meth:`Augment.draw`, from a ``torch.Generator``) and applies them at once on the training device
(:func:`augment_batch`):

* flips: ``torch.where(flip, x.flip(axis), x)`` per axis, in MONAI's order;
* rotation: each sample's matrix is built on the CPU by MONAI's own code, as ``Rotate`` builds it
  (``create_rotate``, the centre shift ``(shape - 1) / 2``, then ``AffineTransform``'s normalisation
  ``to_norm_affine`` and its reversed axis order, float32), and applied with one ``affine_grid`` and two
  ``grid_sample`` calls for the batch (bilinear image, nearest label). Samples that are not rotated keep
  their values (``torch.where``), as MONAI leaves them untouched.

``tests/test_device_pipeline.py`` runs both paths on the same drawn parameters: labels are equal and images
equal bit for bit on the CPU (the batched kernels compute each sample as the per-sample call does). On a
GPU ``grid_sample`` runs CUDA's kernel, whose bilinear weights may round differently from the CPU's in the last
bit (fused multiply-adds): about 1e-7 on [0, 1] images.

Why the rotation matrix is not built on the device with MONAI's ``AffineTransform``: its normalisation
(``normalize_transform``) assigns through a boolean mask and copies a NumPy inverse to the tensor's device,
two waits for the GPU per batch; built on the CPU beside the other drawn parameters, it travels with the
batch instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """``data.augment`` (``{flip_prob, rotate_prob, rotate_range_deg}``) for ``spatial_dims`` 2 or 3."""

    flip_prob: float
    rotate_prob: float
    rotate_range_deg: float
    spatial_dims: int

    @classmethod
    def from_config(cls, augment: dict[str, float] | None, spatial_dims: int) -> Augment:
        augment = dict(augment or {})
        flip = float(augment.get("flip_prob", 0.0))
        rot = float(augment.get("rotate_prob", 0.0))
        deg = float(augment.get("rotate_range_deg", 0.0))
        for key, value in (("flip_prob", flip), ("rotate_prob", rot)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.augment.{key} must be in [0, 1], got {value}")
        return cls(flip, rot, deg, int(spatial_dims))

    @property
    def flips(self) -> bool:
        return self.flip_prob > 0

    @property
    def rotates(self) -> bool:
        """MONAI's pipeline has a rotation step only when both the probability and the range are > 0."""
        return self.rotate_prob > 0 and self.rotate_range_deg > 0

    def draw(self, n: int, shape: Sequence[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The parameters of ``n`` samples of spatial ``shape``, from ``generator`` (CPU):

        ``flip`` ``[n, dims]`` bool (axis ``a`` flipped when a uniform draw is ``< flip_prob``: MONAI's
        ``R.rand() < prob``), ``rotate`` ``[n]`` bool (``< rotate_prob``), ``angle`` ``[n]`` float64 radians
        (``low + (high - low) * u`` on ``[-range, range)``: NumPy's ``uniform``, what ``RandRotate`` calls) and
        ``theta`` ``[n, dims, dims + 1]`` float32, the sampling grid's matrix of each rotated sample (the
        identity for the others, which are not resampled). The same number of values is drawn whatever the
        settings, so the generator advances by a fixed amount per batch.
        """
        dims = self.spatial_dims
        flip = torch.rand(n, dims, generator=generator, dtype=torch.float64) < self.flip_prob
        rotate = torch.rand(n, generator=generator, dtype=torch.float64) < self.rotate_prob
        limit = math.radians(self.rotate_range_deg)
        angle = -limit + 2 * limit * torch.rand(n, generator=generator, dtype=torch.float64)
        if not self.flips:
            flip[:] = False
        if not self.rotates:
            rotate[:] = False
        theta = identity_thetas(n, dims)
        rotated = torch.nonzero(rotate).flatten()
        theta[rotated] = rotation_thetas(angle[rotated].tolist(), shape)
        return {"flip": flip, "rotate": rotate, "angle": angle, "theta": theta}


def identity_thetas(n: int, dims: int) -> torch.Tensor:
    return torch.eye(dims, dims + 1, dtype=torch.float32).repeat(n, 1, 1)


def rotation_matrix(angle: float, shape: Sequence[int]) -> np.ndarray:
    """MONAI ``Rotate``'s affine (``keep_size=True``) for ``angle`` radians, about the first spatial axis in
    3D: ``shift @ create_rotate(angle) @ shift_1``, float64 ``(dims + 1, dims + 1)``; maps output voxel
    coordinates to input ones (``monai/transforms/spatial/functional.py``, ``rotate``)."""
    from monai.transforms.utils import create_rotate, create_translate

    dims = len(shape)
    # RandRotate passes (x,) in 2D and (x, y, z) in 3D, y and z drawn from uniform(0, 0) = 0.0
    transform = create_rotate(dims, (angle,) if dims == 2 else (angle, 0.0, 0.0), rotate_order="XYZ")
    shift = create_translate(dims, ((np.array(shape) - 1) / 2).tolist())
    shift_1 = create_translate(dims, (-(np.asarray(shape, dtype=int) - 1) / 2).tolist())
    return shift @ transform @ shift_1


_NORMALISERS: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _normalisers(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_norm_affine``'s two matrices for a float32 affine on ``shape`` (source = destination size,
    ``align_corners=False``, ``zero_centered=False``): computed by MONAI's ``normalize_transform`` once per
    shape."""
    if shape not in _NORMALISERS:
        from monai.networks.utils import normalize_transform

        src = normalize_transform(shape, "cpu", torch.float32, False, False)
        dst = normalize_transform(shape, "cpu", torch.float32, False, False)
        _NORMALISERS[shape] = (src, torch.as_tensor(np.linalg.inv(dst.numpy())))
    return _NORMALISERS[shape]


def rotation_thetas(angles: Sequence[float], shape: Sequence[int]) -> torch.Tensor:
    """The ``affine_grid`` matrices ``[n, dims, dims + 1]`` float32 of MONAI's rotations by ``angles`` of a
    ``shape`` sample, computed as ``AffineTransform(normalized=False, reverse_indexing=True)`` computes each:
    the float64 affine cast to float32, ``src_norm @ affine @ inv(dst_norm)`` (``to_norm_affine``), then the
    axes reversed (grid order x, y(, z)). The products are batched: torch multiplies 3 x 3 / 4 x 4 matrices
    with the same small-matrix kernel per batch element whatever the batch size, so each matrix is the one
    MONAI's per-sample call gets (tested value for value)."""
    shape = tuple(int(s) for s in shape)
    dims = len(shape)
    affines = np.stack([rotation_matrix(float(a), shape) for a in angles]) if len(angles) else \
        np.zeros((0, dims + 1, dims + 1))
    src, inv_dst = _normalisers(shape)
    theta = src @ torch.as_tensor(affines, dtype=torch.float32) @ inv_dst
    reverse = list(range(dims - 1, -1, -1))
    theta[:, :dims] = theta[:, reverse]
    theta[:, :, :dims] = theta[:, :, reverse]
    return theta[:, :dims]


def rotation_theta(angle: float, shape: Sequence[int]) -> torch.Tensor:
    """:func:`rotation_thetas` of one angle: ``(dims, dims + 1)``."""
    return rotation_thetas([angle], shape)[0]


def augment_batch(image: torch.Tensor, label: torch.Tensor, params: dict[str, torch.Tensor],
                  augment: Augment) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip and rotate a batch as drawn (:meth:`Augment.draw`), on the batch's device, without reading
    anything back to the host.

    Args:
        image: ``[B, C, *spatial]`` float32.
        label: ``[B, *spatial]`` integer label map (uint8 / long).
        params: ``flip``, ``rotate``, ``theta`` on the batch's device.

    Returns:
        ``(image float32, label long)``. The label is resampled as float32 and rounded, as the loader path does.
    """
    dims = augment.spatial_dims
    batch = image.shape[0]
    lab = label[:, None].float()
    if augment.flips:
        flip = params["flip"]
        for axis in range(dims):  # RandFlipd(spatial_axis=0), (1), (2), in that order
            mask = flip[:, axis].view(batch, *([1] * (dims + 1)))
            image = torch.where(mask, image.flip(axis + 2), image)
            lab = torch.where(mask, lab.flip(axis + 2), lab)
    if augment.rotates:
        theta = params["theta"].to(image.dtype)
        grid = F.affine_grid(theta, [batch, 1, *image.shape[2:]], align_corners=False)
        mask = params["rotate"].view(batch, *([1] * (dims + 1)))
        image = torch.where(mask, F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=False), image)
        lab = torch.where(mask, F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros",
                                              align_corners=False), lab)
    return image, lab[:, 0].round().long()


# -- 3D patches: RandCropByPosNegLabeld's centres ----------------------------------------------------------------
class PatchCentres:
    """Where the loader path's ``RandCropByPosNegLabeld(spatial_size=patch_size, pos=p, neg=1-p)`` cuts
    patches, drawn on the CPU.

    Per case (each label already padded to at least the patch size, as ``SpatialPadd`` does), the sorted flat
    indices of its foreground voxels (label > 0). A sample is centred on a foreground voxel with probability
    ``foreground_prob`` (MONAI: ``R.rand() < pos_ratio``; never for a case without foreground), uniformly
    among them (``R.randint(count)``); otherwise on a "negative" voxel, uniformly among **all** the case's
    voxels. That last part is what the loader path does, not what its name says: segbench's labels are uint8,
    and MONAI's ``map_binary_to_indices`` turns a uint8 ``any`` into its background list with ``~``, a bitwise
    not on uint8 (255, 254, ...: all nonzero), so its "background" list is every voxel, foreground included.
    A negative patch is thus centred on foreground with the case's foreground fraction ``f``, and patches
    are centred on foreground with probability ``p + (1 - p) f`` in both paths
    (``tests/test_device_pipeline.py`` pins MONAI's lists). The centre is then clamped by MONAI's
    ``correct_crop_centers`` and the patch starts at ``centre - patch_size // 2`` (``SpatialCrop``), so the
    patch lies in the case.
    """

    def __init__(self, labels: Sequence[torch.Tensor], patch_size: Sequence[int], foreground_prob: float):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_prob = float(foreground_prob)
        self.shapes: list[tuple[int, ...]] = []
        self.foreground: list[np.ndarray] = []
        for label in labels:
            flat = np.asarray(label).reshape(-1)
            self.shapes.append(tuple(int(s) for s in np.asarray(label).shape[-len(self.patch_size):]))
            self.foreground.append(np.flatnonzero(flat > 0).astype(np.int32 if flat.size < 2 ** 31 else np.int64))

    def counts(self, case: int) -> tuple[int, int]:
        """(foreground voxels, "negative" voxels: all of them) of ``case``."""
        return len(self.foreground[case]), int(np.prod(self.shapes[case]))

    def voxel(self, case: int, on_foreground: bool, k: int) -> int:
        """Flat index of the ``k``-th foreground voxel of ``case``, or of its ``k``-th voxel."""
        return int(self.foreground[case][k]) if on_foreground else int(k)

    def start(self, case: int, on_foreground: bool, k: int) -> tuple[int, ...]:
        """The patch's first voxel, as MONAI's crop computes it from the chosen voxel."""
        from monai.transforms.utils import correct_crop_centers

        shape = self.shapes[case]
        centre = np.unravel_index(self.voxel(case, on_foreground, k), shape)
        centre = correct_crop_centers([int(c) for c in centre], self.patch_size, shape)
        return tuple(max(int(c) - s // 2, 0) for c, s in zip(centre, self.patch_size))

    def draw(self, cases: Sequence[int], generator: torch.Generator) -> dict[str, Any]:
        """Patch starts for ``cases`` (one sample each), from ``generator``: two uniform draws per sample
        (foreground or not; which voxel of that kind). Returns ``{"starts": [tuple, ...], "on_foreground":
        [bool, ...], "nth": [int, ...]}`` (``nth``: the voxel's rank among those of its kind)."""
        u = torch.rand(len(cases), 2, generator=generator, dtype=torch.float64).tolist()
        starts, kinds, ranks = [], [], []
        for case, (u_kind, u_voxel) in zip(cases, u):
            fg, voxels = self.counts(case)
            on_foreground = u_kind < (self.foreground_prob if fg else 0.0)
            count = fg if on_foreground else voxels
            k = min(int(u_voxel * count), count - 1)
            starts.append(self.start(case, on_foreground, k))
            kinds.append(on_foreground)
            ranks.append(k)
        return {"starts": starts, "on_foreground": kinds, "nth": ranks}


def crop(volumes: Sequence[torch.Tensor], cases: Sequence[int], starts: Sequence[Sequence[int]],
         patch_size: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, C, *patch_size]``: sample ``b`` cut from ``volumes[cases[b]]`` (``[C, *spatial]``) at ``starts[b]``
    by slicing (host integers: no read from the device)."""
    patches = [volumes[c][(slice(None), *(slice(s, s + p) for s, p in zip(start, patch_size)))]
               for c, start in zip(cases, starts)]
    return torch.stack(patches) if out is None else torch.stack(patches, out=out)
