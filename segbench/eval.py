"""``segbench-eval ckpt_path=...``: score a checkpoint on its run's test split.

The training run's own config is loaded from ``<run>/.hydra/config.yaml`` (the
checkpoint lives in ``<run>/checkpoints/``), so data, model and loss always match
the checkpoint; ``metrics``, ``test`` and ``data`` overrides from the command
line are applied on top. Results go to this evaluation's own run directory.

A run directory may come from someone else: its config may only instantiate segbench, torch
optimiser and Lightning classes (:mod:`segbench.runtime.trust`; ``trusted_modules=[mylab.losses]`` admits
your own), and the checkpoint is read with ``weights_only=True`` and checked against the model
the config builds (:mod:`segbench.runtime.checkpoint`) before anything is tested.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import CONFIG_DIR, PROJECT_ROOT, USER_ERRORS, report_error, unwrap, user_code_importable
from .errors import ConfigError, DataError

#: what segbench-eval needs, said in one line when it is missing
NO_CHECKPOINT = "no checkpoint given: pass ckpt_path=<run>/checkpoints/last.ckpt (or best-*.ckpt)"


def training_config(cfg: DictConfig) -> DictConfig:
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError(NO_CHECKPOINT)
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} not found; pass ckpt_path=<run>/checkpoints/last.ckpt")
    path = Path(cfg.train_config) if cfg.train_config else ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"training config {path} not found; pass train_config=<run>/.hydra/config.yaml")
    try:
        train_cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - not YAML, not a mapping
        raise ConfigError(f"training config {path} is not a readable config ({type(exc).__name__}); "
                          "pass train_config=<run>/.hydra/config.yaml") from None
    if not isinstance(train_cfg, DictConfig):
        raise ConfigError(f"training config {path} is not a mapping; pass train_config=<run>/.hydra/config.yaml")
    with open_dict(train_cfg):
        # this evaluation's metrics options on top of the run's (which keep e.g. metrics.report_convention)
        train_cfg.metrics = OmegaConf.merge(train_cfg.get("metrics") or {}, cfg.metrics)
        train_cfg.test = cfg.test
        train_cfg.data = OmegaConf.merge(train_cfg.data, cfg.data) if "data" in train_cfg else cfg.data
        # paths are re-resolved for this machine / this evaluation's run directory
        train_cfg.paths = cfg.paths
    from .runtime.trust import checked_config

    return checked_config(train_cfg, cfg.get("trusted_modules") or (), source=f"training config {path}")


def evaluate(cfg: DictConfig, output_dir: Path) -> dict:
    import pytorch_lightning as pl

    from .runtime.console import interactive, report
    from .runtime.checkpoint import check_matches, load_checkpoint, safe_checkpoint_io, weights_only_kwargs
    from .metrics.results import format_table
    from .runtime.runinfo import device_description, git_revision, package_versions
    from .train import build

    start = time.time()
    train_cfg = training_config(cfg)
    checkpoint = load_checkpoint(cfg.ckpt_path)  # weights_only=True: no pickle payload runs
    datamodule, module = build(train_cfg)
    check_matches(checkpoint, module, cfg.ckpt_path)
    del checkpoint
    if cfg.test.get("save_predictions"):
        module.prediction_dir = output_dir / "predictions"
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer), logger=False, enable_checkpointing=False,
                         default_root_dir=str(output_dir), enable_model_summary=False,
                         enable_progress_bar=interactive(), plugins=[safe_checkpoint_io()])
    datamodule.prepare_data()
    trainer.test(module, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False,
                 **weights_only_kwargs(trainer.test))
    extra = {"run": {"output_dir": str(output_dir), "checkpoint": str(Path(cfg.ckpt_path).resolve()),
                     "git": git_revision(PROJECT_ROOT), "versions": package_versions(),
                     "device": device_description(), "wall_time_s": round(time.time() - start, 1)},
             "splits": datamodule.splits}
    summary = module.evaluator.write(output_dir / "results", config=OmegaConf.to_container(train_cfg, resolve=True),
                                     extra=extra)
    report(format_table(summary) + f"\nresults: {output_dir / 'results'}")
    return summary


def remove_if_empty(output_dir: Path) -> None:
    """Remove a failed evaluation's directory when it holds nothing but Hydra's own files (the composed
    config and the log), and the folders above it that this leaves empty (``outputs/eval``)."""
    import shutil

    output_dir = Path(output_dir)
    if not output_dir.is_dir() or any(p.name not in (".hydra", "eval.log") for p in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    for parent in list(output_dir.parents)[:2]:  # outputs/eval, outputs
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .runtime.console import quiet_third_party

    quiet_third_party(single_process=str(cfg.trainer.get("devices", 1)) == "1")
    user_code_importable()  # a training run's loss._target_ / data.source._target_ in the user's module
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        evaluate(cfg, output_dir)
    except USER_ERRORS as exc:
        report_error(unwrap(exc), "segbench-eval")
        remove_if_empty(output_dir)
        sys.exit(1)
    except BaseException:
        remove_if_empty(output_dir)
        raise


def argv_error(argv: list[str]) -> str | None:
    """The one-line error for a command line that cannot work, found before Hydra creates a run directory."""
    if any(a in ("-h", "--help", "--hydra-help", "--info", "-c", "--cfg") or a.startswith("--info") for a in argv):
        return None
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("ckpt_path=")]
    if not given or not given[-1] or given[-1] in ("null", "???"):
        return NO_CHECKPOINT
    path = given[-1]
    sweep = any(a in ("-m", "--multirun") for a in argv)  # ckpt_path=a.ckpt,b.ckpt: Hydra splits it
    if not sweep and "${" not in path and not Path(path).is_file():
        return f"checkpoint {path} not found; pass ckpt_path=<run>/checkpoints/last.ckpt"
    return None


def cli() -> None:
    """``segbench-eval``: :func:`main` behind the checks that need no run directory."""
    error = argv_error(sys.argv[1:])
    if error is not None:
        print(f"segbench-eval: error: {error}", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
