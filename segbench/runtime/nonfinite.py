"""Stop a run whose training loss stops being a number, without a host sync in the training step.

A NaN or infinite loss (a diverging learning rate, a bad scan) poisons the weights at the next
optimiser step; training on would end with a run marked ``done`` and a DSC of 0 reported as a result.
:class:`LossWatch` notes, on the device, the first step whose loss is not finite (and the loss's
logged parts at that step) with tensor operations only: nothing in ``training_step`` waits for
the GPU. :class:`~segbench.runtime.callbacks.StopOnNonFiniteLoss` reads that note:

* after every training batch, *without waiting*: on a GPU the note is copied to pinned host memory
  asynchronously and read once a CUDA event says the copy is done, which is normally by the next
  step, at worst a few steps later (CUDA queues that many); on a CPU there is no device to wait for
  and the note is read at once, in the same step;
* and, waiting, before validation and at the end of every training epoch (points that synchronise
  anyway), so no checkpoint is ever written after a non-finite step.

Lightning runs this callback before its checkpoint callbacks, so the failing run raises
:class:`~segbench.errors.NonFiniteLossError` (one line: step, loss, its logged parts), ``segbench-train`` records
it as ``failed`` in ``run.json`` and no checkpoint of the poisoned weights is written.
"""

from __future__ import annotations

import torch


class LossWatch:
    """Device-side record of the first training step whose loss is not finite.

    Args:
        loss_name: the loss's registry name (for the message).
    """

    def __init__(self, loss_name: str):
        self.loss_name = loss_name
        self.first_step: torch.Tensor | None = None   # int64 scalar on the device, -1 = all finite so far
        self.values: torch.Tensor | None = None       # [loss, *parts] at the first bad step
        self.names: list[str] = []

    @torch.no_grad()
    def observe(self, step: int, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        """Note ``loss`` (and its ``parts``) of training step ``step``: device operations only, no sync."""
        parts = parts or {}
        values = torch.stack([loss.detach().float().reshape(())]
                             + [torch.as_tensor(v, device=loss.device).detach().float().reshape(())
                                for v in parts.values()])
        if self.first_step is None or self.first_step.device != loss.device or len(self.values) != len(values):
            self.first_step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.values = torch.zeros_like(values)
            self.names = list(parts)
        take = ~torch.isfinite(values[0]) & (self.first_step < 0)
        self.first_step.masked_fill_(take, int(step))
        self.values = torch.where(take, values, self.values)

    def message(self, step: int, extra: dict[str, float]) -> str:
        values = self.values.detach().cpu().tolist()
        parts = {**dict(zip(self.names, values[1:])), **extra}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items()) or "none"
        return (f"training loss is not finite at step {step} (loss {self.loss_name} = {values[0]}; logged parts: "
                f"{shown}); the run is stopped and recorded as failed: lower optimizer.lr, check the input "
                "scans, or train in trainer.precision=32-true")
