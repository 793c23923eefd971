"""Per-case evaluation and the results contract.

After testing, a run directory holds::

    results/per_case.csv   one row per case x organ: case, organ, label, dsc, hd95, hd, assd, nsd,
                           gt_voxels, pred_voxels, status, convention
    results/summary.json   {"convention", "hd_unit", "mean_dsc", "mean_hd95",
                            "per_class": {organ: {"dsc", "hd95", ..., "n_cases", "n_excluded", "n_worst_case"}},
                            "num_cases", "config": {...}, ...}

DSC is a fraction in [0, 1]; HD95 is in mm under the ``default`` convention
(``hd_unit`` says which). Means are taken over cases per organ (cases where the
metric is NaN, i.e. organ absent from both masks, are excluded and counted), then
over organs. Files are written atomically: a crash never leaves a half-written
file that a later run (or ``segbench-table``) would trust.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METRIC_KEYS = ("dsc", "hd95", "hd", "assd", "nsd")
CSV_FIELDS = ("case", "organ", "label", *METRIC_KEYS, "gt_voxels", "pred_voxels", "status", "convention")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class CaseEvaluator:
    """Scores predicted 3D cases against their ground truth and writes the results contract.

    Args:
        class_names: names indexed by class id; class 0 (background) is not scored.
        convention: a metric convention of :mod:`segbench.metrics` (``default``, ``transunet``, ...).
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
    """

    def __init__(self, class_names: Sequence[str], convention: str = "default", nsd_tolerance_mm: float = 2.0):
        from .metrics import CONVENTIONS

        if convention not in CONVENTIONS:
            from .errors import ConfigError

            raise ConfigError(f"metrics.convention={convention!r} is unknown; choose one of {', '.join(CONVENTIONS)}")
        self.class_names = list(class_names)
        self.labels = list(range(1, len(self.class_names)))
        self.convention = convention
        self.nsd_tolerance_mm = float(nsd_tolerance_mm)
        self.rows: list[dict[str, Any]] = []

    def add_case(self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> list[dict]:
        """Score one case (integer label maps of equal shape); returns and stores its rows."""
        from .metrics import evaluate_case

        scores = evaluate_case(pred, gt, spacing, self.labels, convention=self.convention,
                               nsd_tolerance_mm=self.nsd_tolerance_mm, with_status=True)
        rows = []
        for label in self.labels:
            row = {"case": case_id, "organ": self.class_names[label], "label": label}
            row.update({k: float(scores[label][k]) for k in METRIC_KEYS})
            row.update(gt_voxels=int(scores[label]["gt_voxels"]), pred_voxels=int(scores[label]["pred_voxels"]),
                       status=scores[label]["status"], convention=self.convention)
            rows.append(row)
        self.rows.extend(rows)
        return rows

    def summary(self) -> dict[str, Any]:
        return summarize(self.rows, [self.class_names[i] for i in self.labels], self.convention)

    def write(self, results_dir: Path, config: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
        """Write ``per_case.csv`` and ``summary.json`` into ``results_dir``; return the summary."""
        results_dir = Path(results_dir)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in sorted(self.rows, key=lambda r: (r["case"], r["label"])):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        summary = self.summary()
        if extra:
            summary.update(extra)
        summary["config"] = config or {}
        atomic_write_text(results_dir / "per_case.csv", buf.getvalue())
        atomic_write_text(results_dir / "summary.json", json.dumps(_json_safe(summary), indent=2))
        return summary


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(rows: list[dict], organs: Sequence[str], convention: str) -> dict[str, Any]:
    """Mean over cases per organ (NaN excluded), then over organs."""
    from .metrics import describe, hd_unit

    per_class = {}
    for organ in organs:
        mine = [r for r in rows if r["organ"] == organ]
        entry = {k: _nanmean([float(r[k]) for r in mine]) for k in METRIC_KEYS}
        entry["n_cases"] = len(mine)
        entry["n_excluded"] = sum(1 for r in mine if math.isnan(float(r["dsc"])))
        entry["n_worst_case"] = sum(1 for r in mine if r["status"] in ("gt_empty", "pred_empty")
                                    and not math.isnan(float(r["dsc"])))
        per_class[organ] = entry
    return {
        "convention": convention,
        "convention_description": describe(convention),
        "hd_unit": hd_unit(convention),
        "mean_dsc": _nanmean([per_class[o]["dsc"] for o in organs]),
        "mean_hd95": _nanmean([per_class[o]["hd95"] for o in organs]),
        "num_cases": len({r["case"] for r in rows}),
        "per_class": per_class,
    }


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def format_table(summary: dict[str, Any]) -> str:
    """A per-organ plain-text table (DSC %, HD95 in the convention's unit)."""
    unit = summary.get("hd_unit", "mm")
    lines = [f"convention: {summary['convention']} (HD95 in {unit})",
             f"{'organ':<14}{'DSC %':>8}{'HD95 ' + unit:>14}{'cases':>7}{'excl.':>7}{'worst':>7}"]
    for organ, m in summary["per_class"].items():
        dsc = m["dsc"]
        hd95 = m["hd95"]
        lines.append(f"{organ:<14}{_fmt(dsc, 100):>8}{_fmt(hd95, 1):>14}{m['n_cases']:>7}{m['n_excluded']:>7}"
                     f"{m['n_worst_case']:>7}")
    lines.append(f"{'mean':<14}{_fmt(summary['mean_dsc'], 100):>8}{_fmt(summary['mean_hd95'], 1):>14}"
                 f"{summary['num_cases']:>7}")
    return "\n".join(lines)


def _fmt(value: float | None, scale: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.2f}"
