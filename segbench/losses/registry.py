"""Loss registry: choose a loss by name, like ``timm.create_model``, or name your own class.

    @register_loss("dice")
    class DiceLoss(SegLoss): ...

    build_loss("dice", include_background=False)

A loss config (``configs/loss/<name>.yaml``) picks a built-in loss by ``name:``; a user's own loss,
in the user's own module, is named by Hydra's convention, ``_target_: my_module.MyLoss``, with its
options beside it (:func:`loss_from_config`). ``name:`` beside a ``_target_`` is only the label that
tables and figures show.

``num_classes`` and ``class_names`` are *context* supplied by the training
module: they are forwarded only to losses whose constructor takes them. Every
other option must be accepted by the loss, otherwise a ValueError names the
option and lists the valid ones (a sweep over ``loss.gamma`` must never be
silently ignored by a loss that has no gamma).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

LOSSES: dict[str, type[nn.Module]] = {}

_CONTEXT_KEYS = ("num_classes", "class_names")


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a loss available under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is registered twice ({LOSSES[name].__name__}, {cls.__name__})")
        LOSSES[name] = cls
        cls.registered_name = name
        return cls

    return decorator


def available_losses() -> list[str]:
    """Sorted names of every registered loss."""
    return sorted(LOSSES)


def loss_options(name: str) -> list[str]:
    """The options (constructor keywords) a registered loss accepts."""
    return _class_options(_lookup(name))


def _class_options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and p not in _CONTEXT_KEYS
            and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _lookup(name: str) -> type[nn.Module]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available losses: {', '.join(available_losses())}")
    return LOSSES[name]


def build_loss(name: str, *, num_classes: int | None = None, class_names: list[str] | None = None,
               **options) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``options``."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    valid = loss_options(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(
            f"loss {name!r} has no option {unknown[0]!r}; its options are: {', '.join(valid) or '(none)'}")
    context = {"num_classes": num_classes, "class_names": class_names}
    for key, value in context.items():
        if key in params and value is not None:
            options[key] = value
    return cls(**options)


def import_loss_class(target: str) -> type[nn.Module]:
    """The class ``target`` (``"my_module.MyLoss"``) names; one-line :class:`ConfigError` otherwise."""
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(f"loss._target_={target!r} must be a dotted path, e.g. my_module.MyLoss")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"loss._target_={target}: cannot import {module_name} ({exc}); run segbench-train from "
                          "the module's folder, add that folder to PYTHONPATH, or pip install your package") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"loss._target_={target}: module {module_name} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"loss._target_={target} is not a torch.nn.Module class; subclass "
                          "segbench.losses.SegLoss and write the formula in compute(inputs)")
    return cls


def build_loss_class(cls: type[nn.Module], *, num_classes: int | None = None,
                     class_names: list[str] | None = None, what: str = "", **options) -> nn.Module:
    """Instantiate a loss class with ``options`` checked against its constructor (as :func:`build_loss`
    does for registered losses); ``num_classes`` / ``class_names`` go to constructors that take them."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = _class_options(cls)
    unknown = [k for k in options if k not in valid]
    if unknown and not takes_any:
        raise ConfigError(f"loss {what or cls.__name__} has no option {unknown[0]!r}; its options are: "
                          f"{', '.join(valid) or '(none)'}")
    for key, value in {"num_classes": num_classes, "class_names": class_names}.items():
        if key in params and value is not None:
            options[key] = value
    return cls(**options)


def loss_from_config(config: dict[str, Any], *, num_classes: int | None = None,
                     class_names: list[str] | None = None) -> nn.Module:
    """The loss a ``loss`` config describes: a built-in one by ``name``, a user's class by ``_target_``.

    A user's class that subclasses :class:`~segbench.losses.SegLoss` is used as is. A plain
    ``nn.Module`` called as ``module(logits, target)`` is wrapped in :class:`ModuleLoss`, which gives
    it SegLoss's training hooks (no schedule, nothing extra logged).
    """
    from .base import ModuleLoss, SegLoss

    config = dict(config)
    target = config.pop("_target_", None)
    name = config.pop("name", None)
    if target is None:
        if not name:
            raise ConfigError("the loss config has neither 'name' (a built-in loss: loss=<name>) nor '_target_' "
                              "(your own class: _target_: my_module.MyLoss)")
        return build_loss(name, num_classes=num_classes, class_names=class_names, **config)
    if name is not None and name in LOSSES and LOSSES[name].__module__ + "." + LOSSES[name].__qualname__ != target:
        raise ConfigError(f"loss.name={name!r} is a built-in loss, but loss._target_={target}; give your loss "
                          "its own name (it labels tables and figures) or drop _target_")
    cls = import_loss_class(target)
    loss = build_loss_class(cls, num_classes=num_classes, class_names=class_names, what=target, **config)
    if isinstance(loss, SegLoss):
        if type(loss).compute is SegLoss.compute and type(loss).forward is SegLoss.forward:
            raise ConfigError(f"loss._target_={target} subclasses SegLoss but defines no compute(inputs); "
                              "write the loss's formula there")
        return loss
    return ModuleLoss(loss)
