"""What a run prints: known third-party noise filtered, one line per epoch when the output is not a
terminal, and the results table in the run's log file as well as on the console.

Filtered, and only these (everything else Lightning, MONAI or torch say is kept):

* Lightning's advertising tips (``💡 Tip: ... litlogger / litmodels``), logged at INFO on every fit;
* ``isinstance(treespec, LeafSpec) is deprecated``: a FutureWarning torch >= 2.9 raises inside
  Lightning's own ``utilities/_pytree.py`` on every fit; nothing a segbench user can change;
* Lightning's "The `srun` command is available on your system but is not used", on a machine with
  Slurm's tools, for a single-process run only (``single_process=True``): it warns that DDP ranks
  launched without ``srun`` hang, which one process cannot.
"""

from __future__ import annotations

import logging
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


#: Lightning's srun hint, noise when the run is one process
SRUN_HINT = r"The `srun` command is available on your system but is not used"


def quiet_third_party(single_process: bool = False) -> None:
    """Install the filters above (idempotent)."""
    for message, category in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    if single_process:
        warnings.filterwarnings("ignore", message=SRUN_HINT)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


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
