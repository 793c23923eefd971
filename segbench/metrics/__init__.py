"""Segmentation metrics under named, documented conventions.

Usage::

    from segbench.metrics import evaluate_case, describe, hd_unit
    scores = evaluate_case(pred, gt, spacing=(2.5, 0.8, 0.8), labels=range(1, 9))
    scores[5]["hd95"]                    # liver HD95 in hd_unit("default") == "mm"
    describe("default")                  # one line, written next to every number
    evaluate_case_conventions(pred, gt, spacing, range(1, 9), ["default", "transunet"])  # both at once

``pred``/``gt`` may be numpy arrays or torch tensors; CUDA tensors are evaluated on
the GPU. The definitions (surface, distances, percentile, NSD, empty masks) are in
:mod:`segbench.metrics.conventions`; the CPU algorithm in
:mod:`segbench.metrics._numpy_backend`, the device one in
:mod:`segbench.metrics._torch_backend`.
"""

from segbench.metrics.conventions import (
    CONVENTIONS,
    METRIC_NAMES,
    Convention,
    case_status,
    describe,
    hd_unit,
)
from segbench.metrics.scoring import evaluate_case, evaluate_case_conventions

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "Convention",
    "case_status",
    "describe",
    "evaluate_case",
    "evaluate_case_conventions",
    "hd_unit",
]
