"""k-fold cross-validation in reports: a sweep's fold runs pooled into one cross-validated run
(``segbench-table --cv``).

    segbench-train -m data.split.folds=5 data.split.fold=0,1,2,3,4 seed=1,2
    segbench-table outputs/multirun/<date> --cv

A fold run (``data.split.folds`` set; :mod:`segbench.data.folds`) scores its validation cases like the test
split, with the weights it tests, into ``results/cv/per_case.csv`` (:func:`segbench.runtime.task.score_fold`).
Runs whose configs differ only in ``data.split.fold`` (paths and run names aside; the seed counts) are one
cross-validation: :func:`pool_folds` replaces them by ONE :class:`~segbench.report.runs.Run` whose
``per_case`` is their ``results/cv`` rows concatenated -- every case of the train + val pool, each scored
once, by the fold model that did not train on it -- so that the table computes its numbers exactly as for
any run (mean over cases per organ, then over organs) and averages seeds as it always does.

Refused (:class:`~segbench.report.runs.ReportError`, one line): two finished runs of one fold, folds whose
recorded splits disagree, a case scored twice or a pool case never scored. A cross-validation with a fold
missing (failed, not run yet) becomes a failed row naming the missing folds, never a row of fewer cases.

``--cv-ensemble`` scores the fixed test split with each cross-validation's fold ensemble instead: the K fold
models' softmax averaged on every test case (:func:`segbench.runtime.predict.score_test_split`), predicted on
the scan's own grid, written with the results contract of a run into ``<sweep>/cv_ensemble/<name>/`` (reused
while its fold checkpoints do not change) and shown as one row per cross-validation.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .runs import (
    _IGNORED_DIFFERENCES,
    ReportError,
    Run,
    _read_json,
    flatten,
    get_key,
    is_missing,
    read_all_conventions,
    summary_mismatches,
)

FOLDS_KEY, FOLD_KEY = "data.split.folds", "data.split.fold"
#: where a fold run writes its validation cases' scores (segbench.runtime.task.CV_RESULTS)
CV_DIR = Path("results") / "cv"
#: where ``--cv-ensemble`` writes each cross-validation's fold ensemble on the test split (inside the sweep)
ENSEMBLE_DIR = "cv_ensemble"


def num_folds(run: Run) -> int | None:
    """``data.split.folds`` of a run (None: not a fold run of a cross-validation)."""
    value = get_key(run, FOLDS_KEY, None)
    return None if value is None or is_missing(value) else int(value)


def _identity(run: Run) -> str:
    """What the runs of one cross-validation share: every config key but the fold (and paths, run names)."""
    flat = flatten(run.config)
    return repr(sorted((k, repr(v)) for k, v in flat.items()
                       if k != FOLD_KEY and (k == "seed" or not _IGNORED_DIFFERENCES.match(k))))


def _without_fold(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    split = ((config.get("data") or {}).get("split") or {})
    split.pop("fold", None)
    return config


def _fold_scores(run: Run, warn: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A fold run's ``results/cv`` rows: those of the convention the run shows, every convention's, its summary."""
    cv_dir = run.path / CV_DIR
    if not (cv_dir / "summary.json").is_file():
        raise ReportError(f"{run.path} is fold {get_key(run, FOLD_KEY, '?')} of a {num_folds(run)}-fold "
                          f"cross-validation but has no {CV_DIR}/summary.json (its validation cases were not "
                          "scored: written by an older segbench?); run it again, or leave out --cv")
    summary = _read_json(cv_dir / "summary.json")
    frame_all = read_all_conventions(cv_dir / "per_case.csv")
    frame = frame_all[frame_all["convention"] == run.convention].reset_index(drop=True)
    if frame.empty:
        raise ReportError(f"{cv_dir / 'per_case.csv'} holds no rows of convention {run.convention!r}")
    scored = Run(path=cv_dir, config=run.config, summary=summary, per_case=frame, per_case_all=frame_all)
    for problem in summary_mismatches(scored):
        warn(f"{cv_dir}: summary.json disagrees with per_case.csv ({problem}); the table uses per_case.csv")
    return frame, frame_all, summary


