"""hydra/launcher=slurm against a real single-node Slurm 22.05 cluster that the tests start (``slurm_cluster``).

The cluster (scripts/slurm_cluster.sh) has 2 cores and no GPU; each job asks for 1 CPU per task, so
two jobs run at once. Every job is a smoke run on the tiny phantom (debug=smoke, num_threads=1).
``tests/slurm_pause.py`` holds a job at the start of its second epoch (after the first epoch's
``last.ckpt``), where a test cancels it, preempts it or lets its time limit run out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import cli

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SLURM = ["-m", "debug=smoke", "num_threads=1", "hydra/launcher=slurm"]


@pytest.fixture
def env(tmp_path, phantom_dir) -> dict:
    """The jobs inherit this environment (sbatch --export=ALL): this checkout and tests/ (the pause
    callback) on the path, outputs and the phantom where the test says."""
    path = [str(ROOT), str(TESTS)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
            "SEGBENCH_DATA_DIR": str(phantom_dir)}


def train(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    # a launcher that waits for ever fails here, not after the suite's patience
    proc = cli("segbench.train", *SLURM, *args, env=env, timeout=timeout)
    print(f"$ segbench-train {' '.join(SLURM + list(args))}\n-> exit {proc.returncode}\n{summary_of(proc)}")
    return proc


def summary_of(proc) -> str:
    """The launcher's own lines (job states, errors), without Hydra's and Lightning's chatter."""
    keep = ("submitted", "Slurm job", "  Slurm job", "segbench-train", "  job", "resuming", "holds a finished")
    return "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(keep))


def slurm_jobs(sweep: Path) -> list[str]:
    """The Slurm job ids of a sweep's jobs (array tasks), from submitit's folders: ``<array>_<task>``."""
    names = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
    tasks = [n for n in names if "_" in n]  # an array's tasks (and its own folder), or one job that is no array
    return sorted(tasks, key=lambda name: int(name.split("_")[1])) if tasks else names


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "run.json").read_text())


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's final state and exit code of each job (a job that wrote its result may still be ending)."""
    for _ in range(120):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        states = {row.split("|")[0]: row.split("|")[1] + " " + row.split("|")[2] for row in out.split()}
        if not any(s.startswith(("RUNNING", "COMPLETING", "PENDING")) for s in states.values()):
            break
        time.sleep(0.5)
    return states


def wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 600) -> str:
    """The content of ``path`` once a job wrote it (fails if the launcher ended first)."""
    end = time.monotonic() + limit_s
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, f"the launcher ended before {path.name}: {proc.communicate()}"
        assert time.monotonic() < end, f"no job reached {path}"
        time.sleep(0.5)
    return path.read_text().split()[0]


# ----------------------------------------------------------------------------------------------
# configuration (no cluster needed)


