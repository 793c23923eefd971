"""DDP on 2 CPU processes (gloo): one run directory per job, every test case scored once.

The equality the design guarantees: testing is inference with fixed weights, one whole case at a time,
and each case's prediction does not depend on which rank computes it or on the other cases. So the
per-case rows that the 2 ranks score and rank 0 gathers must be exactly the rows that a single process
writes for the same checkpoint (``segbench-eval``). (Training itself is not compared: 2 ranks x batch 4
draw other batches than 1 process x batch 4.)
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from helpers import console

pytestmark = pytest.mark.slow  # two gloo processes per run

#: a regression that makes the ranks wait for each other forever fails here, not after the suite's patience
TIMEOUT = 300


def test_ddp_job_in_a_sweep_writes_one_directory_and_the_single_process_results(phantom_dir, tmp_path):
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    sweep = tmp_path / "sweep"
    # a multirun (of one job): Lightning's own relaunch of the command line would start the sweep again in
    # the second rank and put it in another directory; 3 test cases do not split evenly over 2 ranks
    proc = console("train", "-m", "debug=smoke", "num_threads=1", "trainer=ddp", "trainer.accelerator=cpu",
                   "trainer.devices=2", "data.phantom.num_cases=5", "data.split.test=3", "seed=1",
                   f"hydra.sweep.dir={sweep}", f"paths.data_dir={phantom_dir}", env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    assert not (tmp_path / "outputs").exists()  # no rank made a directory of its own
    job = sweep / "0"
    summary = json.loads((job / "results" / "summary.json").read_text())
    assert summary["run"]["world_size"] == 2 and summary["config"]["trainer"]["devices"] == 2
    assert json.loads((job / "run.json").read_text())["status"] == "done"
    ddp = pd.read_csv(job / "results" / "per_case.csv", dtype={"case": str})
    # each case once per convention (default, transunet), padding dropped
    assert len(ddp) == 3 * 8 * 2 and not ddp.duplicated(["case", "organ", "convention"]).any()
    assert sorted(set(ddp["case"])) == json.loads((job / "splits.json").read_text())["test"]

    # the same checkpoint scored by one process
    checkpoint = summary["run"]["checkpoint"]
    proc = console("eval", f"ckpt_path={checkpoint}", f"paths.data_dir={phantom_dir}",
                   f"hydra.run.dir={tmp_path / 'eval'}", env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "results" / "per_case.csv").read_text() == \
        (job / "results" / "per_case.csv").read_text()
    single = json.loads((tmp_path / "eval" / "results" / "summary.json").read_text())
    assert (single["mean_dsc"], single["mean_hd95"]) == (summary["mean_dsc"], summary["mean_hd95"])
