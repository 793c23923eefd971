"""Segmentation metrics under named, documented conventions.

>>> from segbench.metrics import evaluate_case, describe
>>> scores = evaluate_case(pred, gt, spacing=(2.5, 0.8, 0.8), labels=range(1, 9))
>>> scores[1]["hd95"], describe("default")

See :mod:`segbench.metrics.conventions` and ``/work/shared/METRICS.md``.
"""

from segbench.metrics.conventions import (
    CONVENTIONS,
    METRIC_NAMES,
    Convention,
    case_status,
    describe,
    hd_unit,
)
from segbench.metrics.evaluate import evaluate_case

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "Convention",
    "case_status",
    "describe",
    "evaluate_case",
    "hd_unit",
]
