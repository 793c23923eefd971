"""hydra/launcher=gpus without GPUs: the slots (which devices each job gets, how many run at once), the
one-line refusals, and sweeps whose jobs run side by side on fake GPU ids (``gpu_count`` declares the
GPUs, the jobs train on the CPU) or CPU slots, checked from what each job itself saw and recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segbench.errors import ConfigError
from segbench.runtime.gpus import SlotPool, check_trainer, make_slots, parse_devices, varying_overrides, visible_gpus

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# devices and slots (no process is started)


def test_visible_gpus_are_named_as_the_jobs_must_see_them():
    assert visible_gpus(4, None) == ["0", "1", "2", "3"]
    # CUDA_VISIBLE_DEVICES=5,7 in the launcher's shell: torch's cuda:0 is GPU 5, so a job given it sees "5"
    assert visible_gpus(2, "5,7") == ["5", "7"]
    assert visible_gpus(1, "GPU-aa11, MIG-bb22") == ["GPU-aa11"]  # torch saw one of them
    assert visible_gpus(0, "") == []


def test_devices_option_forms():
    four = ["0", "1", "2", "3"]
    assert parse_devices("auto", four) == parse_devices(-1, four) == (four, False)
    assert parse_devices([0, 2], four) == (["0", "2"], False)
    assert parse_devices("1,3", four) == (["1", "3"], False)
    assert parse_devices(OmegaConf.create({"d": [3]}).d, four) == (["3"], False)
    assert parse_devices(2, four) == (["0", "1"], False)  # a number of GPUs, as Lightning's devices=2
    assert parse_devices([1, 0], ["5", "7"]) == (["7", "5"], False)  # ids index what this process sees
    assert parse_devices("cpu:3", []) == (["cpu0", "cpu1", "cpu2"], True)
    assert parse_devices("cpu", four) == (["cpu0"], True)


@pytest.mark.parametrize("devices, visible, message", [
    ([0, 5], ["0", "1"], "hydra.launcher.devices=[0,5]: GPU 5 does not exist: torch sees 2 GPU(s) (0-1) on this "
                         "machine (CUDA_VISIBLE_DEVICES="),
    ([0], [], "hydra.launcher.devices=[0]: GPU 0 does not exist: torch sees no GPU on this machine; pass "
              "hydra.launcher.devices=cpu:N to run N jobs at once on the CPU"),
    ("auto", [], "hydra.launcher.devices=auto: torch sees no GPU on this machine"),
    ([1, 1], ["0", "1"], "hydra.launcher.devices=[1,1] lists GPU 1 twice; use jobs_per_device=2"),
    (3, ["0", "1"], "hydra.launcher.devices=3: asks for 3 GPU(s) but torch sees 2 on this machine"),
    ("cpu:0", [], "hydra.launcher.devices=cpu:0: write cpu:N with N >= 1 CPU slots"),
    (["a"], ["0"], "hydra.launcher.devices=[a]: 'a' is not a GPU id"),
    ([0, -1], ["0", "1"], "hydra.launcher.devices=[0,-1]: -1 is not a GPU id"),
    ([], ["0"], "hydra.launcher.devices=[] names no device"),
])
def test_bad_devices_are_refused_in_one_line(devices, visible, message):
    with pytest.raises(ConfigError) as info:
        parse_devices(devices, visible)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def cvd(slots):
    return [s.cuda_visible_devices for s in slots]


def test_slots_one_job_per_gpu_k_per_gpu_and_ddp_groups():
    four = ["0", "1", "2", "3"]
    one = make_slots(four, False, 1, 1)
    assert cvd(one) == ["0", "1", "2", "3"] and [s.label for s in one] == ["GPU 0", "GPU 1", "GPU 2", "GPU 3"]
    two = make_slots(four, False, 1, 2)  # jobs_per_device=2: a first round on every GPU, then a second
    assert cvd(two) == ["0", "1", "2", "3"] * 2 and [s.group for s in two] == [0, 1, 2, 3] * 2
    assert len({s.index for s in two}) == 8
    ddp = make_slots(four, False, 2, 1)  # devices_per_job=2: a DDP job on 2 GPUs
    assert cvd(ddp) == ["0,1", "2,3"] and ddp[0].label == "GPUs 0,1"
    assert cvd(make_slots(["0", "1", "2"], False, 2, 1)) == ["0,1"]  # GPU 2 left idle
    cpu = make_slots(["cpu0", "cpu1"], True, 1, 2)
    assert cvd(cpu) == ["", "", "", ""] and [s.label for s in cpu] == ["CPU slot 0", "CPU slot 1"] * 2


@pytest.mark.parametrize("per_job, per_device, message", [
    (3, 1, "hydra.launcher.devices_per_job=3 but the launcher has 2 GPU(s) (hydra.launcher.devices); pass "
           "devices_per_job <= 2"),
    (1, 0, "hydra.launcher.jobs_per_device=0 must be an integer >= 1 (2: two small jobs share each device)"),
    (0, 1, "hydra.launcher.devices_per_job=0 must be an integer >= 1"),
    ("x", 1, "hydra.launcher.devices_per_job=x must be an integer >= 1"),
])
def test_bad_slot_options_are_refused_in_one_line(per_job, per_device, message):
    with pytest.raises(ConfigError) as info:
        make_slots(["0", "1"], False, per_job, per_device)
    assert str(info.value).startswith(message)


def test_the_pool_fills_the_least_busy_device_first():
    pool = SlotPool(make_slots(["0", "1", "2", "3"], False, 1, 2))
    first = [pool.take() for _ in range(4)]
    assert cvd(first) == ["0", "1", "2", "3"]  # one job per GPU before any GPU gets a second
    fifth = pool.take()
    assert fifth.cuda_visible_devices == "0" and fifth.index == 4
    pool.give_back(first[2])  # GPU 2 now runs nothing: the next job goes there, not to GPU 1's second slot
    assert pool.take().cuda_visible_devices == "2"
    rest = [pool.take() for _ in range(pool.free())]
    assert cvd(rest) == ["1", "2", "3"] and pool.free() == 0
    with pytest.raises(RuntimeError):
        pool.take()


def test_a_queue_through_the_pool_never_shares_a_slot_and_respects_the_limit():
    """12 jobs of unequal length through 2 GPUs x 2 jobs each, as the launcher's loop takes and gives back."""
    pool = SlotPool(make_slots(["0", "1"], False, 1, 2))
    durations = [5, 1, 3, 2, 4, 1, 1, 6, 2, 2, 3, 1]
    queue, running, clock, log = list(range(12)), {}, 0, []
    while queue or running:
        while queue and pool.free():
            job, slot = queue.pop(0), pool.take()
            running[job] = (slot, clock + durations[job])
            log.append((clock, job, slot))
        assert len(running) <= 4
        per_gpu = [s.cuda_visible_devices for s, _ in running.values()]
        assert max(per_gpu.count(g) for g in set(per_gpu)) <= 2
        assert len({s.index for s, _ in running.values()}) == len(running)
        clock += 1
        for job in [j for j, (_, end) in running.items() if end <= clock]:
            pool.give_back(running.pop(job)[0])
    assert [job for _, job, _ in log] == list(range(12))  # in sweep order


