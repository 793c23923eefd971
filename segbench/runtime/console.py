"""What a run prints: known third-party noise filtered, one line per epoch when the output is not a
terminal, and the results table in the run's log file as well as on the console.

Filtered, and only these (everything else Lightning, MONAI or torch say is kept, and every WARNING):

* Lightning's advertising tips (``💡 Tip: ... litlogger / litmodels``), logged at INFO on every fit;
* Lightning's device banner, logged at INFO by every ``Trainer``: ``GPU available: False, used: False``,
  ``TPU available: False, using: 0 TPU cores`` (older versions: ``HPU available: ...``, ``IPU available:
  ...``). It says what the machine has, not what the run uses; segbench logs one line of its own instead,
  ``device: cpu (2 threads)`` or ``device: cuda:0 NVIDIA H100 80GB HBM3`` (:func:`device_line`), and records
  the device in ``run.json``. Lightning's *warning* ``GPU available but not used`` is kept;
* ``LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]``, logged at INFO by Lightning's CUDA accelerator, for a
  single-process run only (under DDP it tells which rank got which GPU);
* ``Loading `train_dataloader` to estimate number of stepping batches.``, logged at INFO by Lightning on
  every fit whose learning-rate schedule asks for the number of steps: how Lightning works, not the run;
* logged at INFO on import, while Hydra's own logging is in effect, so not here but in
  ``configs/hydra/default.yaml``, which sets these loggers to WARNING in Hydra's logging
  (``hydra_logging``: Hydra creating the Optuna sweeper and segbench's Hydra callbacks) and in the job's
  (``job_logging``): alembic's ``setup plugin alembic.autogenerate....`` (seven lines, when optuna imports
  its database layer: ``hparams_search=afw_optuna``), and matplotlib's ``generated new fontManager`` (the
  first run on a machine; Lightning imports matplotlib through torchmetrics);
* ``isinstance(treespec, LeafSpec) is deprecated``: a FutureWarning torch >= 2.9 raises inside
  Lightning's own ``utilities/_pytree.py`` on every fit; nothing a segbench user can change;
* Lightning's "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be
  provided ...", in ``segbench-eval`` only (:data:`EVAL_CALLBACKS_HINT`, around its ``trainer.test``): the
  training run's checkpoint and random-state callbacks matter for resuming a fit, not for testing;
* Lightning's "The `srun` command is available on your system but is not used", on a machine with
  Slurm's tools, for a single-process run only (``single_process=True``): it warns that DDP ranks
  launched without ``srun`` hang, which one process cannot;
* the experiment trackers' own chatter (``logger=mlflow|wandb|aim``), each for the reason given where it is
  silenced: Aim's INFO lines about its status reporter and MLflow's about creating its database
  (:data:`TRACKER_LOGGERS`); MLflow's "View run ... at:
  <url>" after fit and again after test, W&B's banners, and W&B's "The anonymous setting has no effect"
  (:mod:`segbench.runtime.loggers`, ``configs/logger/wandb.yaml``). Instead, a run with such a tracker ends
  with one line per tracker on where it has the run (``mlflow: run ... of experiment ...: <url>``,
  ``wandb: offline run in <dir>; upload it with: wandb sync <dir>``).
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

log = logging.getLogger("segbench")

#: Lightning's INFO messages that advertise other products, not this run
_TIP_PREFIX = "💡 Tip:"
#: (message regex, category) of third-party warnings raised inside third-party code on every run
KNOWN_NOISE = ((r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_TIP_PREFIX)


#: Lightning's INFO messages about the machine or its own workings, not this run (WARNINGs always pass)
_BANNER = re.compile(r"(GPU|TPU|HPU|IPU) available: |Loading `train_dataloader` to estimate number of stepping batches")


class _DropBanner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _BANNER.match(str(record.getMessage()))


class _DropLocalRank(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not str(record.getMessage()).startswith("LOCAL_RANK: ")


def _add_filter(logger_name: str, kind: type[logging.Filter]) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


#: the loggers Lightning's rank_zero_info / rank_zero_warn log to (whichever package was imported last)
RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                     "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
#: the loggers of Lightning's CUDA accelerator (LOCAL_RANK - CUDA_VISIBLE_DEVICES)
CUDA_LOGGERS = ("pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda",
                "lightning_fabric.accelerators.cuda", "lightning.fabric.accelerators.cuda")


#: Lightning's srun hint, noise when the run is one process
SRUN_HINT = r"The `srun` command is available on your system but is not used"
#: Lightning's hint, when a checkpoint is tested, that its training callbacks are missing: noise in segbench-eval
EVAL_CALLBACKS_HINT = r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"


#: experiment trackers' INFO loggers about their own workings, shown at WARNING and above only: Aim logs
#: "creating RunStatusReporter for <hash>", "starting from: {}" and "starting writer thread for <object>" on
#: every logger=aim run; MLflow "Creating initial MLflow database tables..." and "Updating database tables" on
#: every logger=mlflow run without a tracking URI (a new SQLite store in the run directory), on a handler of its own
TRACKER_LOGGERS = ("aim.sdk.reporter", "mlflow.store.db.utils")


def quiet_third_party(single_process: bool = False) -> None:
    """Install the filters above (idempotent)."""
    for name in TRACKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    if single_process:
        warnings.filterwarnings("ignore", message=SRUN_HINT)
    for name in RANK_ZERO_LOGGERS:
        _add_filter(name, _DropTips)
        _add_filter(name, _DropBanner)
    if single_process:
        for name in CUDA_LOGGERS:
            _add_filter(name, _DropLocalRank)


def device_line(trainer) -> str:
    """What the run computes on, in one line (for Lightning's device banner, which is filtered):
    ``device: cpu (2 threads)``, ``device: cpu (2 threads x 4 processes)``, ``device: cuda:0 NVIDIA H100 80GB
    HBM3``, ``device: 4 x NVIDIA H100 80GB HBM3 (cuda)``; ``, 2 nodes`` when there are several (each
    node's devices)."""
    import torch

    kind = type(trainer.accelerator).__name__.replace("Accelerator", "").lower() or "?"
    devices = list(getattr(trainer.strategy, "parallel_devices", None) or [trainer.strategy.root_device])
    if kind == "cpu":
        threads = torch.get_num_threads()
        line = f"cpu ({threads} thread{'s' if threads != 1 else ''}"
        line += f" x {len(devices)} processes)" if len(devices) > 1 else ")"
    elif kind == "cuda":
        names = sorted({torch.cuda.get_device_name(d) for d in devices})
        line = (f"{devices[0]} {names[0]}" if len(devices) == 1
                else f"{len(devices)} x {' / '.join(names)} (cuda)")
    else:
        line = f"{kind} ({len(devices)} device{'s' if len(devices) != 1 else ''})"
    nodes = int(getattr(trainer, "num_nodes", 1) or 1)
    return "device: " + line + (f", {nodes} nodes" if nodes > 1 else "")


def interactive() -> bool:
    """Is a person watching (stderr a terminal)? Otherwise progress bars would fill a redirected log or a
    Slurm output file with carriage-return updates."""
    return sys.stderr.isatty()


def to_log_files(text: str) -> None:
    """Write ``text`` verbatim into the run's log file(s) (Hydra's ``<task_name>.log``), without the
    logger's time / level prefix, so the results table reads there as on the console."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is None:
                    handler.stream = handler._open()
                handler.stream.write(text.rstrip("\n") + "\n")
                handler.flush()
            finally:
                handler.release()


def report(text: str) -> None:
    """Print ``text`` (results tables, where they went) and put it in the run's log file too."""
    print(text)
    to_log_files(text)
