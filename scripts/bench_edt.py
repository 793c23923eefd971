#!/usr/bin/env python
"""Time segbench's torch EDT against scipy, and the boundary losses against MONAI / scipy maps.

    python scripts/bench_edt.py                          # EDT table, CPU (and CUDA when available)
    python scripts/bench_edt.py --losses                 # + forward/backward of the boundary losses
    python scripts/bench_edt.py --shapes 2d --repeats 3 --threads 1

Targets are organ-like (a random subset of the 8 foreground classes per sample, each an
ellipse / ellipsoid), not per-voxel noise: with noise every distance is ~1 and any EDT
looks fast. Shapes: ``2d`` = B=24, C=9, 224 x 224 (Synapse 2D batch), ``3d`` = B=2, C=9, 96^3.

EDT rows: the per-class signed-distance maps of the boundary loss, i.e. ``edt(G)`` and
``edt(~G)`` of every (sample, foreground class) mask with a boundary, as one torch call vs a
scipy loop (float64, like the usual data-loader code). Loss rows: forward + backward incl.
the distance maps; ``scipy maps`` is the cost of the same maps by scipy (what the reference
implementations add per step, plus a device round trip on GPU). Median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench.losses import build_loss  # noqa: E402 - imported once sys.path holds the checkout
from segbench.ops.edt import distance_transform_edt  # noqa: E402 - imported once sys.path holds the checkout

SHAPES = {"2d": (24, 9, 224, 224), "3d": (2, 9, 96, 96, 96)}
LOSSES = ["boundary", "hausdorff_dt", "hausdorff_er", "hausdorff_cv", "active_contour", "level_set", "cldice",
          "dpce", "dice"]


def organ_target(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``[B, *spatial]`` label maps: per sample 3-6 of the classes 1..C-1 as random ellipsoids."""
    rng = np.random.default_rng(seed)
    batch, classes, spatial = shape[0], shape[1], shape[2:]
    grids = np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij")
    target = np.zeros((batch, *spatial), np.int64)
    for b in range(batch):
        for c in rng.choice(np.arange(1, classes), size=rng.integers(3, 7), replace=False):
            centre = [rng.uniform(0.2, 0.8) * n for n in spatial]
            radii = [rng.uniform(0.04, 0.15) * n for n in spatial]
            inside = sum(((g - m) / r) ** 2 for g, m, r in zip(grids, centre, radii)) <= 1
            target[b][inside] = c
    return torch.from_numpy(target)


def timed(fn, repeats: int, cuda: bool) -> float:
    times = []
    for i in range(repeats + 1):  # one warm-up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def boundary_masks(target: torch.Tensor, classes: int) -> torch.Tensor:
    """``[S, *spatial]`` bool masks of the (sample, foreground class) pairs with a boundary."""
    ids = torch.arange(1, classes, device=target.device).view(1, -1, *([1] * (target.dim() - 1)))
    masks = (target.unsqueeze(1) == ids).flatten(0, 1)
    flat = masks.flatten(1)
    return masks[flat.any(1) & ~flat.all(1)]


def scipy_maps(masks: np.ndarray) -> None:
    for m in masks:
        ndimage.distance_transform_edt(m)
        ndimage.distance_transform_edt(~m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2d,3d")
    parser.add_argument("--devices", default="auto", help="comma list of cpu / cuda; auto = cpu (+ cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--losses", action="store_true", help="also time the boundary losses")
    parser.add_argument("--only", default="", help="comma list of the losses to time (default: all)")
    parser.add_argument("--no-edt", action="store_true", help="skip the EDT rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])) if args.devices == "auto" \
        else args.devices.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; median of {args.repeats}")
    print("\n| shape | device | what | torch ms | scipy ms | scipy / torch | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        target = organ_target(shape)
        masks = boundary_masks(target, shape[1])
        both = torch.cat([masks, ~masks])
        scipy_ms = timed(lambda masks=masks: scipy_maps(masks.numpy()), args.repeats, False)
        reference = np.stack([ndimage.distance_transform_edt(m) for m in both.numpy()])
        for device in devices:
            cuda = device == "cuda"
            dev_masks = both.to(device)
            for dtype in () if args.no_edt else (torch.float32, torch.float64):
                dims = len(shape) - 2
                ms = timed(lambda masks=dev_masks, dims=dims, dtype=dtype:
                           distance_transform_edt(masks, spatial_dims=dims, dtype=dtype), args.repeats, cuda)
                err = (distance_transform_edt(dev_masks, spatial_dims=len(shape) - 2, dtype=dtype).cpu().double()
                       - torch.from_numpy(reference)).abs().max()
                what = f"EDT of {len(masks)} masks x 2 ({str(dtype)[6:]})"
                print(f"| {shape_name} | {device} | {what} | {ms:.0f} | {scipy_ms:.0f} | {scipy_ms / ms:.2f} "
                      f"| {float(err):.1e} |", flush=True)
            if not args.losses:
                continue
            generator = torch.Generator().manual_seed(1)
            logits = torch.randn(*shape, generator=generator).to(device).requires_grad_(True)
            dev_target = target.to(device)
            monai = _monai_hd()
            names = [n for n in args.only.split(",") if n] or LOSSES + (["monai HausdorffDTLoss"] if monai else [])
            for name in names:
                if name.startswith("monai") and monai is None:
                    continue
                loss = monai if name.startswith("monai") else build_loss(name, num_classes=shape[1]).to(device)
                target_arg = dev_target.unsqueeze(1) if name.startswith("monai") else dev_target

                def step(logits=logits, loss=loss, target_arg=target_arg):
                    logits.grad = None
                    loss(logits, target_arg).backward()

                ms = timed(step, args.repeats, cuda)
                print(f"| {shape_name} | {device} | loss {name} fwd+bwd | {ms:.0f} | {scipy_ms:.0f} (maps) "
                      f"| {scipy_ms / ms:.2f} | - |", flush=True)
    return 0


def _monai_hd():
    try:
        from monai.losses import HausdorffDTLoss
    except ImportError:  # pragma: no cover
        return None
    return HausdorffDTLoss(include_background=False, to_onehot_y=True, softmax=True)


if __name__ == "__main__":
    sys.exit(main())