def test_the_trainer_must_fit_the_slot():
    def cfg(**trainer):
        return OmegaConf.create({"trainer": trainer})

    gpu_slots, cpu_slots = make_slots(["0", "1"], False, 1, 1), make_slots(["cpu0"], True, 1, 1)
    check_trainer(cfg(accelerator="cpu", devices=2), gpu_slots, 1)  # a CPU job ignores the GPUs it is given
    check_trainer(cfg(accelerator="gpu", devices="auto"), gpu_slots, 1)
    check_trainer(cfg(accelerator="gpu", devices=[0, 1]), make_slots(["0", "1"], False, 2, 1), 2)
    check_trainer(cfg(accelerator="auto", devices=2), make_slots(["cpu0"], True, 1, 1), 1)  # auto: the CPU there
    for accelerator in ("gpu", "auto"):  # auto trains on the GPUs a GPU slot shows it
        with pytest.raises(ConfigError, match=r"^trainer.devices=2 but hydra.launcher.devices_per_job=1 gives each "
                                              r"job 1 GPU\(s\); pass hydra.launcher.devices_per_job=2$"):
            check_trainer(cfg(accelerator=accelerator, devices=2), gpu_slots, 1)
    with pytest.raises(ConfigError, match=r"^trainer.devices=\[0,1,2\] but .* pass hydra.launcher.devices_per_job=3$"):
        check_trainer(cfg(accelerator="gpu", devices=[0, 1, 2]), gpu_slots, 1)
    with pytest.raises(ConfigError, match="gives the jobs CPU slots .no GPU. but trainer.accelerator=gpu; use "
                                          "trainer=cpu"):
        check_trainer(cfg(accelerator="gpu", devices=1), cpu_slots, 1)


