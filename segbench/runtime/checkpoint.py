"""Checkpoints as untrusted files: written atomically, read with ``weights_only=True``, checked before use.

A checkpoint can come from someone else's run directory, or be the truncated ``last.ckpt`` of a job
killed while a full disk was being written. So every checkpoint segbench reads, whether it resumes,
tests the best epoch or evaluates with ``segbench-eval``, goes through :func:`load_checkpoint`:

* ``torch.load(..., weights_only=True)``, passed explicitly: torch's restricted unpickler builds
  tensors, containers and primitives only, never an arbitrary object, so a pickle payload cannot
  run (an explicit ``True`` also wins over ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``);
* a file that is empty, truncated, not a checkpoint, or holds objects the restricted unpickler
  refuses raises :class:`CheckpointError`, one line naming the file.

:class:`SafeCheckpointIO` is the Lightning plugin that makes ``Trainer.fit/test(ckpt_path=...)``
and :class:`~pytorch_lightning.callbacks.ModelCheckpoint` use the same rules: checkpoints are
written to a temporary file in the same folder, flushed to disk and renamed over the target
(``os.replace`` is atomic), so a crash or a full disk leaves the previous checkpoint intact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..files import replace_atomically

#: the keys every Lightning training checkpoint holds (what resuming needs)
TRAINING_KEYS = ("state_dict", "epoch", "global_step", "optimizer_states", "loops")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a Lightning checkpoint, or one-line :class:`CheckpointError`."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes: a write that never finished); "
                              "delete it or point ckpt_path at another checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is not None:  # what weights_only refuses: an object that is not plain data (a pickle payload)
            raise CheckpointError(f"checkpoint {path} holds objects that are not plain tensors and numbers; "
                                  f"refused to unpickle it (it calls {found.group(1)})") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a torch checkpoint); delete it or "
                              "point ckpt_path at another checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, wrong magic number, ...: torch raises many types
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); "
                              "delete it or point ckpt_path at another checkpoint") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict); pass a file "
                              "from a run's checkpoints/ folder")
    return checkpoint


def check_training_checkpoint(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (one line), or None when it loads and holds a training state."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        return str(exc)
    missing = [k for k in TRAINING_KEYS if k not in checkpoint]
    if missing:
        return f"checkpoint {path} lacks {', '.join(missing)}: it holds weights only, not a training state"
    return None


def weight_differences(own: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Why the state dict ``theirs`` does not fit ``own``, as short phrases (``[]``: every key and shape fits);
    ``prefix`` is put before the keys named (``net.``)."""
    import torch

    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [k for k in own if k in theirs and isinstance(theirs[k], torch.Tensor)
              and tuple(theirs[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) missing, e.g. {prefix}{missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown weight(s), e.g. {prefix}{unexpected[0]}")
    if shapes:
        key = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {prefix}{key} {tuple(theirs[key].shape)} vs "
                     f"{tuple(own[key].shape)}")
    return parts


def check_matches(checkpoint: dict[str, Any], module, path: str | Path) -> None:
    """Refuse a checkpoint whose weights do not fit ``module`` (another network or width), in one line."""
    parts = weight_differences(module.state_dict(), checkpoint["state_dict"])
    if parts:
        raise CheckpointError(f"checkpoint {path} was trained with another model than this config builds "
                              f"({'; '.join(parts)}); pass the config of the run it comes from")


def _safe_checkpoint_io():
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        """Lightning's checkpoint plugin with atomic writes and ``weights_only=True`` reads (module docstring)."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
            import torch

            if storage_options is not None:
                raise TypeError("SafeCheckpointIO takes no storage_options")
            save_atomically(lambda fh: torch.save(checkpoint, fh), Path(path))

        def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
            return load_checkpoint(path, map_location if map_location is not None else "cpu")

    return SafeCheckpointIO()


def save_atomically(write, path: Path) -> None:
    """``write(fh)`` into a temporary file next to ``path``, fsync, rename over ``path``; never a partial file
    (:func:`segbench.files.replace_atomically`).

    A failed write (a full disk: ``OSError`` ENOSPC) leaves ``path`` as it was and raises
    :class:`CheckpointError` in one line.
    """
    def write_file(temporary: Path) -> None:
        with open(temporary, "wb") as fh:
            write(fh)

    try:
        replace_atomically(path, write_file)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path} ({exc.strerror or exc}); free disk space or "
                              "make paths.log_dir writable; the previous checkpoint is kept") from None


def safe_checkpoint_io():
    """A fresh :class:`SafeCheckpointIO` for ``Trainer(plugins=[...])``."""
    return _safe_checkpoint_io()


def weights_only_kwargs(method) -> dict[str, bool]:
    """``{"weights_only": True}`` for a Lightning ``fit``/``test`` that takes it (Lightning >= 2.6), else ``{}``.

    The reads go through :class:`SafeCheckpointIO` (``weights_only=True``) either way; the keyword
    says the same to Lightning itself.
    """
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(method).parameters else {}