def _pool(members: list[Run], folds: int, warn: Callable[[str], None]) -> Run:
    """One cross-validation's fold runs (all K, finished, one per fold) as one run of their pooled cases."""
    members = sorted(members, key=lambda r: int(get_key(r, FOLD_KEY)))
    first = members[0]
    recorded = [(r.summary or {}).get("splits") or {} for r in members]
    fold_lists = recorded[0].get("folds")
    for run, splits in zip(members, recorded):
        if splits.get("folds") != fold_lists or splits.get("test") != recorded[0].get("test"):
            raise ReportError(f"the folds of one cross-validation disagree on the split: {first.path} and {run.path} "
                              "record other folds or test cases in summary.json's splits (another dataset or "
                              "pool?); pool only the runs of one sweep")
    frames, frames_all, summaries = zip(*(_fold_scores(r, warn) for r in members))
    for run, frame in zip(members, frames):
        fold = int(get_key(run, FOLD_KEY))
        if fold_lists is not None and sorted(set(frame["case"])) != sorted(fold_lists[fold]):
            raise ReportError(f"{run.path / CV_DIR / 'per_case.csv'} scores cases {sorted(set(frame['case']))} "
                              f"but fold {fold} validates {sorted(fold_lists[fold])} (splits.json)")
    pooled = pd.concat(frames, ignore_index=True)
    pooled_all = pd.concat(frames_all, ignore_index=True)
    twice = pooled.loc[pooled.duplicated(["case", "organ"]), "case"].unique().tolist()
    if twice:
        raise ReportError(f"case(s) {twice[:5]} are scored by more than one fold of the cross-validation of "
                          f"{first.path.parent}; its folds overlap")
    cases = sorted(set(pooled["case"]))
    if fold_lists is not None:
        pool = sorted(c for fold in fold_lists for c in fold)
        if cases != pool:
            missing = sorted(set(pool) - set(cases))
            raise ReportError(f"the pooled folds of {first.path.parent} leave case(s) {missing[:5]} of the pool "
                              "unscored")
    conv = str(pooled["convention"].iloc[0])
    entry = ((summaries[0].get("by_convention") or {}).get(conv)
             or (summaries[0] if summaries[0].get("convention") == conv else {}))
    organs = list(dict.fromkeys([*((first.summary or {}).get("per_class") or {}), *pooled["organ"]]))
    summary = {"convention": conv, "convention_description": entry.get("convention_description", ""),
               "hd_unit": entry.get("hd_unit"), "per_class": {o: {} for o in organs if o in set(pooled["organ"])},
               "by_convention": {conv: {k: entry.get(k) for k in ("convention", "convention_description", "hd_unit")}},
               "cv": {"folds": folds, "cases": len(cases), "fold_seed": recorded[0].get("fold_seed")},
               "splits": {"folds": fold_lists, "test": recorded[0].get("test")}}
    overrides = [o for o in first.overrides if not o.lstrip("+~").startswith(FOLD_KEY + "=")]
    return Run(path=Path(os.path.commonpath([str(r.path) for r in members])), config=_without_fold(first.config),
               overrides=overrides, summary=summary, per_case=pooled, per_case_all=pooled_all, folds=list(members))