def launcher_config(*overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_launcher_defaults_follow_the_trainer():
    cpu = launcher_config("trainer=cpu")
    assert (cpu["gpus_per_node"], cpu["tasks_per_node"], cpu["cpus_per_task"], cpu["mem_gb"]) == (None, 1, 1, None)
    gpu = launcher_config("trainer=gpu", "trainer.devices=4", "data.num_workers=3")
    # one task per GPU; each task: the training process + 3 loader workers
    assert (gpu["gpus_per_node"], gpu["tasks_per_node"], gpu["cpus_per_task"]) == (4, 4, 4)
    # data.num_workers=auto (the default): no worker on a CPU trainer, up to 7 beside a GPU
    assert launcher_config("trainer=gpu")["cpus_per_task"] == 8
    ddp_cpu = launcher_config("trainer=ddp_cpu")
    assert (ddp_cpu["gpus_per_node"], ddp_cpu["tasks_per_node"]) == (None, 2)
    assert launcher_config("trainer.devices=[0,1]")["tasks_per_node"] == 2
    assert launcher_config()["_target_"] == "hydra_plugins.segbench_launcher.SlurmLauncher"


def test_a_request_no_node_can_meet_is_refused_naming_what_is_short(monkeypatch):
    from segbench.errors import ConfigError
    from segbench.runtime import slurm

    assert (slurm._gpus("gpu:a100:4(S:0-1),shard:8"), slurm._gpus("gpu:2"), slurm._gpus("(null)")) == (4, 2, 0)
    nodes = [{"cpus": 64, "mem_mb": 512000, "gpus": 0}, {"cpus": 32, "mem_mb": 256000, "gpus": 4}]
    monkeypatch.setattr(slurm, "partition_nodes", lambda partition: ("gpu", nodes))
    # 4 tasks x 8 CPUs, 200 GB, 4 GPUs: the second node
    slurm.check_request({"tasks_per_node": 4, "cpus_per_task": 8, "mem_gb": 200, "gpus_per_node": 4})
    # 4 x 12 = 48 CPUs and 4 GPUs: each alone fits a node, together none
    with pytest.raises(ConfigError, match=r"48 CPUs, 0 GB and 4 GPUs on one node, which no node has"):
        slurm.check_request({"tasks_per_node": 4, "cpus_per_task": 12, "gpus_per_node": 4})
    with pytest.raises(ConfigError, match=r"gpus_per_node=8 but its nodes have at most 4"):
        slurm.check_request({"gpus_per_node": 8})
    monkeypatch.setattr(slurm, "partition_nodes", lambda partition: ("cpu", nodes[:1]))
    with pytest.raises(ConfigError, match=r"gpus_per_node=1 but its nodes have no GPUs: train on CPUs with trainer=cpu"):
        slurm.check_request({"gpus_per_node": 1})


def test_timeout_min_must_leave_time_for_the_signal_lead():
    from segbench.errors import ConfigError
    from segbench.runtime.slurm import check_time_limit, min_timeout_min

    # SIGUSR2 120 s before the limit, up to 60 s earlier than that, and 30 s for the job to start:
    # 210 s -> 4 minutes
    assert min_timeout_min(120) == 4 and min_timeout_min(30) == 2
    check_time_limit({"timeout_min": 4, "signal_delay_s": 120})
    with pytest.raises(ConfigError, match=r"timeout_min=3 leaves no time .* use timeout_min >= 4"):
        check_time_limit({"timeout_min": 3, "signal_delay_s": 120})


def test_unwrap_reaches_the_cause_through_monai_torch_and_submitit_wrappers():
    from hydra.errors import InstantiationException
    from submitit.core.utils import FailedJobError

    from segbench.errors import unwrap

    cause = ValueError("label 9 out of range")
    try:  # MONAI's apply_transform: raise RuntimeError(f"applying transform {transform}") from e
        try:
            raise cause
        except ValueError as e:
            raise RuntimeError("applying transform <monai.transforms.RandFlipd object>") from e
    except RuntimeError as monai_error:
        wrapped = InstantiationException("Error in call to target 'x'")
        wrapped.__cause__ = monai_error
        assert unwrap(wrapped) is cause
    worker = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  File \"x.py\", line 1\nRuntimeError: applying transform <RandFlipd>\n\n"
                          "The above exception was the direct cause of the following exception:\n\n"
                          "ValueError: label 9 out of range\n")
    assert (type(unwrap(worker)).__name__, unwrap(worker).type_name, str(unwrap(worker))) == \
        ("RemoteError", "ValueError", "label 9 out of range")
    job = FailedJobError("Job (task=0) failed during processing with trace:\n----------------------\n"
                         "Traceback (most recent call last):\n  File \"y.py\", line 2\n"
                         "segbench.errors.DataError: data.root=/x: no such directory\n"
                         "----------------------\nYou can check full logs with 'job.stderr(0)'")
    assert (unwrap(job).type_name, str(unwrap(job))) == ("DataError", "data.root=/x: no such directory")


def test_submitit_signal_handler_logs_from_another_thread():
    """A signal handler that logs while the main thread is inside the log file's write would re-enter
    the file's writer ("--- Logging error --- reentrant call"): submitit's logger only queues."""
    from segbench.runtime.slurm import defer_submitit_logging

    seen = []

    class Record(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), threading.current_thread() is threading.main_thread()))

    root_handler = Record()
    logging.getLogger().addHandler(root_handler)
    log = logging.getLogger("submitit")
    handlers, propagate = log.handlers, log.propagate
    try:
        defer_submitit_logging()
        log.warning("Bypassing signal SIGTERM")
        for _ in range(100):
            if seen:
                break
            time.sleep(0.05)
        assert seen == [("Bypassing signal SIGTERM", False)]  # written, by the listener thread
    finally:
        logging.getLogger().removeHandler(root_handler)
        log.handlers, log.propagate = handlers, propagate


# ----------------------------------------------------------------------------------------------
# on the cluster


