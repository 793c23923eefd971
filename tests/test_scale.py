"""Experiments at scale: the paper's experiment configs, sweeps through launchers, a failing job, Optuna.

Every run here is ``debug=smoke`` with one thread (a tiny phantom, one short epoch): these tests check
the plumbing -- what runs, where it is written, what the report tools make of it -- not the numbers.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from helpers import console, script

EXPERIMENTS = {  # experiment -> (jobs in its sweep, the keys it sweeps)
    "table1_synapse": (12, ["loss", "seed"]),
    "table2_abdomenct1k": (12, ["loss", "seed"]),
    "table3_uncertainty": (12, ["data", "loss.uncertainty", "seed"]),   # Synapse and AbdomenCT-1K
    "table4_symmetry": (12, ["data", "loss.asymmetric", "seed"]),
    "table5_models2d": (48, ["table5_row", "data", "seed"]),           # 4 models x {their loss, AFW}
    "table6_3d": (12, ["model", "loss", "seed"]),
    "fig3_gamma": (15, ["loss.gamma", "seed"]),
    "fig4_focused": (15, ["loss.focused_classes", "seed"]),
}
DATA = {"table1_synapse": "synapse", "table2_abdomenct1k": "abdomenct1k", "table3_uncertainty": "synapse",
        "table4_symmetry": "synapse", "table5_models2d": "synapse", "table6_3d": "abdomenct1k3d",
        "fig3_gamma": "chaos_mr", "fig4_focused": "chaos_mr"}


@pytest.fixture
def env(tmp_path) -> dict:
    """Run outputs that are not given a directory land in tmp_path/outputs, never in the repository."""
    return {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}


def sweep_jobs(cfg) -> list[tuple[str, ...]]:
    """The override lists of a composed config's ``hydra.sweeper.params`` (as the basic sweeper expands them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return list(itertools.product(*[[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                                    for o in overrides]))


# ----------------------------------------------------------------------------------------------
# the paper's experiments


def test_every_experiment_has_the_papers_settings_and_composes_every_job_on_the_phantom(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segbench.config import CONFIG_DIR
    from segbench.runtime.build import build

    built = set()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for name, (num_jobs, keys) in EXPERIMENTS.items():
            cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
            assert cfg.hydra.runtime.choices.data == DATA[name]
            # the paper's training settings are the defaults (PROTOCOL.md A)
            assert cfg.task_name == name
            assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
            assert dict(cfg.scheduler) == {"name": "poly", "power": 0.9, "interval": "epoch"}
            if name == "table6_3d":  # 3D: 1500 epochs, batch 6, whole 256 x 256 x 128 volumes
                assert (cfg.trainer.max_epochs, cfg.data.batch_size, list(cfg.data.patch_size)) == \
                    (1500, 6, [128, 256, 256])
            else:
                assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.data.img_size) == (150, 24, 224)
                assert cfg.hydra.runtime.choices.model == "unet" and cfg.model.width == 32 and cfg.model.depth == 5
            jobs = sweep_jobs(cfg)
            assert len(jobs) == num_jobs and [j.split("=")[0] for j in jobs[0]] == keys, name
            jobs = [tuple(o for o in j if not o.startswith("data=")) for j in jobs]  # the phantom replaces data
            # every job (of the first seed: seeds change nothing else) composes on the phantom; one job per
            # model builds (network + data module; no data is read)
            phantom = "data=phantom3d" if name == "table6_3d" else "data=phantom"
            for job in dict.fromkeys(j for j in jobs if j[-1] == "seed=1"):
                job_cfg = compose("train", overrides=[f"experiment={name}", phantom, f"paths.data_dir={tmp_path}",
                                                      f"paths.output_dir={tmp_path}",
                                                      "debug=smoke", *job])
                OmegaConf.resolve(job_cfg)
                model = job_cfg.model._target_
                if model not in built:
                    built.add(model)
                    build(job_cfg)
    assert built == {"segbench.models.UNet", "segbench.models.UNetPlusPlus", "segbench.models.TransUNet",
                     "segbench.models.AttentionUNet", "segbench.models.UNETR", "segbench.models.UNETRPP"}


