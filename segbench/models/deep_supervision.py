"""Deep supervision of the U-Net family (``model.deep_supervision``), nnU-Net's regime.

With ``model.deep_supervision`` on, a network gets a 1 x 1 convolution head (to ``num_classes`` logits)
on each of its lower-resolution decoder outputs. In training mode it then returns a tuple, full
resolution first, ``(logits, logits at 1/2, logits at 1/4, ...)``; in eval mode (validation, test,
``segbench-predict``) it returns the full-resolution logits alone, computed exactly as without the heads.
The loss is applied at every scale by :class:`segbench.losses.deep_supervision.DeepSupervisionLoss`.

The option (``configs/model/<name>.yaml``, ``false`` in every one):

* ``false`` (or 0): no heads; the network, its parameters and its checkpoints are as before.
* ``true``: nnU-Net's set: a head on every decoder scale but the lowest, which nnU-Net's trainer weights 0
  (``_get_deep_supervision_scales``: one output per decoder stage; ``weights[-1] = 0``). For the paper's
  5-level U-Net: heads at 1/2 and 1/4 of the 1/2, 1/4, 1/8 decoder outputs; for UNETR++: the authors'
  two heads (``out2``, ``out3`` of their Synapse network).
* ``k`` (an integer >= 1): heads on the ``k`` highest-resolution lower scales, up to every decoder scale.

A network passes its number of decoder scales (full resolution included) to :func:`extra_heads`, which turns
the option into the number of heads, and keeps that number as its ``deep_supervision`` attribute (0 = off):
:class:`segbench.module.SegModule` reads it to apply the loss at every scale.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

#: ``model=<name>`` choices that take ``model.deep_supervision`` (the decoders with one output per scale)
SUPPORTED = ("unet", "unet3d", "unetpp", "attention_unet", "unetr_pp")


def extra_heads(model: str, value, decoder_scales: int, fewer_scales: str = "") -> int:
    """The number of lower-resolution heads ``model.deep_supervision=value`` asks for, checked against the
    network's ``decoder_scales`` (its decoder outputs, full resolution included); ``fewer_scales`` says how
    to get more scales (e.g. ``set model.depth >= 4``). One-line :class:`ConfigError` otherwise."""
    if value is None or value is False:
        return 0
    most = decoder_scales - 1
    if value is True:
        heads = decoder_scales - 2  # nnU-Net weights the lowest decoder output 0: no head there
        if heads < 1:
            raise ConfigError(f"model={model} has {decoder_scales} decoder scale(s); model.deep_supervision=true "
                              "(nnU-Net's heads: every decoder scale but the lowest) leaves no head"
                              + (f"; {fewer_scales}" if fewer_scales else "")
                              + (", or pass model.deep_supervision=1 (the 1/2 scale)" if most >= 1 else ""))
        return heads
    if isinstance(value, int) and 0 <= value <= most:
        return value
    raise ConfigError(f"model.deep_supervision={value!r} is not a choice for model={model}; pass false, true "
                      f"(nnU-Net's heads) or a number of heads from 1 to {most} (its lower decoder scales)")


def refuse(model: str, value) -> None:
    """Networks without one decoder output per scale (ViT decoders, SegResNet) refuse the option in one line."""
    if value is None or value is False or value == 0:
        return
    raise ConfigError(f"model={model} has no deep supervision (model.deep_supervision={value!r}); the models "
                      f"with it are {', '.join(SUPPORTED)}; pass model.deep_supervision=false")


def output_heads(channels: Sequence[int], num_classes: int, spatial_dims: int) -> nn.ModuleList:
    """One 1 x 1 convolution (with bias, as nnU-Net's ``seg_layers``) per lower scale, from its channels."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.ModuleList(conv(c, num_classes, 1) for c in channels)


def supervised(logits: torch.Tensor, features: Sequence[torch.Tensor], heads: nn.ModuleList | None,
               training: bool) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """What a network returns: ``logits`` alone without heads or in eval mode, else the tuple
    ``(logits, head_1(features[0]), ...)``, ``features`` ordered from the highest resolution down."""
    if not heads or not training:
        return logits
    return (logits, *(head(f) for head, f in zip(heads, features)))


class FeatureTaps:
    """The outputs of chosen submodules during one forward pass, recorded by forward hooks: how segbench reads
    the decoder outputs of MONAI's networks without copying their ``forward``. :meth:`take` returns them (in the
    order of ``modules``) and forgets them, so no activation outlives its step."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        for index, module in enumerate(modules):
            module.register_forward_hook(functools.partial(self._record, index))

    def _record(self, index: int, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.outputs[index] = output

    def take(self) -> list[torch.Tensor | None]:
        outputs, self.outputs = self.outputs, [None] * len(self.outputs)
        return outputs
