"""Experiment trackers: what ``logger=`` builds beside TensorBoard, and what every tracker gets.

``configs/logger/``: ``tensorboard`` (the default), ``csv``, ``mlflow``, ``wandb``, ``aim``, ``many`` (TensorBoard
and CSV), or a list of them (``logger=[csv,mlflow]``). Every tracker gets the same scalars (what the module and
the callbacks log through Lightning), the run's resolved config (:func:`log_config`, once, before training) and,
where the tracker takes images, the validation overlays (:func:`log_image`). MLflow, W&B and Aim are optional
dependencies (``pip install "segbench[mlflow]"``; a run without one says so in one line before anything is built:
:func:`segbench.runtime.checks.missing_logger_package`).

Lightning's loggers are used as they are, except where they would lose what a run logs:

* :class:`CSVLogger` keeps the rows of an earlier attempt of the run (a resumed run appends; Lightning's
  deletes the file it finds);
* :class:`MLFlowLogger` keeps metric names that MLflow accepts (Lightning drops ``-``: ``lr-SGD`` became
  ``lrSGD``, with a warning per step), keeps parameter values up to MLflow's own limit (Lightning cuts them at
  250 characters) and logs the whole config as the artifact ``config.yaml``, stores a run without a tracking
  URI in a SQLite database in its run directory (MLflow 3 refuses Lightning's default, a ``file:`` store) with the
  artifacts beside any SQLite store, and
  creates the experiment safely when several jobs of a sweep start at once;
* :class:`WandbLogger` does not pass ``anonymous=None`` to ``wandb.init`` (a warning on every run);
* :class:`AimLogger` builds Aim's own logger (``aim.pytorch_lightning.AimLogger``) through a segbench name, so
  that a run directory's config stays within what ``segbench-eval`` trusts (:mod:`segbench.runtime.trust`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import MLFlowLogger as _LightningMLFlowLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger("segbench")

# -- the resolved config ---------------------------------------------------------------------------------------
def log_config(loggers, config: dict[str, Any]) -> None:
    """Give every logger the run's resolved config (``log_hyperparams``): TensorBoard and CSV write it to their
    ``hparams.yaml``, MLflow as parameters (and ``config.yaml``), W&B as the run's config, Aim as ``hparams``."""
    for logger in loggers:
        logger.log_hyperparams(config)


# -- images ------------------------------------------------------------------------------------------------------
def takes_images(logger) -> bool:
    """Can ``logger`` show an image (TensorBoard, MLflow, W&B, Aim; not CSV)?"""
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, (TensorBoardLogger, _LightningMLFlowLogger, _LightningWandbLogger)):
        return True
    return is_aim(logger)


@rank_zero_only
def log_image(logger, tag: str, rgb: np.ndarray, epoch: int, global_step: int, caption: str = "") -> None:
    """Log an ``(H, W, 3)`` uint8 image to ``logger`` under ``tag``: at step ``epoch`` (TensorBoard, MLflow, Aim,
    with the epoch) or at ``global_step`` (W&B, whose charts step with Lightning's global step), captioned."""
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, rgb, epoch, dataformats="HWC")
    elif isinstance(logger, _LightningMLFlowLogger):
        logger.experiment.log_image(logger.run_id, rgb, key=tag, step=epoch)
    elif isinstance(logger, _LightningWandbLogger):
        logger.log_image(tag, [rgb], step=global_step, caption=[caption or tag])
    elif takes_images(logger):  # Aim
        import aim

        logger.experiment.track(aim.Image(rgb, caption=caption or tag), name=tag, step=epoch, epoch=epoch)


# -- the end of a run ------------------------------------------------------------------------------------------
def close(loggers) -> None:
    """End each tracker's run in this process (after the test pass; also after a failure): W&B keeps its run
    open until the interpreter exits, and the next job of a sweep run in the same process would log into it;
    Aim's run is kept open from fit to test (:class:`AimLogger`)."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if isinstance(logger, _LightningWandbLogger) and run is not None and hasattr(run, "finish"):
            run.finish()
            logger._experiment = None
        elif hasattr(logger, "close_run"):  # Aim (AimLogger)
            logger.close_run()


def where(logger) -> str | None:
    """One line on where ``logger`` wrote and how to look at it (None for TensorBoard: the README says)."""
    if isinstance(logger, _LightningCSVLogger):
        return f"csv: {Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE}"
    if isinstance(logger, _LightningMLFlowLogger) and logger._initialized:
        uri = logger._tracking_uri
        shown = (f"{uri}/#/experiments/{logger._experiment_id}/runs/{logger._run_id}" if uri.startswith("http")
                 else f"{uri} (mlflow ui --backend-store-uri {uri})")
        return f"mlflow: run {logger._run_name or logger._run_id} of experiment {logger._experiment_name}: {shown}"
    run = getattr(logger, "_experiment", None)
    if isinstance(logger, _LightningWandbLogger) and getattr(run, "dir", None):
        folder = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<date>_<time>-<id> (run.dir: its files/)
        if getattr(run.settings, "_offline", False) or logger._offline:
            return f"wandb: offline run in {folder}; upload it with: wandb sync {folder}"
        return f"wandb: run {getattr(run, 'url', None) or run.id}, files in {folder}"
    if is_aim(logger) and getattr(logger, "_repo_path", None):
        return f"aim: run in {logger._repo_path} (aim up --repo {logger._repo_path})"
    return None


# -- the loggers segbench adapts -------------------------------------------------------------------------------
class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` (``<save_dir>/<name>/<version>/metrics.csv`` and ``hparams.yaml``), except that an
    existing ``metrics.csv`` (a resumed run's earlier attempt) is kept and appended to, its columns merged."""

    @property
    def experiment(self):
        if self._experiment is None:
            metrics = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            kept = metrics.with_name(metrics.name + ".kept")
            if metrics.is_file():  # Lightning's writer deletes it: set it aside, put it back
                os.replace(metrics, kept)
            with warnings.catch_warnings():  # "... Previous log files in this directory will be deleted": not so
                warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
                writer = super().experiment
            if kept.is_file():
                import csv

                with open(kept, newline="") as fh:
                    writer.metrics_keys = list(csv.DictReader(fh).fieldnames or [])
                os.replace(kept, metrics)
        return self._experiment