def test_progress_lines_show_what_the_sweep_varies():
    jobs = [["debug=smoke", "loss=dice", "seed=1", "hydra.sweep.dir=/x"], ["debug=smoke", "loss=dice", "seed=2"]]
    assert varying_overrides(jobs) == [["seed=1"], ["seed=2"]]
    assert varying_overrides([["debug=smoke", "paths.data_dir=/d"]]) == [["debug=smoke"]]
    # an Optuna batch of one trial: the command line's overrides are every trial's
    assert varying_overrides([["loss.gamma=0.5", "hparams_search=afw_optuna", "debug=smoke"]],
                             fixed=["hparams_search=afw_optuna", "debug=smoke"]) == [["loss.gamma=0.5"]]


def test_launcher_config_composes_and_follows_the_trainer():
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        def launcher(*overrides):
            cfg = compose("train", overrides=["hydra/launcher=gpus", *overrides], return_hydra_config=True)
            return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)

        default = launcher()
        assert default["_target_"] == "hydra_plugins.segbench_launcher.GpuLauncher"
        assert (default["devices"], default["jobs_per_device"], default["devices_per_job"]) == ("auto", 1, 1)
        assert launcher("trainer=ddp")["devices_per_job"] == 2  # a DDP job takes trainer.devices GPUs
        assert launcher("trainer=gpu", "hydra.launcher.jobs_per_device=2")["jobs_per_device"] == 2


# ----------------------------------------------------------------------------------------------
# the launcher in a sweep


@pytest.fixture
def env(tmp_path) -> dict:
    """Sweeps start new processes: this checkout first on their path, outputs under tmp_path."""
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}


def segbench_train(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("segbench-train")
    assert exe, "install the package (pip install -e .) for the console scripts"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("options, cvd, message", [
    (["hydra.launcher.devices=[0,5]", "hydra.launcher.gpu_count=2"], None,
     "hydra.launcher.devices=[0,5]: GPU 5 does not exist: torch sees 2 GPU(s) (0-1) on this machine "
     "(CUDA_VISIBLE_DEVICES=<unset>); pass ids below 2, or hydra.launcher.devices=auto"),
    (["hydra.launcher.devices_per_job=3", "hydra.launcher.gpu_count=2"], None,
     "hydra.launcher.devices_per_job=3 but the launcher has 2 GPU(s) (hydra.launcher.devices); pass "
     "devices_per_job <= 2"),
    (["hydra.launcher.jobs_per_device=0", "hydra.launcher.devices=cpu:2"], None,
     "hydra.launcher.jobs_per_device=0 must be an integer >= 1 (2: two small jobs share each device)"),
    ([], "", "hydra.launcher.devices=auto: torch sees no GPU on this machine (CUDA_VISIBLE_DEVICES=); pass "
             "hydra.launcher.devices=cpu:N to run N jobs at once on the CPU, or another launcher "
             "(hydra/launcher=basic)"),
    (["trainer=gpu", "hydra.launcher.devices=cpu:2"], None,
     "hydra.launcher.devices gives the jobs CPU slots (no GPU) but trainer.accelerator=gpu; use trainer=cpu, or "
     "hydra.launcher.devices=auto"),
])
def test_bad_launcher_options_stop_the_sweep_before_any_job(tmp_path, env, options, cvd, message):
    if cvd is not None:
        env = {**env, "CUDA_VISIBLE_DEVICES": cvd}
    else:
        env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    sweep = tmp_path / "sweep"
    proc = segbench_train("-m", "seed=1,2", "hydra/launcher=gpus", *options, f"hydra.sweep.dir={sweep}", env=env,
                          timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"segbench-train: error: {message}"]
    assert not list(sweep.rglob("run.json")) and not (sweep / ".submitit").exists()


APP = '''
import json, os, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    seen = {"name": cfg.name, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slot": os.environ.get("SEGBENCH_SLOT"), "pid": os.getpid(), "start": time.time()}
    (out / "seen.json").write_text(json.dumps(seen))
    if cfg.name == cfg.crash:
        os._exit(3)  # the process dies: no result, no run.json of its own
    time.sleep(cfg.sleep)
    (out / "seen.json").write_text(json.dumps({**seen, "end": time.time()}))
    return cfg.name


if __name__ == "__main__":
    main()
'''


def overlapping(intervals: dict) -> list[tuple]:
    """Pairs of names whose [start, end] intervals overlap."""
    names = sorted(intervals)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if intervals[a][0] < intervals[b][1] and intervals[b][0] < intervals[a][1]]