@pytest.mark.slow  # the cluster starts in ~10 min (root, apt); its jobs take minutes
@pytest.mark.usefixtures("slurm_cluster")
def test_a_2x2_sweep_runs_as_four_slurm_jobs_and_makes_one_table(tmp_path, env):
    sweep = tmp_path / "sweep"
    # seed varies slowest: jobs 0, 1 run together on the 2 cores, 2, 3 after them -- so each loss's two
    # runs start at different times and their run_name (a timestamp) differs
    proc = train("seed=1,2", "loss=ce_dice,dice", f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted 4 job(s) to Slurm" in proc.stdout
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert status(sweep / job)["status"] == "done" and (sweep / job / "results" / "summary.json").is_file()
    arrays = slurm_jobs(sweep)
    assert len(arrays) == 4  # one submitit folder per Slurm job (array task)
    assert set(sacct_states(arrays).values()) == {"COMPLETED 0:0"}
    names = {json.loads((sweep / j / "results" / "summary.json").read_text())["config"]["run_name"] for j in jobs}
    assert len(names) > 1  # the jobs resolved run_name at their own start
    table = cli("segbench.report.table", str(sweep), "--group-by", "loss.name", "--out", str(tmp_path / "report"),
                env=env)
    print(table.stdout, table.stderr)
    assert table.returncode == 0, table.stderr
    assert "differ" not in table.stderr
    rows = {r.split(" | ")[0].strip("| *"): r.split(" | ")[1] for r in table.stdout.splitlines()
            if r.startswith("| ") and "---" not in r and not r.startswith("| Method")}
    assert rows == {"ce_dice": "2", "dice": "2"}


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_ddp_job_of_two_slurm_tasks_writes_one_directory_with_the_single_process_results(tmp_path, env):
    sweep = tmp_path / "sweep"
    # trainer=ddp_cpu: 2 devices -> 2 Slurm tasks on the node, one per rank (Lightning's SLURMEnvironment, gloo);
    # 3 test cases do not split evenly over 2 ranks
    proc = train("trainer=ddp_cpu", "data.phantom.num_cases=5", "data.split.test=3", "seed=1",
                 f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "multirun.yaml"]
    (array_job,) = slurm_jobs(sweep)
    folder = sweep / ".submitit" / array_job
    assert sorted(p.name for p in folder.glob("*_log.out")) == [f"{folder.name}_0_log.out", f"{folder.name}_1_log.out"]
    job = sweep / "0"
    summary = json.loads((job / "results" / "summary.json").read_text())
    assert summary["run"]["world_size"] == 2 and status(job)["status"] == "done"
    ddp = pd.read_csv(job / "results" / "per_case.csv", dtype={"case": str})
    assert len(ddp) == 3 * 8 * 2 and not ddp.duplicated(["case", "organ", "convention"]).any()  # 2 conventions
    # the same checkpoint scored by one process
    single = cli("segbench.eval", f"ckpt_path={summary['run']['checkpoint']}", f"hydra.run.dir={tmp_path / 'eval'}",
                 env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert (tmp_path / "eval" / "results" / "per_case.csv").read_text() == (job / "results" / "per_case.csv").read_text()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_failed_job_leaves_the_others_and_the_sweep_exits_1_naming_it(tmp_path, env):
    sweep = tmp_path / "sweep"
    proc = train("loss=ce_dice,afw_dice", "++loss.gamma=0.5", f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"segbench-train: error: 1 of 2 jobs did not finish (sweep: {sweep}): job 0 (")
    assert "loss=ce_dice" in last and "failed: loss 'ce_dice' has no option 'gamma'" in last
    assert status(sweep / "1")["status"] == "done" and (sweep / "1" / "results" / "summary.json").is_file()
    ids = slurm_jobs(sweep)
    assert sacct_states(ids) == {ids[0]: "FAILED 1:0", ids[1]: "COMPLETED 0:0"}  # Slurm knows too


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_an_impossible_request_is_refused_at_submission_in_one_line(tmp_path, env):
    proc = train("hydra.launcher.cpus_per_task=64", f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "segbench-train: error: Slurm partition debug cannot run this job: it asks for 64 CPUs "
        f"(tasks_per_node=1 x cpus_per_task=64) but its nodes have at most {os.cpu_count()} (hydra.launcher.*)"]
    proc = train("hydra.launcher.timeout_min=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "timeout_min=1 leaves no time for the requeue signal" in proc.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_ends_the_launcher_in_one_line_preemption_requeues_and_both_resume_to_identical_results(
        tmp_path, env):
    """Three jobs of one config (only the pause callback's name differs): job 0 is cancelled and job 1
    preempted (SIGUSR2) while held at the start of epoch 2; job 2 runs uninterrupted."""
    sweep, marks = tmp_path / "sweep", tmp_path / "marks"
    marks.mkdir()
    args = ["trainer.max_epochs=2", "+callbacks.pause._target_=slurm_pause.PauseAtEpoch", "+callbacks.pause.epoch=1",
            f"+callbacks.pause.marker_dir={marks}", "+callbacks.pause.name=cancel,preempt,never", f"hydra.sweep.dir={sweep}"]
    command = [sys.executable, "-m", "segbench.train", *SLURM, *args]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        cancel, preempt = wait_for(marks / "cancel", launcher), wait_for(marks / "preempt", launcher)
        subprocess.run(["scancel", cancel], check=True)
        subprocess.run(["scancel", "--signal=USR2", preempt], check=True)
        out, err = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
    proc = subprocess.CompletedProcess(command, launcher.returncode, out, err)
    print(f"$ segbench-train {' '.join(SLURM + args)}  # scancel {cancel}; scancel --signal=USR2 {preempt}\n"
          f"-> exit {proc.returncode}\n{summary_of(proc)}")
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith(
        f"segbench-train: error: 1 of 3 jobs did not finish (sweep: {sweep}): job 0 (")
    assert f"interrupted: Slurm job {cancel} ended CANCELLED after 1 epoch(s) without a result; running the same " \
           "command again resumes it from checkpoints/last.ckpt" in err
    assert "Logging error" not in "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    # preempted: requeued by submitit (a second attempt), resumed from last.ckpt, finished
    assert status(sweep / "1")["attempt"] == 2 and status(sweep / "1")["status"] == "done"
    assert status(sweep / "1")["resumed_from"].endswith("last.ckpt")
    assert (marks / "preempt").read_text().split() == [preempt]  # only the first attempt paused
    assert status(sweep / "2")["attempt"] == 1

    # the same command again: the cancelled job resumes, the finished ones are not trained again
    first = set(slurm_jobs(sweep))
    again = train(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    logs = {job: "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.out"))
            for job in slurm_jobs(sweep) if job not in first}
    assert [("resuming from" in log, "holds a finished run of this config" in log) for log in logs.values()] == \
        [(True, False), (False, True), (False, True)]
    assert status(sweep / "0")["attempt"] == 2 and status(sweep / "0")["status"] == "done"
    assert status(sweep / "0")["resumed_from"].endswith("last.ckpt")
    assert (status(sweep / "1")["attempt"], status(sweep / "2")["attempt"]) == (2, 1)  # not run again
    reference = (sweep / "2" / "results" / "per_case.csv").read_text()
    assert (sweep / "1" / "results" / "per_case.csv").read_text() == reference  # preempted = uninterrupted
    assert (sweep / "0" / "results" / "per_case.csv").read_text() == reference  # cancelled + resumed = too


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_time_limit_requeues_up_to_max_num_timeout_then_names_the_time_limit(tmp_path, env):
    """A job held at epoch 2 until Slurm's limit: SIGUSR2 30 s before its 2 minutes (up to 30 s earlier:
    Slurm checks every 30 s) requeues it once (max_num_timeout=1); the second attempt resumes from
    last.ckpt, is held again, and its SIGUSR2 ends it with the time limit as the error."""
    sweep, marks = tmp_path / "sweep", tmp_path / "marks"
    marks.mkdir()
    proc = train("trainer.max_epochs=2", "+callbacks.pause._target_=slurm_pause.PauseAtEpoch",
                 "+callbacks.pause.epoch=1", f"+callbacks.pause.marker_dir={marks}", "+callbacks.pause.once=false",
                 "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=1",
                 f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 1
    job = status(sweep / "0")
    assert job["attempt"] == 2 and job["status"] == "failed" and job["resumed_from"].endswith("last.ckpt")
    assert len((marks / "held").read_text().split()) == 2  # held in both attempts
    expected = ("Slurm time limit: the job reached its time limit (hydra.launcher.timeout_min=2) after "
                "max_num_timeout=1 requeue(s)")
    assert job["error"].startswith(expected)
    assert json.loads((sweep / "0" / "results" / "error.json").read_text())["error"].startswith(expected)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"segbench-train: error: 1 of 1 jobs did not finish (sweep: {sweep}): job 0 (")
    assert expected in proc.stderr.strip().splitlines()[-1]
