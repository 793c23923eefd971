"""The one LightningModule: a network, a loss from the registry, SGD with poly decay.

Training logs ``train/loss_step`` and ``train/loss_epoch`` (and the loss's own scalars, e.g.
learnable class weights, as ``loss/<key>``) without reading any value back to the host in the
step; validation logs ``val/dice`` and ``val/dice/<organ>``
(3D Dice per validation case at model resolution, averaged over cases) and a few
image / label / prediction overlays; testing predicts whole cases slice by slice,
resizes the class probabilities back to the native grid and scores them with
:class:`segbench.metrics.results.CaseEvaluator`. 3D networks (``data.spatial_dims=3``) train on
patches and see whole cases (validation, test) through sliding-window inference
(:mod:`segbench.models.inference`, the ``inference`` config block).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from .data.datamodule import check_label_ids
from .data.volume import write_prediction
from .errors import ConfigError
from .losses import loss_from_config
from .losses.base import SegLoss
from .losses.consistency import check_consistency, perturbation_consistency
from .losses.deep_supervision import DeepSupervisionLoss
from .metrics.results import CaseEvaluator
from .models.inference import case_probabilities, check_inference, labels_at, sliding_window_logits
from .postprocess import apply_postprocess, postprocessed_dir
from .report.overlays import figure_to_rgb, overlay_figure
from .runtime.loggers import log_image, takes_images
from .runtime.nonfinite import LossWatch

#: where the test split can be scored (``metrics.grid``)
GRIDS = ("original", "resampled")


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    """``lr_t = lr_0 * (1 - t / T) ** power`` (TransUNet / AFW-Dice poly decay)."""
    if not math.isfinite(float(total_steps)):
        raise ConfigError("scheduler.name=poly decays the learning rate to 0 at the last step, but the run has no "
                          "last step (trainer.max_epochs=-1); set trainer.max_epochs or trainer.max_steps, or "
                          "scheduler.name=none")
    total = max(int(total_steps), 1)
    return lambda step: (1.0 - min(step, total) / total) ** power


def full_resolution(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a network's output: the tensor, or the first of a deep-supervision tuple."""
    return outputs if torch.is_tensor(outputs) else outputs[0]


