"""Find run directories, read their results contract, and recompute the numbers.

A *run directory* is what ``segbench-train`` writes for one job: a Hydra run dir
``outputs/train/<date>/`` or one job ``outputs/multirun/<date>/<num>/`` of a sweep::

    .hydra/config.yaml        the composed config        .hydra/overrides.yaml   the job's overrides
    results/per_case.csv      one row per case x organ   results/summary.json    means + resolved config
    results/error.json        only when the job failed (then there is no summary)

Every number the report tools show is recomputed here from ``per_case.csv``
(mean over cases per organ, NaN = excluded case, then mean over organs: the rule
of :func:`segbench.metrics.results.summarize`); ``summary.json`` is only cross-checked.

``per_case.csv`` holds one row per case x organ x metric convention (every run scores ``default``
and ``transunet``, :mod:`segbench.metrics.results`). A loaded :class:`Run` shows ONE convention's rows
(``Run.per_case``), never a mix: the one asked for (``--convention``), else the run's report
convention (:func:`report_convention`: ``metrics.report_convention``, e.g. ``transunet`` for the
Synapse paper tables, else the run's own ``metrics.convention``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import SegbenchError
from ..files import find_dirs, unique_paths
from ..runtime.rundir import VOLATILE_KEYS, is_run_dir

#: metrics of the results contract, and whether larger is better
HIGHER_IS_BETTER = {"dsc": True, "nsd": True, "hd95": False, "hd": False, "assd": False}
#: metrics that are fractions in [0, 1] (shown x100 with ``--percent``); the others are distances
FRACTION_METRICS = ("dsc", "nsd")
#: the unit of HD/HD95/ASSD for the conventions segbench knows (``summary.json`` says it too)
HD_UNITS = {"default": "mm", "transunet": "voxels", "medpy": "mm"}
#: column orders of the AFW-Dice paper's tables (PROTOCOL.md section A)
ORGAN_PRESETS = {
    "paper-table1": ["aorta", "kidney_l", "gallbladder", "kidney_r", "liver", "pancreas", "spleen", "stomach"],
    "paper-table2": ["liver", "kidney", "pancreas", "spleen"],
}
REQUIRED_COLUMNS = ("case", "organ", "dsc", "hd95", "status", "convention")

_MISSING = object()


class ReportError(SegbenchError):
    """A problem with the run directories given to a report tool (printed as one line, exit 2)."""


@dataclass
class Run:
    """One run directory and what it holds (``summary``/``per_case`` are None for a failed job)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    error: str | None = None
    per_case: pd.DataFrame | None = None          # the rows of the selected convention only
    per_case_all: pd.DataFrame | None = None      # every convention's rows, as in the file
    folds: list[Run] = field(default_factory=list)  # a pooled cross-validation's fold runs (segbench.report.cv)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def name(self) -> str:
        """Short name: ``<sweep>/<job>`` for a multirun job, else the directory name; a pooled
        cross-validation: ``<sweep>/<job>+<job>...`` of its folds."""
        if self.folds:
            return self.folds[0].name + "".join(f"+{r.path.name}" for r in self.folds[1:])
        parent = self.path.parent.name
        return f"{parent}/{self.path.name}" if self.path.name.isdigit() and parent else self.path.name

    @property
    def source_paths(self) -> list[Path]:
        """The run directories this run's numbers come from: its own, or its folds'."""
        return [r.path for r in self.folds] if self.folds else [self.path]

    @property
    def convention(self) -> str | None:
        if self.per_case is not None:
            return str(self.per_case["convention"].iloc[0])
        if self.summary is not None:
            return self.summary.get("convention")
        value = get_key(self, "metrics.convention")
        return None if value is _MISSING else str(value)

    @property
    def conventions(self) -> list[str]:
        """The conventions ``per_case.csv`` holds, in file order."""
        if self.per_case_all is None:
            return []
        return list(dict.fromkeys(str(c) for c in self.per_case_all["convention"]))

    @property
    def hd_unit(self) -> str:
        """The HD unit of the selected convention's rows (``hd_unit`` column), else as ``summary.json`` says."""
        if self.per_case is not None and "hd_unit" in self.per_case.columns:
            units = sorted({str(u) for u in self.per_case["hd_unit"].dropna()})
            if len(units) == 1:
                return units[0]
            if units:
                return " and ".join(units)
        entry = self.convention_summary
        if entry and entry.get("hd_unit"):
            return str(entry["hd_unit"])
        return HD_UNITS.get(self.convention or "", "unknown unit")

    @property
    def convention_summary(self) -> dict[str, Any] | None:
        """The part of ``summary.json`` for the selected convention (``by_convention``, or the top level
        when that is the selected one), None when the summary does not hold it."""
        if not self.summary:
            return None
        entry = (self.summary.get("by_convention") or {}).get(self.convention or "")
        if isinstance(entry, dict):
            return entry
        return self.summary if self.summary.get("convention") == self.convention else None

    @property
    def organs(self) -> list[str]:
        """Organs in the order of ``summary.json`` (else of first appearance in ``per_case.csv``)."""
        if self.per_case is None:
            return []
        present = list(dict.fromkeys(self.per_case["organ"]))
        ordered = [o for o in (self.summary or {}).get("per_class", {}) if o in present]
        return ordered + [o for o in present if o not in ordered]


