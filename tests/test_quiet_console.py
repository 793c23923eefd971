"""A quiet console: a run's first lines are segbench's own. No plugin set-up from Hydra's plugin scan or the Optuna
sweeper (alembic's "setup plugin ..."), no Lightning device banner ("GPU available: ...", "TPU available: ..."),
no matplotlib "generated new fontManager"; one "device: ..." line of segbench's instead; and a WARNING the user
can act on still printed (segbench/runtime/console.py, configs/hydra/default.yaml)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: third-party lines a run must not print, anywhere
NOISE = ("setup plugin", "alembic", "GPU available:", "TPU available:", "HPU available:", "IPU available:",
         "fontManager", "LOCAL_RANK:", "estimate number of stepping batches",
         "callbacks used to create the checkpoint")
#: a line of segbench's own: its loggers, or the phantom's progress line
OWN = re.compile(r"^\[[^\]]+\]\[segbench(\.[\w.]+)?\]\[(INFO|WARNING|ERROR)\] - |^phantom ")


def cli(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    # a fresh process in an empty directory, output redirected as in a Slurm job
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          check=False, cwd=cwd, env={**os.environ, **(env or {})})


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, (noise, proc.stdout[:3000], proc.stderr[:3000])


def head(stdout: str, until: str) -> list[str]:
    """stdout's lines before the first that contains ``until`` (which must come)."""
    lines = stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if until in line)
    return lines[:end]


def test_a_run_and_its_evaluation_print_segbench_first_and_its_warnings(phantom_dir, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "a_file").write_text("")  # data.cache_dir below a file: not writable, a WARNING of segbench's
    cache_dir = tmp_path / "a_file" / "cache"
    run_dir = tmp_path / "run"
    # a fresh matplotlib cache: its first import logs "generated new fontManager"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"hydra.run.dir={run_dir}",
               f"paths.data_dir={phantom_dir}", f"data.cache_dir={cache_dir}", cwd=cwd,
               env={"MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert_quiet(proc)
    first = head(proc.stdout, "epoch 1/1")
    assert first and all(OWN.match(line) for line in first), proc.stdout[:3000]
    # the warning that matters comes first, then segbench's one device line
    assert "[segbench.data][WARNING] - data.cache_dir " in first[0] and "is not writable" in first[0]
    assert any(line.endswith("[segbench][INFO] - device: cpu (1 thread)") for line in first), first
    assert list(cwd.iterdir()) == []

    eval_dir = tmp_path / "eval"
    proc = cli("segbench.eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={eval_dir}",
               cwd=cwd)
    assert_quiet(proc)
    first = head(proc.stdout, "Restoring states from the checkpoint")
    assert first and all(OWN.match(line) for line in first), proc.stdout[:3000]
    assert "[segbench.data][WARNING] - data.cache_dir " in first[0]  # the run's config: the same warning
    assert any(" - device: cpu (" in line for line in first), first


@pytest.mark.slow  # an Optuna sweep
def test_an_optuna_sweep_prints_no_plugin_setup(phantom_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # the sweeper imports optuna, optuna alembic, whose plugin set-up logs at INFO while Hydra's logging shows it
    proc = cli("segbench.train", "hparams_search=afw_optuna", "hydra.sweeper.n_trials=1", "debug=smoke",
               "num_threads=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.data_dir={phantom_dir}",
               cwd=tmp_path)
    assert_quiet(proc)
    # Hydra's own lines about the sweep, then the trial's: segbench's first
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("[HYDRA] Study name: afw_dice"), proc.stdout[:3000]
    trial = head(proc.stdout, "epoch 1/1")[next(i for i, line in enumerate(lines) if "\t#0 : " in line) + 1:]
    assert trial and all(OWN.match(line) for line in trial), proc.stdout[:3000]


@pytest.mark.slow  # a training run with every experiment tracker
def test_a_run_with_every_tracker_prints_none_of_their_chatter(phantom_dir, tmp_path):
    """CSV, MLflow, W&B and Aim (those installed) at once: no banner, status, URL or warning of theirs (W&B's
    "wandb: ...", MLflow's "View run ... at", Aim's status reporter and lock lines); the run's first lines are
    segbench's, and it ends with segbench's one line per tracker on where the run is."""
    trackers = ["csv"] + [m for m in ("mlflow", "wandb", "aim") if importlib.util.find_spec(m) is not None]
    home = tmp_path / "home"  # no tracker account or settings
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    proc = subprocess.run([sys.executable, "-m", "segbench.train", "debug=smoke", "num_threads=1",
                           f"logger=[{','.join(trackers)}]", f"hydra.run.dir={tmp_path / 'run'}",
                           f"paths.data_dir={phantom_dir}"], capture_output=True, text=True, timeout=600,
                          check=False, cwd=tmp_path, env={**env, "HOME": str(home)})
    assert_quiet(proc)
    first = head(proc.stdout, "epoch 1/1")
    assert first and all(OWN.match(line) for line in first), proc.stdout[:3000]
    theirs = re.compile(r"\b(wandb|w&b|mlflow|aim)\b|View run|Force-releasing", re.IGNORECASE)
    own = re.compile(r"^\[[^\]]+\]\[segbench\]\[INFO\] - (csv|mlflow|wandb|aim): ")
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [line for line in lines if theirs.search(line) and not own.match(line)] == [], proc.stderr[-3000:]
    assert sorted(own.match(line).group(1) for line in lines if own.match(line)) == sorted(trackers)
