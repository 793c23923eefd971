"""Torch backend: the same computation as :mod:`._numpy_backend`, on the tensors' device.

Used automatically for CUDA tensors (no host round trip of the volumes), and on CPU
when forced with ``backend="torch"`` (that is how the tests check it against scipy).

Distance transform, first available of:

1. ``cupyx.scipy.ndimage.distance_transform_edt`` (exact PBA+) for CUDA tensors when
   CuPy is importable;
2. ``segbench.ops.edt.distance_transform_edt`` (exact, pure torch) when present;
3. exact brute force: the minimum over the other surface's voxel coordinates
   (``torch.cdist`` without the matrix-multiplication shortcut, in chunks). Cost
   grows with the product of the two surface sizes: fine for tests and small organs.

Everything stays on the device until one transfer of the per-label results at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segbench.metrics._stats import LabelStats, summarise_torch

EDT_IMPLS = ("auto", "cupy", "ops", "bruteforce")
_BRUTEFORCE_CHUNK = 1 << 22  # pairwise distances per chunk (32 MiB in float64)


def as_label_tensor(x: Any, name: str) -> torch.Tensor:
    """Torch integer (or bool) label map; floats must hold integers; numpy goes to the CPU."""
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
            arr = arr.astype(np.int64)  # torch's unsigned types beyond uint8 lack most ops
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        return x.to(torch.int64)  # few kernels exist for these
    if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
        return x
    if x.is_complex():
        raise ValueError(f"{name}: expected an integer label map, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()) or not bool((x == torch.round(x)).all()):
        raise ValueError(f"{name}: float label map holds non-integer values; pass integer labels")
    return x.to(torch.int64)


def surface(mask: torch.Tensor) -> torch.Tensor:
    """``mask XOR erosion(mask)`` (cross structuring element, outside = background)."""
    eroded = mask.clone()
    nd = mask.ndim
    for ax in range(nd):
        n = mask.shape[ax]
        eroded.narrow(ax, 1, n - 1).logical_and_(mask.narrow(ax, 0, n - 1))
        eroded.narrow(ax, 0, n - 1).logical_and_(mask.narrow(ax, 1, n - 1))
        eroded.narrow(ax, 0, 1).fill_(False)
        eroded.narrow(ax, n - 1, 1).fill_(False)
    return mask & ~eroded


def _resolve_edt(device: torch.device, impl: str):
    if impl not in EDT_IMPLS:
        raise ValueError(f"edt: unknown implementation {impl!r}; valid: {', '.join(EDT_IMPLS)}")
    if impl in ("auto", "cupy") and device.type == "cuda":
        try:
            import cupy  # noqa: F401 - imported to see whether CuPy is installed
            from cupyx.scipy import ndimage as cupy_ndimage  # noqa: F401 - the same, for its ndimage

            return "cupy"
        except ImportError:
            if impl == "cupy":
                raise ValueError("edt: 'cupy' requested but CuPy is not importable") from None
    if impl in ("auto", "ops"):
        try:
            from segbench.ops.edt import distance_transform_edt  # noqa: F401 - imported to see whether it loads

            return "ops"
        except ImportError:
            if impl == "ops":
                raise ValueError("edt: 'ops' requested but segbench.ops.edt is not available") from None
    return "bruteforce"


def _edt_distances(query: torch.Tensor, target: torch.Tensor, sampling: tuple[float, ...], impl: str) -> torch.Tensor:
    """Distance (float64) from each voxel of ``query`` to the nearest voxel of ``target``."""
    if impl == "cupy":
        import cupy
        from cupyx.scipy import ndimage as cupy_ndimage

        background = cupy.asarray(~target)
        dt = cupy_ndimage.distance_transform_edt(background, sampling=sampling, float64_distances=True)
        return torch.as_tensor(dt, device=query.device)[query]
    if impl == "ops":
        from segbench.ops.edt import distance_transform_edt

        dt = distance_transform_edt(~target, spacing=sampling)
        return dt[query].to(torch.float64)
    return _bruteforce_distances(query, target, sampling)


def _bruteforce_distances(query: torch.Tensor, target: torch.Tensor, sampling: tuple[float, ...]) -> torch.Tensor:
    scale = torch.tensor(sampling, dtype=torch.float64, device=query.device)
    q = torch.nonzero(query).to(torch.float64) * scale
    t = torch.nonzero(target).to(torch.float64) * scale
    step = max(1, _BRUTEFORCE_CHUNK // max(1, t.shape[0]))
    out = [
        torch.cdist(q[i : i + step], t, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
        for i in range(0, q.shape[0], step)
    ]
    return torch.cat(out)


def label_extents(pred: torch.Tensor, gt: torch.Tensor, labels: list[int]):
    """Per label: (pred non-empty, gt non-empty, union bounding box or None), with one host sync.

    One reduction per axis and map gives the rows/columns/slices a label occupies;
    all of them travel to the host together.
    """
    nd = pred.ndim
    vectors = []
    for lab in labels:
        for arr in (pred, gt):
            m = arr == lab
            for ax in range(nd):
                others = tuple(k for k in range(nd) if k != ax)
                vectors.append(m.any(dim=others))
    flat = torch.cat(vectors).cpu().numpy() if vectors else np.zeros(0, bool)
    out, i = {}, 0
    for lab in labels:
        per_map = []
        for _ in range(2):
            axes = []
            for ax in range(nd):
                axes.append(flat[i : i + pred.shape[ax]])
                i += pred.shape[ax]
            per_map.append(axes)
        nonempty = [bool(axes[0].any()) for axes in per_map]
        if not any(nonempty):
            out[lab] = (False, False, None)
            continue
        box = []
        for ax in range(nd):
            idx = np.flatnonzero(per_map[0][ax] | per_map[1][ax])
            box.append(slice(int(idx[0]), int(idx[-1]) + 1))
        out[lab] = (nonempty[0], nonempty[1], tuple(box))
    return out


def evaluate_labels(
    pred: torch.Tensor,
    gt: torch.Tensor,
    labels: list[int],
    sampling: np.ndarray,
    pooled_percentile: bool,
    tolerance: float | None,
    edt: str = "auto",
) -> dict[int, LabelStats]:
    """Raw per-label statistics, as :func:`segbench.metrics._numpy_backend.evaluate_labels`."""
    multi = evaluate_labels_multi(pred, gt, labels, sampling, [(pooled_percentile, tolerance)], edt)
    return {lab: stats[0] for lab, stats in multi.items()}


def evaluate_labels_multi(
    pred: torch.Tensor,
    gt: torch.Tensor,
    labels: list[int],
    sampling: np.ndarray,
    summaries: Sequence[tuple[bool, float | None]],
    edt: str = "auto",
) -> dict[int, list[LabelStats]]:
    """Several summaries of the same distances, as :func:`segbench.metrics._numpy_backend.evaluate_labels_multi`."""
    impl = _resolve_edt(pred.device, edt)
    samp = tuple(float(s) for s in sampling)
    k = len(summaries)
    rows: list[torch.Tensor] = []
    nan4 = torch.full((4 * k,), math.nan, dtype=torch.float64, device=pred.device)
    zero3 = torch.zeros(3, dtype=torch.float64, device=pred.device)
    extents = label_extents(pred, gt, labels)
    for lab in labels:
        p_any, g_any, box = extents[lab]
        if box is None:
            rows.append(torch.cat([zero3, nan4]))
            continue
        p = pred[box] == lab
        g = gt[box] == lab
        counts = torch.stack([p.sum(), g.sum(), (p & g).sum()]).to(torch.float64)
        if not (p_any and g_any):
            rows.append(torch.cat([counts, nan4]))
            continue
        sp, sg = surface(p), surface(g)
        d_pg = _edt_distances(sp, sg, samp, impl)
        d_gp = _edt_distances(sg, sp, samp, impl)
        rows.append(torch.cat([counts, *[summarise_torch(d_pg, d_gp, pooled, tol) for pooled, tol in summaries]]))
    values = torch.stack(rows).cpu().tolist() if rows else []  # one transfer for all labels and summaries
    out = {}
    for lab, v in zip(labels, values):
        out[lab] = [LabelStats(int(v[0]), int(v[1]), int(v[2]), *v[3 + 4 * i: 7 + 4 * i]) for i in range(k)]
    return out
