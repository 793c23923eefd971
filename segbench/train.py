"""``segbench-train``: compose a run from configs, fit, test, write the results contract.

    segbench-train                                   # the default experiment on the phantom
    segbench-train loss=afw_dice loss.gamma=0.5 trainer.max_epochs=50
    segbench-train -m loss=ce_dice,dice seed=1,2     # a sweep (Hydra multirun)
    segbench-train debug=smoke                       # a < 1 minute dry run
    segbench-train data=phantom3d model=unet3d       # 3D: patches, sliding-window test
    segbench-train run_name=afw1 loss=afw_dice       # outputs/train/afw1; run again after a kill: it resumes
    segbench-train trainer=ddp trainer.devices=4     # multi-GPU, one run directory
    segbench-train -m experiment=table1_synapse data=phantom          # a table of the AFW-Dice paper
    segbench-train hparams_search=afw_optuna         # Optuna search over gamma and the CE weight
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_DIR, PROJECT_ROOT, USER_ERRORS, report_error, unwrap, user_code_importable
from .errors import ConfigError, SegbenchError
from .metrics.results import atomic_write_text


def build(cfg: DictConfig):
    """Instantiate the data module and the LightningModule from a composed config."""
    from hydra.utils import instantiate

    from .module import SegModule

    net = instantiate(cfg.model)
    if cfg.get("compile", False):
        net.compile()  # torch.compile of forward, in place: state-dict keys stay those of the plain network
    module = SegModule(net=net, loss=OmegaConf.to_container(cfg.loss, resolve=True),
                       optimizer=instantiate(cfg.optimizer), scheduler=OmegaConf.to_container(cfg.scheduler),
                       class_names=list(cfg.data.class_names),
                       metrics=OmegaConf.to_container(cfg.metrics), test=OmegaConf.to_container(cfg.test),
                       # NHWC is a layout of 4D tensors: 3D networks (NCDHW) keep the default layout
                       channels_last=bool(cfg.get("channels_last", False)) and int(cfg.data.spatial_dims) == 2,
                       inference=OmegaConf.to_container(cfg.inference, resolve=True) if "inference" in cfg else None,
                       consistency=OmegaConf.to_container(cfg.consistency) if "consistency" in cfg else None)
    datamodule = instantiate(cfg.data, _recursive_=True, _convert_="all")
    if datamodule.precompute_loss_maps:
        datamodule.loss_maps = module.loss_fn.map_builder(datamodule.num_classes)
        if datamodule.loss_maps is None:
            loss = cfg.loss.get("name") or cfg.loss.get("_target_")
            print(f"data.precompute_loss_maps: loss {loss} uses no target distance maps; "
                  "nothing to precompute")
        else:
            print("training loader precomputes the loss's maps: "
                  + ", ".join(m.key for m in datamodule.loss_maps.maps))
    return datamodule, module


def build_trainer(cfg: DictConfig, output_dir: Path):
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    from .runtime.console import epoch_line_callback, interactive, quiet_third_party
    from .runtime.checkpoint import safe_checkpoint_io
    from .runtime.nonfinite import StopOnNonFiniteLoss
    from .runtime.rundir import epoch_status_callback
    from .runtime.seeding import RandomStateCheckpoint

    quiet_third_party(single_process=str(cfg.trainer.get("devices", 1)) == "1"
                      and int(cfg.trainer.get("num_nodes", 1) or 1) == 1)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # not in the callbacks config: exact resume, the run index and a sound run depend on them
    callbacks += [RandomStateCheckpoint(cfg.seed), epoch_status_callback(output_dir), StopOnNonFiniteLoss()]
    progress = {}
    if not interactive():  # a redirected log / Slurm output: one line per epoch, not carriage-return updates
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)] + [epoch_line_callback()]
        progress = {"enable_progress_bar": False}
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # checkpoints written atomically, read with weights_only=True (segbench.runtime.checkpoint)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(output_dir), plugins=[safe_checkpoint_io()], **progress)


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


def check_writable(output_dir: Path) -> None:
    """One line for a run directory that cannot be written (read-only disk, a file in the way)."""
    from .data.cache import writable

    reason = writable(output_dir)
    if reason is not None:
        raise ConfigError(f"output directory {output_dir} is not writable ({reason}); pass "
                          "hydra.run.dir=<a writable folder> or set SEGBENCH_OUTPUT_DIR")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (mandatory, not given)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _missing_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def _unset_dataset_root(cfg: DictConfig) -> str | None:
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


def run(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fit (unless ``trainer.max_epochs=0``) and test; returns the summary written to results/.

    A directory that holds an unfinished run of this config (``checkpoints/last.ckpt``, no
    ``results/summary.json``) is resumed from its last checkpoint; one that holds a finished run
    is not trained again (:mod:`segbench.runtime.rundir`; ``resume=false`` starts over).
    Under DDP every rank runs this; rank 0 alone writes ``run.json``, ``splits.json`` and results.
    """
    import pytorch_lightning as pl
    import torch

    from .runtime import rundir
    from .runtime.console import report
    from .runtime.distributed import one_run_directory
    from .metrics.results import format_table
    from .runtime.runinfo import device_description, git_revision, package_versions

    start = time.time()
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:  # e.g. the dataset's location: one line, before anything is built
        hint = ("data.root=<the dataset's directory>, or data=phantom for the built-in phantom"
                if "data.root" in missing else f"{missing[0]}=...")
        raise ConfigError(f"{', '.join(missing)} not set: pass {hint}")
    root_hint = _unset_dataset_root(cfg)
    if root_hint is not None:
        raise ConfigError(f"data.root not set for data={cfg.data.name}: pass {root_hint}")
    check_schedule(cfg)
    ckpt = test_checkpoint(cfg)  # checked here, used after fit
    check_writable(output_dir)
    finished = rundir.finished_summary(output_dir, cfg)
    if finished is not None:
        print(f"{output_dir} holds a finished run of this config (results/summary.json): not trained again; "
              "resume=false retrains it")
        return finished
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    datamodule, module = build(cfg)
    trainer = build_trainer(cfg, output_dir)
    main_rank = trainer.global_rank == 0
    resume_from = cfg.get("ckpt_path") or rundir.resume_checkpoint(output_dir, cfg)
    if resume_from:  # loads (weights_only=True), holds a training state, fits this model: or one line
        from .runtime.checkpoint import CheckpointError, check_matches, check_training_checkpoint, load_checkpoint

        problem = check_training_checkpoint(resume_from)
        if problem:
            raise CheckpointError(problem)
        check_matches(load_checkpoint(resume_from), module, resume_from)
    if main_rank:
        rundir.start(output_dir, cfg, overrides, resume_from)
    if resume_from:
        print(f"resuming from {resume_from}")
    datamodule.prepare_data()
    datamodule.setup("fit")
    # pre-flight: every case of every split read and checked before the first step (segbench.data)
    datamodule.preflight()
    if main_rank:
        datamodule.write_splits(output_dir / "splits.json")

    from .runtime.checkpoint import weights_only_kwargs

    with one_run_directory(output_dir):
        if cfg.trainer.max_epochs == 0:
            ckpt = None  # "no training": evaluate the initial weights
        else:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                        **weights_only_kwargs(trainer.fit))
            if not getattr(trainer.checkpoint_callback, "best_model_path", ""):
                ckpt = None  # no validation split: test the final weights
        if cfg.test.get("save_predictions"):
            module.prediction_dir = output_dir / "predictions"
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                     **weights_only_kwargs(trainer.test))

    best_val = getattr(trainer.checkpoint_callback, "best_model_score", None)
    config = OmegaConf.to_container(cfg, resolve=True)
    extra = {
        "run": {"output_dir": str(output_dir), "git": git_revision(PROJECT_ROOT), "versions": package_versions(),
                "device": device_description(), "wall_time_s": round(time.time() - start, 1),
                "world_size": trainer.world_size, "resumed_from": str(resume_from) if resume_from else None,
                "best_val_dice": float(best_val) if best_val is not None else None,
                "checkpoint": ckpt and getattr(trainer.checkpoint_callback, "best_model_path", None),
                "tested": "best validation epoch" if ckpt else
                ("initial weights" if cfg.trainer.max_epochs == 0 else "last epoch")},
        "splits": datamodule.splits,
    }
    if not main_rank:
        return module.evaluator.summary()
    summary = module.evaluator.write(output_dir / "results", config=config, extra=extra)
    rundir.update_status(output_dir, status="done", mean_dsc=summary.get("mean_dsc"),
                         wall_time_s=extra["run"]["wall_time_s"])
    report(format_table(summary) + f"\nresults: {output_dir / 'results'}")
    return summary


