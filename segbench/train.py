"""``segbench-train``: compose a run from configs, fit, test, write the results contract.

    segbench-train                                   # the default experiment on the phantom
    segbench-train loss=afw_dice loss.gamma=0.5 trainer.max_epochs=50
    segbench-train -m loss=ce_dice,dice seed=1,2     # a sweep (Hydra multirun)
    segbench-train debug=smoke                       # a < 1 minute dry run
    segbench-train data=phantom3d model=unet3d       # 3D: patches, sliding-window test
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

from .config import CONFIG_DIR, PROJECT_ROOT, USER_ERRORS, report_error, unwrap
from .evaluation import atomic_write_text


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
                       channels_last=bool(cfg.get("channels_last", False)),
                       inference=OmegaConf.to_container(cfg.inference, resolve=True) if "inference" in cfg else None)
    datamodule = instantiate(cfg.data, _recursive_=True, _convert_="all")
    return datamodule, module


def build_trainer(cfg: DictConfig, output_dir: Path):
    from hydra.utils import instantiate

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(output_dir))


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Fit (unless ``trainer.max_epochs=0``) and test; returns the summary written to results/."""
    import pytorch_lightning as pl
    import torch

    from .evaluation import format_table
    from .runinfo import device_description, git_revision, package_versions

    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    datamodule, module = build(cfg)
    trainer = build_trainer(cfg, output_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.write_splits(output_dir / "splits.json")

    ckpt = "best"
    if cfg.trainer.max_epochs == 0:
        ckpt = None  # "no training": evaluate the initial weights
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if not getattr(trainer.checkpoint_callback, "best_model_path", ""):
            ckpt = None  # no validation split: test the final weights
    if cfg.test.get("save_predictions"):
        module.prediction_dir = output_dir / "predictions"
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)

    config = OmegaConf.to_container(cfg, resolve=True)
    extra = {
        "run": {"output_dir": str(output_dir), "git": git_revision(PROJECT_ROOT), "versions": package_versions(),
                "device": device_description(), "wall_time_s": round(time.time() - start, 1),
                "checkpoint": ckpt and getattr(trainer.checkpoint_callback, "best_model_path", None)},
        "splits": datamodule.splits,
    }
    summary = module.evaluator.write(output_dir / "results", config=config, extra=extra)
    print(format_table(summary))
    print(f"results: {output_dir / 'results'}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    try:
        summary = run(cfg, output_dir)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; user errors are one line
        user_error = isinstance(exc, USER_ERRORS)
        exc = unwrap(exc)
        if user_error:
            report_error(exc, "segbench-train")
        else:
            traceback.print_exc()
        atomic_write_text(output_dir / "results" / "error.json",
                          json.dumps({"error": str(exc), "type": type(exc).__name__}))
        if multirun:
            return None  # a failed job is recorded in its own directory; the sweep goes on
        if user_error:
            sys.exit(1)
        raise
    value = summary.get("mean_dsc")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
