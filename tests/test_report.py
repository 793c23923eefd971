"""segbench-table and segbench-figures on hand-made run directories with known numbers.

The synthetic sweep (``sweep`` fixture) is shaped like a Hydra multirun of
``loss=ce,dice,ce_dice seed=1,2`` plus one failed job. Organs aorta, liver,
pancreas; cases case0001..case0004; pancreas is absent from both masks in
case0004 (NaN, excluded). Every per-case DSC is

    dsc = BASE[loss] + SEED_OFFSET[seed] + ORGAN_OFFSET[organ] + CASE_OFFSET[loss][case]

and hd95 = 100 * (1 - dsc) mm, so every expected number below follows by hand.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from helpers import console
from segbench.report import table as table_cli

ORGANS = ["aorta", "liver", "pancreas"]
CASES = ["case0001", "case0002", "case0003", "case0004"]
BASE = {"ce": 0.70, "dice": 0.79, "ce_dice": 0.80, "afw_dice": 0.82}
SEED_OFFSET = {1: -0.01, 2: +0.01, 3: 0.0}
ORGAN_OFFSET = {"aorta": +0.05, "liver": +0.10, "pancreas": -0.15}
DEFAULT_CASE_OFFSET = [-0.03, -0.01, +0.01, +0.03]
CASE_OFFSET = {"ce": DEFAULT_CASE_OFFSET, "ce_dice": DEFAULT_CASE_OFFSET, "afw_dice": DEFAULT_CASE_OFFSET,
               "dice": [-0.06, +0.02, -0.01, +0.05]}
SWEEP = [("ce", 1), ("ce", 2), ("dice", 1), ("dice", 2), ("ce_dice", 1), ("ce_dice", 2)]
FOCAL_ERROR = "loss 'focal' has no option 'gama'; its options are: alpha, gamma"
CONVENTION_DESCRIPTION = "default: spacing-aware (test fixture)"


def case_rows(loss: str, seed: int, convention: str = "default") -> list[dict]:
    rows = []
    for c, case in enumerate(CASES):
        for label, organ in enumerate(ORGANS, start=1):
            if organ == "pancreas" and case == "case0004":
                dsc = hd95 = float("nan")
                status, gt, pred = "both_empty", 0, 0
            else:
                dsc = BASE[loss] + SEED_OFFSET[seed] + ORGAN_OFFSET[organ] + CASE_OFFSET[loss][c]
                hd95 = 100.0 * (1.0 - dsc)
                status, gt, pred = "ok", 1000, 990
            rows.append({"case": case, "organ": organ, "label": label, "dsc": dsc, "hd95": hd95, "hd": hd95,
                         "assd": hd95 / 10, "nsd": dsc, "gt_voxels": gt, "pred_voxels": pred, "status": status,
                         "convention": convention})
    return rows


def write_run(run_dir: Path, loss: str, seed: int, *, rows: list[dict] | None = None, convention: str = "default",
              extra_config: dict | None = None, error: str | None = None) -> Path:
    """Write one run directory of the results contract (``error``: a failed job instead)."""
    config = {"seed": seed, "loss": {"name": loss}, "model": {"_target_": "segbench.models.UNet", "width": 32},
              "data": {"name": "synthetic", "class_names": ["background", *ORGANS]},
              "metrics": {"convention": convention}}
    for key, value in (extra_config or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"loss={loss}", f"seed={seed}"]))
    results = run_dir / "results"
    results.mkdir()
    if error is not None:
        (results / "error.json").write_text(json.dumps({"error": error, "type": "ValueError"}))
        return run_dir
    rows = case_rows(loss, seed, convention) if rows is None else rows
    with open(results / "per_case.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    per_class = {}
    for organ in ORGANS:
        mine = [r for r in rows if r["organ"] == organ]
        per_class[organ] = {k: float(np.nanmean([r[k] for r in mine])) for k in ("dsc", "hd95", "hd", "assd", "nsd")}
        per_class[organ].update(n_cases=len(mine), n_excluded=sum(math.isnan(r["dsc"]) for r in mine),
                                n_worst_case=0)
    summary = {"convention": convention, "convention_description": CONVENTION_DESCRIPTION,
               "hd_unit": "voxels" if convention == "transunet" else "mm",
               "mean_dsc": float(np.mean([per_class[o]["dsc"] for o in ORGANS])),
               "mean_hd95": float(np.mean([per_class[o]["hd95"] for o in ORGANS])),
               "num_cases": len(CASES), "per_class": per_class, "config": config, "run": {}, "splits": {}}
    (results / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun-shaped dir: jobs 0-5 = 3 losses x 2 seeds, job 6 = a failed job."""
    root = tmp_path / "multirun" / "2025-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    for job, (loss, seed) in enumerate(SWEEP):
        write_run(root / str(job), loss, seed)
    write_run(root / "6", "focal", 1, error=FOCAL_ERROR)
    return root


