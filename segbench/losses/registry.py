"""Loss registry: choose a loss by name, like ``timm.create_model``.

    @register_loss("dice")
    class DiceLoss(SegLoss): ...

    build_loss("dice", include_background=False)

``num_classes`` and ``class_names`` are *context* supplied by the training
module: they are forwarded only to losses whose constructor takes them. Every
other option must be accepted by the loss, otherwise a ValueError names the
option and lists the valid ones (a sweep over ``loss.gamma`` must never be
silently ignored by a loss that has no gamma).
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

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
    cls = _lookup(name)
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