class SegModule(pl.LightningModule):
    """Segmentation training with any registered loss.

    Args:
        net: the network (``[B, 1, H, W] -> [B, C, H, W]`` logits).
        loss: loss config, ``{"name": ..., **options}`` (see ``configs/loss``) or the user's own class,
            ``{"_target_": "my_module.MyLoss", **options}``.
        optimizer: partial optimiser constructor taking ``params``.
        scheduler: ``{"name": "poly" | "none", "power": 0.9, "interval": "step" | "epoch"}``.
        class_names: names by class id, background first.
        metrics: ``{"convention": "default", "nsd_tolerance_mm": 2.0}`` for the test evaluation (the run's
            own convention; every case is also scored under ``default`` and ``transunet``,
            :data:`segbench.metrics.results.SCORED_CONVENTIONS`).
        test: ``{"slice_batch": 32}``: how many slices are predicted at once.
        num_overlays: image / label / prediction overlays logged per validation epoch.
        inference: sliding-window options for whole 3D cases (``roi_size``, ``overlap``, ``mode``, ...).
        consistency: ``{weight, perturbation, noise_std}``: perturbation consistency added to the
            training loss (:mod:`segbench.losses.consistency`); weight 0 or ``None`` = off.

    A network with deep-supervision heads (its ``deep_supervision`` attribute: the number of heads,
    ``model.deep_supervision``) returns a tuple of logits in training, full resolution first; the loss is then
    :class:`~segbench.losses.deep_supervision.DeepSupervisionLoss` around the configured one, and every other
    use of the network (validation, test, overlays, the consistency term) sees the full-resolution logits.
    """

    def __init__(self, net: nn.Module, loss: dict[str, Any], optimizer: Callable, scheduler: dict[str, Any],
                 class_names: Sequence[str], metrics: dict[str, Any] | None = None,
                 test: dict[str, Any] | None = None, num_overlays: int = 4, channels_last: bool = False,
                 inference: dict[str, Any] | None = None, consistency: dict[str, Any] | None = None):
        super().__init__()
        # in the checkpoint; not sent to the loggers, which get the run's whole resolved config instead
        # (segbench.runtime.loggers.log_config)
        self.save_hyperparameters(ignore=["net", "optimizer"], logger=False)
        self.net = net
        self.class_names = list(class_names)
        # a built-in loss by name, or the user's own class by _target_ (segbench.losses.loss_from_config)
        self.loss_fn = loss_from_config(loss, num_classes=len(self.class_names), class_names=self.class_names)
        heads = int(getattr(net, "deep_supervision", 0) or 0)
        if heads:  # the loss at every output scale, nnU-Net's weights; the same loss module (and parameters)
            self.loss_fn = DeepSupervisionLoss(self.loss_fn, outputs=1 + heads)
        # notes a non-finite training loss on the device; segbench.runtime.callbacks.StopOnNonFiniteLoss stops the run
        self.loss_watch = LossWatch(str(loss.get("name") or loss.get("_target_") or "loss"))
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        if self.scheduler_cfg.get("name", "none") not in ("poly", "none"):
            raise ConfigError(f"scheduler.name={self.scheduler_cfg['name']!r} is unknown; choose poly or none")
        if self.scheduler_cfg.get("interval", "step") not in ("step", "epoch"):
            raise ConfigError(f"scheduler.interval must be step or epoch, got {self.scheduler_cfg['interval']!r}")
        metrics = dict(metrics or {})
        # test.postprocess: none | largest_component (each case also scored after it: segbench.postprocess)
        self.evaluator = CaseEvaluator(self.class_names, metrics.get("convention", "default"),
                                       metrics.get("nsd_tolerance_mm", 2.0),
                                       postprocess=(test or {}).get("postprocess", "none"))
        report_convention = metrics.get("report_convention")
        if report_convention is not None and report_convention not in self.evaluator.conventions:
            raise ConfigError(f"metrics.report_convention={report_convention!r} is not scored by this run; choose "
                              f"one of {', '.join(self.evaluator.conventions)} (or null: metrics.convention)")
        # where the test split is scored: on each scan's own grid, or on the grid data.target_spacing resampled to
        self.grid = metrics.get("grid", "original")
        if self.grid not in GRIDS:
            raise ConfigError(f"metrics.grid={self.grid!r} is unknown; choose original (each scan's own voxels) or "
                              "resampled (the data.target_spacing grid)")
        self.slice_batch = int((test or {}).get("slice_batch", 32))
        self.num_overlays = num_overlays
        # channels-last speeds up 2D convolutions (oneDNN / cuDNN NHWC); 3D networks keep their layout
        self.channels_last = channels_last and any(p.dim() == 4 for p in self.net.parameters())
        self.inference = check_inference(inference)
        self.consistency = check_consistency(consistency)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_stats: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of slices / patches, or of whole 3D cases larger than the window (sliding window)."""
        roi = self.inference["roi_size"]
        if x.dim() == 5 and roi is not None and tuple(x.shape[2:]) != tuple(roi):
            cfg = {k: v for k, v in self.inference.items() if k != "roi_size"}
            return sliding_window_logits(self, x, roi, **cfg)
        return self(x)

    # -- training --------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the label ids once, from those the data module counted where it loaded each training and
        validation case (``label_ids``), and then spare the loss its per-batch check: that one reads
        the target's range back to the host, a wait for the GPU on every step. A data module that
        counts no ``label_ids`` keeps the per-batch check."""
        label_ids = getattr(getattr(self.trainer, "datamodule", None), "label_ids", None)
        if stage != "fit" or not label_ids:
            return
        check_label_ids(label_ids, len(self.class_names), self.loss_fn.ignore_index)
        for loss in self.loss_fn.modules():
            if isinstance(loss, SegLoss):
                loss.check_labels = False

    def on_train_epoch_start(self) -> None:
        self.loss_fn.on_train_epoch_start(self.current_epoch, self.trainer.max_epochs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self(batch["image"])  # under deep supervision: (full resolution, 1/2, ...)
        logits = full_resolution(outputs)
        loss = self.loss_fn(outputs, batch["label"], maps=batch.get("maps"), **self._loss_image(batch))
        parts = {}
        if self.consistency["weight"] > 0:
            consistency = perturbation_consistency(lambda x: full_resolution(self(x)), batch["image"], logits,
                                                   self.consistency["perturbation"], self.consistency["noise_std"])
            self.log("loss/consistency", consistency, on_step=True, on_epoch=False, batch_size=len(logits))
            parts = {"loss/consistency": consistency}
            loss = loss + self.consistency["weight"] * consistency
        # Logged values stay tensors on the device: Lightning reads them back only when it writes the
        # logs (every trainer.log_every_n_steps) or refreshes the progress bar. The step value is this
        # rank's; the epoch mean is reduced over the ranks once, at the epoch's end (no all-reduce per step).
        batch_size = len(logits)
        value = loss.detach()
        self.loss_watch.observe(self.global_step, value, parts)  # device-side: no host sync
        self.log("train/loss_step", value, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/loss_epoch", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        for key, value in self.loss_fn.log_values().items():
            self.log(f"loss/{key}", value, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def _loss_image(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": x}`` for losses that read the input image (``level_set``: Kim & Ye's
        intensities), ``{}`` for the others (a user's loss need not accept the argument)."""
        return {"image": batch["image"]} if getattr(self.loss_fn, "needs_image", False) else {}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_cfg.get("name", "none") == "none":
            return optimizer
        interval = self.scheduler_cfg.get("interval", "step")
        total = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, poly_lambda(total, float(self.scheduler_cfg.get("power", 0.9))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # -- validation ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        n_cases = len(getattr(self.trainer.datamodule, "val_case_ids", [])) or 1
        # per (case, class): intersection, predicted voxels, true voxels
        self._val_stats = torch.zeros(n_cases, len(self.class_names), 3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.infer(batch["image"])
        self.log("val/loss", self.loss_fn(logits, batch["label"], **self._loss_image(batch)), on_epoch=True,
                 batch_size=len(logits),
                 sync_dist=True)
        pred = logits.argmax(1)
        target = batch["label"]
        classes = torch.arange(len(self.class_names), device=pred.device).view(1, -1, *[1] * (pred.dim() - 1))
        pred_1h = (pred[:, None] == classes)
        true_1h = (target[:, None] == classes)
        spatial = tuple(range(2, pred_1h.dim()))  # 2D slices or 3D patches / cases
        stats = torch.stack([(pred_1h & true_1h).sum(spatial), pred_1h.sum(spatial), true_1h.sum(spatial)], -1)
        self._val_stats.index_add_(0, batch["case_index"].to(self.device), stats.double())

    def on_validation_epoch_end(self) -> None:
        stats = self.trainer.strategy.reduce(self._val_stats, reduce_op="sum")
        inter, npred, ntrue = stats.unbind(-1)
        denom = npred + ntrue
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, float("nan")))
        per_class = dice[:, 1:].nanmean(0)
        # the counts are summed over ranks already, so every rank logs the same values (sync_dist: a no-op mean)
        for name, value in zip(self.class_names[1:], per_class):
            if not torch.isnan(value):
                self.log(f"val/dice/{name}", value.float(), sync_dist=True)
        self.log("val/dice", per_class.nanmean().float(), prog_bar=True, sync_dist=True)
        self._log_overlays()

    def _log_overlays(self) -> None:
        """The validation overlays, to every logger that shows images (TensorBoard, MLflow, W&B, Aim; not CSV)."""
        dm = self.trainer.datamodule
        takers = [logger for logger in self.loggers if takes_images(logger)]
        if self.num_overlays <= 0 or dm is None or dm.val_set is None or not takers \
                or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if hasattr(dm, "overlay_samples"):  # 3D: fixed patches, shown by their middle axial slice
            images, labels = dm.overlay_samples(self.num_overlays)
        else:
            labels = dm.val_set.slices.labels
            # the slices with the most organ classes visible, fixed across epochs
            richness = torch.tensor([len(torch.unique(label)) for label in labels])
            idx = torch.argsort(richness, descending=True, stable=True)[: self.num_overlays]
            images, labels = dm.val_set.slices.images[idx], labels[idx]
        images = images.to(self.device)
        with torch.no_grad():
            preds = full_resolution(self(images)).argmax(1).cpu()
        if preds.dim() == 4:
            mid = preds.shape[1] // 2
            images, labels, preds = images[:, :, mid], labels[:, mid], preds[:, mid]
        title = f"validation, epoch {self.current_epoch}"
        figure = overlay_figure([img[0].cpu().numpy() for img in images], [lab.numpy() for lab in labels],
                                [pred.numpy() for pred in preds], self.class_names, title=title)
        rgb = figure_to_rgb(figure)
        for logger in takers:
            log_image(logger, "val/overlay", rgb, self.current_epoch, self.global_step, caption=title)

    # -- test ------------------------------------------------------------------------------------------------
    def predict_volume(self, slices: torch.Tensor, native_hw: Sequence[int]) -> np.ndarray:
        """Predict ``(Z, 1, S, S)`` slices; resize probabilities back to ``native_hw``; argmax -> (Z, Y, X)."""
        probs = case_probabilities(self, slices)
        return labels_at(probs, (len(slices), *native_hw), planar=True, chunk=self.slice_batch).cpu().numpy()

    def predict_case_3d(self, image: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """Predict a whole ``(1, 1, Z, Y, X)`` case by sliding window; class map at ``shape`` (Z, Y, X)."""
        return labels_at(case_probabilities(self, image), shape).cpu().numpy()

    #: where ``test_step`` writes NIfTI predictions (:func:`~segbench.data.volume.write_prediction`); None = don't
    prediction_dir = None

    def on_test_epoch_start(self) -> None:
        self.evaluator.clear()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict a whole test case, score it (``metrics.grid``) and write its label map on the scan's own grid.

        The class probabilities on the model's grid are brought to the grid that is scored, and (when
        ``data.target_spacing`` / ``target_shape`` resampled the case) to the scan's own grid for the
        prediction file, before each argmax (:func:`~segbench.models.inference.labels_at`).

        ``test.postprocess: largest_component``: the label maps are post-processed on the host
        (:mod:`segbench.postprocess`) and scored a second time (``results/postprocessed/``); the
        post-processed map is written to ``<prediction_dir>_postprocessed/`` beside the raw one."""
        planar = batch["image"].dim() == 4  # a 2D model's slices, or a whole 3D case
        probs = case_probabilities(self, batch["image"])
        original = batch.get("original")  # the scan's own grid, when the case was resampled (else None)
        scored = "original" if original is not None and self.grid == "original" else "resampled"
        written = "resampled" if original is None else "original"  # prediction files: on the scan's own grid
        grids = {scored, written} if self.prediction_dir is not None else {scored}  # only the label maps used
        shapes = {"resampled": batch["native_shape"], "original": None if original is None else original.shape}
        at = {grid: labels_at(probs, shapes[grid], planar, self.slice_batch).cpu().numpy() for grid in grids}
        post = {}
        if self.evaluator.postprocess != "none":
            post = {grid: apply_postprocess(at[grid], self.evaluator.postprocess) for grid in grids}
        if scored == "original":
            self.evaluator.add_case(batch["case_id"], at["original"], original.label, original.spacing,
                                    spacing_known=bool(batch.get("spacing_known", True)),
                                    postprocessed=post.get("original"))
        else:
            self.evaluator.add_case(batch["case_id"], at["resampled"], np.asarray(batch["label"]), batch["spacing"],
                                    spacing_known=bool(batch.get("spacing_known", True)),
                                    postprocessed=post.get("resampled"))
        if self.prediction_dir is not None:
            affine = batch["affine"] if original is None else original.affine
            write_prediction(self.prediction_dir, batch["case_id"], at[written], affine)
            if post:
                write_prediction(postprocessed_dir(self.prediction_dir), batch["case_id"], post[written], affine)

    def on_test_epoch_end(self) -> None:
        # under DDP each rank scored its share of the cases: every rank ends with all rows, once each
        if self.trainer.world_size > 1:
            from .runtime.distributed import gather_rows

            self.evaluator.rows[:] = gather_rows(self.evaluator.rows)
            if self.evaluator.postprocessed is not None:
                self.evaluator.postprocessed.rows[:] = gather_rows(self.evaluator.postprocessed.rows)
