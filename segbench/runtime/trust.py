"""What a config read back from disk may instantiate.

A config the user composes on their own command line is trusted as it is: its ``_target_`` s may
name any class, their own modules included. A config read back from a run directory
(``segbench-eval`` reads ``<run>/.hydra/config.yaml``) may come from someone else, and Hydra's
``instantiate`` calls whatever its ``_target_`` s name, nested ones included: ``builtins.exec``,
``os.system`` or ``torch.load`` of a pickle would run arbitrary code. So before such a config is
built, :func:`check_targets` walks it (after resolving interpolations, so ``oc.decode`` cannot
smuggle a target in) and refuses every ``_target_`` that is not in the allowlist:

* a class defined in segbench (``segbench.models.UNet``, ``segbench.data.SegDataModule``, ...);
* a torch optimiser or learning-rate scheduler class (``torch.optim...``);
* a Lightning callback, logger, strategy or the ``Trainer`` (``pytorch_lightning...``);
* anything inside a module the user names explicitly (``trusted_modules=[mylab.losses]``).

The check imports nothing outside these packages: a target's module path must lie inside an
allowed package before it is looked up, and the object found must be a *class defined there*
(``segbench.module.torch.load`` names a function of torch reached through an import, and is
refused). Reports and the run index read configs with ``yaml.safe_load`` and instantiate nothing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import ConfigError

#: packages whose classes a read-back config may instantiate
ALLOWED_PACKAGES = ("segbench", "torch.optim", "pytorch_lightning.callbacks", "pytorch_lightning.loggers",
                    "pytorch_lightning.strategies", "lightning.pytorch.callbacks", "lightning.pytorch.loggers",
                    "lightning.pytorch.strategies")
#: single classes a read-back config may instantiate (the trainer config's target)
ALLOWED_CLASSES = ("pytorch_lightning.Trainer", "pytorch_lightning.trainer.trainer.Trainer",
                   "lightning.pytorch.Trainer")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: where classes that a run directory written before the package was laid out by role names live now
#: (segbench 0.1.0's top-level modules; applied by :func:`current_targets`, so old runs stay readable)
MOVED_TARGETS = {
    "segbench.callbacks.": "segbench.runtime.callbacks.",
    "segbench.config.CheckOutputDir": "segbench.runtime.callbacks.CheckOutputDir",
    "segbench.sweep.SweepReport": "segbench.runtime.callbacks.SweepReport",
    "segbench.checkpoint.": "segbench.runtime.checkpoint.",
    "segbench.evaluation.": "segbench.metrics.results.",
    "segbench.metrics.evaluate.": "segbench.metrics.scoring.",
    "segbench.inference.": "segbench.models.inference.",
    "segbench.overlays.": "segbench.report.overlays.",
}


def _inside(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def targets(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(dotted key, _target_ value)`` in a plain container, nested ones included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield prefix.rstrip(".") or "<root>", value
            else:
                yield from targets(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from targets(value, f"{prefix}{i}.")


def current_target(target: Any) -> Any:
    """``target`` with a module that has moved (:data:`MOVED_TARGETS`) replaced by where it lives now."""
    if isinstance(target, str):
        for old, new in MOVED_TARGETS.items():
            if target == old or (old.endswith(".") and target.startswith(old)):
                return new + target[len(old):]
    return target


def current_targets(node: Any) -> Any:
    """A plain container with every ``_target_`` passed through :func:`current_target` (a copy)."""
    if isinstance(node, dict):
        return {k: current_target(v) if k == "_target_" else current_targets(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [current_targets(v) for v in node]
    return node


def check_target(target: Any, key: str, trusted_modules: Iterable[str] = (), source: str = "the config") -> None:
    """Refuse ``target`` (at ``key``) unless it is an allowed class or lies in ``trusted_modules``."""
    trusted = [str(m) for m in trusted_modules]
    hint = ("; if the run used your own module, name it: trusted_modules=[<module>]" if not trusted
            else f"; trusted_modules={trusted} does not cover it")
    refusal = (f"{source} sets {key}._target_={target!r}: not a segbench, torch optimiser/scheduler or Lightning "
               f"class, refused (a config read back from a run directory may not instantiate it){hint}")
    if not isinstance(target, str) or not _DOTTED.match(target):
        raise ConfigError(refusal)
    if _inside(target, trusted):
        return
    if target not in ALLOWED_CLASSES and not _inside(target, ALLOWED_PACKAGES):
        raise ConfigError(refusal)
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
    except Exception:  # noqa: BLE001 - not importable: refused like any unknown target
        raise ConfigError(refusal) from None
    module = getattr(obj, "__module__", "") or ""
    if not inspect.isclass(obj) or not (_inside(module, ALLOWED_PACKAGES) or target in ALLOWED_CLASSES
                                        and _inside(module, ("pytorch_lightning", "lightning.pytorch"))):
        raise ConfigError(refusal)


def check_targets(container: Any, trusted_modules: Iterable[str] = (), source: str = "the config") -> None:
    """:func:`check_target` for every ``_target_`` of a resolved plain container."""
    trusted = list(trusted_modules or ())
    for key, target in targets(container):
        check_target(target, key, trusted, source)


def checked_config(cfg, trusted_modules: Iterable[str] = (), source: str = "the config"):
    """``cfg`` with every interpolation resolved, after :func:`check_targets`; what is checked is what is built."""
    from omegaconf import OmegaConf

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - an interpolation that does not resolve here
        raise ConfigError(f"{source} does not resolve ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    container = current_targets(container)
    check_targets(container, trusted_modules, source)
    return OmegaConf.create(container)


def load_run_config(path, hint: str = ""):
    """A run directory's saved config (``<run>/.hydra/config.yaml``) as OmegaConf reads it, nothing resolved or
    built; a file that is not YAML is one :class:`ConfigError` naming it (``hint``: the fix, appended)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - not YAML, not a mapping
        raise ConfigError(f"training config {path} is not a readable config ({type(exc).__name__}){hint}") from None
