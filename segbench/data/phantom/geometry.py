"""Geometry helpers: a box of the scan grid, smooth random fields, tubes along splines, ellipsoids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_interp_spline


@dataclass
class Grid:
    """Body-frame coordinates (mm) of the voxel centres along each array axis."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    def box(self, low_xyz: Sequence[float], high_xyz: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Array slices (Z, Y, X) of the voxels inside an (x, y, z) box in mm, or None if it misses the grid."""
        slices = tuple(_index_range(axis, low_xyz[k], high_xyz[k])
                       for axis, k in ((self.z, 2), (self.y, 1), (self.x, 0)))
        return None if any(s.stop <= s.start for s in slices) else slices

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays of a box."""
        return (self.z[box[0]][:, None, None].astype(np.float32), self.y[box[1]][None, :, None].astype(np.float32),
                self.x[box[2]][None, None, :].astype(np.float32))


def _index_range(coordinates: np.ndarray, low: float, high: float) -> slice:
    """Indices of the sorted ``coordinates`` within [low, high] (possibly empty)."""
    return slice(int(np.searchsorted(coordinates, low)), int(np.searchsorted(coordinates, high, side="right")))


def smooth_noise(rng: np.random.Generator, low_xyz, high_xyz, correlation_mm: float, grid: Grid,
                 box: tuple[slice, slice, slice] | None) -> np.ndarray | None:
    """A smooth random field with unit standard deviation over ``box``.

    A lattice of Gaussian bumps (spacing = correlation length) with random weights, evaluated
    separably (three small matrix products). The lattice covers the mm box ``low..high``, so the
    random draws do not depend on the image resolution: the same case at 96 or 448 pixels is the
    same patient.
    """
    bases, counts = [], []
    for axis, lo, hi in ((0, low_xyz[2], high_xyz[2]), (1, low_xyz[1], high_xyz[1]), (2, low_xyz[0], high_xyz[0])):
        centres = np.arange(lo - correlation_mm, hi + correlation_mm + 1e-6, correlation_mm)
        counts.append(len(centres))
        if box is not None:
            coords = (grid.z, grid.y, grid.x)[axis][box[axis]]
            bases.append(np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / (0.6 * correlation_mm)) ** 2)
                         .astype(np.float32))
    weights = rng.standard_normal(counts).astype(np.float32)
    if box is None:
        return None
    basis_z, basis_y, basis_x = bases
    field = np.tensordot(basis_z, np.matmul(basis_y, weights @ basis_x.T), axes=(1, 0))
    # per axis, sum_k bump_k(x)**2 ~ sqrt(pi) * 0.6 for bumps of sd 0.6 x spacing: normalise to unit sd
    return field / np.float32((np.sqrt(np.pi) * 0.6) ** 1.5)


def centre_line(points: np.ndarray, radii: np.ndarray, step_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Sample a smooth curve through ``points`` (n, 3) with steps of ~step_fraction x the local radius."""
    distinct = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 0.5])
    points, radii = points[distinct], radii[distinct]  # a random walk clipped to its box can repeat a point
    if len(points) == 1:
        return points, radii
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    spline = make_interp_spline(chord, points, k=min(3, len(points) - 1))
    dense_t = np.linspace(0.0, chord[-1], max(2, int(chord[-1] / 0.5)))
    dense = spline(dense_t)
    dense_r = np.interp(dense_t, chord, radii)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    keep, next_arc = [], 0.0
    for i, (a, r) in enumerate(zip(arc, dense_r)):
        if a >= next_arc:
            keep.append(i)
            next_arc = a + max(0.5, step_fraction * r)
    keep.append(len(dense) - 1)
    keep = np.unique(keep)
    return dense[keep], dense_r[keep]


def tube_distance(grid: Grid, box: tuple[slice, slice, slice], centres: np.ndarray, radii: np.ndarray,
                  reach_mm: float) -> np.ndarray:
    """Signed distance (mm, negative inside) to a union of spheres swept along a centre line.

    Each sphere only updates the voxels within ``reach_mm`` of its surface; elsewhere the value
    stays at ``reach_mm`` (far enough for every threshold used on it).
    """
    z, y, x = grid.z[box[0]], grid.y[box[1]], grid.x[box[2]]
    distance = np.full((len(z), len(y), len(x)), reach_mm, dtype=np.float32)
    for (cx, cy, cz), r in zip(centres, radii):
        extent = r + reach_mm
        zs, ys, xs = (_index_range(axis, c - extent, c + extent) for axis, c in ((z, cz), (y, cy), (x, cx)))
        if zs.stop <= zs.start or ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        squared = ((z[zs] - cz) ** 2).astype(np.float32)[:, None, None] \
            + ((y[ys] - cy) ** 2).astype(np.float32)[None, :, None] \
            + ((x[xs] - cx) ** 2).astype(np.float32)[None, None, :]
        view = distance[zs, ys, xs]
        np.minimum(view, np.sqrt(squared) - np.float32(r), out=view)
    return distance


def tube_box(centres: np.ndarray, radii: np.ndarray, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) mm bounds of a tube plus a margin."""
    return (centres - radii[:, None]).min(axis=0) - margin_mm, (centres + radii[:, None]).max(axis=0) + margin_mm


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def local_coordinates(coords, centre_xyz, axes: Sequence[np.ndarray], half_axes: Sequence[float]) -> list:
    """Coordinates of the grid points along orthonormal (x, y, z) ``axes`` through ``centre``, in half-axes."""
    z, y, x = coords
    offsets = (x - np.float32(centre_xyz[0]), y - np.float32(centre_xyz[1]), z - np.float32(centre_xyz[2]))
    return [(offsets[0] * np.float32(a[0]) + offsets[1] * np.float32(a[1]) + offsets[2] * np.float32(a[2]))
            / np.float32(h) for a, h in zip(axes, half_axes)]


def ellipsoid_distance(coords, centre_xyz, axes: Sequence[np.ndarray], half_axes: Sequence[float],
                       bend: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface); ``bend`` curves it into a crescent.

    With bend b the first local coordinate is shifted by b * (u1**2 + u2**2): for b > 0 the tips
    curl towards -axes[0] (the surface on the +axes[0] side is convex, the other one concave).
    """
    local = local_coordinates(coords, centre_xyz, axes, half_axes)
    if bend:
        local[0] = local[0] + np.float32(bend) * (local[1] ** 2 + local[2] ** 2)
    return np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
