"""User errors: the exceptions that stop a run early, and how the entry points report them.

Every problem a user can fix (a config value, a missing or corrupt file, a checkpoint of another model)
raises a :class:`SegbenchError` whose message is one line naming the thing and the fix. The entry
points catch :data:`USER_ERRORS`, find the root cause inside the libraries' wrappers (:func:`unwrap`)
and print that one line (:func:`report_error`); ``SEGBENCH_TRACEBACK=1`` prints the traceback too.
"""

from __future__ import annotations

import os
import re
import sys
import traceback


class SegbenchError(Exception):
    """Base class: caught by the entry points and printed as one line (no traceback)."""


class ConfigError(SegbenchError, ValueError):
    """A configuration value is invalid."""


class DataError(SegbenchError, ValueError):
    """Input data is missing, unreadable or inconsistent."""


class CheckpointError(SegbenchError, ValueError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another model."""


class NonFiniteLossError(SegbenchError, ArithmeticError):
    """The training loss became NaN or infinite."""


class SlurmJobError(SegbenchError):
    """A Slurm job ended without a result (cancelled, out of time, its node failed)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import InstantiationException

    return (SegbenchError, ValueError, FileNotFoundError, InstantiationException)


#: exceptions that mean "the user's input is wrong": reported as one line, not a traceback
USER_ERRORS = _user_errors()


class RemoteError(Exception):
    """An error re-raised from its text (a DataLoader worker's, a Slurm job's): ``type_name`` is the original type."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _last_traceback_line(text: str) -> RemoteError | None:
    """``ValueError: bad`` at the end of a formatted traceback -> RemoteError("ValueError", "bad")."""
    for line in reversed([ln for ln in text.splitlines() if ln.strip()]):
        found = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$", line.strip())
        if found:
            return RemoteError(found.group(1).rsplit(".", 1)[-1], found.group(2))
    return None


def unwrap(exc: BaseException) -> BaseException:
    """The root cause inside the wrappers that the libraries segbench runs on put around it.

    * Hydra's ``InstantiationException`` (``raise ... from`` the user's error);
    * MONAI's ``RuntimeError("applying transform <...>")`` (``apply_transform``, raised from the cause);
    * torch's re-raise of a DataLoader worker's error ("Caught ValueError in DataLoader worker process 0.
      Original Traceback ..."): the last line of the worker's traceback;
    * submitit's ``FailedJobError`` ("Job (task=0) failed during processing with trace: ...") for a job
      that raised: the last line of the job's traceback.
    """
    from hydra.errors import InstantiationException

    for _ in range(20):  # wrappers nest (a worker's MONAI error in an instantiation), never deeply
        text = str(exc)
        if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
            exc = exc.__cause__
        elif isinstance(exc, RuntimeError) and text.startswith("applying transform") and exc.__cause__ is not None:
            exc = exc.__cause__
        elif text.startswith("Caught ") and "Original Traceback" in text:
            exc = _last_traceback_line(text.split("Original Traceback", 1)[1]) or exc
            break
        elif type(exc).__name__ == "FailedJobError" and "failed during processing with trace" in text:
            exc = _last_traceback_line(text.split("-" * 22)[1] if text.count("-" * 22) >= 2 else text) or exc
            break
        else:
            break
    return exc


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def report_error(exc: BaseException, what: str = "segbench") -> None:
    """Print one line naming the problem (full traceback with SEGBENCH_TRACEBACK=1)."""
    if os.environ.get("SEGBENCH_TRACEBACK"):
        traceback.print_exception(exc)
    print(f"{what}: error: {first_line(exc)}", file=sys.stderr)


def output_dir_problem(folder) -> str | None:
    """The one-line message for a run or sweep directory that cannot be created and written, else None."""
    from .files import writable

    reason = writable(folder)
    if reason is None:
        return None
    return (f"output directory {folder} is not writable ({reason}); pass "
            "hydra.run.dir=<a writable folder> or set SEGBENCH_OUTPUT_DIR")
