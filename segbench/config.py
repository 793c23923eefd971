"""Hydra / OmegaConf glue: where the configs are, and the resolvers the configs use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

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


def _run_label(output_dir, log_dir) -> str:
    """``${segbench_run_label:${paths.output_dir},${paths.log_dir}}`` (configs/logger/): what an experiment tracker
    names the run: its run directory relative to ``paths.log_dir`` (``train/2026-12-06_10-00-00``,
    ``multirun/2026-12-06_10-00-00/3``), or the directory's name when it lies elsewhere."""
    path, root = Path(str(output_dir)), Path(str(log_dir))
    return path.relative_to(root).as_posix() if path.is_relative_to(root) and path != root else path.name


if not OmegaConf.has_resolver("segbench_run_label"):
    OmegaConf.register_new_resolver("segbench_run_label", _run_label)


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


def _slurm_resolver(name: str):
    """A resolver that calls :mod:`segbench.runtime.slurm`'s ``name`` (imported when the Slurm launcher's
    config is resolved, not on every run)."""
    def resolve(*args):
        from .runtime import slurm

        return getattr(slurm, name)(*args)
    return resolve


for _name, _function in {"segbench_devices": "device_count", "segbench_slurm_gpus": "slurm_gpus",
                         "segbench_slurm_cpus": "slurm_cpus"}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _slurm_resolver(_function))