# ----------------------------------------------------------------------------------------------
# discovery


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand each path to the run directories at or below it (a sweep dir -> its jobs), in natural order.

    A path may be a run dir, its ``results/`` dir, a Hydra multirun sweep dir (with
    ``multirun.yaml`` and numbered job dirs) or any directory above such dirs
    (:func:`segbench.runtime.rundir.is_run_dir`).
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"no such directory: {path}")
        if path.is_file():
            raise ReportError(f"expected a run directory, got a file: {path}")
        if path.name == "results" and ((path / "summary.json").is_file() or (path / "error.json").is_file()):
            path = path.parent
        # segbench-table --cv-ensemble's results inside a sweep are not the sweep's jobs (name them to show them)
        mine = [d for d in find_dirs(path, is_run_dir) if "cv_ensemble" not in d.relative_to(path).parts]
        if not mine:
            raise ReportError(f"no runs found in {path} (looked for results/summary.json, results/error.json, "
                              "run.json or .hydra/config.yaml at or below it)")
        found.extend(mine)
    return unique_paths(found)


# ----------------------------------------------------------------------------------------------
# loading


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"unreadable {path}: {str(exc).splitlines()[0]}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"corrupt {path.name}: {path}: {str(exc).splitlines()[0]}") from exc


def read_per_case(path: Path, convention: str | None = None) -> pd.DataFrame:
    """Read and validate ``per_case.csv``; any problem is a :class:`ReportError` naming the file.

    The file may hold several conventions (one row per case x organ x convention); ``convention``
    selects one's rows. Without it the file must hold one convention only.
    """
    frame = read_all_conventions(path)
    conventions = list(dict.fromkeys(frame["convention"]))
    if convention is None:
        if len(conventions) > 1:
            raise ReportError(f"per_case.csv: {path} holds conventions {', '.join(conventions)}; choose one "
                              f"(--convention {' or --convention '.join(conventions)})")
        return frame
    if convention not in conventions:
        raise ReportError(f"per_case.csv: {path} holds no rows of convention {convention!r} "
                          f"(it holds {', '.join(conventions)})")
    return frame[frame["convention"] == convention].reset_index(drop=True)