#: what a sweeper can optimise (``optimized_metric``): the test split's mean DSC, or the best validation Dice
OBJECTIVES = {"mean_dsc": lambda summary: summary.get("mean_dsc"),
              "val/dice": lambda summary: (summary.get("run") or {}).get("best_val_dice")}


def objective(summary: dict[str, Any], metric: str) -> float | None:
    """The number returned to the sweeper (None when the run has no such number, e.g. no validation split)."""
    value = OBJECTIVES[metric](summary)
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from .runtime import rundir
    from .runtime.console import quiet_third_party

    quiet_third_party()
    user_code_importable()  # loss._target_: my_module.MyLoss, data.source._target_: my_module.MySource
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    metric = cfg.get("optimized_metric", "mean_dsc")
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    try:
        if metric not in OBJECTIVES:
            raise ConfigError(f"optimized_metric={metric!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        summary = run(cfg, output_dir, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; user errors are one line
        from .runtime.slurm import explain_stop

        user_error = isinstance(exc, USER_ERRORS)
        exc = explain_stop(unwrap(exc))  # the root cause, not a wrapper's message (MONAI's, submitit's)
        user_error = user_error or isinstance(exc, SegbenchError)
        if user_error:
            report_error(exc, "segbench-train")
        else:
            traceback.print_exc()
        if rank_zero_only.rank == 0:
            try:
                atomic_write_text(output_dir / "results" / "error.json",
                                  json.dumps({"error": str(exc), "type": getattr(exc, "type_name", type(exc).__name__)}))
                rundir.update_status(output_dir, status="failed", overrides=overrides,
                                     error=str(exc).strip().splitlines()[0] if str(exc).strip()
                                     else type(exc).__name__)
            except OSError:
                pass  # the run directory cannot be written (the error above says so): nothing to record in
        if multirun:
            return None  # a failed job is recorded in its own directory; the sweep goes on
        if user_error:
            sys.exit(1)
        raise
    except BaseException:  # killed by Ctrl-C, or by a Slurm time limit / preemption (submitit requeues)
        if rank_zero_only.rank == 0 and (output_dir / rundir.RUN_FILE).is_file():
            rundir.update_status(output_dir, status="interrupted")
        raise
    return objective(summary, metric)


def missing_plugin(argv: list[str]) -> str | None:
    """The one-line error for an override that needs a Hydra plugin this install lacks, or None.

    Hydra composes the config before any segbench code runs, so without this check a missing
    plugin surfaces as Hydra's "Could not find 'hydra/sweeper/optuna'".
    """
    import importlib.util

    wants_optuna = any((a.startswith("hparams_search=") and a != "hparams_search=null")
                       or a.replace(" ", "") == "hydra/sweeper=optuna" for a in argv)
    if wants_optuna and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        return ("hparams_search needs the Optuna sweeper (hydra-optuna-sweeper), an optional dependency: "
                "pip install -e \".[optuna]\"")
    return None


def cli() -> None:
    """``segbench-train``: :func:`main` behind the checks Hydra's composition cannot make."""
    error = missing_plugin(sys.argv[1:])
    if error is not None:
        print(f"segbench-train: error: {error}", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