def test_fig3_sweeps_gamma_from_zero_and_fig4_focuses_4_to_0_organs():
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        jobs = {name: [dict(o.split("=", 1) for o in job) for job in
                       sweep_jobs(compose("train", overrides=[f"experiment={name}"], return_hydra_config=True))]
                for name in ("fig3_gamma", "fig4_focused")}
    gammas = [job["loss.gamma"] for job in jobs["fig3_gamma"]]
    focused = [job["loss.focused_classes"] for job in jobs["fig4_focused"]]
    # gamma = 0 runs (the focused terms are constants: CE + the background's Dice, test_losses.py)
    assert sorted(set(map(float, gammas))) == [0.0, 0.25, 0.5, 0.75, 1.0]
    sets = [yaml.safe_load(f) for f in dict.fromkeys(focused)]
    assert [len(s) for s in sets] == [4, 3, 2, 1, 0]
    assert sets[0] == ["liver", "spleen", "kidney_r", "kidney_l"]


# ----------------------------------------------------------------------------------------------
# sweeps


@pytest.mark.slow  # a 2 x 2 sweep through submitit
def test_table1_subset_through_the_local_submitit_launcher_makes_a_table(phantom_dir, tmp_path, env):
    """A 2 x 2 sweep of experiment=table1_synapse on the phantom, each job in its own process."""
    sweep = tmp_path / "sweep"
    proc = console("train", "-m", "experiment=table1_synapse", "data=phantom", "debug=smoke", "num_threads=1",
                   "loss=ce_dice,afw_dice", "seed=1,2", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
                   f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / ".submitit").is_dir()  # the jobs ran through submitit
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        status = json.loads((sweep / job / "run.json").read_text())
        assert status["status"] == "done" and status["attempt"] == 1 and status["epoch"] == 1
        config = json.loads((sweep / job / "results" / "summary.json").read_text())["config"]
        assert config["task_name"] == "table1_synapse" and config["scheduler"]["interval"] == "epoch"
    proc = console("table", str(sweep), "--group-by", "loss.name", "--baseline", "ce_dice", "--percent",
                   "--organs", "paper-table1", "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert rows[0].split(" | ")[:3] == ["| Method", "n", "DSC (%)"]
    assert rows[0].split(" | ")[4:12] == ["aorta", "kidney_l", "gallbladder", "kidney_r", "liver", "pancreas",
                                          "spleen", "stomach"]
    body = {r.split(" | ")[0].strip("| *"): r.split(" | ")[1] for r in rows[1:] if "---" not in r}
    assert body == {"ce_dice": "2", "afw_dice": "2"}  # two seeds per row, in sweep order
    index = script(Path(__file__).parent.parent / "scripts" / "index_runs.py", str(sweep))
    assert index.returncode == 0 and index.stderr.strip() == "4 done"


@pytest.mark.slow  # a 2-job sweep, then the figure
def test_fig4_subset_on_the_phantom_makes_its_figure(phantom_dir, tmp_path, env):
    """The figure command of configs/experiment/fig4_focused.yaml on two of its sweep's points."""
    sweep = tmp_path / "sweep"
    proc = console("train", "-m", "experiment=fig4_focused", "data=phantom", "debug=smoke", "num_threads=1",
                   "seed=1", "loss.focused_classes=[kidney_r,kidney_l],[]", f"hydra.sweep.dir={sweep}",
                   f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = console("figures", "focused", str(sweep), "--key", "loss.focused_classes", "--percent", "--per-organ",
                   "--out", str(tmp_path / "fig"))
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    points = pd.read_csv(tmp_path / "fig" / "focused.csv")
    assert sorted(set(points["x"])) == [0, 2]
    assert (tmp_path / "fig" / "focused.png").is_file() and (tmp_path / "fig" / "focused.pdf").is_file()


@pytest.mark.slow  # a 2-job sweep
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(phantom_dir, tmp_path, env):
    """``++loss.gamma`` sets gamma where the loss has it and adds it where it does not: the ce_dice job
    stops at start-up with a one-line error, the afw_dice job trains, the table marks the failure, and
    the sweep exits 1 naming the failed job and its error."""
    sweep = tmp_path / "sweep"
    proc = console("train", "-m", "debug=smoke", "num_threads=1", "loss=ce_dice,afw_dice", "++loss.gamma=0.5",
                   f"hydra.sweep.dir={sweep}", f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"segbench-train: error: 1 of 2 jobs did not finish (sweep: {sweep}): job 0 (debug=smoke num_threads=1 "
        "loss=ce_dice ++loss.gamma=0.5): failed: loss 'ce_dice' has no option 'gamma'; its options are: "
        "lambda_ce, lambda_dice, include_background, smooth, batch, squared, ignore_index")
    error = json.loads((sweep / "0" / "results" / "error.json").read_text())
    assert error["error"].startswith("loss 'ce_dice' has no option 'gamma'; its options are: ")
    assert json.loads((sweep / "0" / "run.json").read_text())["status"] == "failed"
    assert not (sweep / "0" / "checkpoints").exists()  # stopped before training
    assert json.loads((sweep / "1" / "run.json").read_text())["status"] == "done"
    assert json.loads((sweep / "1" / "results" / "summary.json").read_text())["config"]["loss"]["gamma"] == 0.5
    proc = console("table", str(sweep), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ce_dice ")]
    assert len(failed) == 1 and "failed: loss 'ce_dice' has no option 'gamma'" in failed[0]
    assert any(ln.startswith("| afw_dice | 1 | ") for ln in proc.stdout.splitlines())


def test_an_option_some_losses_lack_without_plus_plus_stops_the_sweep_before_any_job(tmp_path, env):
    proc = console("train", "-m", "debug=smoke", "loss=ce_dice,afw_dice", "loss.gamma=0.5",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert proc.returncode == 1
    assert "Could not override 'loss.gamma'" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_paper_experiment_without_its_dataset_says_so_in_one_line(tmp_path, env):
    proc = console("train", "experiment=table1_synapse", f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("segbench-train: error: data.root not set: pass data.root=<the "
                                                    "dataset's directory>, or data=phantom for the built-in phantom")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow  # 2 Optuna trials
def test_optuna_search_runs_trials_and_reports_the_best(phantom_dir, tmp_path, env):
    sweep = tmp_path / "optuna"
    proc = console("train", "hparams_search=afw_optuna", "debug=smoke", "num_threads=1", "hydra.sweeper.n_trials=2",
                   f"hydra.sweep.dir={sweep}", f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"loss.gamma", "loss.lambda_ce"}
    assert 0.05 <= best["best_params"]["loss.gamma"] <= 1.0
    trials = []
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "results" / "summary.json").read_text())
        assert summary["config"]["loss"]["name"] == "afw_dice"
        trials.append((summary["run"]["best_val_dice"], summary["config"]["loss"]["gamma"]))
    # the optimised value is each trial's best validation Dice (optimized_metric: val/dice)
    assert best["best_value"] == pytest.approx(max(trials)[0])
    assert best["best_params"]["loss.gamma"] == pytest.approx(max(trials)[1])


def test_a_missing_optuna_plugin_is_named_with_its_install_command(monkeypatch, capsys):
    import importlib.util

    from segbench import train
    from segbench.runtime.checks import missing_plugin

    real = importlib.util.find_spec
    assert missing_plugin(["hparams_search=afw_optuna"]) is None  # installed with the dev extra
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hydra_plugins.hydra_optuna_sweeper" else real(name, *a))
    message = missing_plugin(["data=phantom", "hparams_search=afw_optuna"])
    assert message is not None and 'pip install -e ".[optuna]"' in message
    assert missing_plugin(["hydra/sweeper=optuna"]) == message
    assert missing_plugin(["loss=afw_dice", "hparams_search=null"]) is None
    # and the command line stops on it in one line, before Hydra composes anything
    monkeypatch.setattr(sys, "argv", ["segbench-train", "hparams_search=afw_optuna"])
    with pytest.raises(SystemExit) as stop:
        train.cli()
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"segbench-train: error: {message}\n"
