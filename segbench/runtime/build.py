"""What a composed config builds: the data module and the LightningModule (:func:`build`), and the
``Trainer`` with the callbacks every run needs (:func:`build_trainer`). Used by ``segbench-train``,
``segbench-eval`` and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def build(cfg: DictConfig):
    """Instantiate the data module and the LightningModule from a composed config."""
    from hydra.utils import instantiate

    from ..module import SegModule

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
    datamodule.seed = int(cfg.seed)  # the device path's generators are seeded from (seed, rank, epoch)
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
    """The Lightning ``Trainer`` of a run: the configured callbacks and loggers, plus the callbacks a sound run
    needs (exact resume, ``run.json``, the non-finite stop), safe checkpoint I/O, and one line per epoch
    instead of a progress bar when nobody watches the console."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    from .callbacks import EpochLine, EpochStatus, RandomStateCheckpoint, StopOnNonFiniteLoss
    from .checkpoint import safe_checkpoint_io
    from .console import interactive, quiet_third_party

    quiet_third_party(single_process=str(cfg.trainer.get("devices", 1)) == "1"
                      and int(cfg.trainer.get("num_nodes", 1) or 1) == 1)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # not in the callbacks config: exact resume, the run index and a sound run depend on them
    callbacks += [RandomStateCheckpoint(cfg.seed), EpochStatus(output_dir), StopOnNonFiniteLoss()]
    progress = {}
    if not interactive():  # a redirected log / Slurm output: one line per epoch, not carriage-return updates
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)] + [EpochLine()]
        progress = {"enable_progress_bar": False}
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # checkpoints written atomically, read with weights_only=True (segbench.runtime.checkpoint)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(output_dir), plugins=[safe_checkpoint_io()], **progress)
