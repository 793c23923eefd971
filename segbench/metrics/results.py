"""The results contract: a run's test cases scored one by one (:class:`CaseEvaluator`), then written as
``per_case.csv`` and ``summary.json``.

After testing, a run directory holds::

    results/per_case.csv   one row per case x organ x convention: case, organ, label, dsc, hd95, hd, assd,
                           nsd, gt_voxels, pred_voxels, status, convention, hd_unit
    results/summary.json   {"convention", "convention_description", "hd_unit", "mean_dsc", "mean_hd95",
                            "per_class": {organ: {"dsc", "hd95", ..., "n_cases", "n_excluded", "n_worst_case"}},
                            "num_cases", "conventions": [...],
                            "by_convention": {name: {"convention", "convention_description", "hd_unit",
                                                     "mean_dsc", "mean_hd95", "per_class", "num_cases"}},
                            "config": {...}, ...}

With ``test.postprocess: largest_component`` (:mod:`segbench.postprocess`) each case is scored twice: as
predicted (the files above, unchanged) and after post-processing, into a ``postprocessed/`` folder beside them
with the same contract::

    results/postprocessed/per_case.csv    the post-processed label maps' rows, same columns
    results/postprocessed/summary.json    their summary, same keys, plus "postprocess": {"method",
                                          "description", "raw": "../summary.json"}

and the raw ``summary.json`` points to them: ``"postprocessed": {"method", "description", "summary":
"postprocessed/summary.json", "per_case": "postprocessed/per_case.csv", "convention", "hd_unit", "mean_dsc",
"mean_hd95"}`` (paths relative to the folder of that ``summary.json``). Without post-processing neither the
folder nor the key exists, and the raw files are what they were before the option existed.

Every test pass scores each case under BOTH :data:`SCORED_CONVENTIONS` (``default``: mm, MONAI's
per-direction HD95; ``transunet``: the Synapse literature's medpy HD95 in voxels with TransUNet's
empty-mask shortcuts) and, when it is a third one, the run's ``metrics.convention`` (e.g. ``medpy``).
The top-level keys of ``summary.json`` are those of the run's own convention (``metrics.convention``,
the *primary* one: what ``optimized_metric``, sweeps and the console read); ``by_convention`` holds
each convention's summary, and ``per_case.csv`` labels each row with its ``convention`` and
``hd_unit``. A reader of ``per_case.csv`` must select one convention's rows
(:func:`segbench.report.runs.read_per_case` does).

DSC is a fraction in [0, 1]. HD95 is in mm under ``default`` and ``medpy`` when the data state their
voxel spacing, and in voxels otherwise: always under ``transunet``, and under every convention for
data that carry no spacing (TransUNet's npz/h5 Synapse files, ``Volume.spacing_known``); ``hd_unit``
says which, in every row and summary. Means are taken over cases per organ (cases where the
metric is NaN, i.e. organ absent from both masks, are excluded and counted), then
over organs. Files are written atomically: a crash never leaves a half-written
file that a later run (or ``segbench-table``) would trust.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text

METRIC_KEYS = ("dsc", "hd95", "hd", "assd", "nsd")
CSV_FIELDS = ("case", "organ", "label", *METRIC_KEYS, "gt_voxels", "pred_voxels", "status", "convention",
              "hd_unit")
#: the conventions every test pass scores, whatever ``metrics.convention`` is
SCORED_CONVENTIONS = ("default", "transunet")
#: where the post-processed scores go, inside the folder of the raw ``per_case.csv`` / ``summary.json``
POSTPROCESSED = "postprocessed"


def scored_conventions(primary: str) -> list[str]:
    """The conventions a run scores: its own (``metrics.convention``) first, then :data:`SCORED_CONVENTIONS`."""
    return list(dict.fromkeys([primary, *SCORED_CONVENTIONS]))


def case_hd_unit(convention: str, spacing_known: bool = True) -> str:
    """Unit of HD/HD95/ASSD of one case: ``mm`` only where the convention applies the spacing AND the
    data state it; a stand-in spacing (``Volume.spacing_known`` False) measures voxels."""
    from . import hd_unit

    return hd_unit(convention) if spacing_known else "voxels"


class CaseEvaluator:
    """Scores predicted 3D cases against their ground truth and writes the results contract.

    Args:
        class_names: names indexed by class id; class 0 (background) is not scored.
        convention: the run's own metric convention (``metrics.convention``) of :mod:`segbench.metrics`:
            the top-level numbers of the summary. Every case is also scored under
            :data:`SCORED_CONVENTIONS` (:func:`scored_conventions`).
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        postprocess: ``none`` or ``largest_component`` (``test.postprocess``, :mod:`segbench.postprocess`): each
            case is also scored after post-processing, by :attr:`postprocessed` (an evaluator of the same
            settings), and :meth:`write` writes those scores into ``<results>/postprocessed/``.
    """

    def __init__(self, class_names: Sequence[str], convention: str = "default", nsd_tolerance_mm: float = 2.0,
                 postprocess: str = "none"):
        from ..postprocess import check_postprocess
        from . import CONVENTIONS

        if convention not in CONVENTIONS:
            from ..errors import ConfigError

            raise ConfigError(f"metrics.convention={convention!r} is unknown; choose one of {', '.join(CONVENTIONS)}")
        self.class_names = list(class_names)
        self.labels = list(range(1, len(self.class_names)))
        self.convention = convention
        self.conventions = scored_conventions(convention)
        self.nsd_tolerance_mm = float(nsd_tolerance_mm)
        self.rows: list[dict[str, Any]] = []
        self.postprocess = check_postprocess(postprocess)
        #: the same cases after post-processing, scored alike (None: ``postprocess: none``)
        self.postprocessed: CaseEvaluator | None = None
        if self.postprocess != "none":
            self.postprocessed = CaseEvaluator(class_names, convention, nsd_tolerance_mm)

    def add_case(self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                 spacing_known: bool = True, postprocessed: np.ndarray | None = None) -> list[dict]:
        """Score one case (integer label maps of equal shape) under every convention; returns and stores its
        rows (one per organ and convention). ``spacing_known=False``: ``spacing`` is a stand-in (the data carry
        none), so every distance is labelled ``voxels``. With post-processing, the post-processed map
        (``postprocessed``, else computed here from ``pred``) is scored into :attr:`postprocessed` as well."""
        if self.postprocessed is not None:
            from ..postprocess import apply_postprocess

            if postprocessed is None:
                postprocessed = apply_postprocess(pred, self.postprocess)
            self.postprocessed.add_case(case_id, postprocessed, gt, spacing, spacing_known)
        return self._score(case_id, pred, gt, spacing, spacing_known)

    def _score(self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
               spacing_known: bool) -> list[dict]:
        from . import evaluate_case_conventions

        scores = evaluate_case_conventions(pred, gt, spacing, self.labels, self.conventions,
                                           nsd_tolerance_mm=self.nsd_tolerance_mm, with_status=True)
        rows = []
        for convention in self.conventions:
            unit = case_hd_unit(convention, bool(spacing_known))
            for label in self.labels:
                score = scores[convention][label]
                row = {"case": case_id, "organ": self.class_names[label], "label": label}
                row.update({k: float(score[k]) for k in METRIC_KEYS})
                row.update(gt_voxels=int(score["gt_voxels"]), pred_voxels=int(score["pred_voxels"]),
                           status=score["status"], convention=convention, hd_unit=unit)
                rows.append(row)
        self.rows.extend(rows)
        return rows

    def empty_copy(self) -> CaseEvaluator:
        """An evaluator of the same settings with no cases yet (another set of cases scored the same way:
        a fold's validation cases, :func:`segbench.runtime.task.score_fold`)."""
        import copy

        fresh = copy.copy(self)
        fresh.rows = []
        if self.postprocessed is not None:
            fresh.postprocessed = self.postprocessed.empty_copy()
        return fresh

    def clear(self) -> None:
        """Forget every case scored so far (the post-processed ones too)."""
        self.rows.clear()
        if self.postprocessed is not None:
            self.postprocessed.rows.clear()

    def summary(self) -> dict[str, Any]:
        """The primary convention's summary at the top level, every convention's in ``by_convention``."""
        organs = [self.class_names[i] for i in self.labels]
        by_convention = {c: summarize(self.rows, organs, c) for c in self.conventions}
        return {**by_convention[self.convention], "conventions": list(self.conventions),
                "by_convention": by_convention}

    def write(self, results_dir: Path, config: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
        """Write ``per_case.csv`` and ``summary.json`` into ``results_dir``; return the summary. With
        post-processing, ``results_dir/postprocessed/`` first (``summary.json`` last: it marks a run finished)."""
        results_dir = Path(results_dir)
        post = None
        if self.postprocessed is not None:
            from ..postprocess import DESCRIPTIONS

            method = {"method": self.postprocess, "description": DESCRIPTIONS[self.postprocess]}
            written = self.postprocessed.write(results_dir / POSTPROCESSED, config=config,
                                               extra={**(extra or {}), "postprocess": {**method,
                                                                                       "raw": "../summary.json"}})
            post = {**method, "summary": f"{POSTPROCESSED}/summary.json", "per_case": f"{POSTPROCESSED}/per_case.csv",
                    **{k: written[k] for k in ("convention", "hd_unit", "mean_dsc", "mean_hd95")}}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        writer.writeheader()
        order = {c: i for i, c in enumerate(self.conventions)}
        # per case, each convention's block of organs: the run's own convention first
        for row in sorted(self.rows, key=lambda r: (r["case"], order.get(r["convention"], len(order)), r["label"])):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        summary = self.summary()
        if extra:
            summary.update(extra)
        if post is not None:
            summary["postprocessed"] = post
        summary["config"] = config or {}
        atomic_write_text(results_dir / "per_case.csv", buf.getvalue())
        atomic_write_text(results_dir / "summary.json", json.dumps(_json_safe(summary), indent=2))
        return summary


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(rows: list[dict], organs: Sequence[str], convention: str) -> dict[str, Any]:
    """Mean over cases per organ (NaN excluded), then over organs, of the rows of ``convention``
    (rows without a ``convention`` field count as that convention's)."""
    from . import describe, hd_unit

    rows = [r for r in rows if r.get("convention", convention) == convention]
    per_class = {}
    for organ in organs:
        mine = [r for r in rows if r["organ"] == organ]
        entry = {k: _nanmean([float(r[k]) for r in mine]) for k in METRIC_KEYS}
        entry["n_cases"] = len(mine)
        entry["n_excluded"] = sum(1 for r in mine if math.isnan(float(r["dsc"])))
        entry["n_worst_case"] = sum(1 for r in mine if r["status"] in ("gt_empty", "pred_empty")
                                    and not math.isnan(float(r["dsc"])))
        per_class[organ] = entry
    units = sorted({str(r.get("hd_unit") or hd_unit(convention)) for r in rows}) or [hd_unit(convention)]
    unit = units[0] if len(units) == 1 else " and ".join(units) + " (mixed: some cases carry no spacing)"
    description = describe(convention)
    if unit != hd_unit(convention):
        description += (f"; on these data HD, HD95 and ASSD are in {unit}: the files carry no voxel spacing, "
                        "so distances count voxels (and the NSD tolerance is in voxels)")
    return {
        "convention": convention,
        "convention_description": description,
        "hd_unit": unit,
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
    """A per-organ plain-text table of the primary convention (DSC %, HD95 in its unit), then one line
    per other convention scored (``by_convention``)."""
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
    for name, other in (summary.get("by_convention") or {}).items():
        if name != summary["convention"]:
            lines.append(f"also scored, convention {name}: mean DSC {_fmt(other['mean_dsc'], 100)} %, "
                         f"mean HD95 {_fmt(other['mean_hd95'], 1)} {other['hd_unit']}")
    post = summary.get("postprocessed")
    if isinstance(post, dict):
        lines.append(f"post-processed ({post['method']}), convention {post['convention']}: mean DSC "
                     f"{_fmt(post['mean_dsc'], 100)} %, mean HD95 {_fmt(post['mean_hd95'], 1)} {post['hd_unit']} "
                     f"({post['summary']})")
    return "\n".join(lines)


def _fmt(value: float | None, scale: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.2f}"