def read_all_conventions(path: Path) -> pd.DataFrame:
    """``per_case.csv`` with every convention's rows, validated (a problem is a :class:`ReportError`)."""
    if not path.is_file():
        raise ReportError(f"missing per_case.csv: {path} (summary.json is there but the per-case results are not)")
    try:
        frame = pd.read_csv(path, dtype={"case": str, "organ": str, "status": str, "convention": str,
                                         "hd_unit": str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"corrupt per_case.csv: {path}: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(f"corrupt per_case.csv: {path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise ReportError(f"corrupt per_case.csv: {path}: no rows")
    for column in HIGHER_IS_BETTER:
        if column not in frame.columns:
            frame[column] = np.nan
            continue
        try:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
        except (ValueError, TypeError) as exc:
            raise ReportError(f"corrupt per_case.csv: {path}: column {column!r} is not numeric "
                              f"({str(exc).splitlines()[0]})") from exc
    if frame[["case", "organ", "convention"]].isna().any().any():
        raise ReportError(f"corrupt per_case.csv: {path}: empty case/organ/convention fields")
    if frame.duplicated(["case", "organ", "convention"]).any():
        raise ReportError(f"corrupt per_case.csv: {path}: duplicate (case, organ, convention) rows")
    return frame


def report_convention(run: Run) -> str | None:
    """The convention a report shows for ``run`` by default: ``metrics.report_convention`` of its config
    (the paper's convention of an experiment, e.g. ``transunet`` for the Synapse tables), else the run's
    own ``metrics.convention`` (= ``summary.json``'s top-level ``convention``)."""
    value = get_key(run, "metrics.report_convention", None)
    if value:
        return str(value)
    if run.summary and run.summary.get("convention"):
        return str(run.summary["convention"])
    value = get_key(run, "metrics.convention", None)
    return None if value is None else str(value)


#: where a run's post-processed test scores are (``test.postprocess``; :mod:`segbench.metrics.results`)
POSTPROCESSED_RESULTS = "results/postprocessed"


def load_run(path: Path, convention: str | None = None, postprocessed: bool = False) -> Run:
    """Read one run directory (a failed job comes back with ``error`` set, not as an exception).

    ``Run.per_case`` holds the rows of ``convention``, else of the run's :func:`report_convention`
    (a single-convention file: its one convention); a run without rows of that convention is a
    :class:`ReportError` (:func:`load_runs` drops such runs when a convention is asked for).
    ``postprocessed``: the scores of the post-processed predictions (``results/postprocessed/``) instead of
    the raw ones; a finished run without them is a :class:`ReportError`.
    """
    run = Run(path=Path(path))
    hydra_cfg = path / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        run.config = _read_yaml(hydra_cfg) or {}
    overrides = path / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        run.overrides = [str(o) for o in (_read_yaml(overrides) or [])]
    results = path / (POSTPROCESSED_RESULTS if postprocessed else "results")
    summary_path = results / "summary.json"
    error_path = path / "results" / "error.json"
    if postprocessed and not summary_path.is_file() and (path / "results" / "summary.json").is_file():
        raise ReportError(f"--postprocessed: {path} has no post-processed scores ({POSTPROCESSED_RESULTS}/"
                          "summary.json: it was tested with test.postprocess=none); score it with segbench-eval "
                          "ckpt_path=<its checkpoint> test.postprocess=largest_component and table that, or leave "
                          "out --postprocessed")
    if summary_path.is_file():
        run.summary = _read_json(summary_path)
        if not isinstance(run.summary, dict):
            raise ReportError(f"corrupt summary.json: {summary_path}: not a JSON object")
        if run.summary.get("config"):
            run.config = run.summary["config"]  # resolved: preferred over .hydra/config.yaml
        run.per_case_all = read_all_conventions(results / "per_case.csv")
        held = run.conventions
        wanted = convention or report_convention(run)
        if convention is None and (wanted is None or wanted not in held) and len(held) == 1:
            wanted = held[0]  # a file of one convention (written before runs scored several)
        if wanted not in held:
            raise ReportError(f"{path}: per_case.csv holds no rows of convention {wanted!r} (it holds "
                              f"{', '.join(held)}); pass --convention {' or --convention '.join(held)}")
        frame = run.per_case_all
        run.per_case = frame if len(held) == 1 else frame[frame["convention"] == wanted].reset_index(drop=True)
        summary_convention = run.summary.get("convention")
        if summary_convention and summary_convention not in run.conventions:
            raise ReportError(f"{path}: summary.json says convention {summary_convention!r} but per_case.csv "
                              f"holds {', '.join(run.conventions)}")
    elif error_path.is_file():
        try:
            info = json.loads(error_path.read_text())
            run.error = str(info.get("error") or info.get("type") or "unknown error")
        except (OSError, ValueError, AttributeError):
            run.error = f"unreadable {error_path}"
    else:
        run.error = "no results (the job crashed or is still running)"
    return run


def load_runs(paths: Iterable[str | Path], convention: str | None = None, postprocessed: bool = False) -> list[Run]:
    """Find and load every run below ``paths``, each showing ONE convention's rows: ``convention``
    (runs that did not score it are left out), else each run's :func:`report_convention`; ``postprocessed``:
    the scores of their post-processed predictions (:func:`load_run`)."""
    runs = []
    for path in find_run_dirs(paths):
        try:
            runs.append(load_run(path, convention, postprocessed))
        except ReportError as exc:
            if convention is None or "holds no rows of convention" not in str(exc):
                raise
    if convention is not None:
        runs = [r for r in runs if r.convention in (convention, None)]
        if not any(not r.failed for r in runs):
            raise ReportError(f"no successful run uses convention {convention!r}")
    return runs


def check_single_convention(runs: Sequence[Run], what: str = "one table") -> tuple[str | None, str]:
    """The (convention, hd_unit) shared by the successful runs; refuse to mix conventions."""
    ok = [r for r in runs if not r.failed]
    by_convention: dict[str, list[Run]] = {}
    for r in ok:
        by_convention.setdefault(str(r.convention), []).append(r)
    if len(by_convention) > 1:
        counts = ", ".join(f"{c}: {len(rs)} run(s) e.g. {rs[0].path}" for c, rs in by_convention.items())
        choices = " or ".join(f"--convention {c}" for c in by_convention)
        raise ReportError(f"refusing to put runs of different metric conventions in {what} ({counts}); "
                          f"pass {choices}")
    if not ok:
        return None, "unknown unit"
    units = {r.hd_unit for r in ok}
    if len(units) > 1:
        raise ReportError(f"runs of convention {ok[0].convention!r} disagree on the HD unit ({', '.join(units)})")
    return ok[0].convention, ok[0].hd_unit


# ----------------------------------------------------------------------------------------------
# config keys


def get_key(run: Run, key: str, default: Any = _MISSING) -> Any:
    """A dotted config key of the run (``loss.gamma``), else its command-line override, else ``default``."""
    node: Any = run.config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            node = _MISSING
            break
    if node is not _MISSING:
        return node
    for override in run.overrides:
        name, sep, value = override.lstrip("+~").partition("=")
        if sep and name == key:
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
    return default


def is_missing(value: Any) -> bool:
    return value is _MISSING


def hashable(value: Any) -> Any:
    """A hashable stand-in for a config value (lists -> tuples)."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def format_value(key: str, value: Any) -> str:
    """A config value as it appears in a row label."""
    if value is _MISSING or value is None:
        return "-" if value is _MISSING else "null"
    if key.endswith("_target_") and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value("", v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"gamma": 1}}`` -> ``{"loss.gamma": 1}`` (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix: hashable(config)} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in config.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


#: config keys that legitimately differ between the seeds of one group: the seed, where files live, and
#: every key that may differ between attempts of one run (:data:`segbench.runtime.rundir.VOLATILE_KEYS`: run_name
#: resolves to each job's start time, and again when Slurm requeues it)
_IGNORED_DIFFERENCES = re.compile(
    r"^(seed|task_name|hydra\..*|.*(dir|path|root|version)|"
    + "|".join(rf"{re.escape(k)}(\..*)?" for k in VOLATILE_KEYS) + ")$")


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (other than seed and paths) whose values differ among ``runs``."""
    flats = [flatten(r.config) for r in runs if r.config]
    if len(flats) < 2:
        return []
    keys = set().union(*flats)
    return sorted(k for k in keys if not _IGNORED_DIFFERENCES.match(k)
                  and len({repr(f.get(k, _MISSING)) for f in flats}) > 1)


# ----------------------------------------------------------------------------------------------
# numbers


def _nanmean(values: Iterable[float]) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def organ_means(run: Run, metric: str) -> dict[str, float]:
    """Mean over cases of ``metric`` per organ (NaN cases excluded), in the run's organ order."""
    frame = run.per_case
    assert frame is not None, "organ_means on a failed run"
    return {organ: _nanmean(frame.loc[frame["organ"] == organ, metric]) for organ in run.organs}


def mean_over_organs(per_organ: dict[str, float], organs: Sequence[str] | None = None) -> float:
    """Mean over ``organs`` (default all) of per-organ means, organs with no valid case excluded."""
    keys = per_organ if organs is None else [o for o in organs if o in per_organ]
    return _nanmean(per_organ[o] for o in keys)


def case_means(run: Run, metric: str = "dsc", organs: Sequence[str] | None = None) -> pd.Series:
    """Per-case mean over organs (NaN excluded) of ``metric``, indexed by case id."""
    frame = run.per_case
    assert frame is not None, "case_means on a failed run"
    if organs is not None:
        frame = frame[frame["organ"].isin(list(organs))]
    return frame.groupby("case", sort=True)[metric].mean()  # pandas' mean skips NaN


def summary_mismatches(run: Run, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> list[str]:
    """Where ``summary.json`` disagrees with the numbers recomputed from ``per_case.csv``, for the
    selected convention (its ``by_convention`` entry, or the top level when that is the one).

    ``per_case.csv`` holds 6 significant digits, hence the relative tolerance.
    """
    summary = run.convention_summary
    if summary is None or run.per_case is None:
        return []
    problems = []

    def compare(label: str, stored: Any, recomputed: float) -> None:
        stored_f = float("nan") if stored is None else float(stored)
        if math.isnan(stored_f) and math.isnan(recomputed):
            return
        if math.isnan(stored_f) or math.isnan(recomputed) or not math.isclose(
                stored_f, recomputed, rel_tol=rel_tol, abs_tol=abs_tol):
            problems.append(f"{label}: summary.json {stored_f:.6g}, per_case.csv {recomputed:.6g}")

    per_class = summary.get("per_class") or {}
    for metric in ("dsc", "hd95"):
        means = organ_means(run, metric)
        compare(f"mean_{metric}", summary.get(f"mean_{metric}"), mean_over_organs(means))
        for organ, value in means.items():
            if organ in per_class:
                compare(f"{organ} {metric}", per_class[organ].get(metric), value)
    missing = [o for o in per_class if o not in run.organs]
    if missing:
        problems.append(f"organs in summary.json but not in per_case.csv: {', '.join(missing)}")
    return problems
