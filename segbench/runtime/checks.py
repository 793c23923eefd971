"""Start-up checks: what a run's config or command line gets wrong is said in one line before anything
is built, loaded or trained (the bad-input matrix, ``tests/test_bad_input.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, output_dir_problem
from ..postprocess import check_postprocess
from .init_from import check_init_from

#: what segbench-eval needs, said in one line when it is missing
NO_CHECKPOINT = "no checkpoint given: pass ckpt_path=<run>/checkpoints/last.ckpt (or best-*.ckpt)"


def check_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """Every start-up check of a training run's config, in the order a user would fix them."""
    missing = missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:  # e.g. the dataset's location: one line, before anything is built
        hint = ("data.root=<the dataset's directory>, or data=phantom for the built-in phantom"
                if "data.root" in missing else f"{missing[0]}=...")
        raise ConfigError(f"{', '.join(missing)} not set: pass {hint}")
    root_hint = unset_dataset_root(cfg)
    if root_hint is not None:
        raise ConfigError(f"data.root not set for data={cfg.data.name}: pass {root_hint}")
    check_schedule(cfg)
    test_checkpoint(cfg)
    check_postprocess(cfg.test.get("postprocess", "none"))
    check_init_from(cfg)
    problem = missing_logger_package(cfg.get("logger"))
    if problem is not None:
        raise ConfigError(problem)
    problem = output_dir_problem(output_dir)
    if problem is not None:
        raise ConfigError(problem)


def test_checkpoint(cfg) -> str | None:
    """What ``trainer.test`` scores: ``"best"`` (the best ``val/dice`` checkpoint) or ``None`` (the weights
    in memory after ``fit``: the final epoch) for ``test.checkpoint=last``."""
    choice = cfg.test.get("checkpoint", "best")
    if choice not in ("best", "last"):
        raise ConfigError(f"test.checkpoint={choice!r} is unknown; choose best or last")
    return "best" if choice == "best" else None


def check_schedule(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` the schedule can work with: -1 (no end) has no last step for poly decay."""
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is None:
        return
    if int(max_epochs) < -1:
        raise ConfigError(f"trainer.max_epochs={max_epochs} is invalid; pass a number of epochs >= 0 "
                          "(0: test the initial weights)")
    max_steps = cfg.trainer.get("max_steps")
    no_end = int(max_epochs) == -1 and (max_steps is None or int(max_steps) < 0)
    by_epoch = cfg.scheduler.get("interval", "step") == "epoch" and int(max_epochs) == -1
    if cfg.scheduler.get("name", "none") == "poly" and (no_end or by_epoch):
        raise ConfigError("trainer.max_epochs=-1 trains without end, but scheduler.name=poly decays the learning "
                          "rate to 0 at the last step; set trainer.max_epochs=<epochs> or scheduler.name=none")


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (mandatory, not given)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in missing_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def unset_dataset_root(cfg: DictConfig) -> str | None:
    """The hint for a dataset read from ``${data.root}`` whose root resolved to null -- a sweep over datasets
    (Tables 3-5) takes one root per dataset from ``dataset_roots.<name>`` -- else None."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "root" not in data or "source" not in data:
        return None
    if "${data.root}" not in str(OmegaConf.to_container(data.source, resolve=False)):
        return None  # the source does not read data.root (the phantom)
    if OmegaConf.select(cfg, "data.root", default=None) is not None:
        return None
    if "dataset_roots" in cfg:
        return f"dataset_roots.{data.name}=<the dataset's directory> (or data.root=...), or data=phantom"
    return "data.root=<the dataset's directory>, or data=phantom for the built-in phantom"


#: the experiment trackers that are optional dependencies: logger class name -> (the module it needs, the extra)
OPTIONAL_LOGGERS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb"),
                    "AimLogger": ("aim", "aim")}


def missing_logger_package(logger_cfg: Any) -> str | None:
    """The one-line error for a configured logger (``logger=mlflow``, ``logger=[csv,wandb]``) whose optional
    package is not installed, or None. ``logger_cfg``: the config's ``logger`` node (name -> logger config)."""
    for name, node in (logger_cfg or {}).items():
        target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
        needs = OPTIONAL_LOGGERS.get(target.rsplit(".", 1)[-1])
        if needs is not None and importlib.util.find_spec(needs[0]) is None:
            module, extra = needs
            return (f"logger={name} needs {module}, an optional dependency: pip install \"segbench[{extra}]\" "
                    f"(in a checkout: pip install -e \".[{extra}]\")")
    return None


def missing_plugin(argv: list[str]) -> str | None:
    """The one-line error for an override that needs a Hydra plugin this install lacks, or None.

    Hydra composes the config before any segbench code runs, so without this check a missing
    plugin surfaces as Hydra's "Could not find 'hydra/sweeper/optuna'".
    """
    wants_optuna = any((a.startswith("hparams_search=") and a != "hparams_search=null")
                       or a.replace(" ", "") == "hydra/sweeper=optuna" for a in argv)
    if wants_optuna and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        return ("hparams_search needs the Optuna sweeper (hydra-optuna-sweeper), an optional dependency: "
                "pip install -e \".[optuna]\"")
    return None


def asks_for_help(argv: list[str]) -> bool:
    """Hydra's help and config-printing flags: the command line needs nothing else then."""
    return any(a in ("-h", "--help", "--hydra-help", "--info", "-c", "--cfg") or a.startswith("--info") for a in argv)


def eval_argv_error(argv: list[str]) -> str | None:
    """The one-line error for a command line that cannot work, found before Hydra creates a run directory."""
    if asks_for_help(argv):
        return None
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("ckpt_path=")]
    if not given or not given[-1] or given[-1] in ("null", "???"):
        return NO_CHECKPOINT
    path = given[-1]
    sweep = any(a in ("-m", "--multirun") for a in argv)  # ckpt_path=a.ckpt,b.ckpt: Hydra splits it
    if not sweep and "${" not in path and not Path(path).is_file():
        return f"checkpoint {path} not found; pass ckpt_path=<run>/checkpoints/last.ckpt"
    return None


#: what segbench-predict needs on its command line
PREDICT_USAGE = "segbench-predict run=<training run directory> input=<NIfTI file, folder or DICOM series> output=<dir>"


def predict_argv_error(argv: list[str]) -> str | None:
    """The one-line error for a segbench-predict command line without a run, an input or an output."""
    if asks_for_help(argv):
        return None
    given = {a.split("=", 1)[0].lstrip("+"): a.split("=", 1)[1] for a in argv if "=" in a}
    missing = [k for k in ("run", "input", "output") if given.get(k) in (None, "", "null", "???", "[]")]
    if missing:
        return f"{', '.join(missing)} not given: {PREDICT_USAGE}"
    return None
