"""Exact Euclidean distance transforms in torch (CPU and CUDA, 1D/2D/3D, batched, anisotropic).

``distance_transform_edt(mask)`` gives every nonzero voxel its distance to the
nearest zero voxel, like ``scipy.ndimage.distance_transform_edt`` (equal to
float64 rounding). It runs on the tensor's device, so losses can build
distance maps from the target inside ``forward`` without a CPU round trip, and
the metrics can compute surface distances on the GPU.

Algorithm (exact, separable; Felzenszwalb & Huttenlocher 2012, "Distance
transforms of sampled functions"). The squared distance
``D(x) = min_z sum_a s_a^2 (x_a - z_a)^2`` over zero voxels ``z`` is a minimum
over one axis at a time:

1. along one axis (the longest), the 1D distance of each voxel to the nearest
   zero of its line, from two cumulative scans (index of the last zero at or
   before ``i``, of the first zero at or after ``i``); ``inf`` on lines without
   a zero. ``f = (s * d)^2``.
2. along every other axis, ``f(i) <- min_j f(j) + s^2 (i - j)^2``, the lower
   envelope of parabolas rooted at ``(j, f(j))``, by one of two exact kernels:

   * ``"envelope"`` — Felzenszwalb-Huttenlocher's O(n) construction, vectorised
     over all lines of the volume (a Python loop over the n positions of the
     axis, tensor operations over the lines, envelope lookup by
     ``searchsorted``). Cheapest on the CPU. Computed in float64.
   * ``"brute"`` — the minimum over all ``j`` of an ``[lines, n, n]`` tensor,
     chunked to ``max_chunk_elements`` (O(n) work per voxel, no Python loop over
     positions): memory-bounded and fast on GPUs for lines of up to ~1,000 voxels.

   ``"auto"`` picks ``"brute"`` on CUDA (lines <= 1024) and, on the CPU, ``"scipy"``:
   scipy's compiled exact transform, sample by sample on torch's intra-op threads
   (scipy releases the GIL; 2-4x faster than the vectorised envelope on a CPU; same
   values to float64 rounding, tested), with the
   ``inf`` rule below applied to samples without a zero voxel. ``"envelope"``
   elsewhere (other devices, or scipy missing).

Differences from scipy, on purpose:

* **A sample without any zero voxel gets ``inf`` everywhere** (there is no zero
  voxel to be at a distance from). scipy returns the distance to a phantom zero
  voxel at index ``(-1, 0, ..., 0)`` instead (``edt(np.ones((1, 4)))`` is
  ``[1, 1.41, 2.24, 3.16]``), a by-product of its implementation.
* A batch is transformed sample by sample: ``spatial_dims`` trailing axes are
  spatial, every leading axis is a batch axis (scipy transforms all axes).
  Without ``spatial_dims`` and with a scalar or no ``spacing``, all axes are
  spatial, as in scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["distance_transform_edt", "signed_distance", "unsigned_distance"]

_METHODS = ("auto", "envelope", "brute", "scipy")
_BRUTE_MAX_LINE = 1024


def distance_transform_edt(mask: torch.Tensor, spacing: float | Sequence[float] | None = None, *,
                           spatial_dims: int | None = None, dtype: torch.dtype = torch.float64,
                           method: str = "auto", max_chunk_elements: int = 2 ** 26) -> torch.Tensor:
    """Distance of every nonzero voxel to the nearest zero voxel (0 on zero voxels).

    Args:
        mask: ``[*batch, *spatial]`` tensor on any device; nonzero = foreground.
        spacing: voxel size per spatial axis (a sequence) or for all axes (a
            number); ``None`` is 1 (distances in voxels).
        spatial_dims: number of trailing spatial axes; default
            ``len(spacing)`` for a sequence, otherwise ``mask.dim()``.
        dtype: ``torch.float64`` (scipy's) or ``torch.float32``.
        method: ``"auto"``, ``"envelope"`` or ``"brute"`` (module docstring).
        max_chunk_elements: memory bound of one chunk of work, in tensor
            elements (``brute`` materialises ``lines x n x n`` per chunk; the
            envelope works on ``lines x n``). 2**26 is 512 MiB in float64.

    Returns:
        ``mask.shape`` tensor of distances in ``dtype`` on ``mask.device``;
        ``inf`` everywhere in a sample that has no zero voxel.
    """
    squared = _squared_edt(mask, spacing, spatial_dims, dtype, method, max_chunk_elements)
    return squared.sqrt_()


def signed_distance(mask: torch.Tensor, spacing: float | Sequence[float] | None = None, *,
                    spatial_dims: int | None = None, dtype: torch.dtype = torch.float32,
                    method: str = "auto") -> torch.Tensor:
    """Signed distance to the boundary of ``mask``: negative inside, positive outside.

    Kervadec et al.'s convention (LIVIA-ETS boundary-loss ``one_hot2dist``)::

        phi = edt(~G) * ~G - (edt(G) - 1) * G

    Outside ``G`` phi is the distance to the nearest voxel of ``G`` (>= 1 spacing);
    inside, ``-(distance to the nearest voxel outside G - 1)``, so the innermost
    layer of ``G`` (voxels with a neighbour outside, along an axis of unit
    spacing) is 0 and deeper voxels are negative. With a spacing the ``- 1`` is
    one unit of length, not one voxel, exactly as in the reference: along an
    axis of spacing 0.5 the innermost layer is ``+0.5``.
    Samples without a boundary (``G`` empty or full) are all 0 (LIVIA leaves an
    empty class at 0; a full class has no boundary either, and MONAI's
    BoundaryLoss also gives it 0).
    """
    return _two_sided(mask, spacing, spatial_dims, dtype, method,
                      lambda fg, outside, inside: torch.where(fg, 1.0 - inside, outside))


def unsigned_distance(mask: torch.Tensor, spacing: float | Sequence[float] | None = None, *,
                      spatial_dims: int | None = None, dtype: torch.dtype = torch.float32,
                      method: str = "auto") -> torch.Tensor:
    """``edt(G) + edt(~G)``: distance of each voxel to the other side of the boundary of ``G``.

    The map of Karimi & Salcudean's HD-DT loss as MONAI / SegLoss compute it
    (>= 1 spacing everywhere). Samples without a boundary (``G`` empty or full)
    are all 0, as in MONAI's ``HausdorffDTLoss``.
    """
    return _two_sided(mask, spacing, spatial_dims, dtype, method, lambda fg, outside, inside: outside + inside)


def _two_sided(mask, spacing, spatial_dims, dtype, method, combine) -> torch.Tensor:
    """``combine(G, edt(~G), edt(G))`` on the samples that have a boundary; 0 on the others."""
    fg = _as_bool(mask)
    nd = _resolve_spatial_dims(fg, spacing, spatial_dims)
    out = torch.zeros(fg.shape, dtype=dtype, device=fg.device)
    sel, fg_sel = _with_boundary(fg, nd)
    if fg_sel.numel() == 0:
        return out
    both = _squared_edt(torch.stack([~fg_sel, fg_sel]), spacing, nd, dtype, method).sqrt_()
    out.view(-1, *fg.shape[fg.dim() - nd:])[sel] = combine(fg_sel, both[0], both[1])
    return out


# ---------------------------------------------------------------------------------------------
# implementation


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    return mask if mask.dtype == torch.bool else mask != 0


def _resolve_spatial_dims(mask: torch.Tensor, spacing, spatial_dims: int | None) -> int:
    if spatial_dims is None:
        if isinstance(spacing, Sequence) and len(spacing) > mask.dim():
            raise ValueError(f"spacing has {len(spacing)} entries but the mask has only {mask.dim()} dims")
        spatial_dims = len(spacing) if isinstance(spacing, Sequence) else mask.dim()
    if not 1 <= spatial_dims <= mask.dim():
        raise ValueError(f"spatial_dims must be in [1, mask.dim()={mask.dim()}], got {spatial_dims}")
    return spatial_dims


def _resolve_spacing(spacing, nd: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * nd
    if isinstance(spacing, Sequence):
        values = tuple(float(s) for s in spacing)
        if len(values) != nd:
            raise ValueError(f"spacing has {len(values)} entries but there are {nd} spatial dims")
    else:
        values = (float(spacing),) * nd
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return values


def _with_boundary(fg: torch.Tensor, nd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into the flattened batch) of the samples with both values, and those samples."""
    flat = fg.reshape(-1, *fg.shape[fg.dim() - nd:])
    dims = tuple(range(1, nd + 1))
    sel = (flat.any(dim=dims) & ~flat.all(dim=dims)).nonzero().squeeze(1)
    return sel, flat[sel]


def _squared_edt(mask: torch.Tensor, spacing, spatial_dims: int | None, dtype: torch.dtype,
                 method: str, max_chunk_elements: int = 2 ** 26) -> torch.Tensor:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if max_chunk_elements < 1:
        raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
    fg = _as_bool(mask)
    nd = _resolve_spatial_dims(fg, spacing, spatial_dims)
    steps = _resolve_spacing(spacing, nd)
    if fg.numel() == 0:
        return torch.zeros(fg.shape, dtype=dtype, device=fg.device)
    shape = fg.shape
    spatial = shape[len(shape) - nd:]
    x = fg.reshape(-1, *spatial)  # [batch, *spatial]
    device = _dispatch_device(x)
    if method == "scipy" or (method == "auto" and device == "cpu" and _has_scipy()):
        return _scipy_squared(x, steps, dtype).reshape(shape)
    axes = sorted(range(nd), key=lambda a: -spatial[a])  # scan along the longest axis
    first = axes[0]
    x = _along_axis(x, first + 1, max_chunk_elements,
                    lambda lines: _scan_1d(lines, steps[first], dtype))
    for a in axes[1:]:
        n = spatial[a]
        kind = method
        if kind == "auto":
            kind = "brute" if (device == "cuda" and n <= _BRUTE_MAX_LINE) else "envelope"
        if kind == "brute":
            budget = max(1, max_chunk_elements // n)  # lines x n x n elements per chunk
            # on the CPU all-zero lines are skipped (less work); on an accelerator finding them would
            # read a mask back to the host, a wait for the GPU, so every line goes through the kernel
            x = _along_axis(x, a + 1, budget, lambda lines, s=steps[a]: _brute_1d(lines, s * s), device == "cpu")
        else:  # ~10 float64/int64 arrays of lines x n: keep a chunk near max_chunk_elements * 8 bytes
            x = _along_axis(x, a + 1, max(n, max_chunk_elements // 8),
                            lambda lines, s=steps[a]: _envelope_1d(lines, s * s).to(dtype), True)
    return x.reshape(shape)


def _dispatch_device(x: torch.Tensor) -> str:
    """The device type the kernel choice follows (a seam: the tests take the CUDA path on a CPU)."""
    return x.device.type


def _has_scipy() -> bool:
    try:
        import scipy.ndimage  # noqa: F401 - imported to see whether SciPy is installed
    except ImportError:
        return False
    return True


def _scipy_squared(x: torch.Tensor, steps: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    """Squared EDT of ``[batch, *spatial]`` booleans with scipy, sample by sample (CPU tensors only)."""
    import numpy as np
    from scipy import ndimage

    if x.device.type != "cpu":
        raise ValueError("method='scipy' needs a CPU tensor")
    fg = x.numpy()
    out = np.empty(fg.shape, dtype=np.float64)

    def one(i: int) -> None:
        if fg[i].all():  # no zero voxel: nothing to be at a distance from (see module docstring)
            out[i] = np.inf
        else:
            np.square(ndimage.distance_transform_edt(fg[i], sampling=steps), out=out[i])

    # scipy's EDT releases the GIL: samples run on torch's intra-op thread count (1 in loader workers)
    workers = min(torch.get_num_threads(), len(fg))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(fg))))
    else:
        for i in range(len(fg)):
            one(i)
    return torch.from_numpy(out).to(dtype)


def _along_axis(x: torch.Tensor, axis: int, chunk_elements: int, fn, skip_zero_lines: bool = False) -> torch.Tensor:
    """Apply ``fn`` to every 1D line of ``x`` along ``axis`` (``[lines, n] -> [lines, n]``), chunked.

    ``skip_zero_lines``: lines that are all 0 stay 0 (a line of zero voxels is at
    distance 0 whatever the other axes say) and are not passed to ``fn``; for a
    small object most lines of ``edt(object)`` are such lines.
    """
    moved = x.movedim(axis, -1)
    n = moved.shape[-1]
    lines = moved.reshape(-1, n)
    if skip_zero_lines:
        busy = lines.ne(0).any(1)
        if not bool(busy.all()):
            out = torch.zeros_like(lines)
            rows = busy.nonzero().squeeze(1)
            if rows.numel() > 0:
                out[rows] = _along_axis(lines[rows], 1, chunk_elements, fn)
            return out.reshape(moved.shape).movedim(-1, axis)
    step = max(1, chunk_elements // n)
    if lines.shape[0] <= step:
        out = fn(lines)
    else:
        out = None
        for start in range(0, lines.shape[0], step):
            part = fn(lines[start:start + step])
            if out is None:
                out = torch.empty((lines.shape[0], n), dtype=part.dtype, device=part.device)
            out[start:start + step] = part
    return out.reshape(moved.shape).movedim(-1, axis)


def _scan_1d(fg: torch.Tensor, step: float, dtype: torch.dtype) -> torch.Tensor:
    """Squared distance along the line to the nearest zero (``inf`` if none), ``[lines, n]``."""
    n = fg.shape[-1]
    pos = torch.arange(n, device=fg.device, dtype=dtype).expand_as(fg)
    inf = torch.full((), math.inf, device=fg.device, dtype=dtype)  # a fill, not a (blocking) host-to-device copy
    last_zero = torch.where(fg, -inf, pos).cummax(-1).values            # at or before i
    next_zero = torch.where(fg, inf, pos).flip(-1).cummin(-1).values.flip(-1)  # at or after i
    dist = torch.minimum(pos - last_zero, next_zero - pos)
    return (dist * step).square_()


def _brute_1d(f: torch.Tensor, weight: float) -> torch.Tensor:
    """``min_j f[:, j] + weight (i - j)^2`` by materialising all ``(i, j)`` pairs."""
    n = f.shape[-1]
    pos = torch.arange(n, device=f.device, dtype=f.dtype)
    offsets = (pos[:, None] - pos[None, :]).square_().mul_(weight)  # [i, j]
    return (f[:, None, :] + offsets).amin(-1)


def _envelope_1d(f: torch.Tensor, weight: float, pop_depth: int = 8) -> torch.Tensor:
    """Felzenszwalb-Huttenlocher lower envelope of ``f[:, j] + weight (x - j)^2``, all lines at once.

    Per line, a stack of the parabolas of the envelope: ``vertex[k]`` the root
    of the k-th, ``start[k]`` the abscissa from which it is the lowest; ``k``
    the top (-1: empty, every ``f`` so far was ``inf``). The top's root, lifted
    value ``f(root) + w root^2`` and start are also kept as dense per-line
    vectors, so a step without pops costs a few elementwise ops and two
    scatters; the stacks are read back only for the lines that pop, up to
    ``pop_depth`` levels per round. Stacks are stored slot-major
    (``[slot, line]`` flattened, plus one scratch element where the lines that
    skip a step write).
    """
    f = f.to(torch.float64)
    lines, n = f.shape
    dev = f.device
    pos = torch.arange(n, device=dev, dtype=torch.float64)
    lifted = (f + weight * pos.square()).t().contiguous()  # [n, lines]: f(j) + w j^2
    finite = torch.isfinite(lifted)
    every_line = finite.all(dim=1).tolist()
    lifted_flat = lifted.view(-1)
    scratch = n * lines
    vertex = torch.zeros(scratch + 1, dtype=torch.long, device=dev)
    start = torch.full((scratch + 1,), math.inf, dtype=torch.float64, device=dev)
    k = torch.full((lines,), -1, dtype=torch.long, device=dev)
    top_root = torch.zeros(lines, dtype=torch.long, device=dev)
    top_lifted = torch.zeros(lines, dtype=torch.float64, device=dev)
    top_start = torch.full((lines,), -math.inf, dtype=torch.float64, device=dev)
    rows = torch.arange(lines, device=dev)
    depth = torch.arange(1, pop_depth + 1, device=dev)
    two_w = 2.0 * weight
    for q in range(n):
        active = finite[q]
        lifted_q = lifted[q]
        # where the new parabola (root q) overtakes the top one; q - root >= 1 whenever k >= 0
        cross = (lifted_q - top_lifted) / (two_w * (q - top_root).clamp_min(1))
        pop = (k > 0) & (cross <= top_start)
        if not every_line[q]:
            pop &= active
        idx = pop.nonzero().squeeze(1)
        while idx.numel() > 0:
            # the top is popped; look at the next pop_depth levels below it at once
            levels = k[idx, None] - depth  # [m, depth]
            valid = levels >= 0
            slot = levels.clamp_min(0) * lines + idx[:, None]
            root = vertex[slot]
            lifted_root = lifted_flat[root * lines + idx[:, None]]
            start_lv = start[slot]
            cross_lv = (lifted_q[idx, None] - lifted_root) / (two_w * (q - root).clamp_min(1))
            # level j is popped too while it is above the bottom and the new parabola hides it
            hidden = valid & (levels > 0) & (cross_lv <= start_lv)
            popped = hidden.long().cumprod(1).sum(1)  # further levels popped after the top
            keep = popped.clamp_max(pop_depth - 1)[:, None]  # the level that becomes the top
            k[idx] = levels.gather(1, keep).squeeze(1)
            top_root[idx] = root.gather(1, keep).squeeze(1)
            top_lifted[idx] = lifted_root.gather(1, keep).squeeze(1)
            top_start[idx] = start_lv.gather(1, keep).squeeze(1)
            cross[idx] = cross_lv.gather(1, keep).squeeze(1)
            idx = idx[popped == pop_depth]  # every level looked at was hidden: go deeper
        new_start = torch.where(k >= 0, cross, -math.inf)
        if every_line[q]:
            k += 1
            slot = k * lines + rows
            top_root.fill_(q)
            top_lifted.copy_(lifted_q)
            top_start = new_start
        else:
            k = torch.where(active, k + 1, k)
            slot = torch.where(active, k * lines + rows, scratch)
            top_root.masked_fill_(active, q)
            top_lifted = torch.where(active, lifted_q, top_lifted)
            top_start = torch.where(active, new_start, top_start)
        vertex.scatter_(0, slot, q)
        start.scatter_(0, slot, new_start)
    # boundaries above the top are stale (popped); the lookup must not see them
    start = start[:scratch].view(n, lines)
    start = torch.where(torch.arange(n, device=dev)[:, None] > k, math.inf, start).t().contiguous()
    idx = torch.searchsorted(start, pos.expand(lines, n).contiguous(), right=True) - 1
    root = vertex[:scratch].view(n, lines).t().gather(1, idx.clamp(0, n - 1))
    out = f.gather(1, root).add_((pos - root).square_().mul_(weight))
    return torch.where(k[:, None] >= 0, out, math.inf)