def mlflow_name(key: str) -> str:
    """``key`` as an MLflow metric / parameter name: a character MLflow refuses (anything but letters, digits,
    ``_ - . / :`` and spaces) becomes ``_``; ``lr-SGD`` and ``val/dice/<organ>`` stay as they are."""
    return re.sub(r"[^/\w.\- :]", "_", str(key))


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's ``MLFlowLogger`` for segbench's runs (see the module's docstring).

    Args:
        tracking_uri: the tracking server (``http://host:5000``) or store (``sqlite:///path.db``); None (no
            ``MLFLOW_TRACKING_URI`` either): ``sqlite:///<save_dir>/mlflow.db``. A SQLite store's artifacts go beside
            it, into ``<its folder>/artifacts`` (unless ``artifact_location`` says otherwise).
        save_dir: where a run without a tracking URI keeps its store.
        Everything else as Lightning's (``experiment_name``, ``run_name``, ``tags``, ``log_model``, ...).
    """

    def __init__(self, tracking_uri: str | None = None, save_dir: str | None = "./mlruns",
                 artifact_location: str | None = None, **kwargs: Any):
        if not tracking_uri:
            store = Path(save_dir or "./mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            # beside the database (MLflow's default for a SQLite store: ./mlruns of wherever the run started)
            artifact_location = (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
        super().__init__(tracking_uri=tracking_uri, save_dir=save_dir, artifact_location=artifact_location,
                         **kwargs)

    @property
    def experiment(self):
        if not self._initialized and self._run_id is None and self._experiment_id is None and rank_zero_only.rank == 0:
            self._experiment_id = self._experiment_id_by_name()
        # mlflow.set_tracking_uri (called by Lightning here) also sets MLFLOW_TRACKING_URI in this process's
        # environment: the next job of a sweep in this process would resolve its tracking URI to this run's store
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return _LightningMLFlowLogger.experiment.fget(self)
        finally:
            if os.environ.get("MLFLOW_TRACKING_URI") != before:
                if before is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = before

    def _experiment_id_by_name(self) -> str:
        """The experiment's id, created if needed (quietly: Lightning warns "not found. Creating it." on each
        new store); a sweep's jobs that create it at once find the one that won."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        for _ in range(2):
            found = client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage != "deleted":
                return found.experiment_id
            try:
                return client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise RuntimeError(f"MLflow experiment {self._experiment_name!r} could not be created or found")

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        import json

        import yaml
        from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = json.loads(json.dumps(_convert_params(params), default=str))  # plain values
        # the whole config, untruncated, as an artifact beside the parameters
        self.experiment.log_text(self.run_id, yaml.safe_dump(params, sort_keys=False), "config.yaml")
        items = [Param(key=mlflow_name(k), value=str(v) if len(str(v)) <= MAX_PARAM_VAL_LENGTH
                       else str(v)[: MAX_PARAM_VAL_LENGTH - 40] + " ... (cut; in full in config.yaml)")
                 for k, v in _flatten_dict(params).items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.experiment.log_batch(run_id=self.run_id, params=items[i: i + MAX_PARAMS_TAGS_PER_BATCH],
                                      **self._log_batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        import time

        from lightning_fabric.utilities.logger import _add_prefix
        from mlflow.entities import Metric

        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        now = int(time.time() * 1000)
        batch = [Metric(key=mlflow_name(k), value=float(v), timestamp=now, step=step or 0)
                 for k, v in metrics.items() if not isinstance(v, str)]
        self.experiment.log_batch(run_id=self.run_id, metrics=batch, **self._log_batch_kwargs)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # MLflow prints "View run ... at: <url>" to stdout whenever a run ends (after fit and after test);
        # segbench says where the run is once, at the end (segbench.runtime.loggers.where)
        before = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        try:
            super().finalize(status)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
            else:
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = before


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, without the ``anonymous=None`` that it passes to ``wandb.init`` on every run
    (wandb 0.31 answers any value, None included, with "The anonymous setting has no effect and will be removed", on the
    console of every run); ``anonymous=True`` is still passed on."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class AimLogger:
    """Aim's Lightning logger (``aim.pytorch_lightning.AimLogger``, with its arguments: ``repo``, ``experiment``,
    ``run_name``, ``system_tracking_interval``, ...), built through this name; ``aim`` is imported only here.
    Its run stays open from fit to test and ends in :func:`close`: Aim's own logger closes it after fit, and the
    test pass (asking the logger its version) reopens it with "Force-releasing locks ... Data corruption may
    occur"."""

    def __new__(cls, **kwargs: Any):
        return _aim_logger_class()(**kwargs)


@functools.cache
def _aim_logger_class():
    from aim.pytorch_lightning import AimLogger as _AimLogger

    class SegbenchAimLogger(_AimLogger):
        def finalize(self, status: str = "") -> None:
            pass  # the run ends in close(), after the test pass

        def close_run(self) -> None:
            _AimLogger.finalize(self, "success")

    return SegbenchAimLogger


def is_aim(logger) -> bool:
    """Is ``logger`` Aim's (``aim.pytorch_lightning.AimLogger`` or a subclass), without importing aim?"""
    return any(c.__name__ == "AimLogger" and c.__module__.startswith("aim.") for c in type(logger).__mro__)
