"""Perturbation consistency: a training-scheme regulariser next to any registered loss.

Li et al. 2018 ("Semi-supervised skin lesion segmentation via transformation consistent
self-ensembling model") and the Pi-model of Laine & Aila 2017: the network should give the
same prediction for two perturbed views of one input,

    L_cons = mean_i sum_c (s_c(f(x))_i - T^-1 s_c(f(T x))_i)^2

with ``T`` a perturbation that either leaves the labels where they are (Gaussian noise on
the intensities, ``T^-1`` = identity) or moves them with the image (a mirror flip, undone on
the output). It needs no label, so it also applies to unlabelled images; here it is added to
the supervised loss of each training batch, ``L = L_seg + weight * L_cons``
(``consistency.weight`` in the root config; 0 = off). It needs the network, not only its
logits, so the LightningModule calls it rather than the loss registry. Both predictions
receive gradients (Pi-model; the self-ensembling teacher of Li et al. is an EMA copy of the
network, not included). Softmax in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import check_option

PERTURBATIONS = ("noise", "flip")


def check_consistency(options: dict | None) -> dict:
    """The ``consistency`` config block, checked: ``{weight, perturbation, noise_std}``."""
    options = dict(options or {})
    unknown = set(options) - {"weight", "perturbation", "noise_std"}
    if unknown:
        raise ValueError(f"consistency has no option {sorted(unknown)[0]!r}; options: weight, perturbation, noise_std")
    return {
        "weight": float(check_option("consistency.weight", options.get("weight", 0.0), low=0.0)),
        "perturbation": check_option("consistency.perturbation", options.get("perturbation", "noise"),
                                     choices=PERTURBATIONS),
        "noise_std": float(check_option("consistency.noise_std", options.get("noise_std", 0.1), low=0.0,
                                        low_open=True)),
    }


def perturbation_consistency(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, logits: torch.Tensor,
                             perturbation: str = "noise", noise_std: float = 0.1) -> torch.Tensor:
    """``L_cons`` of the batch ``x`` ``[B, C_in, *spatial]`` whose logits ``model(x)`` are ``logits``.

    ``noise``: ``T x = x + N(0, noise_std^2)`` per voxel; ``flip``: ``T`` mirrors the last
    spatial axis (left-right in axial slices and patches), ``T^-1`` mirrors the output back.
    """
    check_option("perturbation", perturbation, choices=PERTURBATIONS)
    if perturbation == "noise":
        other = model(x + noise_std * torch.randn_like(x))
    else:
        other = model(x.flip(-1)).flip(-1)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p, q = logits.float().softmax(1), other.float().softmax(1)
        return (p - q).square().sum(1).mean()
