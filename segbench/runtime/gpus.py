"""``hydra/launcher=gpus``: a sweep's jobs side by side on one machine's GPUs (or CPU slots).

The machine's devices are cut into *slots*: groups of ``devices_per_job`` GPUs, each shared by
``jobs_per_device`` jobs, so at most ``(#devices // devices_per_job) * jobs_per_device`` jobs run at once;
the others wait in a queue and start, in sweep order, on the first slot that frees (on its least busy
device). Each job runs in a fresh process of its own, started with ``CUDA_VISIBLE_DEVICES`` naming only
its slot's GPUs, so nothing in it can initialise CUDA on another job's device; ``devices: cpu:N`` makes
N CPU slots instead (``CUDA_VISIBLE_DEVICES`` empty: the jobs see no GPU), which is also how the launcher
is tested on a machine without GPUs.

The processes are submitit's local jobs (its ``LocalExecutor``, as ``hydra/launcher=local``), submitted one
at a time as slots free: submitit pickles the job, starts it in a new Python process with the environment
given, keeps its log (``<sweep dir>/.submitit/<job id>/``) and pickles back Hydra's ``JobReturn``. A job
that fails does not stop the others: one that raised or whose process died is marked ``failed`` in its
``run.json`` (a job that recorded its own error keeps it), and
:class:`segbench.runtime.callbacks.SweepReport` names it when the sweep is over (exit 1).

The launcher prints a line when a job starts and when it ends, and appends the same events, with the
slot, ``CUDA_VISIBLE_DEVICES`` and the time, to ``<sweep dir>/launcher.jsonl``; every job records the
devices it was given in its ``run.json`` (``devices``: ``CUDA_VISIBLE_DEVICES`` as the job saw it and
the slot, :func:`segbench.runtime.runinfo.assigned_devices`).

Bad options are refused in one line before any job starts: ``jobs_per_device`` or ``devices_per_job``
below 1, more ``devices_per_job`` than devices, a GPU id this process cannot see, ``devices: auto`` on a
machine without GPUs, a GPU trainer on CPU slots, ``trainer.devices`` other than ``devices_per_job``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _SubmititLocalLauncher

from .. import config as _resolvers  # noqa: F401 - registers segbench_devices (gpus.yaml's devices_per_job)
from ..errors import ConfigError, SegbenchError, first_line, unwrap

#: the environment variable naming a job's slot (its index), read by :func:`runinfo.assigned_devices`
SLOT_ENV = "SEGBENCH_SLOT"
#: the launcher's record of every job's start and end, in the sweep directory
EVENTS_FILE = "launcher.jsonl"
#: submitit's local jobs need a time limit; ``timeout_min: null`` means none, in practice
NO_TIMEOUT_MIN = 60 * 24 * 365


@dataclass(frozen=True)
class Slot:
    """Where one job runs: ``index`` (unique among the jobs running at once), the ``group`` of devices it
    shares with the other slots of that group (``jobs_per_device`` of them), and the devices themselves:
    ``CUDA_VISIBLE_DEVICES`` entries for GPUs, ``cpu0``, ``cpu1`` ... for CPU slots (which see no GPU)."""

    index: int
    group: int
    devices: tuple[str, ...]
    cpu: bool = False

    @property
    def cuda_visible_devices(self) -> str:
        """The job's ``CUDA_VISIBLE_DEVICES``: its GPUs, or empty (no GPU) on a CPU slot."""
        return "" if self.cpu else ",".join(self.devices)

    @property
    def label(self) -> str:
        """``GPU 1``, ``GPUs 0,1``, ``CPU slot 0``."""
        names = [d[3:] if self.cpu else d for d in self.devices]
        kind = "CPU slot" if self.cpu else "GPU"
        return f"{kind}{'s' if len(names) > 1 else ''} " + ",".join(names)


# ----------------------------------------------------------------------------------------------
# the devices and the slots


