"""Whole-case inference for 3D models: sliding window, then back to the scoring grid.

A 3D network is trained on patches; a case is predicted by sliding a window of the patch size
over it (MONAI ``sliding_window_inference``): windows overlap by ``overlap`` (fraction of the
window), their logits are blended with a Gaussian importance map (``mode="gaussian"``, weights
highest at the window centre, where the network saw the most context) or uniformly
(``mode="constant"``), and a case smaller than the window is padded. When the window covers the
whole case, the result is the network's output on the whole case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: defaults of the ``inference`` block of ``configs/train.yaml``
DEFAULTS = {"roi_size": None, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2, "sigma_scale": 0.125}


def check_inference(cfg: dict | None) -> dict:
    """The ``inference`` options with defaults filled in, checked."""
    cfg = {**DEFAULTS, **(cfg or {})}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"inference has no option(s) {unknown}; its options are: {', '.join(DEFAULTS)}")
    if not 0.0 <= float(cfg["overlap"]) < 1.0:
        raise ConfigError(f"inference.overlap must be in [0, 1), got {cfg['overlap']}")
    if cfg["mode"] not in ("gaussian", "constant"):
        raise ConfigError(f"inference.mode={cfg['mode']!r} is unknown; choose gaussian or constant")
    if int(cfg["sw_batch_size"]) < 1:
        raise ConfigError(f"inference.sw_batch_size must be >= 1, got {cfg['sw_batch_size']}")
    return cfg


def sliding_window_logits(predictor: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                          roi_size: Sequence[int], overlap: float = 0.5, mode: str = "gaussian",
                          sw_batch_size: int = 2, sigma_scale: float = 0.125) -> torch.Tensor:
    """Blended fp32 logits ``[B, C, *spatial]`` of ``predictor`` over windows of ``roi_size`` on ``image``."""
    from monai.inferers import sliding_window_inference

    out = sliding_window_inference(image, roi_size=list(roi_size), sw_batch_size=int(sw_batch_size),
                                   predictor=lambda x: predictor(x).float(), overlap=float(overlap), mode=mode,
                                   sigma_scale=sigma_scale, padding_mode="constant", cval=0.0)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def argmax_at(logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Class map ``[*shape]`` (uint8) of one case's logits ``[1, C, *spatial]`` (:func:`labels_at` of their softmax)."""
    return labels_at(logits.float().softmax(1)[0], shape)


#: test-time flips: every non-empty subset of the spatial axes of a ``[B, C, *spatial]`` batch (nnU-Net's mirroring)
def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    axes = range(2, 2 + spatial_dims)
    return [tuple(a for a in axes if mask >> (a - 2) & 1) for mask in range(1, 2 ** spatial_dims)]


def _softmax(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: bool) -> torch.Tensor:
    """``softmax(net(x))`` in fp32; with ``tta`` the mean over ``x`` and its flips, each flipped back."""
    probs = net(x).float().softmax(1)
    if tta:
        flips = flip_sets(x.dim() - 2)
        for axes in flips:
            probs += net(x.flip(axes)).float().softmax(1).flip(axes)
        probs /= len(flips) + 1
    return probs


def case_probabilities(module, image: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """One case's class probabilities ``[C, Z, Y, X]`` (fp32, on the module's device) on the model's grid.

    ``image``: a 2D model's slices ``[Z, 1, S, S]`` (predicted ``module.slice_batch`` at a time), or a 3D
    case ``[1, 1, Z, Y, X]`` (``module.infer``: sliding windows when larger than the window). ``tta``
    averages the probabilities over the image and its flips along every combination of spatial axes.
    """
    device = module.device
    if image.dim() == 5:
        return _softmax(module.infer, image.to(device), tta)[0]
    chunks = [_softmax(module, image[start:start + module.slice_batch].to(device), tta)
              for start in range(0, len(image), module.slice_batch)]
    return torch.cat(chunks).transpose(0, 1)


def _resized(probs: torch.Tensor, shape: Sequence[int], planar: bool, start: int = 0, stop: int | None = None):
    """``probs[C, Z', Y', X']`` at ``shape`` (Z, Y, X): per slice (bilinear) for a 2D model's stack with the same
    slices, else trilinear; ``start:stop`` slices (2D) or classes (3D) at a time."""
    if planar and probs.shape[1] == shape[0]:
        return F.interpolate(probs[:, start:stop].transpose(0, 1), size=tuple(shape[1:]), mode="bilinear",
                             align_corners=False)  # [k, C, Y, X]
    return F.interpolate(probs[start:stop][None], size=tuple(shape), mode="trilinear", align_corners=False)[0]


def labels_at(probs: torch.Tensor, shape: Sequence[int], planar: bool = False, chunk: int = 32) -> torch.Tensor:
    """Class map ``[*shape]`` (uint8) of class probabilities ``[C, *spatial]``: the probabilities are brought to
    ``shape`` first and the argmax taken there (never labels resized).

    A 2D model's slices (``planar``, the same number of slices) are resized in-plane ``chunk`` slices at a time;
    otherwise class by class (trilinear) with a running maximum, so that memory never holds more than two
    probability maps at the target size. All grids are pixel-area aligned (``align_corners=False``), as the
    resampling that made the model's grid: they cover the same physical extent.
    """
    shape = tuple(int(n) for n in shape)
    if tuple(probs.shape[1:]) == shape:
        return probs.argmax(0).to(torch.uint8)
    if len(shape) == 2:  # one slice's class map
        return labels_at(probs[:, None], (1, *shape), planar=True, chunk=chunk)[0]
    if planar and probs.shape[1] == shape[0]:
        return torch.cat([_resized(probs, shape, True, z, z + chunk).argmax(1).to(torch.uint8)
                          for z in range(0, shape[0], chunk)])
    best = labels = None
    for c in range(len(probs)):
        p = _resized(probs, shape, False, c, c + 1)[0]
        if best is None:
            best, labels = p, torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
        else:
            better = p > best
            best = torch.where(better, p, best)
            labels[better] = c
    return labels


def probabilities_at(probs: torch.Tensor, shape: Sequence[int], planar: bool = False) -> np.ndarray:
    """Class probabilities ``[C, *shape]`` as float16 on the host (``save_probabilities``), class by class."""
    shape = tuple(int(n) for n in shape)
    out = np.empty((len(probs), *shape), dtype=np.float16)
    for c in range(len(probs)):
        if tuple(probs.shape[1:]) == shape:
            out[c] = probs[c].cpu().numpy()
        elif planar and probs.shape[1] == shape[0]:
            out[c] = _resized(probs[c:c + 1], shape, True)[:, 0].cpu().numpy()
        else:
            out[c] = _resized(probs, shape, False, c, c + 1)[0].cpu().numpy()
    return out
