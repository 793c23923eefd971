"""The AFW-Dice paper's protocol in the experiment configs (PROTOCOL.md A), and the losses they sweep.

Sections:
  1. the baselines of Tables 1 and 2 pool their sums the same way (batch Dice)
  2. every sweep point of every paper experiment composes, and builds its loss (real data configs)
  3. each table's protocol, read from the composed configs
  4. acceptance: every paper experiment runs on the phantom (debug=smoke) and its table renders
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from helpers import cli
from segbench.config import CONFIG_DIR
from segbench.losses import build_loss

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
LOSS_CONFIGS = ROOT / "configs" / "loss"
ORGANS = ["background", "spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]

pytestmark = pytest.mark.usefixtures("one_thread")


def sweep(experiment: str) -> dict[str, str]:
    """The ``hydra.sweeper.params`` of an experiment config."""
    cfg = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
    return dict(cfg["hydra"]["sweeper"]["params"])


def swept_losses(experiment: str) -> list[str]:
    return [name.strip() for name in str(sweep(experiment)["loss"]).split(",")]


def loss_from_config(name: str):
    """The loss exactly as ``loss=<name>`` builds it for training (its YAML defaults)."""
    cfg = yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text())
    return build_loss(**cfg, num_classes=len(ORGANS), class_names=ORGANS)


# ============================================================================ 1. pooling
@pytest.mark.parametrize("experiment", ["table1_synapse", "table2_abdomenct1k"])
def test_every_loss_a_table_sweeps_pools_the_batch_the_same_way(experiment):
    """Batch pooling, tested by its definition: a loss whose sums run over the whole batch gives the
    same value on a batch of two slices as on ONE image made of the two slices side by side (the CE
    terms are means over voxels either way). A per-slice Dice does not: its mean of two ratios differs
    from the ratio of the sums. Each loss is built from its config file, as ``loss=<name>`` builds it."""
    names = swept_losses(experiment)
    assert {"ce_dice", "afw_dice"} <= set(names) and len(names) == 4
    g = torch.Generator().manual_seed(0)
    C = len(ORGANS)
    logits = 2 * torch.randn(2, C, 12, 10, generator=g)
    target = torch.randint(0, C, (2, 12, 10), generator=g)
    target[1][target[1] == 4] = 0  # the gallbladder absent from the second slice, as on most slices
    side_by_side_logits = torch.cat([logits[0], logits[1]], dim=-1).unsqueeze(0)   # [1, C, 12, 20]
    side_by_side_target = torch.cat([target[0], target[1]], dim=-1).unsqueeze(0)
    for name in names:
        loss = loss_from_config(name)
        batched = float(loss(logits, target))
        pooled = float(loss(side_by_side_logits, side_by_side_target))
        assert batched == pytest.approx(pooled, rel=1e-5), (experiment, name, batched, pooled)
        # and the test can fail: the same loss scoring each slice separately differs
        if "batch" in yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text()):
            cfg = yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text())
            per_slice = build_loss(**{**cfg, "batch": False}, num_classes=C, class_names=ORGANS)
            assert float(per_slice(logits, target)) != pytest.approx(pooled, rel=1e-5), name


# ============================================================================ 2. every sweep point composes
#: the paper's experiments (Tables 1-6, Figures 3-4); afw_paper_2d is their shared base, quickstart the default run
PAPER_EXPERIMENTS = ["table1_synapse", "table2_abdomenct1k", "table3_uncertainty", "table4_symmetry",
                     "table5_models2d", "table6_3d", "fig3_gamma", "fig4_focused"]


def test_the_list_covers_every_experiment_config():
    # besides the paper's: their shared base, the default run, and the two-stage recipe (a regime, not a table)
    others = ["afw_paper_2d", "quickstart", "two_stage_boundary"]
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == sorted(PAPER_EXPERIMENTS + others)


def compose_run(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def sweep_points(experiment: str) -> list[list[str]]:
    """Every combination of the experiment's sweep, as override lists (Hydra's own parser splits them);
    the seeds change no config but the seed, so one stands for all."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweep(experiment).items()])
    axes = [[f"{o.key_or_group}={value}" for value in o.sweep_string_iterator()][:1 if o.key_or_group == "seed"
                                                                                 else None] for o in parsed]
    return [list(point) for point in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_every_sweep_point_composes_on_the_real_dataset_and_builds_its_loss(experiment):
    roots = ["dataset_roots.synapse=/data/Synapse", "dataset_roots.abdomenct1k=/data/AbdomenCT-1K"] \
        if "dataset_roots" in compose_run(f"experiment={experiment}") else ["data.root=/data/x"]
    for point in sweep_points(experiment):
        cfg = compose_run(f"experiment={experiment}", *point, *roots)
        assert cfg.data.root.startswith("/data/"), (experiment, point)  # each dataset finds its own root
        loss = dict(cfg.loss)
        build_loss(loss.pop("name"), num_classes=len(cfg.data.class_names), class_names=list(cfg.data.class_names),
                   **loss)


# ============================================================================ 3. each table's protocol
def test_paper_experiments_resample_in_plane_to_1mm_but_the_quickstart_does_not():
    for experiment in ("table1_synapse", "table2_abdomenct1k", "table3_uncertainty", "fig3_gamma"):
        assert list(compose_run(f"experiment={experiment}").data.target_spacing) == [None, 1.0, 1.0], experiment
    # the default run (quickstart on the phantom) keeps the native grid: the README's numbers stand
    assert compose_run().data.get("target_spacing") is None
    # the paper's printed HU window is one override away
    assert list(compose_run("experiment=table1_synapse", "data.window=[50,350]").data.window) == [50, 350]
    assert list(compose_run("experiment=table1_synapse").data.window) == [-125, 275]


@pytest.mark.parametrize("experiment", ["table3_uncertainty", "table4_symmetry", "table5_models2d"])
def test_tables_3_to_5_sweep_both_datasets(experiment):
    assert str(sweep(experiment)["data"]).split(",") == ["synapse", "abdomenct1k"]


def test_table5_trains_each_model_with_its_papers_loss_and_afw():
    rows = {}
    for point in sweep_points("table5_models2d"):
        cfg = compose_run("experiment=table5_models2d", *point)
        rows[(cfg.model._target_.rsplit(".", 1)[1], cfg.loss.name)] = cfg.loss
    assert set(rows) == {(m, loss) for m in ("UNet", "UNetPlusPlus", "TransUNet", "AttentionUNet")
                         for loss in ("ce_dice", "afw_dice")}
    # TransUNet's code: 0.5 CE + 0.5 Dice, squared denominator, background included, batch-pooled
    t = rows[("TransUNet", "ce_dice")]
    assert (t.lambda_ce, t.lambda_dice, t.include_background, t.squared, t.batch) == (0.5, 0.5, True, True, True)
    # UNet++ (Zhou et al.): 1/2 CE + Dice of each image
    u = rows[("UNetPlusPlus", "ce_dice")]
    assert (u.lambda_ce, u.lambda_dice, u.batch) == (0.5, 1.0, False)
    # the plain U-Net: CE + Dice 1:1 as in Tables 1-2
    assert (rows[("UNet", "ce_dice")].lambda_ce, rows[("UNet", "ce_dice")].lambda_dice) == (1.0, 1.0)


def test_table5_transunet_starts_from_local_weights_when_given():
    for row in ("transunet_default", "transunet_afw"):
        assert compose_run("experiment=table5_models2d", f"table5_row={row}").model.pretrained_path is None
        cfg = compose_run("experiment=table5_models2d", f"table5_row={row}", "transunet_pretrained=/w/r50_vit.pt")
        assert cfg.model.pretrained_path == "/w/r50_vit.pt"


def test_table6_protocol():
    cfg = compose_run("experiment=table6_3d")
    assert cfg.data.split.subset == 200 and list(cfg.data.split.ratios) == [7.5, 1, 1.5]
    # whole 256 x 256 x 128 volumes (X, Y, Z), seen whole: patch = volume = sliding window
    assert list(cfg.data.target_shape) == list(cfg.data.patch_size) == list(cfg.inference.roi_size) == [128, 256, 256]
    assert cfg.data.batch_size == 6 and cfg.trainer.max_epochs == 1500
    assert str(sweep("table6_3d")["model"]).split(",") == ["unetr", "unetr_pp"]
    assert "--metric dsc" in (EXPERIMENTS / "table6_3d.yaml").read_text()  # DSC only, as the paper


def test_target_shape_resizes_a_case_keeping_its_extent():
    import numpy as np

    from segbench.data.preprocess import resize_volume
    from segbench.data.volume import Volume
    from segbench.errors import ConfigError

    # 10 x 30 x 20 voxels of 2.5 x .8 x .7 mm -> 16 x 32 x 32: spacing s n / m = 1.5625, .75, .4375 mm
    rng = np.random.default_rng(0)
    label = np.zeros((10, 30, 20), np.uint8)
    label[3:7, 10:20, 5:15] = 2
    vol = Volume("a", rng.random((10, 30, 20)).astype(np.float32), label, (2.5, 0.8, 0.7),
                 np.diag([-0.7, -0.8, 2.5, 1.0]), True)
    out = resize_volume(vol, (16, 32, 32))
    assert out.image.shape == out.label.shape == (16, 32, 32)
    assert out.spacing == pytest.approx((2.5 * 10 / 16, 0.8 * 30 / 32, 0.7 * 20 / 32))
    assert set(np.unique(out.label)) == {0, 2}                       # nearest neighbour: no new label
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0          # a [0, 1] image stays in range
    extent = lambda v: np.abs(np.diag(v.affine)[:3]) * np.array(v.image.shape[::-1])  # noqa: E731 (x, y, z) mm
    np.testing.assert_allclose(extent(out), extent(vol))
    assert resize_volume(vol, None) is vol
    with pytest.raises(ConfigError, match="data.target_shape"):
        resize_volume(vol, (16, 32))


def test_figure3_sweeps_gamma_from_0_on_chaos_with_a_3_to_1_split():
    assert [float(g) for g in str(sweep("fig3_gamma")["loss.gamma"]).split(",")] == [0.0, 0.25, 0.5, 0.75, 1.0]
    cfg = compose_run("experiment=fig3_gamma")
    assert cfg.data.name == "chaos_mr" and list(cfg.data.split.ratios) == [3, 0, 1]


# ============================================================================ 4. acceptance: runs on the phantom
#: per experiment, the sweep keys replaced to keep CI lean: one job each, at the point that differs most
#: from the others (section 2 composes every point and builds its loss; the networks are tested in
#: test_models.py). Without them, each command is the README's dry run, and passes (the whole sweeps were
#: run so while this test was written).
LEAN = {
    "table1_synapse": ["loss=focal_dice"],
    "table2_abdomenct1k": ["loss=ce_gd"],
    "table3_uncertainty": ["loss.uncertainty=false"],
    "table4_symmetry": ["loss.asymmetric=false"],
    "table5_models2d": ["table5_row=unetpp_default"],
    "table6_3d": ["model=unetr_pp", "loss=afw_dice"],
    "fig3_gamma": ["loss.gamma=0.0"],                    # the point that had to be made to run
    "fig4_focused": ["loss.focused_classes=[]"],
}


def run_experiment(experiment: str, data_dir: Path, log_dir: Path) -> list[Path]:
    data = "data=phantom3d" if experiment == "table6_3d" else "data=phantom"
    proc = cli("segbench.train", "-m", f"experiment={experiment}", data, "debug=smoke", "seed=1", "num_threads=1",
               f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", *LEAN.get(experiment, []), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted((log_dir / experiment).glob("*/*/results/summary.json"))


def report_command(experiment: str) -> list[str]:
    """The report command written in the experiment config's header comment (``segbench-table ...`` or
    ``segbench-figures ...``, with its ``\\`` continuation lines), split as a shell would."""
    import shlex

    lines = [ln[1:].strip() for ln in (EXPERIMENTS / f"{experiment}.yaml").read_text().splitlines()
             if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith(("segbench-table ", "segbench-figures ")))
    text = ""
    for line in lines[start:]:
        text += " " + line.split("  #")[0].rstrip().rstrip("\\")
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(text)


def on_the_phantom(argv: list[str], sweep_dir: Path, out: Path) -> list[str]:
    """The report command pointed at the lean phantom sweep: its run directory and output replaced, the
    AbdomenCT-1K organ preset left out (the phantom has kidney_l / kidney_r, not kidney), as the
    configs say for the phantom, and the baseline left out (the lean sweep runs one row; that the
    baseline names a row of the full sweep is checked separately)."""
    args = [str(sweep_dir) if a.startswith("outputs/") else a for a in argv[1:]]
    if "--baseline" in args:
        del args[args.index("--baseline"):args.index("--baseline") + 2]
    if "--organs" in args and args[args.index("--organs") + 1] == "paper-table2":
        del args[args.index("--organs"):args.index("--organs") + 2]
    if "--out" in args:
        args[args.index("--out") + 1] = str(out)
    return args


#: the paper's layout of each table (PROTOCOL.md A): the rows' config keys, per-organ columns (a preset of
#: segbench.report.runs.ORGAN_PRESETS; None: no per-organ column), a column group per dataset, the mean
#: metrics, and the convention of its numbers (the Synapse tables: TransUNet's, HD95 in voxels)
PAPER_LAYOUT = {
    "table1_synapse": dict(rows=["loss.name"], organs="paper-table1", column_group=None, metrics=["DSC (%)",
                           "HD95 (voxels)"], convention="transunet"),
    "table2_abdomenct1k": dict(rows=["loss.name"], organs="paper-table2", column_group=None,
                               metrics=["DSC (%)", "HD95 (mm)"], convention="default"),
    "table3_uncertainty": dict(rows=["loss.name", "loss.uncertainty"], organs=None, column_group="data.name",
                               metrics=["DSC (%)", "HD95 (voxels)"], convention="transunet"),
    "table4_symmetry": dict(rows=["loss.name", "loss.asymmetric"], organs=None, column_group="data.name",
                            metrics=["DSC (%)", "HD95 (voxels)"], convention="transunet"),
    "table5_models2d": dict(rows=["model._target_", "loss.name"], organs=None, column_group="data.name",
                            metrics=["DSC (%)", "HD95 (voxels)"], convention="transunet"),
    "table6_3d": dict(rows=["model._target_", "loss.name"], organs="paper-table2", column_group=None,
                      metrics=["DSC (%)"], convention="default"),
}


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


@pytest.mark.slow  # a sweep per paper experiment (8), then its table
@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_every_paper_experiment_runs_on_the_phantom_and_its_table_renders(experiment, phantom_dir, tmp_path):
    """The experiment's sweep (one lean job) runs on the phantom, then its OWN report command (the one in
    its config's header) renders in the paper's layout: rows, per-organ columns, dataset column groups and
    units (the Synapse tables in TransUNet's convention, HD95 in voxels; Table 6 and Figures 3-4: DSC)."""
    import pandas as pd

    from segbench.report.runs import ORGAN_PRESETS

    summaries = run_experiment(experiment, phantom_dir, tmp_path)
    assert len(summaries) == 1, (experiment, summaries)  # the job finished (a sweep survives a crashed job)
    summary = json.loads(summaries[0].read_text())
    assert summary["num_cases"] >= 1 and 0.0 <= summary["mean_dsc"] <= 1.0
    # every test pass scores both conventions, each labelled with its unit
    assert {k: v["hd_unit"] for k, v in summary["by_convention"].items()} == {"default": "mm", "transunet": "voxels"}
    sweep_dir = summaries[0].parents[2]
    argv = report_command(experiment)
    out = tmp_path / "report"
    args = on_the_phantom(argv, sweep_dir, out)
    module = "segbench.report.table" if argv[0] == "segbench-table" else "segbench.report.figures"
    proc = cli(module, *args, timeout=300)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    config = yaml.safe_load((sweep_dir / "0" / ".hydra" / "config.yaml").read_text())

    if experiment.startswith("fig"):  # Figures 3 and 4: DSC against the swept key
        assert argv[:2] == ["segbench-figures", "gamma" if experiment == "fig3_gamma" else "focused"]
        frame = pd.read_csv(out / f"{argv[1]}.csv")
        assert set(frame["metric"]) == {"dsc"} and "--metric" not in argv
        return

    layout = PAPER_LAYOUT[experiment]
    assert argv[0] == "segbench-table" and flag_values(argv, "--group-by") == layout["rows"]
    assert flag_values(argv, "--column-group") == ([layout["column_group"]] if layout["column_group"] else [])
    lines = [ln for ln in (out / "table.md").read_text().splitlines() if ln.startswith("| ")]
    if layout["column_group"]:  # a group of columns per dataset: on the phantom, one group, "phantom"
        assert [c.strip() for c in lines[0].strip("|").split("|")][2] == "**phantom**", lines[0]
        lines = lines[1:]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    body = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[1:]]
    # the rows: one per value of the paper's row keys (the lean job: one row, labelled by its values)
    from segbench.report.runs import Run, get_key
    from segbench.report.table import group_label

    run = Run(path=sweep_dir / "0", config=config)
    assert [row[0] for row in body] == [group_label(layout["rows"], [get_key(run, k) for k in layout["rows"]])]
    # the baseline names a row of the full sweep (one composed config per sweep point)
    from omegaconf import OmegaConf

    for baseline in flag_values(argv, "--baseline"):
        labels = {group_label(layout["rows"], [OmegaConf.select(compose_run(f"experiment={experiment}", *point), k)
                                               for k in layout["rows"]]) for point in sweep_points(experiment)}
        assert baseline in labels, (baseline, labels)
    # the columns: the paper's mean metrics, then its organs (paper-table2's on the phantom: its own 8)
    n_metrics = len(layout["metrics"])
    assert header[2:2 + n_metrics] == layout["metrics"], header
    organs = header[2 + n_metrics:]
    if layout["organs"] == "paper-table1":
        assert organs == ORGAN_PRESETS["paper-table1"]
    elif layout["organs"] == "paper-table2":  # left out on the phantom: every organ of the phantom
        assert "paper-table2" in flag_values(argv, "--organs") and organs == ORGANS[1:]
    else:
        assert organs == [] and flag_values(argv, "--organs") == ["none"]
    # the units and the convention, said in the caption and the CSV
    text = (out / "table.md").read_text()
    unit = "voxels" if layout["convention"] == "transunet" else "mm"
    assert f"Metric convention: {layout['convention']}; HD in {unit}" in text
    frame = pd.read_csv(out / "table.csv")
    assert set(frame["convention"]) == {layout["convention"]} and set(frame["hd_unit"]) == {unit}
    assert set(frame["dsc_unit"]) == {"%"}


def test_a_swept_dataset_without_its_root_is_named_before_anything_runs():
    from segbench.runtime.checks import unset_dataset_root

    hint = unset_dataset_root(compose_run("experiment=table3_uncertainty", "data=abdomenct1k"))
    assert hint.startswith("dataset_roots.abdomenct1k=<the dataset's directory>")
    assert unset_dataset_root(compose_run("experiment=table3_uncertainty", "dataset_roots.synapse=/d/S")) is None
    assert unset_dataset_root(compose_run("experiment=table3_uncertainty", "data=phantom")) is None  # no root read
    assert unset_dataset_root(compose_run("experiment=table5_models2d", "data=synapse", "data.root=/d/S")) is None
