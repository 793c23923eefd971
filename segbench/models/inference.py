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
    """Class map ``[*shape]`` (uint8) of one case's logits ``[1, C, *spatial]``.

    When ``shape`` differs from the logits' grid, the class probabilities are interpolated
    (trilinear / bilinear) class by class with a running maximum, so that the memory never holds
    more than two probability maps at the target size.
    """
    probs = logits.float().softmax(1)[0]
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs.argmax(0).to(torch.uint8)
    interp = "trilinear" if len(shape) == 3 else "bilinear"
    best = labels = None
    for c in range(len(probs)):
        p = F.interpolate(probs[c][None, None], size=tuple(shape), mode=interp, align_corners=False)[0, 0]
        if best is None:
            best, labels = p, torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
        else:
            better = p > best
            best = torch.where(better, p, best)
            labels[better] = c
    return labels
