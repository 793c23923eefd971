"""Per-case evaluation: DSC, HD, HD95, ASSD, NSD per label under a named convention."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from segbench.metrics._stats import LabelStats
from segbench.metrics.conventions import METRIC_NAMES, Convention, case_status, get_convention

BACKENDS = ("auto", "numpy", "torch")


def evaluate_case(
    pred: Any,
    gt: Any,
    spacing: Sequence[float] | None,
    labels: Iterable[int],
    convention: str = "default",
    nsd_tolerance_mm: float = 2.0,
    *,
    backend: str = "auto",
    with_status: bool = False,
) -> dict[int, dict[str, float]]:
    """Score each label of one case.

    Args:
        pred: the predicted integer label map (a numpy array or torch tensor, 2D or 3D). Float maps are
            accepted when every value is integral; bool maps are label 1.
        gt: the ground-truth label map, of ``pred``'s shape (the same types accepted).
        spacing: voxel size per axis in ARRAY-AXIS order (e.g. (z, y, x) for a (D, H, W)
            array), len == ndim; None means 1 along every axis.
        labels: label ids to score (e.g. range(1, 9) for the 8 Synapse organs).
        convention: one of :data:`~segbench.metrics.CONVENTIONS` (see :func:`describe`).
        nsd_tolerance_mm: NSD tolerance tau: a surface voxel counts as matched when the
            other mask's surface is within tau mm (distance <= tau).
        backend: ``"auto"`` (torch on the GPU when pred or gt is a CUDA tensor, the other
            map is moved there; numpy/scipy otherwise), ``"numpy"`` or ``"torch"`` (also on CPU tensors; used
            by the tests to check the GPU code path against scipy).
        with_status: also return per label ``"status"`` (see :func:`case_status`) and the
            voxel counts ``"pred_voxels"`` and ``"gt_voxels"`` (ints; counted on the crops,
            so no extra pass over the volume).

    Returns:
        ``{label: {"dsc", "hd", "hd95", "assd", "nsd"}}`` as Python floats (NaN where the
        convention excludes the value), plus the ``with_status`` keys when asked.
    """
    return evaluate_case_conventions(pred, gt, spacing, labels, [convention], nsd_tolerance_mm, backend=backend,
                                     with_status=with_status)[get_convention(convention).name]


def evaluate_case_conventions(
    pred: Any,
    gt: Any,
    spacing: Sequence[float] | None,
    labels: Iterable[int],
    conventions: Sequence[str | Convention],
    nsd_tolerance_mm: float = 2.0,
    *,
    backend: str = "auto",
    with_status: bool = False,
) -> dict[str, dict[int, dict[str, float]]]:
    """:func:`evaluate_case` under several conventions at once: ``{convention name: {label: {...}}}``.

    The surface distances are computed once per distinct voxel grid the conventions measure on
    (mm: ``spacing``; voxels: 1 per axis), and each convention's percentile / NSD / empty-mask rule is
    applied to them: ``default`` and ``transunet`` share one computation where ``spacing`` is all ones
    (data without a known spacing) and need two otherwise. The numbers are those of
    :func:`evaluate_case` with each convention, bit for bit (same distances, same reductions).
    """
    convs = list(dict.fromkeys(get_convention(c) for c in conventions))
    if not convs:
        raise ValueError("conventions: expected at least one convention")
    labels = _check_labels(labels)
    backend = _check_backend(backend)
    pred_is_torch, gt_is_torch = _is_tensor(pred), _is_tensor(gt)
    shape = _check_shapes(pred, gt)
    spacing_arr = _check_spacing(spacing, len(shape))
    tol = _check_tolerance(nsd_tolerance_mm)

    on_cuda = [x.device for x, is_t in ((pred, pred_is_torch), (gt, gt_is_torch)) if is_t and x.device.type == "cuda"]
    use_torch = backend == "torch" or (backend == "auto" and bool(on_cuda))
    if use_torch:
        from segbench.metrics import _torch_backend as impl

        p, g = _torch_backend_inputs(pred, gt, on_cuda)
    else:
        from segbench.metrics import _numpy_backend as impl

        p, g = _as_label_array(pred, "pred"), _as_label_array(gt, "gt")

    # conventions measuring on the same grid share one distance computation
    grids: dict[tuple[float, ...], list[Convention]] = {}
    for conv in convs:
        sampling = spacing_arr if conv.use_spacing else np.ones(len(shape))
        grids.setdefault(tuple(float(v) for v in sampling), []).append(conv)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for grid, members in grids.items():
        sampling = np.asarray(grid, dtype=np.float64)
        summaries = [(conv.pooled_percentile, tol if conv.nsd else None) for conv in members]
        stats = impl.evaluate_labels_multi(p, g, labels, sampling, summaries)
        diagonal = float(np.sqrt(np.sum((np.asarray(shape) * sampling) ** 2)))
        for i, conv in enumerate(members):
            scores = {}
            for lab in labels:
                s = stats[lab][i]
                scores[lab] = _apply_convention(s, conv, diagonal)
                if with_status:
                    scores[lab].update(status=case_status(s.n_pred > 0, s.n_gt > 0), pred_voxels=s.n_pred,
                                       gt_voxels=s.n_gt)
            out[conv.name] = scores
    return {conv.name: out[conv.name] for conv in convs}


def _torch_backend_inputs(pred: Any, gt: Any, on_cuda: list) -> tuple[Any, Any]:
    from segbench.metrics import _torch_backend

    p, g = _torch_backend.as_label_tensor(pred, "pred"), _torch_backend.as_label_tensor(gt, "gt")
    if p.device != g.device:  # one map on the GPU (e.g. the model's output): bring the other there
        device = on_cuda[0] if on_cuda else p.device
        p, g = p.to(device), g.to(device)
    return p, g


def _apply_convention(s: LabelStats, conv: Convention, diagonal: float) -> dict[str, float]:
    nan = math.nan
    if s.n_pred > 0 and s.n_gt > 0:
        dsc = 2.0 * s.tp / (s.n_pred + s.n_gt)
        values = (dsc, s.hd, s.hd95, s.assd, s.nsd if conv.nsd else nan)
    elif conv.empty_rule == "transunet":
        # TransUNet utils.calculate_metric_percase, in its order:
        #   pred.sum() > 0 and gt.sum() > 0   -> medpy dc, hd95
        #   pred.sum() > 0 and gt.sum() == 0  -> (1, 0)
        #   else (pred empty, gt empty or not) -> (0, 0)
        dsc = 1.0 if s.n_pred > 0 else 0.0
        values = (dsc, 0.0, 0.0, 0.0, nan)
    elif s.n_pred == 0 and s.n_gt == 0:
        values = (nan, nan, nan, nan, nan)
    else:  # exactly one empty: worst case, never dropped
        values = (0.0, diagonal, diagonal, diagonal, 0.0 if conv.nsd else nan)
    return {k: float(v) for k, v in zip(METRIC_NAMES, values)}


# ---------------------------------------------------------------------------- validation


def _is_tensor(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(x, torch.Tensor)


def _shape_of(x: Any, name: str) -> tuple[int, ...]:
    if _is_tensor(x) or isinstance(x, np.ndarray):
        return tuple(x.shape)
    try:
        return np.asarray(x).shape
    except Exception:  # noqa: BLE001 - any failure means "not an array"
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from None


def _check_shapes(pred: Any, gt: Any) -> tuple[int, ...]:
    ps, gs = _shape_of(pred, "pred"), _shape_of(gt, "gt")
    if ps != gs:
        raise ValueError(f"gt: shape {gs} differs from pred shape {ps}")
    if len(ps) not in (2, 3):
        raise ValueError(f"pred: expected a 2D or 3D label map, got shape {ps}")
    return ps


def _check_spacing(spacing: Any, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    if _is_tensor(spacing):
        spacing = spacing.detach().cpu().numpy()
    try:
        arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected {ndim} positive numbers, got {spacing!r}") from None
    if arr.size != ndim:
        raise ValueError(f"spacing: expected {ndim} values (one per array axis), got {arr.size}: {spacing!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing: every value must be finite and > 0, got {spacing!r}")
    return arr


def _check_tolerance(tol: Any) -> float:
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"nsd_tolerance_mm: expected a number >= 0, got {tol!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"nsd_tolerance_mm: expected a number >= 0, got {tol!r}")
    return t


def _check_labels(labels: Any) -> list[int]:
    if isinstance(labels, (int, np.integer)):
        labels = [labels]
    try:
        raw = list(labels)
    except TypeError:
        raise ValueError(f"labels: expected an iterable of integer label ids, got {labels!r}") from None
    out = []
    for lab in raw:
        if isinstance(lab, (bool, np.bool_, str, bytes)) or not _is_integral(lab):
            raise ValueError(f"labels: expected integer label ids, got {lab!r}")
        out.append(int(lab))
    if len(set(out)) != len(out):
        raise ValueError(f"labels: duplicate label ids in {raw!r}")
    return out


def _is_integral(x: Any) -> bool:
    try:
        return float(x).is_integer()
    except (TypeError, ValueError, OverflowError):
        return False


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return backend


def _as_label_array(x: Any, name: str) -> np.ndarray:
    """Numpy integer (or bool) view of a label map; floats must hold integers."""
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind in "biu":
        return arr
    if kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name}: float label map holds non-integer values; pass integer labels")
        return arr.astype(np.int64)
    raise ValueError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
