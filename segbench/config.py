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
