"""``segbench-table``: results tables (Markdown, CSV, LaTeX) from run directories.

    segbench-table outputs/multirun/2025-01-01_12-00-00 --group-by loss.name --baseline ce_dice --percent
    segbench-table outputs/multirun/* --group-by loss.name --group-by loss.gamma --organs paper-table1 \\
        --metric dsc,hd95 --out reports/table1

Rows are runs grouped by config keys (several runs of a group, e.g. seeds, give
mean ± sample std); columns are the mean metrics and one metric per organ. Every
number is recomputed from ``results/per_case.csv`` and cross-checked against
``results/summary.json`` (a disagreement is a warning). Every run scores several metric
conventions; a table shows ONE (``--convention``, else the runs' ``metrics.report_convention``,
else their ``metrics.convention``) and says which, with its HD unit, in its caption; runs whose
defaults differ are refused (exit 2: pass ``--convention``). ``--column-group data.name`` lays
the runs out side by side, one group of columns per dataset (the paper's Tables 3-5).
A failed job (``results/error.json``) is listed as a failed row, never dropped. ``--cv`` pools the fold
runs of each k-fold cross-validation into one run of their validation cases (:mod:`segbench.report.cv`).
``--postprocessed`` shows the scores of the runs' post-processed predictions (``results/postprocessed/``,
``test.postprocess``) instead of the raw ones.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .runs import (
    FRACTION_METRICS,
    HIGHER_IS_BETTER,
    ORGAN_PRESETS,
    ReportError,
    Run,
    case_means,
    check_single_convention,
    differing_keys,
    format_value,
    get_key,
    hashable,
    is_missing,
    load_runs,
    mean_over_organs,
    organ_means,
    summary_mismatches,
)

PROG = "segbench-table"
METRIC_LABELS = {"dsc": "DSC", "hd95": "HD95", "hd": "HD", "assd": "ASSD", "nsd": "NSD"}


@dataclass
class Column:
    """One numeric column: a metric averaged over organs (``organ`` None) or for one organ."""

    key: str            # machine name, also the CSV header: mean_dsc, dsc_aorta
    header: str         # what the Markdown / LaTeX header shows
    metric: str
    organ: str | None
    scale: float        # 100 for fractions shown in percent
    group: str | None = None  # the column group (--column-group value, e.g. a dataset), None without groups

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]


@dataclass
class Row:
    label: str
    group: dict[str, Any]
    runs: list[Run]
    error: str | None = None                          # a failed job's row
    values: dict[str, list[float]] = field(default_factory=dict)  # column key -> one value per run
    p_value: float | None = None
    n_pairs: int = 0
    is_baseline: bool = False
    # per column group (key None without --column-group): the row's runs there, its p value and pairs
    group_runs: dict[str | None, list[Run]] = field(default_factory=dict)
    p_values: dict[str | None, float | None] = field(default_factory=dict)
    pairs: dict[str | None, int] = field(default_factory=dict)

    def n_text(self, groups: Sequence[str | None] = (None,)) -> str:
        """Runs averaged in the row: one number, or one per column group where they differ."""
        counts = [len(self.group_runs.get(g, [])) for g in groups] if self.group_runs else [len(self.runs)]
        return str(counts[0]) if len(set(counts)) == 1 else "/".join(str(c) for c in counts)

    def mean(self, key: str) -> float:
        vals = [v for v in self.values.get(key, []) if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def std(self, key: str) -> float:
        vals = [v for v in self.values.get(key, []) if not math.isnan(v)]
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    group_by: list[str]
    convention: str | None
    convention_description: str
    hd_unit: str
    percent: bool
    mean_organs: str            # words for the caption: "all 8 organs" / "the 4 organs shown"
    baseline: str | None
    caption: str = ""
    column_group: str | None = None                     # the config key whose values are the column groups
    groups: list[str | None] = field(default_factory=lambda: [None])
    cv: str | None = None       # --cv: "5-fold CV, 18 cases" (rows are pooled cross-validations)
    postprocessed: str | None = None  # --postprocessed: the post-processing the runs' scores are after

    def group_columns(self, group: str | None) -> list[Column]:
        return [c for c in self.columns if c.group == group]


# ----------------------------------------------------------------------------------------------
# building


def group_label(group_by: Sequence[str], values: Sequence[Any]) -> str:
    """``loss.name=afw_dice, loss.gamma=0.25`` -> ``"afw_dice, gamma=0.25"`` (missing keys left out)."""
    parts = []
    for i, (key, value) in enumerate(zip(group_by, values)):
        if is_missing(value):
            continue
        text = format_value(key, value)
        parts.append(text if i == 0 else f"{key.rsplit('.', 1)[-1]}={text}")
    return ", ".join(parts) if parts else "(" + ", ".join(f"no {k}" for k in group_by) + ")"


def resolve_organs(spec: str | None, runs: Sequence[Run]) -> list[str]:
    """The organ columns: a preset name, a comma list, or (None) the order of the summaries."""
    available: list[str] = []
    for run in runs:
        available += [o for o in run.organs if o not in available]
    if spec is None or spec == "":
        return available
    if spec == "none":
        return []
    organs = ORGAN_PRESETS.get(spec) or [o.strip() for o in spec.split(",") if o.strip()]
    unknown = [o for o in organs if o not in available]
    if unknown and any(not r.failed for r in runs):
        raise ReportError(f"organ(s) {', '.join(unknown)} not in any run; available: {', '.join(available)}")
    return organs


def _convention_description(runs: Sequence[Run], convention: str | None) -> str:
    for run in runs:
        entry = None if run.failed else run.convention_summary  # the shown convention's part of summary.json
        if entry and entry.get("convention_description"):
            return str(entry["convention_description"])
    try:
        from ..metrics.conventions import CONVENTIONS

        return CONVENTIONS[convention].description
    except (ImportError, KeyError, AttributeError):
        return ""


def _paired_wilcoxon(row_cases: pd.Series, base_cases: pd.Series) -> tuple[float, int]:
    from scipy.stats import wilcoxon

    paired = pd.concat([row_cases.rename("row"), base_cases.rename("base")], axis=1, join="inner").dropna()
    if paired.empty:
        return float("nan"), 0
    diff = paired["row"].to_numpy() - paired["base"].to_numpy()
    if np.all(diff == 0):
        return 1.0, len(paired)  # identical per-case scores: no evidence of a difference
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(paired["row"].to_numpy(), paired["base"].to_numpy()).pvalue), len(paired)


def group_case_means(runs: Sequence[Run], organs: Sequence[str] | None) -> pd.Series:
    """Per-case mean-over-organs DSC, averaged over the runs (seeds) of a group, indexed by case."""
    frame = pd.concat([case_means(r, "dsc", organs).rename(i) for i, r in enumerate(runs)], axis=1)
    return frame.mean(axis=1, skipna=True)


def build_table(runs: Sequence[Run], group_by: Sequence[str], organs: Sequence[str],
                metrics: Sequence[str] = ("dsc", "hd95"), organ_metric: str = "dsc", baseline: str | None = None,
                percent: bool = False, mean_over: str = "all", warn=lambda msg: None,
                column_group: str | None = None) -> Table:
    """Group ``runs`` into rows and recompute every column from ``per_case.csv``.

    ``column_group`` (a dotted config key, e.g. ``data.name``): the runs are laid out side by side,
    one group of the same columns per value of that key (the AFW-Dice paper's Tables 3-5: one group per
    dataset); rows are then defined by ``group_by`` within every group, and the bold best value, the
    baseline and the Wilcoxon test are taken within each group.
    """
    convention, hd_unit = check_single_convention(runs)
    for metric in [*metrics, organ_metric]:
        if metric not in HIGHER_IS_BETTER:
            raise ReportError(f"unknown metric {metric!r}; choose from {', '.join(HIGHER_IS_BETTER)}")
    if mean_over not in ("all", "shown"):
        raise ReportError(f"--mean-over must be 'all' or 'shown', got {mean_over!r}")
    if column_group is not None and column_group in group_by:
        raise ReportError(f"--column-group {column_group} is also a --group-by key; a key makes rows or "
                          "column groups, not both")

    def scale(metric: str) -> float:
        return 100.0 if percent and metric in FRACTION_METRICS else 1.0

    def unit(metric: str) -> str:
        if metric in FRACTION_METRICS:
            return " (%)" if percent else ""
        return f" ({hd_unit})"

    # column groups: the values of column_group in order of first appearance (None: one group, no prefix)
    run_group: dict[int, str | None] = {}
    groups: list[str | None] = [None]
    if column_group is not None:
        for run in runs:
            value = get_key(run, column_group)
            run_group[id(run)] = "-" if is_missing(value) else format_value(column_group, value)
        groups = list(dict.fromkeys(run_group[id(r)] for r in runs)) or [None]

    columns: list[Column] = []
    for g in groups:
        prefix = "" if g is None else f"{g}/"
        columns += [Column(f"{prefix}mean_{m}", f"{METRIC_LABELS[m]}{unit(m)}", m, None, scale(m), g)
                    for m in metrics]
        for organ in organs:
            header = organ if organ_metric == "dsc" else f"{organ} {METRIC_LABELS[organ_metric]}"
            columns.append(Column(f"{prefix}{organ_metric}_{organ}", header, organ_metric, organ,
                                  scale(organ_metric), g))

    # rows: groups in order of first appearance; a group's successful runs make one row,
    # each failed job of the group one more row
    row_groups: dict[tuple, list[Run]] = {}
    group_values: dict[tuple, list[Any]] = {}
    scored_labels: dict[tuple, str] = {}
    for run in runs:
        values = [get_key(run, k) for k in group_by]
        ident = tuple(hashable(v) if not is_missing(v) else "<missing>" for v in values)
        scored = get_key(run, "score.name", None)
        if scored is not None and all(is_missing(v) for v in values):
            # a folder scored by segbench-score (no loss, no training config): a row of its own, by its --name
            ident = ("<segbench-score>", str(scored))
            scored_labels[ident] = str(scored)
        row_groups.setdefault(ident, []).append(run)
        group_values.setdefault(ident, values)
    mean_organs = list(organs) if mean_over == "shown" else None
    rows: list[Row] = []
    for ident, members in row_groups.items():
        values = group_values[ident]
        label = scored_labels.get(ident) or group_label(group_by, values)
        group = {k: (None if is_missing(v) else v) for k, v in zip(group_by, values)}
        ok = [r for r in members if not r.failed]
        if ok:
            row = Row(label, group, ok)
            for g in groups:
                mine = [r for r in ok if run_group.get(id(r)) == g]
                row.group_runs[g] = mine
                for run in mine:
                    for metric in {c.metric for c in columns}:
                        per_organ = organ_means(run, metric)
                        for col in columns:
                            if col.metric != metric or col.group != g:
                                continue
                            value = (mean_over_organs(per_organ, mean_organs) if col.organ is None
                                     else per_organ.get(col.organ, float("nan")))
                            row.values.setdefault(col.key, []).append(value * col.scale)
                diff = [k for k in differing_keys(mine) if column_group is None or k != column_group]
                if diff:
                    where = "" if g is None else f" in column group {g!r}"
                    warn(f"row {label!r}{where} averages runs whose configs differ in {', '.join(diff[:5])}"
                         f"{' ...' if len(diff) > 5 else ''}; add --group-by for the key(s) that matter")
            rows.append(row)
        for run in members:
            if run.failed:
                failed = Row(label if column_group is None else f"{label} [{run_group[id(run)]}]", group, [run],
                             error=run.error)
                rows.append(failed)

    if baseline is not None:
        base_rows = [r for r in rows if r.label == baseline and r.error is None]
        if not base_rows:
            labels = ", ".join(dict.fromkeys(r.label for r in rows if r.error is None))
            raise ReportError(f"baseline {baseline!r} is not a row label; rows: {labels}")
        base = base_rows[0]
        base.is_baseline = True
        for g in groups:  # the test pairs cases within one column group (the same dataset's cases)
            base_runs = base.group_runs.get(g) or []
            base_cases = group_case_means(base_runs, mean_organs) if base_runs else None
            for row in rows:
                if row.error is not None:
                    continue
                if row is base:
                    row.p_values[g] = None
                    row.pairs[g] = 0 if base_cases is None else int(base_cases.notna().sum())
                elif base_cases is None or not row.group_runs.get(g):
                    row.p_values[g], row.pairs[g] = float("nan"), 0
                else:
                    row.p_values[g], row.pairs[g] = _paired_wilcoxon(
                        group_case_means(row.group_runs[g], mean_organs), base_cases)
        for row in rows:
            if row.error is None and len(groups) == 1:
                row.p_value, row.n_pairs = row.p_values.get(groups[0]), row.pairs.get(groups[0], 0)

    n_mean_organs = len(organs) if mean_over == "shown" else len(
        {o for r in runs if not r.failed for o in r.organs})
    table = Table(columns, rows, list(group_by), convention, _convention_description(runs, convention), hd_unit,
                  percent, f"the {n_mean_organs} organs shown" if mean_over == "shown"
                  else f"all {n_mean_organs} organs", baseline, column_group=column_group, groups=groups)
    table.caption = default_caption(table)
    return table


def default_caption(table: Table) -> str:
    conv = table.convention or "unknown (no successful run)"
    parts = [f"Metric convention: {conv}; HD in {table.hd_unit}; DSC "
             + ("in %." if table.percent else "as a fraction.")]
    if table.column_group is not None:
        parts.append(f"Column groups: {table.column_group} = {', '.join(str(g) for g in table.groups)}.")
    if table.cv is not None and "ensemble" in table.cv:
        parts.append(f"{table.cv}: each run of a row scores the fixed test split with the fold ensemble of one "
                     "cross-validation (the fold models' softmax averaged, on each scan's own grid).")
    elif table.cv is not None:
        parts.append(f"{table.cv}: each run of a row pools the validation cases of its folds, every case of the "
                     "train + val pool scored once, by the fold model that did not train on it (the test split "
                     "is not in these numbers).")
    ns = sorted({len(r.group_runs.get(g, [])) if r.group_runs else len(r.runs)
                 for r in table.rows if r.error is None for g in table.groups} - {0})
    if ns and ns != [1]:
        n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        where = " in each column group" if table.column_group is not None else ""
        what = "pooled cross-validations (seeds)" if table.cv is not None else "runs"
        parts.append(f"Mean ± sample std (ddof=1) over the {n_text} {what} of each row{where}.")
    if table.postprocessed is not None:
        parts.append(f"Scores of the post-processed test predictions (test.postprocess={table.postprocessed}).")
    parts.append(f"Means: over cases per organ (excluded cases dropped), then over {table.mean_organs}.")
    if table.baseline is not None:
        within = " within each column group" if table.column_group is not None else ""
        parts.append(f"p: two-sided paired Wilcoxon signed-rank test vs {table.baseline}{within} on per-case "
                     "mean DSC (seeds averaged per case).")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# rendering


def _num(value: float, decimals: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3g}"


def default_decimals(column: Column) -> int:
    return 3 if column.metric in FRACTION_METRICS and column.scale == 1.0 else 2


def _best(table: Table, column: Column, decimals: int) -> str | None:
    """The displayed (rounded) best mean of a column when one row alone shows it (set in bold);
    ``None`` for a tie at the displayed precision: no row is better than the others there."""
    shown = [_num(r.mean(column.key), decimals) for r in table.rows if r.error is None]
    shown = [s for s in shown if s != "-"]
    if len(shown) < 2:
        return None
    pick = max if column.higher_is_better else min
    best = pick(shown, key=float)
    return best if shown.count(best) == 1 else None


def _cells(table: Table, row: Row, decimals: dict[str, int], best: dict[str, str | None], std: bool,
           bold, pm: str) -> list[str]:
    cells = []
    for col in table.columns:
        mean = _num(row.mean(col.key), decimals[col.key])
        text = bold(mean) if mean != "-" and mean == best[col.key] else mean
        s = row.std(col.key)
        if std and not math.isnan(s):
            text += f" {pm} {_num(s, decimals[col.key])}"
        cells.append(text)
    return cells


def _describe(table: Table) -> str:
    """``name: description`` (descriptions of segbench's conventions already start with the name)."""
    desc = table.convention_description
    return desc if desc.startswith(f"{table.convention}:") else f"{table.convention}: {desc}"


def _failed_text(row: Row) -> str:
    message = " ".join(str(row.error).split())
    if len(message) > 120:
        message = message[:117] + "..."
    return f"failed: {message} ({row.runs[0].name})"


def _p_text(row: Row, group: str | None) -> str:
    if row.is_baseline:
        return "ref"
    return _fmt_p(row.p_values.get(group, row.p_value) if row.p_values else row.p_value)


def _body_cells(table: Table, row: Row, dec: dict[str, int], best: dict[str, str | None], std: bool, bold,
                pm: str, p_text) -> list[str]:
    """A successful row's cells after Method and n: each column group's columns, then its p."""
    cells = _cells(table, row, dec, best, std, bold, pm)
    by_key = {c.key: text for c, text in zip(table.columns, cells)}
    out = []
    for g in table.groups:
        out += [by_key[c.key] for c in table.group_columns(g)]
        if table.baseline is not None:
            out.append(p_text(_p_text(row, g)))
    return out


def render_markdown(table: Table, decimals: int | None = None, std: bool = True) -> str:
    """A Markdown table; with column groups, a first header row names each group over its columns
    (a second row, the first of the body, names the columns)."""
    dec = {c.key: default_decimals(c) if decimals is None else decimals for c in table.columns}
    best = {c.key: _best(table, c, dec[c.key]) for c in table.columns}

    def esc(text) -> str:
        return str(text).replace("|", "\\|")

    has_p = table.baseline is not None
    header = ["Method", "n"]
    group_header = ["", ""]
    for g in table.groups:
        names = [esc(c.header) for c in table.group_columns(g)] + ([f"p vs {esc(table.baseline)}"] if has_p else [])
        header += names
        group_header += [f"**{esc(g)}**"] + [""] * (len(names) - 1)
    lines = [f"*{table.caption}*", ""]
    if table.convention_description:
        lines[1:1] = ["", f"*Convention {_describe(table)}*"]
    align = "|" + "|".join([":---", "---:"] + ["---:"] * (len(header) - 2)) + "|"
    if table.column_group is not None:
        lines += ["| " + " | ".join(group_header) + " |", align, "| " + " | ".join(header) + " |"]
    else:
        lines += ["| " + " | ".join(header) + " |", align]
    for row in table.rows:
        if row.error is not None:
            cells = [esc(row.label), "0", esc(_failed_text(row))] + [""] * (len(header) - 3)
        else:
            cells = [esc(row.label), row.n_text(table.groups),
                     *_body_cells(table, row, dec, best, std, lambda s: f"**{s}**", "±", lambda t: t)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """Full-precision numbers (DSC scaled as in the table); every row states convention and units. With
    column groups, each column's name starts with its group (``synapse/mean_dsc``), as do the group's
    ``n_runs``, ``p_value`` and ``n_pairs``."""
    records = []
    grouped = table.column_group is not None
    for row in table.rows:
        rec: dict[str, Any] = {"label": row.label}
        for key in table.group_by:
            value = row.group.get(key)
            rec[key] = format_value(key, value) if isinstance(value, (list, tuple)) else value
        rec.update(status="failed" if row.error is not None else "ok", error=row.error or "",
                   n_runs=0 if row.error is not None else len(row.runs),
                   runs=";".join(str(p) for r in row.runs for p in r.source_paths), convention=table.convention,
                   hd_unit=table.hd_unit, dsc_unit="%" if table.percent else "fraction")
        if table.cv is not None:
            from .cv import cv_text

            rec["cv"] = cv_text(row.runs) if row.error is None else ""
        if grouped:
            rec["column_group"] = table.column_group
        for g in table.groups:
            prefix = "" if g is None else f"{g}/"
            if grouped:
                rec[f"{prefix}n_runs"] = 0 if row.error is not None else len(row.group_runs.get(g, []))
            for col in table.group_columns(g):
                rec[col.key] = row.mean(col.key) if row.error is None else float("nan")
                rec[f"{col.key}_std"] = row.std(col.key) if row.error is None else float("nan")
            if table.baseline is not None:
                rec[f"{prefix}baseline"] = table.baseline
                p = row.p_values.get(g, row.p_value) if row.p_values else row.p_value
                rec[f"{prefix}p_value"] = float("nan") if p is None else p
                rec[f"{prefix}n_pairs"] = row.pairs.get(g, row.n_pairs) if row.pairs else row.n_pairs
        records.append(rec)
    buf = io.StringIO()
    pd.DataFrame.from_records(records).to_csv(buf, index=False)
    return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def render_latex(table: Table, decimals: int | None = None, std: bool = True, label: str = "tab:segbench") -> str:
    """A booktabs ``table`` environment with the Markdown table's columns (``n``: runs per row); a
    column's best value in bold when one row alone has it. Column groups: a ``\\multicolumn`` header
    per group over its columns, underlined by a ``\\cmidrule``."""
    dec = {c.key: default_decimals(c) if decimals is None else decimals for c in table.columns}
    best = {c.key: _best(table, c, dec[c.key]) for c in table.columns}
    has_p = table.baseline is not None
    header = ["Method", "$n$"]
    spans = []  # (group, first column, last column), 1-based
    for g in table.groups:
        names = [tex_escape(c.header) for c in table.group_columns(g)]
        if has_p:
            names.append(f"$p$ vs {tex_escape(table.baseline)}")
        spans.append((g, len(header) + 1, len(header) + len(names)))
        header += names
    ncols = len(header)
    lines = ["% generated by segbench-table; needs \\usepackage{booktabs}",
             f"% convention {tex_escape(_describe(table))}",
             "\\begin{table}[t]", "\\centering",
             f"\\caption{{{tex_escape(table.caption)}}}", f"\\label{{{label}}}",
             "\\begin{tabular}{l" + "r" * (ncols - 1) + "}", "\\toprule"]
    if table.column_group is not None:
        lines.append("& & " + " & ".join(f"\\multicolumn{{{b - a + 1}}}{{c}}{{{tex_escape(g)}}}"
                                         for g, a, b in spans) + " \\\\")
        lines.append(" ".join(f"\\cmidrule(lr){{{a}-{b}}}" for _, a, b in spans))
    lines += [" & ".join(header) + " \\\\", "\\midrule"]
    for row in table.rows:
        if row.error is not None:
            lines.append(f"{tex_escape(row.label)} & 0 & \\multicolumn{{{ncols - 2}}}{{l}}"
                         f"{{{tex_escape(_failed_text(row))}}} \\\\")
            continue
        cells = [tex_escape(row.label), row.n_text(table.groups),
                 *_body_cells(table, row, dec, best, std, lambda s: f"\\textbf{{{s}}}", "$\\pm$", tex_escape)]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=(
            "Results tables (Markdown, CSV, LaTeX) from segbench run directories. Numbers are recomputed from "
        "results/per_case.csv and checked against results/summary.json."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  segbench-table outputs/multirun/<date> --group-by loss.name --baseline ce_dice --percent\n"
               "  segbench-table outputs/table3_uncertainty/<date> --group-by loss.uncertainty \\\n"
               "      --column-group data.name --organs none --percent           # a group per dataset\n"
               "  segbench-table outputs/multirun/<date> --group-by loss.name --group-by loss.gamma \\\n"
               "      --organs paper-table1 --metric dsc,hd95 --out reports/table1\n"
               "  segbench-table outputs/multirun/<date> --cv          # k-fold CV: one pooled row per sweep\n"
               "  segbench-table outputs/multirun/<date> --postprocessed   # after test.postprocess=largest_component\n"
               "exit status: 0 ok (failed jobs are listed as rows), 2 unusable input (one-line error)")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, Hydra multirun sweep dirs (expanded to their jobs) or any dir "
                             "above them")
    parser.add_argument("--group-by", action="append", metavar="KEY",
                        help="dotted config key that defines a row (repeatable; default loss.name); runs with "
                             "equal values (e.g. seeds) are averaged: mean ± std")
    parser.add_argument("--organs", default=None, metavar="LIST",
                        help="per-organ columns in this order: comma list, or a preset: "
                             + ", ".join(f"{k} ({','.join(v)})" for k, v in ORGAN_PRESETS.items())
                             + "; none: no per-organ column; default: every organ in the order of the summaries")
    parser.add_argument("--column-group", default=None, metavar="KEY",
                        help="dotted config key (e.g. data.name) whose values become column groups side by "
                             "side, each with the same columns (the paper's Tables 3-5: one group per dataset); "
                             "best values, --baseline and its test are taken within each group")
    parser.add_argument("--metric", default="dsc,hd95", metavar="LIST",
                        help="mean-over-organs columns, from dsc, hd95, hd, assd, nsd (default dsc,hd95)")
    parser.add_argument("--organ-metric", default="dsc", choices=sorted(HIGHER_IS_BETTER),
                        help="metric of the per-organ columns (default dsc)")
    parser.add_argument("--mean-over", default="all", choices=("all", "shown"),
                        help="organs averaged in the mean columns and the test: all organs of the runs "
                             "(default, = summary.json) or only those shown")
    parser.add_argument("--baseline", default=None, metavar="LABEL",
                        help="row label to test every other row against (paired Wilcoxon signed-rank over "
                             "cases on per-case mean DSC; seeds averaged per case); adds a p column")
    parser.add_argument("--percent", action="store_true", help="show DSC (and NSD) in percent")
    parser.add_argument("--decimals", type=int, default=None,
                        help="decimals shown (default 2; 3 for DSC as a fraction)")
    parser.add_argument("--no-std", action="store_true", help="show the mean only, not ± std")
    parser.add_argument("--convention", default=None,
                        help="show the rows of this metric convention (every run scores default and "
                             "transunet); default: each run's metrics.report_convention (transunet for the "
                             "Synapse paper tables), else its metrics.convention; runs whose defaults differ "
                             "are refused (pass --convention)")
    parser.add_argument("--cv", "--pool-folds", dest="cv", action="store_true",
                        help="k-fold cross-validation: pool the fold runs of each cross-validation (runs that differ "
                             "only in data.split.fold) into one run of their validation cases "
                             "(results/cv/per_case.csv), each case scored once; seeds stay separate runs of a row. "
                             "Runs that are not folds are left out; a missing fold makes a failed row")
    parser.add_argument("--cv-ensemble", dest="cv_ensemble", action="store_true",
                        help="with --cv: score the fixed test split with each cross-validation's fold ensemble (the "
                             "fold models' softmax averaged), written to <sweep>/cv_ensemble/ and reused; one row "
                             "per cross-validation")
    parser.add_argument("--postprocessed", action="store_true",
                        help="the scores of the post-processed test predictions (results/postprocessed/, written by "
                             "runs with test.postprocess=largest_component) instead of the raw ones; a run without "
                             "them is refused")
    parser.add_argument("--caption", default=None, help="replace the generated caption")
    parser.add_argument("--label", default="tab:segbench", help="LaTeX \\label (default tab:segbench)")
    parser.add_argument("--out", default="outputs/report", metavar="DIR",
                        help="write table.md, table.csv, table.tex here (default outputs/report)")
    return parser


def make_table(args: argparse.Namespace, warn) -> Table:
    postprocessed = getattr(args, "postprocessed", False)
    if postprocessed and getattr(args, "cv", False):
        raise ReportError("--postprocessed does not combine with --cv yet (the pooled folds read results/cv/); "
                          "leave out one of them")
    runs = load_runs(args.run_dirs, convention=args.convention, postprocessed=postprocessed)
    for run in runs:
        for problem in summary_mismatches(run):
            warn(f"{run.path}: summary.json disagrees with per_case.csv ({problem}); the table uses per_case.csv")
    if getattr(args, "cv_ensemble", False) and not getattr(args, "cv", False):
        raise ReportError("--cv-ensemble needs --cv (the fold runs of each cross-validation make one ensemble)")
    if getattr(args, "cv", False):
        from .cv import fold_ensembles, pool_folds

        runs = pool_folds(runs, warn)
        if getattr(args, "cv_ensemble", False):
            runs = fold_ensembles(runs, warn, args.convention)
    failed = [r for r in runs if r.failed]
    if failed:
        warn(f"{len(failed)} failed job(s) listed as failed rows: " + ", ".join(str(r.path) for r in failed))
    organs = resolve_organs(args.organs, runs)
    table = build_table(runs, args.group_by or ["loss.name"], organs, _split(args.metric), args.organ_metric,
                        args.baseline, args.percent, args.mean_over, warn=warn, column_group=args.column_group)
    if getattr(args, "cv", False):
        from .cv import cv_text

        table.cv = cv_text(runs)
        table.caption = default_caption(table)
    if postprocessed:
        methods = sorted({str((r.summary.get("postprocess") or {}).get("method", "?"))
                          for r in runs if not r.failed and r.summary})
        table.postprocessed = ", ".join(methods) or "?"
        table.caption = default_caption(table)
    if args.caption:
        table.caption = args.caption
    return table


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import SegbenchError, report_error
    from ..files import atomic_write_text

    args = build_parser().parse_args(argv)
    try:
        warnings: list[str] = []
        table = make_table(args, warn=warnings.append)
        markdown = render_markdown(table, args.decimals, not args.no_std)
        out = Path(args.out)
        atomic_write_text(out / "table.md", markdown)
        atomic_write_text(out / "table.csv", render_csv(table))
        atomic_write_text(out / "table.tex", render_latex(table, args.decimals, not args.no_std, args.label))
    except (SegbenchError, OSError) as exc:
        report_error(exc, PROG)
        sys.exit(2)
    for message in warnings:  # after the table is built, so that an error stays one line
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    sys.stdout.write(markdown)
    print(f"{PROG}: wrote {out / 'table.md'}, table.csv, table.tex", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
