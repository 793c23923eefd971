"""``segbench-figures``: the AFW-Dice paper's figures, from run directories or from the losses.

    segbench-figures gamma   outputs/multirun/<date> --key loss.gamma            # Fig. 3: DSC vs gamma
    segbench-figures focused outputs/multirun/<date> --key loss.focused_classes  # Fig. 4: DSC vs #focused organs
    segbench-figures organs  outputs/multirun/<date> --group-by loss.name        # per-organ DSC bars per loss
    segbench-figures loss-vs-dice --gammas 0.25,0.5,0.75,1.0                     # Fig. 2: L^gamma and its gradient
    segbench-figures probe --losses all                                          # loss response to FP / FN

Every figure is written as PNG and PDF into ``--out`` (default ``outputs/report``),
next to a CSV of the plotted numbers. Run-based figures recompute their numbers
from ``results/per_case.csv`` (as ``segbench-table`` does) and refuse to mix
metric conventions.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .runs import (FRACTION_METRICS, HIGHER_IS_BETTER, ORGAN_PRESETS, ReportError, Run, check_single_convention,
                   format_value, get_key, hashable, is_missing, load_runs, mean_over_organs, organ_means)

PROG = "segbench-figures"
METRIC_LABELS = {"dsc": "DSC", "hd95": "HD95", "hd": "HD", "assd": "ASSD", "nsd": "NSD"}
#: config keys in words, for titles and axis labels
KEY_WORDS = {"loss.name": "loss", "loss._target_": "loss", "model._target_": "model", "data.name": "dataset",
             "loss.gamma": "gamma", "loss.focused_classes": "focused organs", "loss.uncertainty": "learnable weights",
             "loss.asymmetric": "asymmetry", "seed": "seed", "trainer.max_epochs": "epochs",
             "optimizer.lr": "learning rate", "data.img_size": "slice size", "model.width": "network width"}


def key_words(key: str) -> str:
    """A config key as words: ``loss.name`` -> ``loss``, ``model._target_`` -> ``model``, otherwise its last
    part with spaces (``loss.lambda_ce`` -> ``lambda ce``)."""
    if key in KEY_WORDS:
        return KEY_WORDS[key]
    parts = [p for p in key.split(".") if p.strip("_")]
    last = key.split(".")[-1]
    word = parts[-2] if last.startswith("_") and len(parts) >= 2 else (parts[-1] if parts else key)
    return word.replace("_", " ")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.pdf`` (no creation date in the PDF: reproducible bytes)."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------
# run-based figures


def _metric_label(metric: str, percent: bool, hd_unit: str) -> str:
    if metric in FRACTION_METRICS:
        return f"{METRIC_LABELS[metric]}" + (" (%)" if percent else "")
    return f"{METRIC_LABELS[metric]} ({hd_unit})"


def _usable_runs(runs: Sequence[Run], key: str | None, warn: Callable[[str], None]) -> list[Run]:
    failed = [r for r in runs if r.failed]
    if failed:
        warn(f"{len(failed)} failed job(s) left out: " + "; ".join(f"{r.path}: {r.error}" for r in failed))
    ok = [r for r in runs if not r.failed]
    if key is not None:
        lacking = [r for r in ok if is_missing(get_key(r, key))]
        if lacking:
            warn(f"{len(lacking)} run(s) without {key} left out: " + ", ".join(str(r.path) for r in lacking))
        ok = [r for r in ok if r not in lacking]
    if not ok:
        raise ReportError("no successful run to plot" + (f" with {key}" if key else ""))
    return ok


def run_metric(run: Run, metric: str, organs: Sequence[str] | None, scale: float) -> tuple[float, dict[str, float]]:
    """(mean over organs, per-organ values) of one run, scaled."""
    per_organ = organ_means(run, metric)
    shown = {o: per_organ.get(o, float("nan")) * scale for o in (organs or per_organ)}
    return mean_over_organs(per_organ) * scale, shown


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def curve_table(runs: Sequence[Run], key: str, to_x: Callable[[Run, Any], float], metric: str,
                organs: Sequence[str] | None, scale: float, group_by: str | None) -> pd.DataFrame:
    """One row per (line, x): n runs, mean ± std of the mean metric and the per-organ means."""
    records = []
    for run in runs:
        mean, per_organ = run_metric(run, metric, organs, scale)
        line = format_value(group_by, get_key(run, group_by)) if group_by else ""
        records.append({"line": line, "x": to_x(run, get_key(run, key)), "value": mean,
                        **{f"organ:{o}": v for o, v in per_organ.items()}})
    frame = pd.DataFrame(records)
    rows = []
    for (line, x), grp in frame.groupby(["line", "x"], sort=False):
        mean, std = _mean_std(grp["value"].tolist())
        row = {"line": line, "x": x, "n_runs": len(grp), "mean": mean, "std": std}
        for col in [c for c in frame.columns if c.startswith("organ:")]:
            row[col] = _mean_std(grp[col].tolist())[0]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["line", "x"], kind="stable").reset_index(drop=True)


#: line styles of the per-organ lines of one group (the group's colour, one style per organ)
ORGAN_STYLES = [":", "--", "-.", (0, (1, 1)), (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (2, 2)), (0, (4, 1, 1, 1))]


def plot_curve(table: pd.DataFrame, xlabel: str, ylabel: str, title: str, per_organ: bool,
               integer_x: bool = False, fraction_axis: bool = False):
    """Mean (± std over runs) per line vs x; ``per_organ`` adds thin per-organ lines: in the organ's own
    colour for one line, in the line's colour with one style per organ, labelled ``group: organ``, for
    several; ``fraction_axis`` (DSC, NSD) keeps the y axis at or above 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    organ_cols = [c for c in table.columns if c.startswith("organ:")]
    lines = list(dict.fromkeys(table["line"]))
    for i, (line, grp) in enumerate(table.groupby("line", sort=False)):
        colour = f"C{i}"
        ax.errorbar(grp["x"], grp["mean"], yerr=grp["std"].fillna(0), marker="o", color=colour, lw=1.8,
                    capsize=3, label=(line or "mean over organs") + (" (mean ± std)" if grp["n_runs"].max() > 1
                                                                      else ""))
        if per_organ:
            for j, col in enumerate(organ_cols):
                organ = col.split(":", 1)[1]
                if len(lines) > 1:
                    ax.plot(grp["x"], grp[col], lw=0.8, alpha=0.7, color=colour,
                            linestyle=ORGAN_STYLES[j % len(ORGAN_STYLES)], label=f"{line}: {organ}")
                else:
                    ax.plot(grp["x"], grp[col], lw=0.7, alpha=0.6, color=plt.cm.tab10((j + 1) % 10), label=organ)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if fraction_axis:
        ax.set_ylim(bottom=0)
    if integer_x:
        ax.set_xticks(sorted(set(table["x"])))
    if per_organ:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def gamma_x(run: Run, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"{run.path}: {value!r} is not a number") from exc


