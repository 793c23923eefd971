"""Start-up checks shared by the networks, and loading local pretrained weights.

Every network checks its configuration when it is built, so an impossible
combination (a 2D-only model with ``data.spatial_dims=3``, an input size the
architecture cannot take, ...) stops the run before any data is read, with one
line naming both sides (:class:`~segbench.errors.ConfigError`).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger("segbench.models")


def check_spatial_dims(model: str, spatial_dims: int, supported: Sequence[int]) -> int:
    """``spatial_dims`` if ``model`` supports it, else a ConfigError naming the model and the data setting."""
    spatial_dims = int(spatial_dims)
    if spatial_dims not in supported:
        only = " and ".join(f"{d}D" for d in supported)
        raise ConfigError(f"model={model} supports {only} only, not data.spatial_dims={spatial_dims}; "
                          f"choose another model or a {only} data config")
    return spatial_dims


def input_size(model: str, img_size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    """The network's input size as a tuple of ``spatial_dims`` ints (an int is repeated)."""
    if img_size is None:
        return None
    size = (int(img_size),) * spatial_dims if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise ConfigError(f"model={model}: the input size {list(size)} has {len(size)} sides but "
                          f"data.spatial_dims={spatial_dims}")
    return size


def size_setting(spatial_dims: int) -> str:
    """The data option that sets the network input size: the slice size (2D) or the patch size (3D)."""
    return "data.img_size" if spatial_dims == 2 else "data.patch_size"


def check_divisible(model: str, size: tuple[int, ...] | None, divisor: int, why: str, minimum: int = 0) -> None:
    """Every side of ``size`` must be a multiple of ``divisor`` and at least ``max(divisor, minimum)``
    (``why`` says which part of the model needs it)."""
    minimum = max(divisor, minimum)
    if size is None or all(s % divisor == 0 and s >= minimum for s in size):
        return
    setting = size_setting(len(size))
    value = size[0] if len(size) == 2 and len(set(size)) == 1 else list(size)
    need = f"a multiple of {divisor}" + (f" and at least {minimum}" if minimum > divisor else "")
    raise ConfigError(f"model={model} cannot take {setting}={value}: {why} needs every side to be {need}; "
                      f"set {setting} to one")


def check_no_depth(model: str, depth: int | None) -> None:
    """Models whose number of resolution levels is fixed by the architecture reject ``model.depth``."""
    if depth is not None:
        raise ConfigError(f"model={model} has a fixed number of resolution levels; model.depth={depth} "
                          f"cannot be applied (remove it: ~model.depth)")


def check_width(model: str, width: int, multiple: int = 1, why: str = "") -> int:
    width = int(width)
    if width < 1 or width % multiple:
        need = f"a positive multiple of {multiple}" if multiple > 1 else "positive"
        raise ConfigError(f"model={model}: model.width={width} must be {need}{f' ({why})' if why else ''}")
    return width


def smallest_width(model_cls: type, options, at_least: int = 1) -> int:
    """The smallest ``model.width >= at_least`` the network accepts: a multiple of its
    ``width_multiple(options)`` (GroupNorm groups, Swin's feature size), 1 when it declares none."""
    rule = getattr(model_cls, "width_multiple", None)
    multiple = max(1, int(rule(options))) if rule is not None else 1
    return -(-int(at_least) // multiple) * multiple


def require_einops(model: str) -> None:
    """MONAI's transformer blocks import ``einops`` lazily and fail mid-run without it: check at start-up."""
    if importlib.util.find_spec("einops") is None:
        raise ConfigError(f"model={model} needs the 'einops' package (MONAI's implementation uses it); "
                          f"install it with: pip install einops")


def parameter_count(net: nn.Module) -> int:
    """Every parameter of ``net``, trainable or not (the model table's counts, ``scripts/bench_models.py``)."""
    return sum(p.numel() for p in net.parameters())


def load_pretrained(net: nn.Module, path: str | Path, model: str, strict: bool = True,
                    ignore: Sequence[str] = ()) -> dict[str, list[str]]:
    """Load weights from a LOCAL file into ``net`` and report how the keys matched.

    ``path`` holds a state dict saved with ``torch.save`` (or a Lightning checkpoint of a segbench
    run, whose ``net.`` keys are used). Nothing is ever downloaded. Keys are compared with the
    network's own: ``missing`` (in the network, not the file), ``unexpected`` (in the file, not the
    network) and ``mismatched`` (same key, other shape). With ``strict`` any of them is a
    ConfigError; otherwise the matching keys are loaded and the report is logged. Returns the report
    (also kept as ``net.pretrained_report``). Keys of the file containing one of ``ignore`` are dropped
    first (parameters the source library creates but never uses).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model={model}: model.pretrained_path={path} is not a file (weights are only read "
                          f"from local files, never downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip errors of many kinds
        raise ConfigError(f"model={model}: cannot read model.pretrained_path={path} "
                          f"({type(exc).__name__}: {exc})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"model={model}: model.pretrained_path={path} holds no state dict of tensors")
    if any(k.startswith("net.") for k in state):  # a segbench Lightning checkpoint: the network's part
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    state = {k: v for k, v in state.items() if not any(part in k for part in ignore)}
    own = net.state_dict()
    report = {
        "loaded": [k for k in own if k in state and state[k].shape == own[k].shape],
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "mismatched": [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                       if k in state and state[k].shape != own[k].shape],
    }
    summary = (f"{len(report['loaded'])}/{len(own)} keys loaded, {len(report['missing'])} missing, "
               f"{len(report['unexpected'])} unexpected, {len(report['mismatched'])} shape-mismatched")
    problems = report["missing"] + report["unexpected"] + report["mismatched"]
    if strict and problems:
        raise ConfigError(f"model={model}: model.pretrained_path={path} does not match the network ({summary}; "
                          f"first: {problems[0]}); set model.pretrained_strict=false to load the matching keys")
    net.load_state_dict({k: state[k] for k in report["loaded"]}, strict=False)
    log.info("model=%s: pretrained weights from %s: %s", model, path, summary)
    for kind in ("missing", "unexpected", "mismatched"):
        if report[kind]:
            log.warning("model=%s: %s keys: %s", model, kind, ", ".join(report[kind][:20]))
    net.pretrained_report = report
    return report
