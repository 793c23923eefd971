#!/usr/bin/env python
"""The phantom study: Table 1's four losses and Figure 3's gamma sweep on the built-in phantom, 3 seeds.

    python scripts/phantom_study.py              # train every run, then write docs/phantom_study.md + figures
    python scripts/phantom_study.py --reuse      # keep finished runs (an interrupted study continues), rewrite
    python scripts/phantom_study.py --only table1/ce_dice_seed1 --runs-dir /tmp/check --no-doc
                                                 # one run into another directory (e.g. to check regeneration)
    python scripts/phantom_study.py --list       # the runs and their overrides, nothing trained

What it runs: the paper experiments themselves (``experiment=table1_synapse`` with its four losses,
``experiment=fig3_gamma`` with its five gammas), with ``data=phantom`` and the budget below (:data:`BUDGET`),
seeds 1, 2, 3. Runs whose composed configs are identical are trained once (Figure 3's gamma = 0.25 point
is Table 1's AFW-Dice run: same loss, same focused organs, same data). Each run is a plain
``segbench-train`` with one CPU thread; ``--jobs`` of them run at a time. Training on a CPU with a fixed
thread count is deterministic, so the same command gives the same numbers, file for file.

The document is built from the runs' ``results/per_case.csv`` with segbench's own report tools:
``segbench-table`` (mean ± std over seeds, paired Wilcoxon signed-rank test against CE + Dice over the
test cases) and ``segbench-figures gamma``; the plateau figure reads ``val/dice`` from each run's
TensorBoard events. Not part of CI (70 min on a 2-core CPU, plus 3.4 min the first time to generate and preprocess
the phantom).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS = (1, 2, 3)
TABLE1_LOSSES = ("focal_dice", "ce_gd", "ce_dice", "afw_dice")   # the order of the paper's Table 1
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)                              # Figure 3
BASELINE = "ce_dice"
#: The budget: what makes 24 runs fit a 2-core CPU in under 90 minutes. Everything else is the paper
#: experiment's own config (1 mm in-plane resampling, flips and rotations, poly decay per epoch, SGD).
#: The poly power 2 (the paper: 0.9) lowers the rate sooner, so that a 22-epoch run ends on a plateau: with
#: 0.9, CE + Dice was still climbing in the last quarter of every schedule this CPU can afford (docs/paper.md).
EPOCHS = 22
BUDGET = (
    "data=phantom",
    "data.phantom.num_cases=32",    # 14 train / 2 val / 16 test: 16 paired cases for the Wilcoxon test
    "data.split.train=14",
    "data.split.val=2",
    "data.split.test=16",
    "data.img_size=64",             # the paper: 224
    "data.batch_size=8",            # the paper: 24
    "model.width=8",                # the paper's U-Net: 32-64-128-256-512; here 8-16-32-64-128
    "optimizer.lr=0.04",            # the paper: 0.01 for 150 epochs
    "scheduler.power=2",            # the paper: 0.9
    f"trainer.max_epochs={EPOCHS}",  # the paper: 150
    "channels_last=true",
    "num_threads=1",
    "test.checkpoint=last",         # Table 1's protocol: the last epoch is tested (validation: the curve)
    "test.save_predictions=false",
)
DOC = ROOT / "docs" / "phantom_study.md"
FIG_DIR = ROOT / "docs" / "phantom_study"
#: the config parts that do not change what is trained
NOT_TRAINING = ("task_name", "run_name", "paths", "hydra", "resume", "ckpt_path", "optimized_metric", "test")


def budget_value(key: str) -> str:
    """The value of ``key`` in :data:`BUDGET`."""
    return dict(o.split("=", 1) for o in BUDGET)[key]


@dataclass
class Job:
    """One training run; ``names`` are the study entries (``table1/ce_dice_seed1``) it stands for."""

    task: str
    name: str
    overrides: list[str]
    names: list[str] = field(default_factory=list)
    wall_s: float | None = None
    cpu_s: float | None = None     # user + system CPU seconds of the run's process

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.task / self.name


def study_entries() -> list[tuple[str, str, list[str]]]:
    """(task, name, overrides) of every point of the study, before identical configs are merged."""
    entries = []
    for seed in SEEDS:
        for loss in TABLE1_LOSSES:
            entries.append(("table1", f"{loss}_seed{seed}",
                            ["experiment=table1_synapse", f"loss={loss}", f"seed={seed}"]))
        for gamma in GAMMAS:
            entries.append(("fig3", f"gamma{gamma}_seed{seed}",
                            ["experiment=fig3_gamma", f"loss.gamma={gamma}", f"seed={seed}"]))
    return entries


def compose_run(overrides: list[str]):
    """The training config a study run composes: ``overrides`` plus the :data:`BUDGET`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segbench.config import CONFIG_DIR  # registers segbench's resolvers

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *BUDGET])


