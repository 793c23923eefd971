"""``init_from=<run directory or checkpoint>``: a run that starts from another run's network weights.

Two-stage training (e.g. Dice, then the boundary loss: ``experiment=two_stage_boundary``) starts the second
run from the first one's model. Only the network's weights are taken (the ``net.*`` tensors of the
checkpoint's ``state_dict``): not the optimiser's state, the learning-rate schedule, the epoch and step
counters, the random generators, nor the loss's own learnable parameters (``loss_fn.*``, e.g. AFW-Dice's
class weights, which belong to the other run's loss). The run then trains all of its ``trainer.max_epochs``
from epoch 0, and an epoch-driven loss schedule (``boundary``'s alpha) starts at its own epoch 0.

* A run directory resolves to the checkpoint its test split scored (``results/summary.json``'s
  ``run.checkpoint``, else ``checkpoints/last.ckpt``), as ``segbench-predict`` picks it
  (:func:`segbench.runtime.predict.locate_run`); a checkpoint file is taken as it is.
* The checkpoint is an untrusted file: it is read with ``weights_only=True``
  (:func:`segbench.runtime.checkpoint.load_checkpoint`; a pickle payload is refused). The other run's config is
  only read (``yaml.safe_load`` / JSON), to name its model in messages, and never instantiated: the network
  is the one this run's own config builds, so the trust allowlist (:mod:`segbench.runtime.trust`) has nothing
  to admit.
* A network of another architecture or width, or another number (or list) of classes, is refused in one
  line naming both models (:func:`load_initial_weights`).
* A run with ``init_from`` that is interrupted resumes from its own ``checkpoints/last.ckpt``
  (:mod:`segbench.runtime.rundir`), not from ``init_from`` again; ``ckpt_path`` (a training state to
  continue) and ``init_from`` (weights to start from) exclude each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, SegbenchError

HINT = "pass init_from=<a run directory (outputs/train/<run>) or a checkpoint file (<run>/checkpoints/last.ckpt)>"


def check_init_from(cfg) -> None:
    """Start-up check of ``init_from`` (before anything is built): it may not come with ``ckpt_path``.

    Whether its file exists is checked where it is used (:func:`resolve`): a run that resumes from its own
    ``last.ckpt`` does not read it again, and may do so after the file is gone."""
    if cfg.get("init_from") in (None, "") or not cfg.get("ckpt_path"):
        return
    raise ConfigError(f"init_from={cfg.init_from} and ckpt_path={cfg.ckpt_path} are both set: ckpt_path continues "
                      "a run's training state (weights, optimiser, epoch), init_from starts a new run from another "
                      "run's weights only; pass one of them")


def resolve(value: Any) -> Path:
    """The checkpoint ``init_from=value`` names (a run directory's tested / last checkpoint, or a file), or one
    line naming what is wrong."""
    from .predict import locate_run

    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"init_from={value} not found; {HINT}")
    if path.is_file():
        return path
    try:
        return locate_run(path, "tested")[1]
    except SegbenchError as exc:
        raise type(exc)(f"init_from={value}: {exc}") from None


def _source_config(ckpt: Path) -> dict[str, Any]:
    """The resolved config of the run that wrote ``ckpt`` (``<run>/results/summary.json``, else the unresolved
    ``<run>/.hydra/config.yaml``), read as data; ``{}`` when there is none (a checkpoint outside a run)."""
    import yaml

    run_dir = ckpt.resolve().parent.parent
    try:
        config = json.loads((run_dir / "results" / "summary.json").read_text()).get("config")
        if isinstance(config, dict) and config:
            return config
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def describe_model(model: Any, num_classes: int | None) -> str:
    """``UNet (width 16) with 9 classes`` from a model config (a mapping, read as data)."""
    target = model.get("_target_") if isinstance(model, dict) else None
    name = str(target).rsplit(".", 1)[-1] if target else "a network"
    width = model.get("width") if isinstance(model, dict) else None
    text = name + (f" (width {width})" if isinstance(width, int) and not isinstance(width, bool) else "")
    return text + (f" with {num_classes} classes" if num_classes is not None else "")


def _own_model(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg.model, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve outside the run: name less
        return {"_target_": OmegaConf.select(cfg, "model._target_", default=None)}


def load_initial_weights(path: Path, module, cfg) -> str:
    """Copy the network weights of the checkpoint ``path`` into ``module.net`` (every tensor, strictly), after
    checking that they fit it; returns the line that says what was loaded.

    Refused in one line (:class:`CheckpointError`): a file that is not a Lightning checkpoint (or holds a
    pickle payload, or no network weights), a network of another architecture or width, another number of
    classes or other class names."""
    import torch

    from .checkpoint import load_checkpoint, weight_differences

    try:
        checkpoint = load_checkpoint(path)  # weights_only=True; "not a Lightning checkpoint" is one line
    except CheckpointError as exc:
        raise CheckpointError(f"init_from: {exc}".replace("point ckpt_path at", "point init_from at")) from None
    theirs = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items()
              if k.startswith("net.") and isinstance(v, torch.Tensor)}
    if not theirs:
        raise CheckpointError(f"init_from {path}: the checkpoint holds no network weights (no net.* tensors in "
                              f"its state_dict); {HINT}")
    source = _source_config(Path(path))
    hparams = checkpoint.get("hyper_parameters") or {}
    their_classes = hparams.get("class_names") if isinstance(hparams, dict) else None
    their_classes = [str(c) for c in their_classes] if isinstance(their_classes, (list, tuple)) else None
    if their_classes is None and isinstance(source.get("data"), dict):
        names = source["data"].get("class_names")
        their_classes = [str(c) for c in names] if isinstance(names, list) else None
    own_classes = [str(c) for c in module.class_names]
    theirs_text = describe_model(source.get("model"), len(their_classes) if their_classes is not None else None)
    own_text = describe_model(_own_model(cfg), len(own_classes))
    problems = weight_differences(module.net.state_dict(), theirs, prefix="net.")
    if problems or (their_classes is not None and len(their_classes) != len(own_classes)):
        raise CheckpointError(f"init_from {path}: its model is {theirs_text}, this run builds {own_text}"
                              + (f" ({'; '.join(problems)})" if problems else "")
                              + "; init_from takes a run of this model, width and class list (or give this run "
                                "that run's model= and data=)")
    if their_classes is not None and their_classes != own_classes:
        raise CheckpointError(f"init_from {path}: its classes are {their_classes}, this run's are {own_classes}: "
                              "its output channels would stand for other organs; pass a run trained on the same "
                              "classes in the same order")
    module.net.load_state_dict(theirs, strict=True)
    epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
    at = f"epoch {epoch}" + (f", step {step}" if step is not None else "") if epoch is not None else "no epoch recorded"
    skipped = sorted({k.split(".", 1)[0] for k in checkpoint["state_dict"] if not k.startswith("net.")})
    not_carried = f"; its {', '.join(f'{k}.*' for k in skipped)} tensors are not carried" if skipped else ""
    return (f"init_from {path}: loaded {len(theirs)} tensors of {own_text} ({at}); optimiser, schedule and "
            f"epoch start fresh{not_carried}")