def run_table(capsys, *argv) -> tuple[str, str]:
    assert table_cli.main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def markdown_rows(markdown: str) -> dict[str, list[str]]:
    """Table body as {label: cells}, bold markers stripped (failed rows keyed 'label [failed]')."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    header, body = lines[0], lines[1:]
    rows = {"__header__": [c.strip() for c in header.strip("|").split(" | ")]}
    for line in body:
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split(" | ")]
        key = cells[0] + (" [failed]" if cells[2].startswith("failed:") else "")
        rows[key] = cells
    return rows


# ----------------------------------------------------------------------------------------------
# segbench-table


def test_table_rows_columns_and_numbers(sweep, tmp_path, capsys):
    out_dir = tmp_path / "report"
    out, err = run_table(capsys, sweep, "--group-by", "loss.name", "--baseline", "ce_dice", "--percent",
                         "--organs", "liver,aorta,pancreas", "--out", out_dir)
    rows = markdown_rows(out)
    assert rows["__header__"] == ["Method", "n", "DSC (%)", "HD95 (mm)", "liver", "aorta", "pancreas",
                                  "p vs ce_dice"]
    # rows in sweep order, then the failed job; each group holds 2 seeds
    assert list(rows)[1:] == ["ce", "dice", "ce_dice", "focal [failed]"]
    # ce_dice, seed 1: aorta .80-.01+.05 = .84, liver .89, pancreas .80-.01-.15 + mean(-.03,-.01,.01) = .63
    #   (case0004 excluded) -> mean .78667; seed 2 is .02 higher -> .80667.
    #   Over seeds: 79.67 % ± std(ddof=1) of (78.67, 80.67) = 1.41; HD95 = 100 (1 - DSC) -> 20.33 ± 1.41 mm.
    assert rows["ce_dice"] == ["ce_dice", "2", "79.67 ± 1.41", "20.33 ± 1.41", "90.00 ± 1.41", "85.00 ± 1.41",
                               "64.00 ± 1.41", "ref"]
    # ce: base .70 -> aorta 75, liver 80, pancreas 54, mean 69.67; every case is 10 points below ce_dice:
    #   4 negative differences, W+ = 0: exact two-sided p = 2 / 2^4 = 0.125.
    assert rows["ce"] == ["ce", "2", "69.67 ± 1.41", "30.33 ± 1.41", "80.00 ± 1.41", "75.00 ± 1.41",
                          "54.00 ± 1.41", "0.125"]
    # dice: base .79, pancreas .79 - .15 + mean(-.06, .02, -.01) = .62333; mean (84 + 89 + 62.33) / 3 = 78.44.
    #   per-case differences to ce_dice -.01 + (-.03, .03, -.02, .02) = (-.04, .02, -.03, .01):
    #   W+ = 1 + 2 = 3; P(W+ <= 3) = 5/16 ({}, {1}, {2}, {3}, {1,2}) -> two-sided p = 10/16 = 0.625.
    assert rows["dice"] == ["dice", "2", "78.44 ± 1.41", "21.56 ± 1.41", "89.00 ± 1.41", "84.00 ± 1.41",
                            "62.33 ± 1.41", "0.625"]
    assert rows["focal [failed]"][1] == "0"
    assert rows["focal [failed]"][2] == f"failed: {FOCAL_ERROR} (2025-01-01_00-00-00/6)".replace("|", "\\|")
    # best per column in bold: ce_dice has the highest DSC and lowest HD95 everywhere
    ce_dice_line = next(ln for ln in out.splitlines() if ln.startswith("| ce_dice "))
    assert ce_dice_line.count("**") == 2 * 5
    assert "Metric convention: default; HD in mm; DSC in %." in out
    assert "failed job" in err
    assert (out_dir / "table.md").read_text() == out


def test_table_wilcoxon_matches_scipy_on_seed_averaged_cases(sweep, tmp_path, capsys):
    run_table(capsys, sweep, "--baseline", "ce_dice", "--out", tmp_path)
    frame = __import__("pandas").read_csv(tmp_path / "table.csv")

    def case_means(loss):  # per case: mean over organs (NaN skipped), then over the two seeds
        per_seed = [[np.nanmean([r["dsc"] for r in case_rows(loss, s) if r["case"] == c]) for c in CASES]
                    for s in (1, 2)]
        return np.mean(per_seed, axis=0)

    for loss in ("ce", "dice"):
        expected = wilcoxon(case_means(loss), case_means("ce_dice")).pvalue
        row = frame[frame["label"] == loss].iloc[0]
        assert row["p_value"] == pytest.approx(expected, abs=1e-12)
        assert row["n_pairs"] == 4
    assert frame[frame["label"] == "dice"]["p_value"].iloc[0] == pytest.approx(0.625)


def test_table_csv_is_full_precision_and_states_units(sweep, tmp_path, capsys):
    run_table(capsys, sweep, "--out", tmp_path, "--metric", "dsc,hd95,nsd")
    import pandas as pd

    frame = pd.read_csv(tmp_path / "table.csv")
    assert list(frame["label"]) == ["ce", "dice", "ce_dice", "focal"]
    assert list(frame["status"]) == ["ok", "ok", "ok", "failed"]
    assert frame["error"].iloc[3] == FOCAL_ERROR
    assert set(frame["convention"]) == {"default"} and set(frame["hd_unit"]) == {"mm"}
    assert set(frame["dsc_unit"]) == {"fraction"}
    ce_dice = frame.iloc[2]
    assert ce_dice["n_runs"] == 2
    # base .80 (seeds -.01/+.01 average out) + organ offsets (.05, .10, -.15 - .01 for pancreas) / 3
    assert ce_dice["mean_dsc"] == pytest.approx(0.80 + (0.05 + 0.10 - 0.16) / 3, abs=1e-6)
    assert ce_dice["mean_dsc_std"] == pytest.approx(0.02 / math.sqrt(2), abs=1e-6)
    assert ce_dice["dsc_pancreas"] == pytest.approx(0.64, abs=1e-6)
    assert ce_dice["mean_nsd"] == pytest.approx(ce_dice["mean_dsc"], abs=1e-6)
    assert math.isnan(frame["mean_dsc"].iloc[3])
    assert "p_value" not in frame.columns  # no --baseline, no test


def test_table_latex_is_booktabs_with_best_in_bold(sweep, tmp_path, capsys):
    run_table(capsys, sweep, "--baseline", "ce_dice", "--percent", "--out", tmp_path)
    tex = (tmp_path / "table.tex").read_text()
    # Method, n, DSC, HD95, aorta, liver, pancreas, p: the Markdown table's columns
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{lrrrrrrr}", "\\caption{"):
        assert command in tex
    assert "Method & $n$ & DSC (\\%) & HD95 (mm)" in tex
    assert "Metric convention: default; HD in mm; DSC in \\%." in tex
    assert "ce\\_dice & 2 & \\textbf{79.67} $\\pm$ 1.41 & \\textbf{20.33} $\\pm$ 1.41 & \\textbf{85.00}" in tex
    assert "ce & 2 & 69.67 $\\pm$ 1.41 & 30.33 $\\pm$ 1.41 & 75.00 $\\pm$ 1.41" in tex
    # a failed row: n = 0, its message over the 6 remaining columns
    assert "focal & 0 & \\multicolumn{6}{l}{failed: loss 'focal' has no option 'gama'" in tex


def test_table_bolds_only_a_strict_best(tmp_path, capsys):
    # dice and afw_dice runs with the same per-case numbers: a tie in every column, so nothing is bold;
    # ce is worse everywhere and is never bold
    for job, loss in enumerate(["ce", "dice", "afw_dice"]):
        write_run(tmp_path / "sweep" / str(job), loss, 1, rows=case_rows("dice" if loss == "afw_dice" else loss, 1))
    out, _ = run_table(capsys, tmp_path / "sweep", "--percent", "--out", tmp_path / "report")
    assert "**" not in out
    tex = (tmp_path / "report" / "table.tex").read_text()
    assert "\\textbf" not in tex
    # afw_dice's aorta DSC 0.0004 higher in one case: its aorta mean 83.00 + 0.04 / 4 = 83.01 % and its mean DSC
    # (83 + 88 + 61.333) / 3 = 77.444 + 0.01 / 3 = 77.448 -> 77.45 % beat dice's 83.00 and 77.44: bold there
    # alone; liver, pancreas and HD95 (unchanged) stay tied: not bold
    rows = case_rows("dice", 1)
    for row in rows:
        if row["organ"] == "aorta" and row["case"] == "case0001":
            row["dsc"] += 0.0004
    write_run(tmp_path / "sweep2" / "0", "dice", 1)
    write_run(tmp_path / "sweep2" / "1", "afw_dice", 1, rows=rows)
    out, _ = run_table(capsys, tmp_path / "sweep2", "--percent", "--out", tmp_path / "report2")
    afw = next(ln for ln in out.splitlines() if ln.startswith("| afw_dice "))
    dice = next(ln for ln in out.splitlines() if ln.startswith("| dice "))
    assert afw.count("**") == 4 and "**77.45**" in afw and "**83.01**" in afw and "**" not in dice


def test_table_paper_preset_orders_columns(tmp_path, capsys):
    organs = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    rows = [{"case": "case0001", "organ": o, "label": i + 1, "dsc": 0.5 + 0.05 * i, "hd95": 1.0, "hd": 1.0,
             "assd": 1.0, "nsd": 1.0, "gt_voxels": 1, "pred_voxels": 1, "status": "ok", "convention": "default"}
            for i, o in enumerate(organs)]
    write_run(tmp_path / "run", "ce_dice", 1, rows=rows)
    out, _ = run_table(capsys, tmp_path / "run", "--organs", "paper-table1", "--out", tmp_path / "r")
    header = markdown_rows(out)["__header__"]
    assert header[4:] == ["aorta", "kidney_l", "gallbladder", "kidney_r", "liver", "pancreas", "spleen", "stomach"]
    # aorta is the 7th organ of the file: 0.5 + 0.05 * 6 = 0.8; a single run has no ± std
    assert markdown_rows(out)["ce_dice"][4] == "0.800"


def test_table_groups_by_two_keys(tmp_path, capsys):
    for i, gamma in enumerate([0.25, 0.5]):
        write_run(tmp_path / "sweep" / str(i), "afw_dice", 1, extra_config={"loss": {"gamma": gamma}})
    write_run(tmp_path / "sweep" / "2", "ce_dice", 1)
    out, _ = run_table(capsys, tmp_path / "sweep", "--group-by", "loss.name", "--group-by", "loss.gamma",
                       "--out", tmp_path / "r")
    assert list(markdown_rows(out))[1:] == ["afw_dice, gamma=0.25", "afw_dice, gamma=0.5", "ce_dice"]


def test_table_warns_when_a_row_averages_different_configs(tmp_path, capsys):
    for i, gamma in enumerate([0.25, 0.5]):
        write_run(tmp_path / "sweep" / str(i), "afw_dice", 1, extra_config={"loss": {"gamma": gamma}})
    out, err = run_table(capsys, tmp_path / "sweep", "--out", tmp_path / "r")
    assert "row 'afw_dice' averages runs whose configs differ in loss.gamma" in err


def test_table_warns_when_summary_disagrees_with_per_case(sweep, tmp_path, capsys):
    summary_path = sweep / "0" / "results" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["mean_dsc"] = 0.99
    summary_path.write_text(json.dumps(summary))
    out, err = run_table(capsys, sweep, "--out", tmp_path)
    assert "summary.json disagrees with per_case.csv (mean_dsc: summary.json 0.99, per_case.csv 0.686667)" in err
    assert markdown_rows(out)["ce"][2] == "0.697 ± 0.014"  # the table keeps the per_case.csv numbers


def expect_exit_2(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        table_cli.main([str(a) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_table_refuses_to_mix_conventions(sweep, tmp_path, capsys):
    write_run(sweep / "7", "ce_dice", 3, convention="transunet")
    err = expect_exit_2(capsys, sweep, "--out", tmp_path)
    assert err.startswith("segbench-table: error: refusing to put runs of different metric conventions")
    assert "--convention default or --convention transunet" in err
    # filtering keeps one convention (and the failed job, whose convention is taken from its config)
    out, _ = run_table(capsys, sweep, "--convention", "transunet", "--out", tmp_path)
    assert list(markdown_rows(out))[1:] == ["ce_dice"]
    assert "Metric convention: transunet; HD in voxels" in out
    out, _ = run_table(capsys, sweep, "--convention", "default", "--out", tmp_path)
    assert list(markdown_rows(out))[1:] == ["ce", "dice", "ce_dice", "focal [failed]"]


@pytest.mark.parametrize("content, reason", [
    ("case,organ,dsc\ncase0001,aorta,0.5\n", "missing column(s) hd95, status, convention"),
    ("case,organ,label,dsc,hd95,hd,assd,nsd,gt_voxels,pred_voxels,status,convention\n"
     "case0001,aorta,1,not-a-number,1,1,1,1,1,1,ok,default\n", "column 'dsc' is not numeric"),
    ("", "No columns to parse from file"),
])
def test_table_corrupt_per_case_csv_is_a_one_line_error(sweep, tmp_path, capsys, content, reason):
    bad = sweep / "3" / "results" / "per_case.csv"
    bad.write_text(content)
    err = expect_exit_2(capsys, sweep, "--out", tmp_path)
    assert err == f"segbench-table: error: corrupt per_case.csv: {bad}: {reason}" or \
        (err.startswith(f"segbench-table: error: corrupt per_case.csv: {bad}: ") and reason in err)


def test_table_missing_per_case_csv_names_the_file(sweep, tmp_path, capsys):
    missing = sweep / "2" / "results" / "per_case.csv"
    missing.unlink()
    err = expect_exit_2(capsys, sweep, "--out", tmp_path)
    assert err.startswith(f"segbench-table: error: missing per_case.csv: {missing}")


def test_table_dirs_without_runs_are_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    err = expect_exit_2(capsys, tmp_path / "empty", "--out", tmp_path / "r")
    assert err.startswith(f"segbench-table: error: no runs found in {tmp_path / 'empty'}")
    err = expect_exit_2(capsys, tmp_path / "nowhere", "--out", tmp_path / "r")
    assert err == f"segbench-table: error: no such directory: {tmp_path / 'nowhere'}"


def test_table_unknown_baseline_and_organ_are_errors(sweep, tmp_path, capsys):
    err = expect_exit_2(capsys, sweep, "--baseline", "ce+dice", "--out", tmp_path)
    assert err == "segbench-table: error: baseline 'ce+dice' is not a row label; rows: ce, dice, ce_dice"
    err = expect_exit_2(capsys, sweep, "--organs", "aorta,kidney", "--out", tmp_path)
    assert err == "segbench-table: error: organ(s) kidney not in any run; available: aorta, liver, pancreas"


def test_table_accepts_single_run_and_results_dirs(sweep, tmp_path, capsys):
    out, _ = run_table(capsys, sweep / "4", sweep / "5" / "results", sweep / "4", "--out", tmp_path)
    rows = markdown_rows(out)
    assert list(rows)[1:] == ["ce_dice"] and rows["ce_dice"][1] == "2"  # duplicates counted once


# ----------------------------------------------------------------------------------------------
# segbench-figures

from segbench.report import figures as figures_cli  # noqa: E402 - beside the tests of the command it runs


def run_figures(capsys, *argv) -> str:
    assert figures_cli.main([str(a) for a in argv]) == 0
    return capsys.readouterr().err


def assert_figure_files(out_dir: Path, stem: str) -> None:
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def rows_with_base(loss: str, seed: int, base: float) -> list[dict]:
    """case_rows with BASE[loss] replaced by ``base`` (so DSC depends on the swept value)."""
    rows = case_rows(loss, seed)
    shift = base - BASE[loss]
    for row in rows:
        if row["status"] == "ok":
            row["dsc"] += shift
            row["hd95"] = row["hd"] = 100.0 * (1.0 - row["dsc"])
    return rows


def test_figure_dsc_vs_gamma(tmp_path, capsys):
    sweep_dir = tmp_path / "gamma"
    bases = {0.25: 0.84, 0.5: 0.82, 1.0: 0.78}
    job = 0
    for gamma, base in bases.items():
        for seed in (1, 2):
            write_run(sweep_dir / str(job), "afw_dice", seed, rows=rows_with_base("afw_dice", seed, base),
                      extra_config={"loss": {"gamma": gamma}})
            job += 1
    write_run(sweep_dir / str(job), "ce_dice", 1)  # no gamma: left out with a warning
    write_run(sweep_dir / str(job + 1), "afw_dice", 1, error="boom", extra_config={"loss": {"gamma": 2.0}})
    err = run_figures(capsys, "gamma", sweep_dir, "--key", "loss.gamma", "--percent", "--per-organ",
                      "--out", tmp_path / "fig")
    assert "1 run(s) without loss.gamma left out" in err and "1 failed job(s) left out" in err
    assert_figure_files(tmp_path / "fig", "gamma")
    import pandas as pd

    curve = pd.read_csv(tmp_path / "fig" / "gamma.csv")
    assert list(curve["x"]) == [0.25, 0.5, 1.0] and list(curve["n_runs"]) == [2, 2, 2]
    # mean DSC of a run = base + seed offset + (.05 + .10 - .16) / 3; the seeds average out, std = .02 / sqrt 2
    expected = [100 * (b + (0.05 + 0.10 - 0.16) / 3) for b in bases.values()]
    assert curve["mean"].to_numpy() == pytest.approx(expected, abs=1e-4)
    assert curve["std"].to_numpy() == pytest.approx([100 * 0.02 / math.sqrt(2)] * 3, abs=1e-4)
    assert curve["organ:liver"].to_numpy() == pytest.approx([100 * (b + 0.10) for b in bases.values()], abs=1e-4)


def test_figure_dsc_vs_number_of_focused_organs(tmp_path, capsys):
    # data.class_names = background + 3 organs, so "all" focuses 3
    for job, (focused, base) in enumerate([([], 0.76), (["pancreas"], 0.78), (["pancreas", "aorta"], 0.79),
                                           ("all", 0.81)]):
        write_run(tmp_path / "sweep" / str(job), "afw_dice", 1, rows=rows_with_base("afw_dice", 1, base),
                  extra_config={"loss": {"focused_classes": focused}})
    run_figures(capsys, "focused", tmp_path / "sweep", "--out", tmp_path / "fig")
    assert_figure_files(tmp_path / "fig", "focused")
    import pandas as pd

    curve = pd.read_csv(tmp_path / "fig" / "focused.csv")
    assert list(curve["x"]) == [0, 1, 2, 3]
    # one seed (offset -.01) per point: no std
    assert curve["mean"].to_numpy() == pytest.approx([b - 0.01 - 0.01 / 3 for b in (0.76, 0.78, 0.79, 0.81)],
                                                     abs=1e-5)


def test_figure_per_organ_bars(sweep, tmp_path, capsys):
    err = run_figures(capsys, "organs", sweep, "--group-by", "loss.name", "--percent", "--out", tmp_path)
    assert "1 failed job(s) left out" in err
    assert_figure_files(tmp_path, "organs")
    import pandas as pd

    bars = pd.read_csv(tmp_path / "organs.csv").set_index(["group", "organ"])
    # the same numbers as the table: ce_dice aorta 85.00 ± 1.41, mean 79.67
    assert bars.loc[("ce_dice", "aorta"), "mean"] == pytest.approx(85.0, abs=1e-4)
    assert bars.loc[("ce_dice", "aorta"), "std"] == pytest.approx(1.41421, abs=1e-4)
    assert bars.loc[("dice", "mean"), "mean"] == pytest.approx(78.4444, abs=1e-3)
    assert sorted(set(bars.index.get_level_values(0))) == ["ce", "ce_dice", "dice"]


def test_figures_refuse_mixed_conventions(sweep, tmp_path, capsys):
    write_run(sweep / "7", "ce_dice", 3, convention="transunet")
    with pytest.raises(SystemExit) as info:
        figures_cli.main(["organs", str(sweep), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("segbench-figures: error: refusing to put runs of different metric "
                                              "conventions in one figure")


def test_figure_loss_vs_dice_is_computed_by_afw_dice(tmp_path, capsys):
    run_figures(capsys, "loss-vs-dice", "--gammas", "0.25,0.5,1.0", "--points", "19", "--out", tmp_path)
    assert_figure_files(tmp_path, "loss_vs_dice")
    import pandas as pd

    curves = pd.read_csv(tmp_path / "loss_vs_dice.csv")
    assert curves["source"].iloc[0].startswith("afw_dice")
    # the organ gets probability p = d / (2 - d) so that its soft Dice 2p / (1 + p) = d
    assert curves["dice"].to_numpy() == pytest.approx(curves["dice_target"].to_numpy(), abs=1e-4)
    # the loss's value is L^gamma with L = 1 - Dice, its autograd gradient -gamma L^(gamma - 1)
    loss_l = 1.0 - curves["dice"]
    assert curves["focal_term"].to_numpy() == pytest.approx((loss_l ** curves["gamma"]).to_numpy(), rel=1e-4)
    expected_grad = -curves["gamma"] * loss_l ** (curves["gamma"] - 1)
    assert curves["d_focal_d_dice"].to_numpy() == pytest.approx(expected_grad.to_numpy(), rel=1e-3)
    # gamma = 0.25 at Dice 0.5: L^gamma = 0.5^0.25 = 0.8409
    half = curves[(curves["gamma"] == 0.25) & (curves["dice_target"].round(6) == 0.5)]
    assert half["focal_term"].iloc[0] == pytest.approx(0.8409, abs=1e-3)


def test_figure_loss_vs_dice_falls_back_to_dice_without_afw(tmp_path, capsys, monkeypatch):
    import segbench.losses as losses

    registered = losses.available_losses()
    monkeypatch.setattr(losses, "available_losses", lambda: [n for n in registered if n != "afw_dice"])
    run_figures(capsys, "loss-vs-dice", "--gammas", "0.5", "--points", "9", "--out", tmp_path)
    import pandas as pd

    curves = pd.read_csv(tmp_path / "loss_vs_dice.csv")
    assert curves["source"].iloc[0] == "dice loss value ^ gamma (afw_dice not registered)"
    assert curves["focal_term"].to_numpy() == pytest.approx(((1 - curves["dice"]) ** 0.5).to_numpy(), rel=1e-4)
    assert_figure_files(tmp_path, "loss_vs_dice")


# ----------------------------------------------------------------------------------------------
# the loss-behaviour probe

PROBE_SMALL = ["--size", "40", "--large-radius", "12", "--small-radius", "3", "--reference-radius", "3",
               "--steps", "4"]


@pytest.fixture
def probe_test_losses():
    """Three throw-away losses: one whose forward fails, one constant, one whose constructor fails."""
    import torch

    from segbench.losses import LOSSES, SegLoss, register_loss

    @register_loss("_probe_broken")
    class Broken(SegLoss):
        def forward(self, logits, target):
            raise RuntimeError("needs precomputed distance maps")

    @register_loss("_probe_constant")
    class Constant(SegLoss):
        def forward(self, logits, target):
            return logits.sum() * 0.0 + torch.tensor(1.0)

    @register_loss("_probe_unbuildable")
    class Unbuildable(SegLoss):
        def __init__(self, num_classes: int | None = None):
            super().__init__()
            raise ValueError("unbuildable needs a distance map config")

    yield ["_probe_broken", "_probe_constant", "_probe_unbuildable"]
    for name in ("_probe_broken", "_probe_constant", "_probe_unbuildable"):
        LOSSES.pop(name, None)


def test_probe_flags_monotonic_losses_and_reports_failures(probe_test_losses, tmp_path, capsys):
    losses = ",".join(["ce", "dice", *probe_test_losses])
    assert figures_cli.main(["probe", "--losses", losses, *PROBE_SMALL, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert_figure_files(tmp_path, "probe")
    table = (tmp_path / "probe.md").read_text()
    assert captured.out == table
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert lines["ce"].startswith("| ce | yes | yes | yes | yes | ")
    assert lines["dice"].startswith("| dice | yes | yes | yes | yes | ")
    assert lines["_probe_constant"].startswith("| _probe_constant | flat | flat | flat | flat | - | ok")
    assert lines["_probe_broken"].endswith("| forward failed: RuntimeError: needs precomputed distance maps |")
    assert lines["_probe_unbuildable"].endswith("| build failed: ValueError: unbuildable needs a distance map "
                                                "config |")
    assert "loss _probe_broken: forward failed" in captured.err
    import pandas as pd

    curves = pd.read_csv(tmp_path / "probe.csv")
    # 2 objects x 2 error kinds x 5 fractions for each loss that ran
    assert curves.groupby("loss").size().to_dict() == {"_probe_constant": 20, "ce": 20, "dice": 20}
    ce = curves[curves["loss"] == "ce"]
    # CE counts wrong pixels over the whole image: the same rise for fp and fn of equal size...
    fp = ce[(ce["object"] == "large") & (ce["error"] == "fp")]["value"].to_numpy()
    fn = ce[(ce["object"] == "large") & (ce["error"] == "fn")]["value"].to_numpy()
    assert fp == pytest.approx(fn, rel=1e-4)
    # ...and the normalisation puts the largest rise of each loss at 1
    assert curves.groupby("loss")["normalized"].max().to_dict() == pytest.approx(
        {"_probe_constant": 0.0, "ce": 1.0, "dice": 1.0})
    # the discs are centred between pixels (19.5, 19.5): radius 3 -> 4 x 8 = 32 pixels, radius 12 -> 448.
    # CE's rise is (wrong pixels) x 2 margin / N, so at 50 % fn small / large = 16 / 224
    summary = pd.read_csv(tmp_path / "probe_summary.csv").set_index("loss")
    pixels = curves[curves["loss"] == "ce"].groupby("object")["object_pixels"].first().to_dict()
    assert pixels == {"large": 448, "small": 32}
    assert summary.loc["ce", "small_over_large_fn"] == pytest.approx(16 / 224, rel=1e-4)


def test_probe_runs_every_registered_loss(tmp_path, capsys):
    from segbench.losses import available_losses
    from segbench.report.probe import ProbeSettings, run_probe

    # the smallest useful scene (error fractions 0 and 1 only): this test grows with the registry
    curves, summary = run_probe(["all"], ProbeSettings(size=32, large_radius=9, small_radius=2,
                                                       reference_radius=2, steps=1))
    assert list(summary["loss"]) == available_losses()
    # every registered loss builds from its config and gives finite values: 4 curves x 2 fractions each
    for _, row in summary.iterrows():
        mine = curves[curves["loss"] == row["loss"]]
        assert row["status"] == "ok" and len(mine) == 8, row.to_dict()
        assert np.isfinite(mine.select_dtypes("number").to_numpy(float)).all(), row["loss"]


# ----------------------------------------------------------------------------------------------
# end to end: a real Hydra sweep through the command line, then segbench-table


@pytest.mark.slow  # a 6-job sweep
def test_table_of_a_real_sweep(phantom_dir, tmp_path):
    import os

    import pandas as pd

    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = console("train", "-m", "debug=smoke", "loss=ce,dice,ce_dice", "seed=1,2", "num_threads=1",
                   f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep_dir / "multirun.yaml").is_file()
    proc = console("table", str(sweep_dir), "--group-by", "loss.name", "--decimals", "4",
                   "--out", str(tmp_path / "report"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = markdown_rows(proc.stdout)
    assert list(rows)[1:] == ["ce", "dice", "ce_dice"]

    # recompute every cell from the six per_case.csv files
    expected = {}
    for job in range(6):
        run_dir = sweep_dir / str(job)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        frame = pd.read_csv(run_dir / "results" / "per_case.csv")
        assert set(frame["convention"]) == {"default", "transunet"}  # every run scores both
        frame = frame[frame["convention"] == "default"]  # the run's own (metrics.convention): the table's default
        per_organ = frame.groupby("organ", sort=False)[["dsc", "hd95"]].mean()  # NaN (excluded) skipped
        values = [per_organ["dsc"].mean(), per_organ["hd95"].mean(), *per_organ["dsc"]]
        expected.setdefault(config["loss"]["name"], []).append(values)
    header = rows["__header__"]
    assert header[:4] == ["Method", "n", "DSC", "HD95 (mm)"]
    assert header[4:] == list(per_organ.index)  # the organ order of the summaries
    for loss, runs in expected.items():
        assert len(runs) == 2, loss
        cells = [f"{np.mean(col):.4f} ± {np.std(col, ddof=1):.4f}" for col in zip(*runs)]
        assert rows[loss] == [loss, "2", *cells]


# ----------------------------------------------------------------------------------------------
# two conventions per run, and column groups (the paper's Tables 3-5: one group per dataset)


def write_dual_run(run_dir: Path, loss: str, seed: int, *, data_name: str = "synthetic", dsc_shift: float = 0.0,
                   case_prefix: str = "case", report_convention: str | None = None) -> Path:
    """A run as segbench writes it now: rows of BOTH conventions, labelled with convention and hd_unit.
    The transunet rows have the same DSC and HD95 = 3 x the default one (a voxel is 1/3 mm here), so a
    table that mixed them, or showed the wrong one, would show other numbers."""
    base = [dict(r, case=r["case"].replace("case", case_prefix), dsc=r["dsc"] + dsc_shift,
                 hd95=100.0 * (1.0 - r["dsc"] - dsc_shift)) for r in case_rows(loss, seed)]
    rows = [dict(r, hd_unit="mm") for r in base]
    rows += [dict(r, convention="transunet", hd95=3 * r["hd95"], hd_unit="voxels") for r in base]
    write_run(run_dir, loss, seed, rows=rows, extra_config={
        "data": {"name": data_name}, "metrics": {"convention": "default", "report_convention": report_convention}})
    by_convention = {}
    for conv, unit in (("default", "mm"), ("transunet", "voxels")):
        mine = [r for r in rows if r["convention"] == conv]
        per_class = {o: {k: float(np.nanmean([r[k] for r in mine if r["organ"] == o])) for k in ("dsc", "hd95")}
                     for o in ORGANS}
        by_convention[conv] = {"convention": conv, "convention_description": f"{conv}: test fixture",
                               "hd_unit": unit, "per_class": per_class,
                               "mean_dsc": float(np.mean([per_class[o]["dsc"] for o in ORGANS])),
                               "mean_hd95": float(np.mean([per_class[o]["hd95"] for o in ORGANS]))}
    summary_path = run_dir / "results" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(by_convention["default"], conventions=["default", "transunet"], by_convention=by_convention)
    summary_path.write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def datasets_sweep(tmp_path: Path) -> Path:
    """Losses ce, ce_dice x seeds 1, 2 x datasets synapse, abdomenct1k (DSC 5 points higher, other case ids)."""
    root = tmp_path / "multirun" / "2025-02-02_00-00-00"
    root.mkdir(parents=True)
    job = 0
    for data_name, shift, prefix in (("synapse", 0.0, "case"), ("abdomenct1k", 0.05, "abd")):
        for loss in ("ce", "ce_dice"):
            for seed in (1, 2):
                write_dual_run(root / str(job), loss, seed, data_name=data_name, dsc_shift=shift, case_prefix=prefix,
                               report_convention="transunet")
                job += 1
    return root


def test_a_run_scored_under_two_conventions_shows_one_chosen_by_flag_or_config(tmp_path, capsys):
    root = tmp_path / "runs"
    write_dual_run(root / "0", "ce_dice", 1, report_convention="transunet")
    write_dual_run(root / "1", "ce_dice", 2, report_convention="transunet")
    # ce_dice seeds 1, 2: mean DSC 78.67 / 80.67 % -> HD95 21.33 / 19.33 mm; x 3 in voxels: 64.00 / 58.00
    out, err = run_table(capsys, root, "--percent", "--out", tmp_path / "a")
    assert markdown_rows(out)["ce_dice"][:4] == ["ce_dice", "2", "79.67 ± 1.41", "61.00 ± 4.24"]
    assert markdown_rows(out)["__header__"][3] == "HD95 (voxels)"
    assert "Metric convention: transunet; HD in voxels" in out and "disagrees" not in err
    out, err = run_table(capsys, root, "--percent", "--convention", "default", "--out", tmp_path / "b")
    assert markdown_rows(out)["ce_dice"][:4] == ["ce_dice", "2", "79.67 ± 1.41", "20.33 ± 1.41"]
    assert "Metric convention: default; HD in mm" in out and "disagrees" not in err
    # a run whose default differs (no report_convention: its own, default): one line, naming the flag
    write_dual_run(root / "2", "ce", 1)
    with pytest.raises(SystemExit) as exc:
        table_cli.main([str(root), "--out", str(tmp_path / "c")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--convention transunet" in err and "--convention default" in err


def test_column_groups_lay_datasets_side_by_side(datasets_sweep, tmp_path, capsys):
    out, err = run_table(capsys, datasets_sweep, "--group-by", "loss.name", "--column-group", "data.name",
                         "--organs", "none", "--baseline", "ce_dice", "--percent", "--out", tmp_path)
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    # two header rows: the groups over their columns, then the columns (no per-organ column)
    assert lines[0] == "|  |  | **synapse** |  |  | **abdomenct1k** |  |  |"
    assert lines[2] == ("| Method | n | DSC (%) | HD95 (voxels) | p vs ce_dice | DSC (%) | HD95 (voxels) "
                        "| p vs ce_dice |")
    rows = {ln.split(" | ")[0][2:]: [c.strip().replace("**", "") for c in ln.strip("|").split(" | ")]
            for ln in lines[3:]}
    # synapse as in test_table_rows_columns_and_numbers; abdomenct1k 5 points higher; HD95 in voxels = 3 x
    #   100 (1 - DSC): ce_dice 3 x 20.33 = 61.00 (synapse), 3 x 15.33 = 46.00 (abdomenct1k).
    #   Within each group every ce case is 10 points below ce_dice: 4 pairs, p = 2 / 2^4 = 0.125.
    assert rows["ce_dice"] == ["ce_dice", "2", "79.67 ± 1.41", "61.00 ± 4.24", "ref",
                               "84.67 ± 1.41", "46.00 ± 4.24", "ref"]
    assert rows["ce"] == ["ce", "2", "69.67 ± 1.41", "91.00 ± 4.24", "0.125", "74.67 ± 1.41", "76.00 ± 4.24",
                          "0.125"]
    assert "warning" not in err  # data.* differ between the groups, not within a row of one group
    assert "Column groups: data.name = synapse, abdomenct1k." in out
    import pandas as pd

    frame = pd.read_csv(tmp_path / "table.csv")
    ce = frame[frame["label"] == "ce"].iloc[0]
    assert ce["synapse/mean_dsc"] == pytest.approx(69.6667, abs=1e-3)
    assert ce["abdomenct1k/mean_dsc"] == pytest.approx(74.6667, abs=1e-3)
    # the test pairs the 4 cases of one dataset (pooled over both it would pair 8 case ids)
    assert (ce["synapse/n_pairs"], ce["abdomenct1k/n_pairs"]) == (4, 4)
    assert ce["synapse/p_value"] == pytest.approx(0.125) and ce["abdomenct1k/n_runs"] == 2
    tex = (tmp_path / "table.tex").read_text()
    assert "& & \\multicolumn{3}{c}{synapse} & \\multicolumn{3}{c}{abdomenct1k} \\\\" in tex
    assert "\\cmidrule(lr){3-5} \\cmidrule(lr){6-8}" in tex
    # bold within a group: ce_dice is best in both groups -> 2 bold cells per group
    ce_dice_tex = next(ln for ln in tex.splitlines() if ln.startswith("ce\\_dice"))
    assert ce_dice_tex.count("\\textbf") == 4


def test_column_group_key_cannot_also_make_rows(datasets_sweep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        table_cli.main([str(datasets_sweep), "--group-by", "data.name", "--column-group", "data.name",
                        "--out", str(tmp_path)])
    assert "--column-group data.name is also a --group-by key" in capsys.readouterr().err
