"""Painting into the tissue map: the painter that claims free voxels for each structure (to an exact
volume, without stray islands)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .tissues import Tissue


class Painter:
    """Holds the tissue map and paints structures into voxels still free for them."""

    def __init__(self, grid: Grid, tissue: np.ndarray, voxel_volume_mm3: float, case_seed_value: int):
        self.grid, self.tissue, self.voxel_volume = grid, tissue, voxel_volume_mm3
        self.case_seed = case_seed_value
        # in-plane maps set by paint_body (the body outline is the same on every slice)
        self.cavity_2d: np.ndarray | None = None  # inside the body-wall muscle
        self.inside_fat_2d: np.ndarray | None = None  # inside the subcutaneous fat
        self.cavity_radius_2d: np.ndarray | None = None  # normalised superellipse radius, 1 on the cavity outline

    def rng(self, name: str) -> np.random.Generator:
        """An independent generator per structure: adding a structure never changes the others."""
        return np.random.default_rng([self.case_seed, zlib.crc32(name.encode())])

    def claim(self, box, distance: np.ndarray, volume_ml: float | None, allowed: Sequence[Tissue],
              threshold: float = 0.0) -> tuple[np.ndarray, float]:
        """Mask of the allowed voxels of ``box`` with distance <= threshold, or, with ``volume_ml``, of
        the allowed voxels with the smallest distance adding up to that volume (so the organ volume is
        exact whatever the deformation and whatever neighbours already took), without stray islands:
        a speck of a few voxels away from the organ would be label noise (and ruin the HD95 of a
        perfect model). Returns (mask, threshold)."""
        free = np.isin(self.tissue[box], np.asarray(allowed, dtype=np.uint8))
        if volume_ml is None:
            return free & (distance <= threshold), threshold
        values = distance[free]
        count = min(int(round(volume_ml * 1000.0 / self.voxel_volume)), values.size)
        if count < 1:
            return np.zeros_like(free), -np.inf
        threshold = float(np.partition(values, count - 1)[count - 1])
        return _without_islands(free & (distance <= threshold)), threshold

    def paint(self, box, mask: np.ndarray, tissue: Tissue) -> None:
        self.tissue[box][mask] = tissue


#: A piece of an organ smaller than this fraction of its largest piece is a stray island. Real
#: pieces are larger: a thin organ cut by a vessel, or by thick slices, falls into big pieces.
ISLAND_FRACTION = 0.05


def _without_islands(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its pieces (26-connected) smaller than ISLAND_FRACTION of the largest."""
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return (sizes >= ISLAND_FRACTION * sizes.max())[pieces]