def pool_folds(runs: Sequence[Run], warn: Callable[[str], None]) -> list[Run]:
    """``runs`` with each cross-validation's fold runs replaced by one pooled run (where its first fold was).

    Runs that are not folds of a cross-validation are left out (with one warning): a table of pooled
    validation cases and a run's test cases side by side would compare different cases. A failed fold run
    stays a failed row; the cross-validation it belongs to then lacks that fold and becomes a failed row
    naming the missing fold(s) (with a warning)."""
    others = [r for r in runs if num_folds(r) is None]
    if len(others) == len(runs):
        raise ReportError("--cv: none of the runs is a fold of a cross-validation (data.split.folds is not set); "
                          "run one with segbench-train -m data.split.folds=5 data.split.fold=0,1,2,3,4")
    if others:
        warn(f"--cv: {len(others)} run(s) without data.split.folds left out (not folds of a cross-validation): "
             + ", ".join(str(r.path) for r in others[:3]) + (" ..." if len(others) > 3 else ""))
    groups: dict[str, list[Run]] = {}
    order: list[Any] = []   # runs and group keys in the order of the runs
    for run in runs:
        if num_folds(run) is None:
            continue
        if run.failed:
            order.append(run)
            continue
        key = _identity(run)
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(run)
    out: list[Run] = []
    for item in order:
        if isinstance(item, Run):
            out.append(item)
            continue
        members = groups[item]
        folds = num_folds(members[0])
        by_fold: dict[int, list[Run]] = {}
        for run in members:
            by_fold.setdefault(int(get_key(run, FOLD_KEY)), []).append(run)
        twice = {f: rs for f, rs in by_fold.items() if len(rs) > 1}
        if twice:
            fold, rs = next(iter(twice.items()))
            raise ReportError(f"fold {fold} of one cross-validation has {len(rs)} finished runs ({rs[0].path}, "
                              f"{rs[1].path}); pass the directory of one sweep")
        missing = [f for f in range(folds) if f not in by_fold]
        if missing:
            where = Path(os.path.commonpath([str(r.path) for r in members]))
            message = (f"incomplete {folds}-fold cross-validation: fold(s) {', '.join(map(str, missing))} missing "
                       f"(no finished run; folds {', '.join(map(str, sorted(by_fold)))} in {where})")
            warn(message)
            out.append(Run(path=where, config=_without_fold(members[0].config), error=message, folds=members))
            continue
        out.append(_pool(members, folds, warn))
    return out


def cv_text(runs: Sequence[Run]) -> str:
    """``5-fold CV, 18 cases`` for the pooled runs of a table (each distinct count, when rows differ)."""
    pooled = [r for r in runs if not r.failed and r.summary and "cv" in r.summary]
    folds = sorted({r.summary["cv"]["folds"] for r in pooled})
    cases = sorted({r.summary["cv"]["cases"] for r in pooled})
    if not pooled:
        return "k-fold CV"
    if all(r.summary["cv"].get("ensemble") for r in pooled):
        return f"{'/'.join(map(str, folds))}-fold ensemble, test split of {'/'.join(map(str, cases))} cases"
    return f"{'/'.join(map(str, folds))}-fold CV, {'/'.join(map(str, cases))} cases"


def ensemble_dir(pooled: Run) -> Path:
    """Where a cross-validation's fold ensemble writes: ``<sweep>/cv_ensemble/<its overrides but the fold>``."""
    import re

    name = ",".join(o.lstrip("+~") for o in pooled.overrides) or "ensemble"
    return pooled.path / ENSEMBLE_DIR / re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)[:120]


def fold_ensembles(runs: Sequence[Run], warn: Callable[[str], None], convention: str | None = None,
                   progress: Callable[[str], None] = print) -> list[Run]:
    """``runs`` (from :func:`pool_folds`) with each pooled cross-validation replaced by its fold ensemble's scores
    on the test split (failed rows stay). Scored once: a later call reads ``<dir>/results`` back while the fold
    checkpoints it names are unchanged."""
    import json

    from ..runtime.predict import load_member, recorded_paths, resolve_device, score_test_split
    from .runs import load_run

    out: list[Run] = []
    for run in runs:
        if run.failed or not run.folds:
            out.append(run)
            continue
        folds = sorted(run.folds, key=lambda r: int(get_key(r, FOLD_KEY)))
        target = ensemble_dir(run)
        summary = target / "results" / "summary.json"
        try:
            recorded = json.loads(summary.read_text())["run"]["ensemble"] if summary.is_file() else None
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if recorded is not None:
            newest = max((Path(c).stat().st_mtime for c in recorded if Path(c).is_file()), default=None)
            if len(recorded) != len(folds) or newest is None or newest > summary.stat().st_mtime:
                recorded = None
        if recorded is None:
            progress(f"segbench-table: scoring the test split with the {len(folds)}-fold ensemble of {run.path} "
                     f"-> {target}")
            device = resolve_device("auto")
            members = [load_member(r.path, recorded_paths(r.path, target), device) for r in folds]
            score_test_split(members, target)
        ensemble = load_run(target, convention)
        cases = len(set(ensemble.per_case["case"])) if ensemble.per_case is not None else 0
        ensemble.summary = {**(ensemble.summary or {}), "cv": {"folds": len(folds), "cases": cases, "ensemble": True}}
        out.append(ensemble)
    return out