def visible_gpus(count: int, cuda_visible_devices: str | None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of the GPUs torch numbers ``0 .. count-1`` in this process:
    the indices themselves when the variable is unset, else its entries (ids, UUIDs or MIG ids), so that a
    job given GPU ``i`` sees the very GPU this process calls ``cuda:i``."""
    if cuda_visible_devices is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    return entries[:count]


def gpu_count(declared: Any) -> int:
    """The GPUs this process sees: ``hydra.launcher.gpu_count`` when set, else ``torch.cuda.device_count()``
    (which honours ``CUDA_VISIBLE_DEVICES``; whatever it initialises stays in the launcher's process: every
    job is a new process, started with its own ``CUDA_VISIBLE_DEVICES``)."""
    if declared is not None:
        if not _is_int(declared) or int(declared) < 0:
            raise ConfigError(f"hydra.launcher.gpu_count={declared} must be a number of GPUs >= 0, or null to ask "
                              "torch (torch.cuda.device_count())")
        return int(declared)
    import torch

    return torch.cuda.device_count()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str)
                                                                      and value.strip().isdigit())


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def parse_devices(devices: Any, visible: Sequence[str]) -> tuple[list[str], bool]:
    """``hydra.launcher.devices`` -> (the devices to use, whether they are CPU slots).

    ``auto``: every GPU in ``visible``; ``[0, 2]`` or ``"0,2"``: those GPUs (as this process numbers them);
    an integer N: the first N GPUs (Lightning's ``devices=N``); ``cpu:N``: N CPU slots (no GPU).
    GPUs are returned as their ``CUDA_VISIBLE_DEVICES`` entries, CPU slots as ``cpu0 .. cpuN-1``.
    """
    key = "hydra.launcher.devices"
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    text = str(devices).strip() if not isinstance(devices, (list, tuple)) else None
    if text is not None and text.lower().startswith("cpu"):
        count = text[3:].lstrip(":").strip() or "1"
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{key}={text}: write cpu:N with N >= 1 CPU slots (e.g. cpu:2)")
        return [f"cpu{i}" for i in range(int(count))], True
    if text in ("auto", "-1"):  # -1: all of them, as Lightning's devices=-1
        if not visible:
            raise ConfigError(f"{key}={text}: torch sees no GPU on this machine (CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); pass {key}=cpu:N to run N jobs "
                              "at once on the CPU, or another launcher (hydra/launcher=basic)")
        return list(visible), False
    if text is not None and _is_int(text):  # a number of GPUs, as Lightning's devices=N
        count = int(text)
        if count < 1 or count > len(visible):
            raise ConfigError(f"{key}={text}: asks for {count} GPU(s) but torch sees {len(visible)} on this machine; "
                              f"pass {key}=auto (all of them) or a list of GPU ids")
        return list(visible[:count]), False
    if text is not None:
        items: list[Any] = [t.strip() for t in text.strip("[]").split(",") if t.strip()]
    else:
        items = list(devices)
    if not items:
        raise ConfigError(f"{key}={_show(devices)} names no device; pass auto, a list of GPU ids such as [0,1], "
                          "or cpu:N")
    ids = []
    for item in items:
        if not _is_int(item) or int(item) < 0:
            raise ConfigError(f"{key}={_show(devices)}: {item!r} is not a GPU id; pass GPU ids as torch numbers "
                              "them (0, 1, ...), auto, or cpu:N")
        ids.append(int(item))
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"{key}={_show(devices)} lists GPU {repeated[0]} twice; use jobs_per_device=2 to run two "
                          "jobs on one GPU")
    missing = [i for i in ids if i >= len(visible)]
    if missing and visible:
        raise ConfigError(f"{key}={_show(devices)}: GPU {missing[0]} does not exist: torch sees {len(visible)} GPU(s) "
                          f"(0-{len(visible) - 1}) on this machine (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); pass ids below {len(visible)}, or "
                          f"{key}=auto")
    if missing:
        raise ConfigError(f"{key}={_show(devices)}: GPU {missing[0]} does not exist: torch sees no GPU on this "
                          f"machine; pass {key}=cpu:N to run N jobs at once on the CPU")
    return [visible[i] for i in ids], False


def make_slots(devices: Sequence[str], cpu: bool, devices_per_job: Any, jobs_per_device: Any) -> list[Slot]:
    """Cut ``devices`` into groups of ``devices_per_job`` (in order; a remainder stays idle), each group
    into ``jobs_per_device`` slots. Slots are numbered group by group within each round: with 4 GPUs and
    2 jobs per device, slots 0-3 are the first job on GPUs 0-3, slots 4-7 the second."""
    for key, value in (("jobs_per_device", jobs_per_device), ("devices_per_job", devices_per_job)):
        if not _is_int(value) or int(value) < 1:
            raise ConfigError(f"hydra.launcher.{key}={value} must be an integer >= 1"
                              + (" (2: two small jobs share each device)" if key == "jobs_per_device" else
                                 " (2: a DDP job on 2 GPUs, with trainer.devices=2)"))
    per_job, per_device = int(devices_per_job), int(jobs_per_device)
    what = "CPU slot(s)" if cpu else "GPU(s)"
    if per_job > len(devices):
        raise ConfigError(f"hydra.launcher.devices_per_job={per_job} but the launcher has {len(devices)} {what} "
                          f"(hydra.launcher.devices); pass devices_per_job <= {len(devices)}")
    groups = [tuple(devices[i:i + per_job]) for i in range(0, len(devices) - per_job + 1, per_job)]
    slots = []
    for _round in range(per_device):
        for g, group in enumerate(groups):
            slots.append(Slot(len(slots), g, group, cpu))
    return slots


class SlotPool:
    """Which slots are free. :meth:`take` hands out a free slot on the least busy group of devices (the
    lowest slot number among equals); :meth:`give_back` frees it."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = list(slots)
        self.busy: set[int] = set()

    def free(self) -> int:
        return len(self.slots) - len(self.busy)

    def take(self) -> Slot:
        free = [s for s in self.slots if s.index not in self.busy]
        if not free:
            raise RuntimeError("no free slot")
        load = {s.group: 0 for s in self.slots}
        for s in self.slots:
            if s.index in self.busy:
                load[s.group] += 1
        slot = min(free, key=lambda s: (load[s.group], s.index))
        self.busy.add(slot.index)
        return slot

    def give_back(self, slot: Slot) -> None:
        self.busy.remove(slot.index)


def check_trainer(config: Any, slots: Sequence[Slot], devices_per_job: int) -> None:
    """The trainer must fit the slot: no GPU trainer on CPU slots, and a trainer on GPUs (``gpu``, or ``auto``
    on GPU slots) must use the slot's GPUs: ``trainer.devices`` = ``devices_per_job`` (or ``auto`` / ``-1``:
    all the job sees, which is its slot's)."""
    from .slurm import device_count

    accelerator = str(OmegaConf.select(config, "trainer.accelerator", default="auto"))
    cpu_slots = bool(slots) and slots[0].cpu
    if accelerator in ("gpu", "cuda") and cpu_slots:
        raise ConfigError(f"hydra.launcher.devices gives the jobs CPU slots (no GPU) but trainer.accelerator="
                          f"{accelerator}; use trainer=cpu, or hydra.launcher.devices=auto")
    if accelerator not in ("gpu", "cuda", "auto") or cpu_slots:
        return
    devices = OmegaConf.select(config, "trainer.devices", default=1)
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    if str(devices).strip() in ("auto", "-1"):
        return
    wanted = device_count(devices)
    if wanted != devices_per_job:
        raise ConfigError(f"trainer.devices={_show(devices)} but hydra.launcher.devices_per_job={devices_per_job} "
                          f"gives each job {devices_per_job} GPU(s); pass hydra.launcher.devices_per_job={wanted}")


def varying_overrides(job_overrides: Sequence[Sequence[str]], fixed: Sequence[str] = ()) -> list[list[str]]:
    """Each job's overrides that tell it from the others (what the sweep sweeps), for the progress lines:
    less Hydra's and the paths, the ``fixed`` ones (the command line's, given to every job) and those all the
    jobs share; a job left with none shows its own."""
    from hydra.core.utils import filter_overrides

    jobs = [[o for o in filter_overrides(list(job)) if not o.startswith(("hydra.", "paths."))]
            for job in job_overrides]
    common = set(fixed) | (set(jobs[0]).intersection(*map(set, jobs[1:])) if len(jobs) > 1 else set())
    return [[o for o in job if o not in common] or job for job in jobs]


# ----------------------------------------------------------------------------------------------
# the launcher


def _slot_executor_class():
    """submitit's LocalExecutor, starting each job with the ``CUDA_VISIBLE_DEVICES`` of a slot (any
    entries: ids, UUIDs, MIG ids; submitit's own ``visible_gpus`` takes integers only)."""
    from submitit.local.local import LocalExecutor, LocalJob, start_controller

    class SlotExecutor(LocalExecutor):
        slot: Slot | None = None

        def _submit_command(self, command: str) -> LocalJob:
            assert self.slot is not None
            process = start_controller(
                folder=self.folder, command=command, tasks_per_node=1,
                cuda_devices=self.slot.cuda_visible_devices,
                timeout_min=self.parameters.get("timeout_min", NO_TIMEOUT_MIN),
                signal_delay_s=self.parameters.get("signal_delay_s", 0),
                stderr_to_stdout=False, setup=self.parameters.get("setup", ()))
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=[0])

    return SlotExecutor


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _one_line(exc: BaseException) -> str:
    """``ValueError: <first line>`` (a job's exception, or the last line of its traceback)."""
    return f"{getattr(exc, 'type_name', type(exc).__name__)}: {first_line(exc)}"


@dataclass
class _Running:
    job: Any
    slot: Slot
    idx: int
    overrides: list[str]
    shown: str
    job_dir: Path
    started: float


class GpuLauncher(_SubmititLocalLauncher):
    """``hydra/launcher=gpus`` (module docstring). Options: ``configs/hydra/launcher/gpus.yaml``."""

    def __call__(self, *args: Any, slot: int | None = None, **kwargs: Any) -> JobReturn:  # in the job's process
        from .slurm import defer_submitit_logging

        if slot is not None:
            os.environ[SLOT_ENV] = str(slot)
        defer_submitit_logging()
        return super().__call__(*args, **kwargs)

    def slots(self) -> tuple[list[Slot], list[str]]:
        """The slots of this machine for these options and the devices none of them uses (a remainder of
        ``devices_per_job``), or a :class:`ConfigError` naming the bad option."""
        devices = self.params.get("devices", "auto")
        needs_gpus = not str(devices).strip().lower().startswith("cpu")
        count = gpu_count(self.params.get("gpu_count")) if needs_gpus else 0
        visible = visible_gpus(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
        chosen, cpu = parse_devices(devices, visible)
        slots = make_slots(chosen, cpu, self.params.get("devices_per_job", 1), self.params.get("jobs_per_device", 1))
        used = {d for s in slots for d in s.devices}
        return slots, [d for d in chosen if d not in used]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton

        from .slurm import refuse
        from .sweep import job_directory

        assert self.config is not None
        try:
            slots, idle = self.slots()
            check_trainer(self.config, slots, int(self.params.get("devices_per_job", 1)))
            timeout = self.params.get("timeout_min")
            if timeout is not None and (not _is_int(timeout) or int(timeout) < 1):
                raise ConfigError(f"hydra.launcher.timeout_min={timeout} must be a number of minutes >= 1, or null "
                                  "(no limit)")
        except SegbenchError as exc:
            refuse(str(exc))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = _slot_executor_class()(folder=self.params["submitit_folder"], max_num_timeout=0)
        executor.update_parameters(timeout_min=int(timeout) if timeout is not None else NO_TIMEOUT_MIN,
                                   signal_delay_s=0)  # no requeue signal: at the limit the job is stopped
        total = len(job_overrides)
        fixed = [str(o) for o in OmegaConf.select(self.config, "hydra.overrides.task", default=None) or []]
        shown = [" ".join(o) for o in varying_overrides(job_overrides, fixed)]
        where = ", ".join(dict.fromkeys(s.label for s in slots))
        unused = (f" ({', '.join(idle)} left idle: not a whole devices_per_job={self.params.get('devices_per_job')})"
                  if idle else "")
        print(f"{total} job(s) on {where}: at most {len(slots)} at a time{unused}; "
              f"job logs: {sweep_dir / '.submitit'}", flush=True)
        queue = list(enumerate(job_overrides, start=initial_job_idx))
        pool, running, results = SlotPool(slots), [], {}
        started = ended = 0
        main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # kill: as Ctrl-C
        try:
            while queue or running:
                while queue and pool.free():
                    idx, overrides = queue.pop(0)
                    slot = pool.take()
                    started += 1
                    job_dir = job_directory(self.hydra_context, self.config, overrides, idx)
                    executor.slot = slot
                    job = executor.submit(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                          Singleton.get_state(), slot=slot.index)
                    job._results_timeout_s = 2  # a local job's result is on disk when its process ends
                    run = _Running(job, slot, idx, list(overrides), shown[idx - initial_job_idx], job_dir, time.time())
                    running.append(run)
                    self._event(sweep_dir, run, "start")
                    print(f"job {idx} ({run.shown}) on {slot.label}: started [{started}/{total}]", flush=True)
                done = [r for r in running if r.job.done()]
                for run in done:
                    running.remove(run)
                    pool.give_back(run.slot)
                    ended += 1
                    results[run.idx], status, error = self._outcome(run)
                    seconds = time.time() - run.started
                    self._event(sweep_dir, run, "end", status=status, seconds=round(seconds, 1), error=error)
                    what = f"done in {seconds:.0f} s" if status == "done" else \
                        f"{status} after {seconds:.0f} s" + (f": {error}" if error else "")
                    print(f"job {run.idx} ({run.shown}) on {run.slot.label}: {what} [{ended}/{total} ended]",
                          flush=True)
                if not done:
                    time.sleep(0.5)
        except BaseException:  # Ctrl-C, kill, or an error of the launcher itself: stop the jobs it started
            self._stop(running)
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        return [results[idx] for idx in range(initial_job_idx, initial_job_idx + total)]

    @staticmethod
    def _stop(running: list[_Running], patience_s: float = 10.0) -> None:
        """Interrupt every running job (submitit's controller passes SIGINT on, then SIGKILL) and wait for
        their processes, so none outlives the launcher; each resumes from its last.ckpt when run again."""
        for run in running:
            run.job.cancel()
        deadline = time.time() + patience_s
        while any(not run.job.done() for run in running) and time.time() < deadline:
            time.sleep(0.2)
        for run in running:
            print(f"job {run.idx} ({run.shown}) on {run.slot.label}: stopped", file=sys.stderr, flush=True)

    @staticmethod
    def _event(sweep_dir: Path, run: _Running, event: str, **fields: Any) -> None:
        record = {"event": event, "job": run.idx, "overrides": run.shown, "slot": run.slot.index,
                  "devices": run.slot.label, "CUDA_VISIBLE_DEVICES": run.slot.cuda_visible_devices,
                  "submitit_job": run.job.job_id, "time": time.time(), **fields}
        with open(sweep_dir / EVENTS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _outcome(self, run: _Running) -> tuple[JobReturn, str, str | None]:
        """The job's JobReturn (a job that raised or died: marked failed in its run.json, None returned, as a
        failed job under the basic launcher), its run.json status and error."""
        from submitit.core.utils import UncompletedJobError

        from . import rundir

        ret: JobReturn | None = None
        problem, new_status = None, "failed"
        try:
            ret = run.job.results()[0]
            if ret.status == JobStatus.FAILED:
                problem = _one_line(unwrap(ret._return_value))
        except UncompletedJobError as exc:  # FailedJobError too: the job raised, or its process died
            cause = unwrap(exc)
            if cause is exc:  # no traceback: the process ended without a result
                problem = ("the job's process ended without writing a result (killed, or out of memory?); its log: "
                           f"{run.job.paths.stderr}")
                timeout = self.params.get("timeout_min")
                if timeout is not None and time.time() - run.started >= 60 * int(timeout) - 5:
                    resume = ("; running the same command again resumes it from checkpoints/last.ckpt"
                              if (run.job_dir / rundir.LAST_CHECKPOINT).is_file() else "")
                    problem = f"stopped at its time limit (hydra.launcher.timeout_min={timeout}){resume}"
                    new_status = "interrupted"
            else:
                problem = _one_line(cause)
        status = rundir.read_status(run.job_dir) or {}
        if problem is not None:
            if not (status.get("status") == "failed" and status.get("error")):  # else the job recorded its own
                run.job_dir.mkdir(parents=True, exist_ok=True)
                devices = status.get("devices") or {"CUDA_VISIBLE_DEVICES": run.slot.cuda_visible_devices,
                                                    "slot": run.slot.index}
                status = rundir.update_status(run.job_dir, status=new_status, error=problem, devices=devices,
                                              overrides=status.get("overrides", run.overrides))
            ret = JobReturn(overrides=run.overrides, status=JobStatus.COMPLETED)
            ret.return_value = None
        # a task that keeps no run.json (not segbench's) is done when it returned
        return ret, str(status.get("status") or ("done" if problem is None else "failed")), status.get("error")