@pytest.fixture
def app(tmp_path) -> Path:
    """A plain Hydra app (no segbench task) on hydra/launcher=gpus: each job records what it saw and when."""
    from segbench.config import CONFIG_DIR

    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "app.yaml").write_text(textwrap.dedent(f"""\
        defaults:
          - override hydra/launcher: gpus
          - _self_
        hydra:
          searchpath: [file://{CONFIG_DIR}]
        trainer: {{accelerator: cpu, devices: 1}}
        name: a
        crash: c
        sleep: 4
        """))
    return tmp_path / "app.py"


def test_jobs_of_any_task_share_out_the_gpus_and_a_dead_job_does_not_stop_the_others(app, tmp_path, env):
    """On 4 GPUs that the launcher's shell sees through CUDA_VISIBLE_DEVICES=5,7,2,3, two GPUs per job: two
    jobs at a time, one on GPUs 5,7, one on 2,3, each seeing only those; the job whose process dies is
    marked failed and the rest of the queue runs."""
    sweep = tmp_path / "sweep"
    env = {**env, "CUDA_VISIBLE_DEVICES": "5,7,2,3"}
    command = [sys.executable, str(app), "-m", "name=a,b,c,d,e", "hydra.launcher.gpu_count=4",
               "hydra.launcher.devices_per_job=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"5 job(s) on GPUs 5,7, GPUs 2,3: at most 2 at a time; job logs: {sweep / '.submitit'}"
    seen = {job: json.loads((sweep / str(job) / "seen.json").read_text()) for job in range(5)}
    assert [s["name"] for s in seen.values()] == ["a", "b", "c", "d", "e"]
    for s in seen.values():  # what the job's own process saw
        assert (s["CUDA_VISIBLE_DEVICES"], s["slot"]) in {("5,7", "0"), ("2,3", "1")}, s
    assert [seen[0]["CUDA_VISIBLE_DEVICES"], seen[1]["CUDA_VISIBLE_DEVICES"]] == ["5,7", "2,3"]  # both at once
    # no two jobs ran at once on one slot; never more than 2 at once; the dead job's slot was used again
    done = {j: s for j, s in seen.items() if "end" in s}
    assert sorted(done) == [0, 1, 3, 4]
    for gpus in ("5,7", "2,3"):
        on_slot = {j: (s["start"], s["end"]) for j, s in done.items() if s["CUDA_VISIBLE_DEVICES"] == gpus}
        assert not overlapping(on_slot), (gpus, on_slot)
    times = sorted([t for s in done.values() for t in ((s["start"], 1), (s["end"], -1))])
    assert max(sum(step for _, step in times[:i + 1]) for i in range(len(times))) == 2
    # the job whose process died: recorded by the launcher, its line printed, the others done
    status = json.loads((sweep / "2" / "run.json").read_text())
    assert status["status"] == "failed" and status["overrides"] == ["name=c"]
    assert status["devices"] == {"CUDA_VISIBLE_DEVICES": seen[2]["CUDA_VISIBLE_DEVICES"], "slot": int(seen[2]["slot"])}
    assert status["error"].startswith("the job's process ended without writing a result (killed, or out of "
                                      "memory?); its log: ")
    failed = [ln for ln in lines if ln.startswith("job 2 (name=c) on GPUs")]
    assert len(failed) == 2 and failed[0].endswith(": started [3/5]") and " failed after " in failed[1]
    assert sum(ln.endswith(" ended]") and ": done in " in ln for ln in lines) == 4
    events = [json.loads(ln) for ln in (sweep / "launcher.jsonl").read_text().splitlines()]
    assert [(e["event"], e["job"]) for e in events][:2] == [("start", 0), ("start", 1)]
    assert sorted(e["job"] for e in events if e["event"] == "end") == [0, 1, 2, 3, 4]


def test_stopping_the_launcher_stops_its_jobs(app, tmp_path, env):
    """``kill <launcher>`` (as Ctrl-C) interrupts the running jobs and waits for them: no job outlives it."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(app), "-m", "name=a,b,c", "sleep=120", "hydra.launcher.devices=cpu:2",
               f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not all((sweep / str(job) / "seen.json").is_file() for job in (0, 1)):
            assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
            time.sleep(0.2)
        pids = [json.loads((sweep / str(job) / "seen.json").read_text())["pid"] for job in (0, 1)]
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "job 0 (name=a) on CPU slot 0: stopped" in err and "job 1 (name=b) on CPU slot 1: stopped" in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (sweep / "2").exists()  # the queued job never started


@pytest.mark.slow
def test_a_sweep_trains_side_by_side_on_two_gpus_each_job_seeing_its_own(phantom_dir, tmp_path, env):
    """``segbench-train -m ... hydra/launcher=gpus hydra.launcher.devices=[0,1]`` on a machine that declares 2
    GPUs (gpu_count=2; the smoke runs train on the CPU): 4 jobs, 2 at a time, each given one GPU; the job
    with a bad option stops at start-up, is reported at the end, and the others finish."""
    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    sweep = tmp_path / "sweep"
    proc = segbench_train("-m", "debug=smoke", "num_threads=1", "loss=afw_dice", "loss.gamma=0.25,0.5,-1,1",
                          "hydra/launcher=gpus", "hydra.launcher.devices=[0,1]", "hydra.launcher.gpu_count=2",
                          f"hydra.sweep.dir={sweep}", f"paths.data_dir={phantom_dir}", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"segbench-train: error: 1 of 4 jobs did not finish (sweep: {sweep}): job 2 (debug=smoke num_threads=1 "
        "loss=afw_dice loss.gamma=-1): failed: gamma must be >= 0.0, got -1")
    status = {job: json.loads((sweep / str(job) / "run.json").read_text()) for job in range(4)}
    assert [status[j]["status"] for j in range(4)] == ["done", "done", "failed", "done"]
    # every job recorded the devices it was given, as its own process saw them
    events = [json.loads(ln) for ln in (sweep / "launcher.jsonl").read_text().splitlines()]
    starts = {e["job"]: e for e in events if e["event"] == "start"}
    for job, s in status.items():
        assert s["devices"] == {"CUDA_VISIBLE_DEVICES": str(starts[job]["slot"]), "slot": starts[job]["slot"]}
    assert len({status[j]["pid"] for j in (0, 1, 3)}) == 3  # each job in a process of its own
    summary = json.loads((sweep / "0" / "results" / "summary.json").read_text())
    assert summary["run"]["device"]["CUDA_VISIBLE_DEVICES"] == status[0]["devices"]["CUDA_VISIBLE_DEVICES"]
    assert {status[0]["devices"]["slot"], status[1]["devices"]["slot"]} == {0, 1}  # the first two, at once
    # in the launcher's record (its events in the order they happened): at most 2 jobs at a time, never two
    # on one GPU, the queued jobs started only when a GPU freed, and each job ran inside its interval
    running: dict[int, str] = {}
    most = 0
    for e in events:
        if e["event"] == "start":
            assert e["CUDA_VISIBLE_DEVICES"] not in running.values(), (e, running)
            running[e["job"]] = e["CUDA_VISIBLE_DEVICES"]
            most = max(most, len(running))
        else:
            del running[e["job"]]
    assert most == 2 and not running
    assert [e["event"] for e in events[:3]] == ["start", "start", "end"]
    ends = {e["job"]: e for e in events if e["event"] == "end"}
    assert [ends[j]["status"] for j in range(4)] == ["done", "done", "failed", "done"]
    import datetime

    for job in (0, 1, 3):  # the job that failed at start-up stopped before its run began
        started = datetime.datetime.fromisoformat(status[job]["started"]).timestamp()
        assert starts[job]["time"] - 1 <= started <= ends[job]["time"], (job, status[job]["started"])
    lines = proc.stdout.splitlines()
    assert lines[0] == f"4 job(s) on GPU 0, GPU 1: at most 2 at a time; job logs: {sweep / '.submitit'}"
    assert [ln.split(": ")[-1] for ln in lines if ln.startswith("job ") and "started" in ln] == \
        ["started [1/4]", "started [2/4]", "started [3/4]", "started [4/4]"]
    bad = [ln for ln in lines if ln.startswith("job 2 (loss.gamma=-1) on GPU ") and "failed after" in ln]
    assert len(bad) == 1 and re.search(r": gamma must be >= 0.0, got -1 \[[34]/4 ended\]$", bad[0]), lines
