"""``hydra/launcher=slurm``: one Slurm job per sweep job, through submitit, with a cluster user's safeguards.

:class:`SlurmLauncher` is hydra-submitit-launcher's Slurm launcher with, before anything is submitted:

* a check that ``timeout_min`` leaves time for the signal lead: Slurm sends SIGUSR2 ``signal_delay_s``
  before the time limit, and may send it up to :data:`SIGNAL_EARLY_S` earlier (sbatch(1), ``--signal``;
  Slurm 22.05 checks time limits every 30 s); a job that gets it before submitit's handler is installed
  (:data:`START_S` after it starts) dies with exit 140 instead of being requeued. So
  ``timeout_min * 60 >= signal_delay_s + SIGNAL_EARLY_S + START_S`` (:func:`min_timeout_min`);
* a check of the request against the partition's largest node (``sinfo``): more CPUs, memory or GPUs
  than any node has is refused in one line, instead of a job that stays pending for ever;

and, while the jobs run, a line when a job changes state (pending, running, requeued), so a sweep never
waits in silence. A job that does not finish does not stop the others: the launcher waits for all of
them and marks each one that Slurm ended without a result (cancelled, out of time, node failure) in
its ``run.json``; :class:`segbench.runtime.callbacks.SweepReport` then names every unfinished job and exits 1.

In the job, a job that failed (its ``run.json`` says ``failed``) ends with an error, so that Slurm
records it as FAILED rather than COMPLETED; and submitit's signal handler logs through a queue, so
that a signal arriving while the job writes its log never re-enters the log file's writer
("--- Logging error --- reentrant call").
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import queue
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

from ..errors import ConfigError, SegbenchError, SlurmJobError, unwrap

#: sbatch(1) on --signal: "the signal may be sent up to 60 seconds earlier than specified"
SIGNAL_EARLY_S = 60
#: from a job's start until submitit's SIGUSR2 handler is installed (Python, submitit, the pickled job)
START_S = 30
#: Slurm states of a job that ended without writing its result, and what run.json calls them
ENDED_STATES = {"CANCELLED": "interrupted", "TIMEOUT": "interrupted", "PREEMPTED": "interrupted",
                "NODE_FAIL": "interrupted", "DEADLINE": "interrupted", "BOOT_FAIL": "failed",
                "OUT_OF_MEMORY": "failed", "FAILED": "failed"}


def device_count(devices) -> int:
    """Processes a Lightning ``devices`` value starts on a node: 4 -> 4, [0, 1] / "0,1" -> 2, "auto" / -1 -> 1."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() and int(text) > 0 else 1


def slurm_gpus(accelerator, devices) -> int | None:
    """GPUs a Slurm job asks for per node (``hydra/launcher=slurm``): one per device on ``trainer=gpu``
    (and ``auto``, which the launcher drops on a partition without GPUs), none on ``trainer=cpu``."""
    return None if str(accelerator) == "cpu" else device_count(devices)


def slurm_cpus(num_workers, accelerator) -> int:
    """CPUs per Slurm task: the training process plus one per loader worker. ``data.num_workers: auto``
    (:mod:`segbench.data.loader`) uses no worker on a CPU trainer and up to 7 beside a GPU, so it asks
    for 1 and 8 CPUs."""
    if str(num_workers).strip() == "auto":
        return 1 if str(accelerator) == "cpu" else 8
    return int(num_workers) + 1


def explain_stop(exc: BaseException) -> BaseException:
    """submitit's "Job not requeued because: timed-out too many times." (raised by its SIGUSR2 handler
    wherever training was) -> the time limit named, with the values that set it and the way on."""
    if type(exc).__name__ != "UncompletedJobError" or "not requeued" not in str(exc):
        return exc
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    reason = str(exc).split("because:", 1)[-1].strip().rstrip(".")
    return SegbenchError(
        f"Slurm time limit: the job reached its time limit (hydra.launcher.timeout_min={launcher.get('timeout_min')}) "
        f"after max_num_timeout={launcher.get('max_num_timeout')} requeue(s) (submitit: {reason}); running the "
        "same command again resumes it from checkpoints/last.ckpt; or raise hydra.launcher.timeout_min")


def refuse(message: str) -> None:
    """Stop the sweep before any job runs, with one line (Hydra would add a line to an exception's)."""
    print(f"segbench-train: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def min_timeout_min(signal_delay_s: int) -> int:
    """The smallest ``timeout_min`` whose SIGUSR2 cannot arrive before the job can requeue itself."""
    return math.ceil((signal_delay_s + SIGNAL_EARLY_S + START_S) / 60)


def check_time_limit(params: dict[str, Any]) -> None:
    timeout_min, lead = int(params.get("timeout_min") or 0), int(params.get("signal_delay_s") or 0)
    if timeout_min < min_timeout_min(lead):
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout_min} leaves no time for the requeue signal: Slurm sends it "
            f"signal_delay_s={lead} s before the limit and up to {SIGNAL_EARLY_S} s earlier, and a job needs "
            f"{START_S} s to install its handler; use timeout_min >= {min_timeout_min(lead)} (or a smaller "
            "hydra.launcher.signal_delay_s)")