def focused_count(run: Run, value: Any) -> int:
    """Number of focused classes: a list -> its length; ``all`` -> every foreground class of
    ``data.class_names`` (class 0 is the background); ``null``/``none`` -> 0; an int -> itself."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "[]")):
        return 0
    if isinstance(value, str) and value.strip().lower() == "all":
        names = get_key(run, "data.class_names")
        if is_missing(names) or not isinstance(names, list):
            num = get_key(run, "data.num_classes")
            if is_missing(num):
                raise ReportError(f"{run.path}: focused classes 'all' but the config has no data.class_names")
            return int(num) - 1
        return len(names) - 1
    if isinstance(value, str):
        return len([v for v in value.strip("[]").split(",") if v.strip()])
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ReportError(f"{run.path}: cannot count focused classes in {value!r}")


def _run_curve_figure(args, kind: str, warn) -> list[Path]:
    runs = load_runs(args.run_dirs, convention=args.convention)
    convention, hd_unit = check_single_convention(runs, "one figure")
    runs = _usable_runs(runs, args.key, warn)
    scale = 100.0 if args.percent and args.metric in FRACTION_METRICS else 1.0
    organs = _organs(args.organs, runs)
    # the x axis and the title name what is plotted: the key's words (gamma --key seed plots vs seed)
    xlabel = key_words(args.key) if kind == "gamma" else f"number of {key_words(args.key)}"
    to_x, integer_x = (gamma_x, False) if kind == "gamma" else (focused_count, True)
    table = curve_table(runs, args.key, to_x, args.metric, organs, scale, args.group_by)
    ylabel = _metric_label(args.metric, args.percent, hd_unit)
    by = f", one line per {key_words(args.group_by)}" if args.group_by else ""
    title = args.title or (f"{METRIC_LABELS[args.metric]} vs {xlabel} (mean over organs{by}; "
                           f"convention {convention})")
    fig = plot_curve(table, xlabel, ylabel, title, args.per_organ, integer_x,
                     fraction_axis=args.metric in FRACTION_METRICS)
    stem = args.name or kind
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(metric=args.metric, convention=convention, hd_unit=hd_unit).to_csv(out / f"{stem}.csv", index=False)
    return save_figure(fig, out, stem) + [out / f"{stem}.csv"]


def _organs(spec: str | None, runs: Sequence[Run]) -> list[str]:
    available: list[str] = []
    for run in runs:
        available += [o for o in run.organs if o not in available]
    if not spec:
        return available
    organs = ORGAN_PRESETS.get(spec) or [o.strip() for o in spec.split(",") if o.strip()]
    unknown = [o for o in organs if o not in available]
    if unknown:
        raise ReportError(f"organ(s) {', '.join(unknown)} not in any run; available: {', '.join(available)}")
    return organs


def _organs_figure(args, warn) -> list[Path]:
    runs = load_runs(args.run_dirs, convention=args.convention)
    convention, hd_unit = check_single_convention(runs, "one figure")
    runs = _usable_runs(runs, None, warn)
    scale = 100.0 if args.percent and args.metric in FRACTION_METRICS else 1.0
    organs = _organs(args.organs, runs)
    groups: dict[Any, list[Run]] = {}
    labels: dict[Any, str] = {}
    for run in runs:
        values = [get_key(run, k) for k in args.group_by]
        ident = tuple(hashable(v) if not is_missing(v) else "<missing>" for v in values)
        groups.setdefault(ident, []).append(run)
        labels.setdefault(ident, ", ".join(format_value(k, v) for k, v in zip(args.group_by, values)
                                           if not is_missing(v)) or "(missing)")
    records = []
    for ident, members in groups.items():
        per_run = [run_metric(r, args.metric, organs, scale) for r in members]
        for organ in [*organs, "mean"]:
            vals = [m if organ == "mean" else po.get(organ, float("nan")) for m, po in per_run]
            mean, std = _mean_std(vals)
            records.append({"group": labels[ident], "organ": organ, "n_runs": len(members), "mean": mean,
                            "std": std})
    table = pd.DataFrame(records)
    plt = _pyplot()
    categories = [*organs, "mean"]
    n_groups = len(groups)
    width = 0.8 / max(n_groups, 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(categories) + 0.3 * n_groups * len(categories) / 4), 3.8))
    x = np.arange(len(categories))
    for i, label in enumerate(dict.fromkeys(table["group"])):
        mine = table[table["group"] == label].set_index("organ").loc[categories]
        ax.bar(x + (i - (n_groups - 1) / 2) * width, mine["mean"], width, yerr=mine["std"].fillna(0),
               capsize=2, label=label, color=f"C{i}", error_kw={"lw": 0.8})
    ax.set_xticks(x)
    ax.set_xticklabels(categories, rotation=30, ha="right")
    ax.set_ylabel(_metric_label(args.metric, args.percent, hd_unit))
    ax.set_title(args.title or f"per-organ {METRIC_LABELS[args.metric]} by "
                               f"{' and '.join(key_words(k) for k in args.group_by)} "
                               f"(mean ± std over runs; convention {convention})", fontsize=9)
    if args.metric in FRACTION_METRICS:
        ax.set_ylim(0, 100 if scale == 100 else 1)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    stem = args.name or "organs"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(metric=args.metric, convention=convention, hd_unit=hd_unit).to_csv(out / f"{stem}.csv", index=False)
    return save_figure(fig, out, stem) + [out / f"{stem}.csv"]


# ----------------------------------------------------------------------------------------------
# Fig. 2: the focal term and its gradient, from the loss implementation


def _organ_logits(z, organ):
    """``[1, 2, 1, N]`` logits: background logit 0; organ logit ``z`` on the organ pixels, -20 elsewhere.

    The organ pixels then have organ probability ``p = sigmoid(z)`` and the background
    pixels a confident background, so the organ's soft Dice is ``2p / (1 + p)``.
    """
    import torch

    organ_logit = torch.where(organ, z, torch.full_like(organ, -20.0, dtype=torch.float32))
    return torch.stack([torch.zeros_like(organ_logit), organ_logit]).reshape(1, 2, 1, -1)


def _build_focal_losses(gamma: float) -> tuple[Callable, Callable, str]:
    """(focal term, plain Dice loss) of the organ class as callables ``(logits, target) -> scalar``.

    With ``afw_dice`` registered: ``afw_dice`` itself with CE, the background and the
    learnable weights switched off through its own options, so its value IS the focused
    organ's ``clamp(L, clamp_min)^gamma``; at ``gamma = 1`` the same loss gives the plain
    ``L``. Without it: the registered ``dice`` loss's value ``L`` raised to ``gamma``
    (clamped at 1e-6 like the AFW implementation).
    """
    from ..losses import available_losses, build_loss, loss_options

    if "afw_dice" in available_losses():
        wanted = {"lambda_ce": 0.0, "lambda_afw": 1.0, "uncertainty": False, "include_background": False,
                  "focused_classes": "all", "asymmetric": True, "reduction": "sum"}
        valid = set(loss_options("afw_dice"))
        options = {k: v for k, v in wanted.items() if k in valid}

        def make(g: float):
            return build_loss("afw_dice", num_classes=2, class_names=["background", "organ"], gamma=g, **options)

        return make(gamma), make(1.0), "afw_dice (segbench.losses; CE, background and weights off)"
    dice = build_loss("dice", include_background=False)
    return (lambda logits, target: dice(logits, target).clamp_min(1e-6).pow(gamma)), dice, \
        "dice loss value ^ gamma (afw_dice not registered)"


def focal_curves(gammas: Sequence[float], points: int = 199) -> tuple[pd.DataFrame, str]:
    """Dice, the focal term ``T = L^gamma`` and ``dT/dDice`` evaluated through the loss implementation.

    The gradient is the loss's own autograd gradient with respect to the organ logit,
    divided by that of the Dice (``dT/dz / dDice/dz``, chain rule), so a clamp or a
    NaN in the implementation shows up in the figure.
    """
    import torch

    # evenly spaced in (0, 1), plus a few points approaching Dice = 1 where L^gamma is steepest
    targets = np.concatenate([np.linspace(0.0, 1.0, points + 2)[1:-1], 1.0 - np.logspace(-2.5, -5.0, 6)])
    p = targets / (2.0 - targets)                 # 2p / (1 + p) = target Dice
    organ_logit = np.log(p / (1.0 - p))
    pixels = 256
    target = torch.zeros(1, 1, 2 * pixels, dtype=torch.long)
    target[..., :pixels] = 1
    organ = target.reshape(-1) == 1
    records = []
    source = ""
    for gamma in gammas:
        focal, plain, source = _build_focal_losses(gamma)
        for d_target, z0 in zip(targets, organ_logit):
            z = torch.tensor(float(z0), requires_grad=True)
            value = focal(_organ_logits(z, organ), target)
            (grad_value,) = torch.autograd.grad(value, z)
            value = value.detach()
            z = torch.tensor(float(z0), requires_grad=True)
            dice = 1.0 - plain(_organ_logits(z, organ), target).double()  # 1 - L in float64: L ~ 1e-5 keeps its digits
            (grad_dice,) = torch.autograd.grad(dice, z)
            dice = dice.detach()
            gradient = float(grad_value) / float(grad_dice) if float(grad_dice) != 0 else float("nan")
            records.append({"gamma": gamma, "dice_target": float(d_target), "dice": float(dice),
                            "focal_term": float(value), "d_focal_d_dice": gradient})
    return pd.DataFrame(records), source


def _loss_vs_dice_figure(args, warn) -> list[Path]:
    gammas = [float(g) for g in args.gammas.split(",") if g.strip()]
    if not gammas or any(g <= 0 or not math.isfinite(g) for g in gammas):
        raise ReportError(f"--gammas must be numbers > 0, got {args.gammas!r}")
    table, source = focal_curves(gammas, args.points)
    if not np.isfinite(table[["focal_term", "d_focal_d_dice"]].to_numpy()).all():
        warn("the loss produced non-finite values or gradients at some Dice values (plotted as gaps)")
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for i, (gamma, grp) in enumerate(table.groupby("gamma", sort=False)):
        label = f"gamma = {gamma:g}" + (" (plain Dice)" if gamma == 1 else "")
        ax1.plot(grp["dice"], grp["focal_term"], color=f"C{i}", lw=1.6, label=label)
        ax2.plot(grp["dice"], grp["d_focal_d_dice"].abs(), color=f"C{i}", lw=1.6, label=label)
    ax1.set_xlabel("Dice of the focused class")
    ax1.set_ylabel("focal term  $L^\\gamma$,  $L$ = 1 - Dice")
    ax2.set_xlabel("Dice of the focused class")
    ax2.set_ylabel("$|dL^\\gamma / d\\,$Dice$|$")
    ax2.set_yscale("log")
    ax1.legend(fontsize=7, frameon=False)
    fig.suptitle(args.title or f"AFW focal term vs Dice (Fig. 2), computed with {source}", fontsize=9)
    fig.tight_layout()
    stem = args.name or "loss_vs_dice"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(source=source).to_csv(out / f"{stem}.csv", index=False)
    return save_figure(fig, out, stem) + [out / f"{stem}.csv"]


# ----------------------------------------------------------------------------------------------
# the loss-behaviour probe


#: --paper: (width in inches, panels per row) of a one-column (3.5 in) or a full-page-width (7 in) figure
PAPER_SIZES = {"column": (3.5, 2), "page": (7.0, 4)}


def _probe_figure(args, warn) -> list[Path]:
    from ..files import atomic_write_text
    from .probe import ProbeSettings, plot_probe, probe_markdown, run_probe

    settings = ProbeSettings(size=args.size, large_radius=args.large_radius, small_radius=args.small_radius,
                             reference_radius=args.reference_radius, margin=args.margin, steps=args.steps,
                             loss_config_dir=Path(args.loss_configs) if args.loss_configs else None)
    losses = [n.strip() for n in args.losses.split(",") if n.strip()]
    curves, summary = run_probe(losses, settings)
    for _, row in summary[summary["status"] != "ok"].iterrows():
        warn(f"loss {row['loss']}: {row['status']}")
    _pyplot()
    width, ncols = PAPER_SIZES[args.paper] if args.paper else (None, 4)
    if args.columns:
        ncols = args.columns
    fig = plot_probe(curves, summary, ncols=ncols, width_in=width, title=args.title or (
        "loss rise above the error-free value vs error fraction, normalised per loss "
        "(colour: object size; solid: false positives, dashed: false negatives)"))
    stem = args.name or "probe"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / f"{stem}.csv", index=False)
    markdown = probe_markdown(summary, settings)
    atomic_write_text(out / f"{stem}.md", markdown)
    summary.to_csv(out / f"{stem}_summary.csv", index=False)
    sys.stdout.write(markdown)
    return save_figure(fig, out, stem) + [out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}_summary.csv"]


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Figures (PNG + PDF, and a CSV of the plotted numbers) from segbench run directories "
                    "or from the loss implementations.",
        epilog="examples:\n" + "\n".join("  " + ln.strip() for ln in __doc__.splitlines() if "segbench-figures " in ln))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, default_name: str) -> None:
        p.add_argument("--out", default="outputs/report", metavar="DIR",
                       help="output directory (default outputs/report)")
        p.add_argument("--name", default=None, help=f"file stem (default {default_name})")
        p.add_argument("--title", default=None, help="replace the generated title")

    def runs_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                       help="run directories, multirun sweep dirs or any dir above them")
        p.add_argument("--metric", default="dsc", choices=sorted(HIGHER_IS_BETTER), help="metric (default dsc)")
        p.add_argument("--organs", default=None,
                       help="organs (comma list or " + ", ".join(ORGAN_PRESETS) + "); the mean is always over "
                            "all organs of the runs, as in summary.json")
        p.add_argument("--percent", action="store_true", help="DSC / NSD in percent")
        p.add_argument("--convention", default=None,
                       help="plot this metric convention's rows (default: each run's metrics.report_convention, "
                            "else its metrics.convention)")

    for kind, key, text in (("gamma", "loss.gamma", "DSC vs gamma (paper Fig. 3), mean ± std over seeds"),
                            ("focused", "loss.focused_classes",
                             "DSC vs number of focused organs (paper Fig. 4); 'all' = every foreground class "
                             "of data.class_names")):
        p = sub.add_parser(kind, help=text, description=text)
        runs_args(p)
        p.add_argument("--key", default=key, help=f"config key on the x axis (default {key})")
        p.add_argument("--group-by", default=None, metavar="KEY",
                       help="one line per value of this key (e.g. loss.name); default one line")
        p.add_argument("--per-organ", action="store_true", help="add thin per-organ lines")
        common(p, kind)

    p = sub.add_parser("organs", help="per-organ bars, one bar per group (e.g. per loss)",
                       description="Grouped bar chart: per-organ metric (and the mean), mean ± std over runs.")
    runs_args(p)
    p.add_argument("--group-by", action="append", metavar="KEY", help="config key(s) of a bar (default loss.name)")
    common(p, "organs")

    p = sub.add_parser("loss-vs-dice", help="AFW focal term L^gamma and its gradient vs Dice (paper Fig. 2)",
                       description="Evaluates the registered afw_dice loss (or, before it exists, the dice loss "
                                   "raised to gamma) on synthetic predictions of controlled Dice; the gradient "
                                   "is the loss's autograd gradient.")
    p.add_argument("--gammas", default="0.25,0.5,0.75,1.0", help="comma list of gamma > 0")
    p.add_argument("--points", type=int, default=199, help="Dice values sampled in (0, 1)")
    common(p, "loss_vs_dice")

    p = sub.add_parser("probe", help="every loss vs growing false positives / negatives, large vs small object",
                       description=(
                           "Evaluates every registered loss (built as training builds it, with the options of "
                           "configs/loss/<name>.yaml) on a synthetic 2D image with 3 classes: background, a "
                           "centred object disc (large or small) and an always-correct reference disc. "
                           "Predictions are confident logits of label maps with a growing fraction of false "
                           "positives (nearest background pixels added) or false negatives (boundary pixels "
                           "removed). Writes probe.png/.pdf (normalised loss rise vs error fraction, one panel per "
                           "loss), probe.csv (raw values), probe_summary.csv and probe.md (which curves rise "
                           "monotonically; losses that fail are listed with the error)."))
    p.add_argument("--losses", default="all", help="comma list of registered losses, or all (default)")
    p.add_argument("--size", type=int, default=128, help="image size (default 128)")
    p.add_argument("--large-radius", type=float, default=40.0, help="radius of the large object (default 40)")
    p.add_argument("--small-radius", type=float, default=5.0, help="radius of the small object (default 5)")
    p.add_argument("--reference-radius", type=float, default=8.0, help="radius of the reference disc (default 8)")
    p.add_argument("--margin", type=float, default=10.0, help="logit margin of the predictions (default 10)")
    p.add_argument("--steps", type=int, default=20, help="error-fraction steps from 0 to 1 (default 20)")
    p.add_argument("--loss-configs", default=None, metavar="DIR",
                   help="read loss options from DIR/<loss>.yaml (default segbench's configs/loss)")
    p.add_argument("--paper", choices=sorted(PAPER_SIZES), default=None,
                   help="size for a paper: column (3.5 in wide, 2 panels per row) or page (7 in, 4 per row), "
                        "with 6-7 pt text; default a screen-size figure (3.2 in per panel)")
    p.add_argument("--columns", type=int, default=None, help="panels per row (default 4, or --paper's)")
    common(p, "probe")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import SegbenchError, report_error

    args = build_parser().parse_args(argv)
    warnings: list[str] = []
    try:
        if args.command in ("gamma", "focused"):
            paths = _run_curve_figure(args, args.command, warnings.append)
        elif args.command == "organs":
            args.group_by = args.group_by or ["loss.name"]
            paths = _organs_figure(args, warnings.append)
        elif args.command == "loss-vs-dice":
            paths = _loss_vs_dice_figure(args, warnings.append)
        else:
            paths = _probe_figure(args, warnings.append)
    except (SegbenchError, OSError) as exc:
        report_error(exc, PROG)
        sys.exit(2)
    for message in warnings:
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    print(f"{PROG}: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