def training_fingerprint(overrides: list[str]) -> str:
    """Hash of the composed config without the parts that do not change training (task name, paths...)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(compose_run(overrides), resolve=False)
    for key in NOT_TRAINING:
        plain.pop(key, None)
    plain.get("metrics", {}).pop("report_convention", None)  # what segbench-table shows by default
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def plan() -> list[Job]:
    """The runs to train: one per distinct training config, in a stable order."""
    jobs: dict[str, Job] = {}
    for task, name, overrides in study_entries():
        digest = training_fingerprint(overrides)
        if digest not in jobs:
            jobs[digest] = Job(task, name, overrides)
        jobs[digest].names.append(f"{task}/{name}")
    return list(jobs.values())


def finished(run_dir: Path) -> bool:
    return (run_dir / "results" / "summary.json").is_file() and (run_dir / "results" / "per_case.csv").is_file()


def train(job: Job, runs_dir: Path) -> None:
    run_dir = job.run_dir(runs_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "segbench.train", *job.overrides, *BUDGET, f"paths.log_dir={runs_dir}",
           f"task_name={job.task}", f"run_name={job.name}", "resume=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(runs_dir / job.task / f"{job.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own CPU time, whatever else runs
    job.wall_s = time.perf_counter() - start
    job.cpu_s = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not finished(run_dir):
        raise RuntimeError(f"{job.key} failed (exit {code}); see {runs_dir / job.task / job.name}.log")


def prepare_data(job: Job) -> float:
    """Generate the phantom and preprocess every case of the split once, in this process, before the runs
    start (every run of the study uses the same data): otherwise the first ``--jobs`` runs would each do it at
    the same time. Later runs read the cache. Returns the wall time in seconds."""
    import hydra

    start, cwd = time.perf_counter(), os.getcwd()
    os.chdir(ROOT)   # where the runs start, so ./data is theirs
    try:
        datamodule = hydra.utils.instantiate(compose_run(job.overrides).data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.preflight()
    finally:
        os.chdir(cwd)
    return time.perf_counter() - start


def run_all(jobs: list[Job], runs_dir: Path, parallel: int, reuse: bool) -> tuple[float, float | None]:
    """Prepare the data, then train the jobs, ``parallel`` at a time, printing progress; returns the training
    wall time and the preparation time in seconds (None when there was nothing to train)."""
    todo = [j for j in jobs if not (reuse and finished(j.run_dir(runs_dir)))]
    if len(todo) < len(jobs):
        print(f"reusing {len(jobs) - len(todo)} finished run(s) under {runs_dir}", flush=True)
    prepare_s = None
    if todo:
        prepare_s = prepare_data(todo[0])
        print(f"data prepared in {prepare_s:.0f} s", flush=True)
    start = time.perf_counter()
    done = 0

    def one(job: Job) -> Job:
        nonlocal done
        train(job, runs_dir)
        done += 1
        elapsed = time.perf_counter() - start
        left = elapsed / done * (len(todo) - done)
        mean = json.loads((job.run_dir(runs_dir) / "results" / "summary.json").read_text())["mean_dsc"]
        print(f"[{done}/{len(todo)}] {job.key}: mean DSC {100 * mean:.2f} in {job.wall_s / 60:.1f} min "
              f"({job.cpu_s / 60:.1f} CPU min); "
              f"{elapsed / 60:.1f} min so far, about {left / 60:.0f} min left", flush=True)
        return job

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, todo))  # re-raises the first failure
    return time.perf_counter() - start, prepare_s


# ----------------------------------------------------------------------------------------------- the document
def run_report(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def entry_dirs(jobs: list[Job], runs_dir: Path) -> dict[str, Path]:
    """The run directory of every study entry (two entries may share one run)."""
    return {name: job.run_dir(runs_dir) for job in jobs for name in job.names}


def link_dirs(dirs: dict[str, Path], wanted: list[str]) -> list[str]:
    """The run directories of the study entries ``wanted``, each once, in order."""
    return list(dict.fromkeys(str(dirs[name]) for name in wanted))


def val_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(epoch, value)]}`` of a run's validation Dice tags from its TensorBoard events, read once:
    ``val/dice`` (the mean foreground Dice of the validation cases) and ``val/dice/<organ>``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[str, dict[int, float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = acc.Tags().get("scalars", [])
        epochs = {e.step: e.value for e in acc.Scalars("epoch")} if "epoch" in scalars else {}
        for tag in scalars:
            if tag == "val/dice" or tag.startswith("val/dice/"):
                per_epoch = points.setdefault(tag, {})
                for ev in acc.Scalars(tag):
                    per_epoch[int(round(epochs.get(ev.step, len(per_epoch))))] = float(ev.value)
    return {tag: sorted(per_epoch.items()) for tag, per_epoch in points.items()}


def organs_never_learned(curves: dict[str, list[tuple[int, float]]]) -> list[str]:
    """The organs whose validation Dice (``val/dice/<organ>`` of :func:`val_curves`) never reached
    :data:`LEARNED` in any epoch of the run."""
    return [tag.split("/", 2)[2] for tag, pts in curves.items()
            if tag.startswith("val/dice/") and max((v for _, v in pts), default=0.0) < LEARNED]


def quarter_stats(curve) -> dict:
    """The plateau rule's numbers for one validation curve (a 1-D array, one value per epoch): the mean of its
    last quarter of epochs, of the quarter before, the best epoch before the last quarter, and the ``lift``,
    last quarter minus that best (the rule: < :data:`PLATEAU_POINTS`)."""
    import numpy as np

    q = max(1, len(curve) // 4)
    last, best_before = float(curve[-q:].mean()), float(curve[:-q].max())
    return {"last_quarter": last, "quarter_before": float(curve[-2 * q:-q].mean()), "best_before": best_before,
            "best_before_epoch": int(np.argmax(curve[:-q])) + 1, "best_epoch": int(np.argmax(curve)) + 1,
            "epochs": len(curve), "quarter": q, "lift": last - best_before}


def plateau_figure(curves: dict[str, dict[int, list[tuple[int, float]]]], out: Path) -> dict[str, dict]:
    """val/dice against epoch, mean over seeds per loss (thin lines: seeds); PNG, PDF and CSV.
    Returns per loss the :func:`quarter_stats` of the mean-of-seeds curve, with ``seed_lifts``: each seed's own
    lift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, stats = [], {}
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for i, (loss, per_seed) in enumerate(curves.items()):
        colour = f"C{i}"
        grid, seed_lifts = None, {}
        for seed, pts in sorted(per_seed.items()):
            ep = np.array([p[0] for p in pts]) + 1
            val = np.array([p[1] for p in pts]) * 100
            seed_lifts[seed] = quarter_stats(val)["lift"]
            ax.plot(ep, val, color=colour, lw=0.6, alpha=0.45)
            rows += [{"loss": loss, "seed": seed, "epoch": int(e), "val_dsc_percent": f"{v:.4f}"}
                     for e, v in zip(ep, val)]
            grid = val if grid is None else np.vstack([grid, val])
        mean = grid.mean(axis=0) if grid.ndim > 1 else grid
        ax.plot(np.arange(1, len(mean) + 1), mean, color=colour, lw=2.0,
                label=f"{loss} (mean of {len(per_seed)} seeds)")
        stats[loss] = {**quarter_stats(mean), "seed_lifts": seed_lifts}
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation DSC % (mean over organs, 2 cases)")
    ax.set_ylim(bottom=0)
    ax.set_title("Validation DSC per epoch on the phantom: has training plateaued?")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"plateau.{ext}", **({"metadata": {"CreationDate": None}} if ext == "pdf" else {}))
    plt.close(fig)
    with open(out / "plateau.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["loss", "seed", "epoch", "val_dsc_percent"])
        writer.writeheader()
        writer.writerows(rows)
    return stats


def write_document(jobs: list[Job], runs_dir: Path, train_wall_s: float, parallel: int, command: str,
                   prepare_s: float | None = None) -> None:
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    table1 = [f"table1/{loss}_seed{s}" for loss in TABLE1_LOSSES for s in SEEDS]
    fig3 = [f"fig3/gamma{g}_seed{s}" for g in GAMMAS for s in SEEDS]
    dirs = entry_dirs(jobs, runs_dir)
    t1_dirs = link_dirs(dirs, table1)
    f3_dirs = link_dirs(dirs, fig3)
    base_dirs = link_dirs(dirs, [f"table1/{BASELINE}_seed{s}" for s in SEEDS])
    common = ["--convention", "default", "--percent"]
    t1 = run_report(["segbench.report.table", *t1_dirs, "--group-by", "loss.name", "--baseline", BASELINE,
                     "--organs", "paper-table1", *common, "--out", str(FIG_DIR / "table1")])
    t1_hd = run_report(["segbench.report.table", *t1_dirs, "--group-by", "loss.name", "--organ-metric", "hd95",
                        "--metric", "dsc,hd95", "--organs", "paper-table1", *common,
                        "--out", str(FIG_DIR / "table1_hd95")])
    f3 = run_report(["segbench.report.table", *f3_dirs, *base_dirs, "--group-by", "loss.name", "--group-by",
                     "loss.gamma", "--baseline", BASELINE, *common, "--out", str(FIG_DIR / "fig3")])
    run_report(["segbench.report.figures", "gamma", *f3_dirs, "--key", "loss.gamma", "--per-organ", *common,
                "--out", str(FIG_DIR), "--name", "fig3_gamma"])
    logged = {loss: {s: val_curves(dirs[f"table1/{loss}_seed{s}"]) for s in SEEDS} for loss in TABLE1_LOSSES}
    stats = plateau_figure({loss: {s: c["val/dice"] for s, c in per_seed.items()} for loss, per_seed in logged.items()},
                           FIG_DIR)
    missed = {s: organs_never_learned(c) for s, c in logged[BASELINE].items()}
    DOC.write_text(render(jobs, train_wall_s, parallel, command, t1, t1_hd, f3, stats, prepare_s, missed))
    print(f"wrote {DOC.relative_to(ROOT)} and {FIG_DIR.relative_to(ROOT)}/", flush=True)


def render(jobs, train_wall_s, parallel, command, t1, t1_hd, f3, stats, prepare_s=None, missed=None) -> str:
    import torch

    shared = [j for j in jobs if len(j.names) > 1]
    cpu_s = sum(j.cpu_s or 0 for j in jobs)
    base = stats[BASELINE]
    gain = base["last_quarter"] - base["quarter_before"]
    lift = base["lift"]
    n_test = budget_value("data.split.test")
    budget = "\n".join(f"    {o}" for o in BUDGET)
    lines = [
        "# The phantom study: Table 1 and Figure 3 of the AFW-Dice paper on segbench's phantom",
        "",
        "Generated by `scripts/phantom_study.py`; do not edit by hand. Regenerate (same numbers, file for file):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- **Runs:** Table 1's four losses ({', '.join(TABLE1_LOSSES)}) and Figure 3's gammas "
        f"({', '.join(str(g) for g in GAMMAS)}; AFW-Dice, every organ focused), seeds {', '.join(map(str, SEEDS))}: "
        f"{len(jobs)} trainings. "
        + (f"Figure 3's gamma = 0.25 point is Table 1's AFW-Dice run ({', '.join(j.key for j in shared)}): "
           "its composed config is the same, so it is trained once. " if shared else "")
        + "Each is `segbench-train experiment=table1_synapse loss=<loss> seed=<s>` or "
          "`segbench-train experiment=fig3_gamma loss.gamma=<g> seed=<s>` with the budget below.",
        "- **Budget** (everything else is the paper experiment's config: in-plane resampling to 1 mm, flips and "
        "rotations up to 30 degrees, SGD momentum 0.9, weight decay 1e-4, poly decay per epoch, the last epoch tested; "
        "the budget's own departures from the paper are commented):",
        "",
        "```",
        budget,
        "```",
        "",
        f"- **Machine:** {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, "
        f"one thread per run, {parallel} runs at a time.",
        f"- **Wall time:** {train_wall_s / 60:.1f} min to train and test the {len(jobs)} runs. Their processes "
        f"used {cpu_s / 60:.0f} CPU minutes (user + system), {cpu_s / 60 / parallel:.0f} min of {parallel} cores: "
        "what the command takes when nothing else runs. "
        + (CONTENTION_NOTE if train_wall_s > 1.1 * cpu_s / parallel else "")
        + (f" Before them, generating the phantom and preprocessing its cases took {prepare_s / 60:.1f} min (once: "
           "the runs, and later runs of the command, read the cache)." if prepare_s else ""),
        "- **Metrics:** the `default` convention (HD95 in mm on the phantom's known spacing: the maximum of the two "
        "directed 95th percentiles, worst case for an organ missed entirely). The Synapse tables' `transunet` "
        "convention reports voxels; on a phantom with known spacing mm are the meaningful unit. DSC in percent, "
        f"mean ± sample std over the 3 seeds of the per-run means over {n_test} test cases and 8 organs. p: paired "
        f"Wilcoxon signed-rank test against CE + Dice over the {n_test} test cases (per-case DSC mean over organs, "
        "seeds averaged per case), two-sided.",
        "",
        "## Table 1 on the phantom: DSC",
        "",
        t1.strip(),
        "",
        "Per-organ HD95 (mm):",
        "",
        t1_hd.strip(),
        "",
        "## Figure 3 on the phantom: DSC against gamma",
        "",
        "![DSC vs gamma](phantom_study/fig3_gamma.png)",
        "",
        f3.strip(),
        "",
        "## Has training plateaued?",
        "",
        "![validation DSC per epoch](phantom_study/plateau.png)",
        "",
        f"CE + Dice's validation DSC (mean of 3 seeds) over the last quarter of the {base['epochs']} epochs "
        f"({base['quarter']} epochs) is {base['last_quarter']:.2f} %: {lift:+.2f} points against the best epoch before "
        f"it (epoch {base['best_before_epoch']}, {base['best_before']:.2f} %) and {gain:+.2f} points against the "
        f"mean of the quarter before ({base['quarter_before']:.2f} %). Best epoch: {base['best_epoch']}. "
        "Each seed's own curve, last quarter against its best earlier epoch: "
        + ", ".join(f"seed {s} {v:+.2f}" for s, v in base["seed_lifts"].items()) + ". "
        "The other losses, last quarter (against the best epoch before it): "
        + ", ".join(f"{k}: {v['last_quarter']:.2f} % ({v['lift']:+.2f})"
                    for k, v in stats.items() if k != BASELINE) + ". "
        "The learning rate decays to 0 at the last epoch (poly), so the last epochs change the weights little by "
        "construction; the curve shows whether the network had stopped improving before that. "
        f"**The rule** (early stopping's idea, on the mean of the quarter rather than its best epoch, so that one "
        f"lucky epoch of a 2-case validation set does not count): training has plateaued when its last quarter "
        f"lifted the mean validation DSC less than {PLATEAU_POINTS} point above the best it had reached before. "
        + (f"**Verdict: plateaued** ({lift:+.2f} points)" + (
            "; the curve still creeps up while the learning rate anneals (the quarter-against-quarter gain above)."
            if gain >= PLATEAU_POINTS else ".")
           if lift < PLATEAU_POINTS else
           f"**Verdict: not plateaued.** The last quarter still lifted CE + Dice {lift:.1f} points above its best "
           "before, so at this budget the losses are compared before they have converged, which favours the losses "
           "that learn fastest; a longer budget is needed before these rows can rank the losses.")
        + _missed_sentence(missed or {}, lift < PLATEAU_POINTS),
        "",
        "## What the phantom can and cannot say",
        "",
        PARAGRAPH,
        "",
        "Files: `phantom_study/table1/` (table.md, .csv, .tex), `phantom_study/table1_hd95/`, `phantom_study/fig3/`, "
        "`phantom_study/fig3_gamma.{png,pdf,csv}`, `phantom_study/plateau.{png,pdf,csv}`.",
        "",
    ]
    return "\n".join(lines)


def _missed_sentence(missed: dict[int, list[str]], plateaued: bool) -> str:
    """A plateau is not a guarantee that every organ was learned: name the organs a CE + Dice seed never did."""
    lost = {s: o for s, o in missed.items() if o}
    if not lost:
        return f" Every CE + Dice seed learned every organ (validation Dice above {LEARNED:.0%} in some epoch)."
    return (" A plateau is not the same as every organ learned: "
            + "; ".join(f"CE + Dice seed {s} never segmented the {', '.join(o)}" for s, o in lost.items())
            + f" (validation Dice below {LEARNED:.0%} in every epoch), {len(lost)} seed(s) of {len(missed)}"
            + (": the curve is flat because training settled without it. Small organs that a loss misses for some "
               "seeds are the class imbalance this comparison is about." if plateaued else "."))


PARAGRAPH = (
    f"The phantom is procedural: eight organs drawn as smooth deformed shapes at plausible positions and sizes, "
    "CT-like intensities with noise and blur, labels that are exactly right, 14 training scans, slices of "
    f"{budget_value('data.img_size')} pixels and a network a quarter of the paper's "
    f"width, trained for {EPOCHS} epochs instead of 150. It has the real "
    "class imbalance of abdominal CT (liver large, gallbladder and pancreas small), so it can show how a loss "
    "treats small organs against large ones, whether a setting trains at all, and whether differences between "
    "losses are larger than the seed-to-seed spread at this budget. It cannot say how the losses rank on real "
    "CT: real scans have pathology, contrast phases, organs touching with no visible boundary, label noise "
    "between annotators and far more variation between patients, and the paper's differences (about 2 DSC "
    "points between Table 1's losses) are the size that such effects, the budget and the seeds can change. "
    "Read these tables as a check that the pipeline and the losses behave, not as evidence for or against "
    "the paper."
)
#: CE + Dice has plateaued when its mean validation DSC (mean of seeds) over the last quarter of the epochs is
#: less than this many points above the best epoch before that quarter (early stopping with a patience of a quarter)
PLATEAU_POINTS = 1.0
#: an organ counts as learned by a run once its validation Dice reached this in some epoch
LEARNED = 0.05
CONTENTION_NOTE = ("The wall time is longer than that because other work (tests of the project) shared the two "
                   "cores while this document was made; the runs' numbers do not depend on it (one thread each, "
                   "deterministic).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "phantom_study",
                        help="where the runs go (default outputs/phantom_study)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    parser.add_argument("--reuse", action="store_true", help="keep runs that finished (default: train all afresh)")
    parser.add_argument("--only", default=None, help="comma list of study entries (task/name) to train")
    parser.add_argument("--no-doc", action="store_true", help="train only; do not write docs/phantom_study.md")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    args = parser.parse_args(argv)
    jobs = plan()
    if args.list:
        for job in jobs:
            print(f"{job.key:32s} {' '.join(job.overrides)}   (= {', '.join(job.names)})")
        return 0
    runs_dir = args.runs_dir.resolve()
    selected = jobs
    if args.only:
        wanted = set(args.only.split(","))
        selected = [j for j in jobs if wanted & set(j.names)]
        if not selected:
            parser.error(f"--only {args.only}: no such entry; see --list")
    state_file = runs_dir / "study.json"
    print(f"{len(selected)} run(s) into {runs_dir}, {args.jobs} at a time", flush=True)
    wall, prepare_s = run_all(selected, runs_dir, args.jobs, args.reuse)
    if not args.only:
        state = json.loads(state_file.read_text()) if (args.reuse and state_file.is_file()) else {}
        if any(j.wall_s is not None for j in selected):   # something was trained: this is the study's time
            state = {"train_wall_s": wall, "prepare_wall_s": prepare_s, "jobs": args.jobs,
                     "run_wall_s": {j.key: j.wall_s for j in selected},
                     "run_cpu_s": {j.key: j.cpu_s for j in selected}}
        runs_dir.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))
        for job in jobs:
            job.wall_s = state.get("run_wall_s", {}).get(job.key)
            job.cpu_s = state.get("run_cpu_s", {}).get(job.key)
        if not args.no_doc:
            write_document(jobs, runs_dir, state.get("train_wall_s", wall), state.get("jobs", args.jobs),
                           "python scripts/phantom_study.py", state.get("prepare_wall_s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
