"""Hydra / OmegaConf glue: where the configs are, resolvers, friendly errors."""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from .errors import SegbenchError

#: exceptions that mean "the user's input is wrong": reported as one line, not a traceback
USER_ERRORS = (SegbenchError, ValueError, FileNotFoundError, InstantiationException)

#: the installed package
PACKAGE_DIR = Path(__file__).resolve().parent


def find_config_dir() -> Path:
    """The configs of this install: ``segbench/configs/`` in a wheel (package data), the checkout's
    top-level ``configs/`` in a source tree or an editable install."""
    for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"segbench's configs are missing: neither {PACKAGE_DIR / 'configs'} nor "
                            f"{PACKAGE_DIR.parent / 'configs'} holds train.yaml; reinstall segbench")


CONFIG_DIR = str(find_config_dir())
#: the source checkout this package runs from (for the git revision in run.json), or None when installed
#: from a wheel: then the parent folder is site-packages, which may sit inside a user's own git repository
PROJECT_ROOT: Path | None = PACKAGE_DIR.parent if Path(CONFIG_DIR) == PACKAGE_DIR.parent / "configs" else None

# paths/default.yaml: data and outputs go under the directory segbench is started from, as in Hydra
# and lightning-hydra-template (SEGBENCH_DATA_DIR / SEGBENCH_OUTPUT_DIR override them)
if not OmegaConf.has_resolver("segbench_cwd"):
    OmegaConf.register_new_resolver("segbench_cwd", lambda: os.getcwd())


def _smoke_width(at_least, *, _parent_) -> int:
    """``model.width: ${segbench_smoke_width:4}`` (debug=smoke): the smallest width >= 4 that the
    model of this config accepts (4 for the U-Nets, 8 for SegResNet's GroupNorm, 12 for Swin UNETR)."""
    from hydra.utils import get_class

    from .models.common import smallest_width

    try:
        model_cls = get_class(str(_parent_.get("_target_")))
    except Exception:  # noqa: BLE001 - not a class: the model's own check reports it when it is built
        return int(at_least)
    return smallest_width(model_cls, _parent_, int(at_least))


if not OmegaConf.has_resolver("segbench_smoke_width"):
    OmegaConf.register_new_resolver("segbench_smoke_width", _smoke_width)


def user_code_importable() -> None:
    """Let a config name the user's own classes (``loss._target_: my_module.MyLoss``) that live in
    the directory segbench is started from, as ``python train.py`` would. Appended, so a file there
    never shadows an installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)


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


for _name, _resolver in {"segbench_devices": device_count, "segbench_slurm_gpus": slurm_gpus,
                         "segbench_slurm_cpus": slurm_cpus}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


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
        from .data.cache import writable

        reason = writable(folder)
        if reason is not None:
            what = f"segbench-{OmegaConf.select(config, 'task_name', default='train')}"
            print(f"{what}: error: output directory {folder} is not writable ({reason}); pass "
                  "hydra.run.dir=<a writable folder> or set SEGBENCH_OUTPUT_DIR", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")