# ----------------------------------------------------------------------------------------------
# what the partition offers


def _sinfo(*args: str) -> list[str]:
    try:
        out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SegbenchError(f"hydra/launcher=slurm: cannot ask Slurm for its nodes (sinfo: {exc}); "
                            "run segbench-train -m on a machine of the cluster (a login node)") from exc
    if out.returncode != 0:
        raise SegbenchError(f"hydra/launcher=slurm: sinfo failed: {out.stderr.strip() or out.stdout.strip()}")
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def _gpus(gres: str) -> int:
    """GPUs in a GRES string: ``gpu:a100:4(S:0-1),shard:8`` -> 4 (``(null)`` -> 0)."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def partition_nodes(partition: str | None) -> tuple[str, list[dict[str, int]]]:
    """The partition (the default one when None) and its nodes' CPUs, memory (MB) and GPUs."""
    if partition is None:
        defaults = [p.rstrip("*") for p in _sinfo("-o", "%P") if p.endswith("*")]
        if not defaults:
            raise ConfigError("the cluster has no default partition: pass hydra.launcher.partition=<name> "
                              "(sinfo lists them)")
        partition = defaults[0]
    rows = _sinfo("-N", "-p", partition, "-o", "%c|%m|%G")
    if not rows:
        raise ConfigError(f"hydra.launcher.partition={partition}: no such partition, or it has no nodes "
                          "(sinfo lists the partitions)")
    nodes = []
    for row in rows:
        cpus, mem, gres = row.split("|")
        nodes.append({"cpus": int(cpus.rstrip("+")), "mem_mb": int(re.sub(r"\D", "", mem) or 0), "gpus": _gpus(gres)})
    return partition, nodes


def check_request(params: dict[str, Any]) -> None:
    """Refuse, in one line, a job no node of the partition can run (a job that would pend for ever)."""
    partition, nodes = partition_nodes(params.get("partition"))
    tasks = int(params.get("tasks_per_node") or 1)
    cpus = tasks * int(params.get("cpus_per_task") or 1)
    mem_mb = int(float(params.get("mem_gb") or 0) * 1024)
    gpus = int(params.get("gpus_per_node") or 0)
    fits = [n for n in nodes if n["cpus"] >= cpus and n["mem_mb"] >= mem_mb and n["gpus"] >= gpus]
    if fits:
        return
    most = {k: max(n[k] for n in nodes) for k in ("cpus", "mem_mb", "gpus")}
    asked = []
    if cpus > most["cpus"]:
        asked.append(f"{cpus} CPUs (tasks_per_node={tasks} x cpus_per_task={params.get('cpus_per_task')}) "
                     f"but its nodes have at most {most['cpus']}")
    if mem_mb > most["mem_mb"]:
        asked.append(f"mem_gb={params.get('mem_gb')} but its nodes have at most {most['mem_mb'] // 1024} GB")
    if gpus > most["gpus"]:
        asked.append(f"gpus_per_node={gpus} but its nodes have " + (f"at most {most['gpus']}" if most["gpus"]
                                                                    else "no GPUs: train on CPUs with trainer=cpu"))
    if not asked:
        asked.append(f"{cpus} CPUs, {mem_mb // 1024} GB and {gpus} GPUs on one node, which no node has")
    raise ConfigError(f"Slurm partition {partition} cannot run this job: it asks for {'; '.join(asked)} "
                      "(hydra.launcher.*)")


# ----------------------------------------------------------------------------------------------
# in the job


