"""Reduction of two directed surface-distance arrays to HD, HD95, ASSD and NSD.

The percentile is numpy's default ("linear", type 7 of Hyndman & Fan): the value at
virtual index h = (n - 1) * q / 100, interpolated between its two neighbours. This is
what medpy (np.percentile), MetricsReloaded (np.percentile) and MONAI (torch.quantile,
default "linear") compute. The torch reduction below reproduces numpy's arithmetic
step by step (including its two-sided lerp) so both backends agree to the last bit
on the same distances.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

PERCENTILE = 95.0


class LabelStats(NamedTuple):
    """Counts of one label and, when both masks are non-empty, its distance summaries."""

    n_pred: int
    n_gt: int
    tp: int
    hd: float = math.nan
    hd95: float = math.nan
    assd: float = math.nan
    nsd: float = math.nan


def summarise_numpy(
    d_pg: np.ndarray, d_gp: np.ndarray, pooled_percentile: bool, tolerance: float | None
) -> tuple[float, float, float, float]:
    """(HD, HD95, ASSD, NSD) from the two directed distance arrays (both non-empty)."""
    both = np.concatenate([d_pg, d_gp])
    hd = float(max(d_pg.max(), d_gp.max()))
    if pooled_percentile:  # medpy: one percentile of both directions together
        hd95 = float(np.percentile(both, PERCENTILE))
    else:  # MONAI / MetricsReloaded: per direction, then the max
        hd95 = float(max(np.percentile(d_pg, PERCENTILE), np.percentile(d_gp, PERCENTILE)))
    assd = float(both.mean())  # pooled mean, as medpy.assd (np.concatenate(...).mean())
    nsd = math.nan if tolerance is None else float(np.count_nonzero(both <= tolerance) / both.size)
    return hd, hd95, assd, nsd


def percentile_linear_torch(x, q: float = PERCENTILE):
    """np.percentile(x, q) (method "linear") for a 1-D float64 torch tensor, on its device.

    torch.quantile gives the same values but refuses inputs above 2**24 elements, and
    torch.kthvalue (CPU) did not finish within 100 s on a reversed 2**24-element range
    (quickselect on sorted input); a full sort has neither problem.
    """
    import torch

    n = x.numel()
    h = (n - 1) * (q / 100.0)  # numpy: (n - 1) * true_divide(q, 100)
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    t = h - lo
    s = torch.sort(x).values
    a, b = s[lo], s[hi]
    diff = b - a
    # numpy._lerp: a + diff * t, replaced by b - diff * (1 - t) where t >= 0.5
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def summarise_torch(d_pg, d_gp, pooled_percentile: bool, tolerance: float | None):
    """Same as :func:`summarise_numpy` on torch tensors; returns a float64 tensor of 4 values."""
    import torch

    both = torch.cat([d_pg, d_gp])
    hd = both.max()
    if pooled_percentile:
        hd95 = percentile_linear_torch(both)
    else:
        hd95 = torch.maximum(percentile_linear_torch(d_pg), percentile_linear_torch(d_gp))
    assd = both.mean()
    if tolerance is None:
        nsd = torch.tensor(math.nan, dtype=both.dtype, device=both.device)
    else:
        nsd = (both <= tolerance).sum().to(both.dtype) / both.numel()
    return torch.stack([hd, hd95, assd, nsd])
