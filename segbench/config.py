"""Hydra / OmegaConf glue: where the configs are, resolvers, friendly errors."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from .errors import SegbenchError

#: exceptions that mean "the user's input is wrong": reported as one line, not a traceback
USER_ERRORS = (SegbenchError, ValueError, FileNotFoundError, InstantiationException)

#: the repository root (``configs/``, ``data/``, ``outputs/`` live here in an editable install)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = str(PROJECT_ROOT / "configs")

if not OmegaConf.has_resolver("segbench_root"):
    OmegaConf.register_new_resolver("segbench_root", lambda: str(PROJECT_ROOT))


def unwrap(exc: BaseException) -> BaseException:
    """The user's error inside Hydra's InstantiationException (``raise ... from`` keeps it as the cause)."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def report_error(exc: BaseException, what: str = "segbench") -> None:
    """Print one line naming the problem (full traceback with SEGBENCH_TRACEBACK=1)."""
    if os.environ.get("SEGBENCH_TRACEBACK"):
        traceback.print_exception(exc)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"{what}: error: {message}", file=sys.stderr)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra < 1.1
    _HydraCallback = object


class CheckOutputDir(_HydraCallback):
    """A Hydra callback: the run (or sweep) directory must be creatable and writable, else one line and exit 1.

    Hydra creates the directory itself before any segbench code runs, so without this check a
    read-only disk or a file in the way surfaces as Hydra's traceback of ``mkdir``.
    """

    def _check(self, config, key: str) -> None:
        from omegaconf import OmegaConf

        try:
            folder = Path(str(OmegaConf.select(config, key)))
        except Exception:  # noqa: BLE001 - an interpolation only the job can resolve: Hydra reports it
            return
        probe = folder / f".write-test-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            what = f"segbench-{OmegaConf.select(config, 'task_name', default='train')}"
            print(f"{what}: error: output directory {folder} is not writable ({exc.strerror or exc}); pass "
                  "hydra.run.dir=<a writable folder> or set SEGBENCH_OUTPUT_DIR", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")
