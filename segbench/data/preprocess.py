"""Intensity normalisation and voxel-spacing resampling shared by every dataset.

The data module's one preprocessing path is: load a case -> (optional) resample to
``data.target_spacing`` -> intensities to [0, 1] (HU window for CT, already done for
``Volume.normalized`` images) -> axial slices at the model size. These helpers are the
steps that are not windowing or slice resizing (those live in :mod:`.datamodule`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .volume import Volume


def normalize_percentile(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the case's ``[low, high]`` intensity percentiles and scale to [0, 1].

    Used for images without a physical intensity scale (MR, non-CT nnU-Net channels), where a
    fixed HU window means nothing. A constant image maps to 0.
    """
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def check_target_spacing(target_spacing: Sequence[float | None] | None) -> tuple[float | None, ...] | None:
    """``[sz, sy, sx]`` in mm (array-axis order), ``null`` entries keep that axis; ``None`` = no resampling."""
    if target_spacing is None:
        return None
    values = list(target_spacing)
    if len(values) != 3:
        raise ConfigError(f"data.target_spacing must be [sz, sy, sx] in mm (null keeps an axis), got {values}")
    out = []
    for v in values:
        if v is not None and not float(v) > 0:
            raise ConfigError(f"data.target_spacing entries must be > 0 or null, got {values}")
        out.append(None if v is None else float(v))
    return None if all(v is None for v in out) else tuple(out)


def check_target_shape(target_shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    """``[Z, Y, X]`` voxels every case is resized to (``None``: keep each case's size)."""
    if target_shape is None:
        return None
    values = list(target_shape)
    if len(values) != 3 or any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in values):
        raise ConfigError(f"data.target_shape must be [Z, Y, X] positive voxel counts or null, got {values}")
    return tuple(int(v) for v in values)


def resize_volume(vol: Volume, target_shape: Sequence[int] | None) -> Volume:
    """Resize ``vol`` to ``target_shape`` ``(Z, Y, X)`` (image cubic, label nearest): the resampling of
    :func:`resample_volume` to the spacing ``s * n / m`` per axis, which gives exactly ``m`` voxels and
    keeps the physical extent (the spacing and the affine follow)."""
    shape = check_target_shape(target_shape)
    if shape is None or tuple(vol.image.shape) == shape:
        return vol
    spacing = [s * n / m for s, n, m in zip(vol.spacing, vol.image.shape, shape)]
    out = _resample(vol, spacing)  # a shape in voxels: also for a stand-in spacing (Volume.spacing_known False)
    assert tuple(out.image.shape) == shape, (out.image.shape, shape)
    return out


def resample_volume(vol: Volume, target_spacing: Sequence[float | None] | None) -> Volume:
    """Resample ``vol`` to ``target_spacing`` (image cubic, label nearest; pixel-area aligned grids).

    The new size along an axis is ``round(n * spacing / target)``; the spacing actually reached is
    ``spacing * n / new_n`` (exact up to that rounding), and the affine is updated so the resampled
    volume covers the same physical extent (predictions written with it overlay the input).
    A case whose spacing is unknown (``vol.spacing_known`` False: TransUNet's npz/h5 files) has no mm
    to resample to and is returned as it is.
    """
    target = check_target_spacing(target_spacing)
    if target is None or not vol.spacing_known:
        return vol
    return _resample(vol, target)


def _resample(vol: Volume, target: Sequence[float | None]) -> Volume:
    """:func:`resample_volume` without its checks (``target`` checked, the spacing taken as it is)."""
    from scipy.ndimage import zoom

    shape = vol.image.shape
    new_shape = [n if t is None else max(1, int(round(n * s / t))) for n, s, t in zip(shape, vol.spacing, target)]
    if list(shape) == new_shape:
        return vol
    factors = [m / n for m, n in zip(new_shape, shape)]
    image = zoom(vol.image.astype(np.float32), factors, order=3, mode="nearest", grid_mode=True)
    if vol.normalized:
        image = np.clip(image, 0.0, 1.0)
    label = None if vol.label is None else zoom(vol.label, factors, order=0, mode="nearest", grid_mode=True)
    affine = np.array(vol.affine, dtype=float, copy=True)
    for axis, (n, m) in enumerate(zip(shape, new_shape)):
        col = 2 - axis  # array axis (Z, Y, X) -> affine column (x, y, z)
        step = n / m
        affine[:3, 3] += affine[:3, col] * (0.5 * step - 0.5)
        affine[:3, col] *= step
    spacing = tuple(float(s * n / m) for s, n, m in zip(vol.spacing, shape, new_shape))
    return Volume(vol.case_id, np.ascontiguousarray(image, dtype=np.float32),
                  None if label is None else np.ascontiguousarray(label, dtype=np.uint8),
                  spacing, affine, vol.normalized, vol.spacing_known)
