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

The task itself (checks, build, fit, test, results) is :func:`segbench.runtime.task.train_task`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONFIG_DIR, user_code_importable


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from .runtime.console import quiet_third_party
    from .runtime.task import train_task

    quiet_third_party()
    user_code_importable()  # loss._target_: my_module.MyLoss, data.source._target_: my_module.MySource
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    return train_task(cfg, Path(hydra_cfg.runtime.output_dir), [str(o) for o in hydra_cfg.overrides.task], multirun)


def cli() -> None:
    """``segbench-train``: :func:`main` behind the checks Hydra's composition cannot make."""
    from .runtime.checks import missing_plugin

    error = missing_plugin(sys.argv[1:])
    if error is not None:
        print(f"segbench-train: error: {error}", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