class _ToCurrentHandlers(logging.Handler):
    """Hands a record to the handlers submitit's logger had and to the root logger's current ones
    (the run's train.log, which Hydra opens when the job starts)."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        super().__init__()
        self.handlers = handlers

    def emit(self, record: logging.LogRecord) -> None:
        for handler in [*self.handlers, *logging.getLogger().handlers]:
            if record.levelno >= handler.level:
                handler.handle(record)


def defer_submitit_logging() -> None:
    """Make submitit's logger (used by its signal handlers) only put records on a queue, which a thread
    writes out: a handler that interrupts the main thread inside a write never writes itself."""
    log = logging.getLogger("submitit")
    if any(isinstance(h, logging.handlers.QueueHandler) for h in log.handlers):
        return
    records: queue.SimpleQueue = queue.SimpleQueue()  # put() is reentrant: safe in a signal handler
    listener = logging.handlers.QueueListener(records, _ToCurrentHandlers(list(log.handlers)))
    listener.start()  # a daemon thread; records still queued when the process exits are lost
    log.handlers = [logging.handlers.QueueHandler(records)]
    log.propagate = False


def _job_dir(ret: JobReturn) -> Path | None:
    try:
        return Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
    except Exception:  # noqa: BLE001 - a job that failed before Hydra set it up
        return None


# ----------------------------------------------------------------------------------------------
# the launcher


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher with the checks and reports described in this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs in the Slurm job, in every task
        import submitit

        from .rundir import read_status

        defer_submitit_logging()
        ret = super().__call__(*args, **kwargs)
        if submitit.JobEnvironment().global_rank != 0:
            return ret
        if ret.status == JobStatus.FAILED:
            raise SlurmJobError(f"the job failed: {ret._return_value}")
        job_dir = _job_dir(ret)
        status = read_status(job_dir) if job_dir else None
        if status and status.get("status") == "failed":
            raise SlurmJobError(f"the job failed: {status.get('error')} (details: {job_dir}/results/error.json)")
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from omegaconf import OmegaConf

        assert self.config is not None
        try:
            check_time_limit(self.params)
            self._follow_accelerator()
            check_request(self.params)
        except SegbenchError as exc:
            refuse(str(exc))

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs_args, names = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            names.append(f"#{idx} ({' '.join(filter_overrides(overrides))})")
            jobs_args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*jobs_args))
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
            message = [ln for ln in str(exc).splitlines() if "error:" in ln.lower()] or str(exc).splitlines()[-1:]
            refuse(f"sbatch refused the sweep's jobs: {message[-1].strip()}")
        print(f"submitted {len(jobs)} job(s) to Slurm (squeue --me shows them; logs: {sweep_dir / '.submitit'}):",
              flush=True)
        for job, name in zip(jobs, names):
            print(f"  Slurm job {job.job_id}: {name}", flush=True)
        self._watch(jobs, [name.split(" ", 1)[0] for name in names])
        return [self._outcome(job, overrides, idx, sweep_dir)
                for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)]

    def _follow_accelerator(self) -> None:
        """``trainer.accelerator=auto`` asks for GPUs only where the partition has some."""
        cfg = self.config
        if str(cfg.trainer.get("accelerator", "auto")) != "auto" or not self.params.get("gpus_per_node"):
            return
        partition, nodes = partition_nodes(self.params.get("partition"))
        if not any(n["gpus"] for n in nodes):
            print(f"Slurm partition {partition} has no GPUs: trainer.accelerator=auto trains on CPUs "
                  "(gpus_per_node=0)", flush=True)
            self.params["gpus_per_node"] = None

    @staticmethod
    def _watch(jobs: list, names: list[str]) -> None:
        """Wait for every job, printing each change of state (PENDING, RUNNING, REQUEUED ...)."""
        seen: dict[str, str] = {}
        pause = 1.0
        while True:
            done = True
            for job, name in zip(jobs, names):
                state = job.state  # submitit polls squeue / sacct at most every few seconds
                if state != seen.get(job.job_id) and state != "UNKNOWN":  # UNKNOWN: not yet in sacct
                    seen[job.job_id] = state
                    print(f"Slurm job {job.job_id} ({name}): {state}", flush=True)
                done &= job.done()
            if done:
                return
            time.sleep(pause)
            pause = min(pause * 1.5, 15.0)

    def _outcome(self, job, overrides: Sequence[str], idx: int, sweep_dir: Path) -> JobReturn:
        """The job's JobReturn; a job that did not finish is marked in its run.json and returns None."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError as exc:  # FailedJobError too: the job raised, or Slurm ended it
            job_dir = self._job_dir(overrides, idx, sweep_dir)
            self._record(job, exc, job_dir, list(overrides))
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = None  # what a failed job returns under the basic launcher too
            return ret

    def _job_dir(self, overrides: Sequence[str], idx: int, sweep_dir: Path) -> Path:
        from .sweep import job_directory

        return job_directory(self.hydra_context, self.config, overrides, idx)

    @staticmethod
    def _record(job, exc: Exception, job_dir: Path, overrides: list[str]) -> None:
        from . import rundir

        status = rundir.read_status(job_dir) or {}
        if status.get("status") == "failed" and status.get("error"):
            return  # the job recorded its own error
        state = str(job.state).split()[0]
        if state in ENDED_STATES:
            epoch = status.get("epoch")
            done = f" after {epoch} epoch(s)" if epoch else ""
            resume = ("; running the same command again resumes it from checkpoints/last.ckpt"
                      if (job_dir / rundir.LAST_CHECKPOINT).is_file() else "")
            error = f"Slurm job {job.job_id} ended {state}{done} without a result{resume}"
            new_status = ENDED_STATES[state]
        else:  # the job raised: the last line of its traceback
            error = f"{unwrap(exc)} (Slurm job {job.job_id})"
            new_status = "failed"
        job_dir.mkdir(parents=True, exist_ok=True)
        rundir.update_status(job_dir, status=new_status, error=error, overrides=status.get("overrides", overrides))
