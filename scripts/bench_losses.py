#!/usr/bin/env python
"""Time forward + backward of every registered loss, next to MONAI's equivalent where one exists.

    python scripts/bench_losses.py                           # CPU (CUDA when available), 2D and 3D
    python scripts/bench_losses.py --device cpu --repeats 3 --shapes 2d --losses dice,ce_dice
    python scripts/bench_losses.py --out results.md          # or results.csv

Shapes: ``2d`` = the Synapse batch (B=24, C=9, 224 x 224), ``3d`` = (B=2, C=9, 96^3).
Each loss is built with its default options (``build_loss(name, num_classes=9,
class_names=...)``); the MONAI column uses the equivalent configuration (same
formula and options) or the nearest MONAI class, named in the table. Time is the
median of ``--repeats`` runs after ``--warmup`` runs, with ``torch.cuda.synchronize``
on CUDA. Ratio = MONAI ms / ours ms (> 1: ours is faster). For the losses whose
distance maps depend on the target alone (boundary, hausdorff_dt, dpce) the column
"with loader maps" times the step when the data loader has precomputed those maps
(``data.precompute_loss_maps=true``): what is left on the training device.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench import SYNAPSE_ORGANS  # noqa: E402 - imported once sys.path holds the checkout
from segbench.losses import available_losses, build_loss  # noqa: E402 - imported once sys.path holds the checkout

CLASS_NAMES = ["background"] + [SYNAPSE_ORGANS[k] for k in sorted(SYNAPSE_ORGANS)]
SHAPES = {"2d": (24, 9, 224, 224), "3d": (2, 9, 96, 96, 96)}


def monai_equivalents(num_classes: int) -> dict[str, tuple[str, Callable]]:
    """loss name -> (description, callable(logits, target[B, *spatial]))."""
    try:
        from monai import losses as ml
    except ImportError:  # pragma: no cover - MONAI is a dependency
        return {}

    def with_channel(fn):
        return lambda x, t: fn(x, t.unsqueeze(1))

    common = dict(to_onehot_y=True, softmax=True)
    gdl = ml.GeneralizedDiceLoss(include_background=False, **common)
    dice_no_bg = ml.DiceLoss(include_background=False, **common)
    hd = ml.HausdorffDTLoss(include_background=False, **common)
    equivalents = {
        "ce": ("torch F.cross_entropy", lambda x, t: F.cross_entropy(x, t)),
        "dice": ("DiceLoss", with_channel(ml.DiceLoss(**common))),
        "jaccard": ("DiceLoss(jaccard=True)", with_channel(ml.DiceLoss(jaccard=True, **common))),
        "tversky": ("TverskyLoss(0.3, 0.7)", with_channel(ml.TverskyLoss(alpha=0.3, beta=0.7, **common))),
        "generalized_dice": ("GeneralizedDiceLoss", with_channel(ml.GeneralizedDiceLoss(**common))),
        "focal": ("FocalLoss(use_softmax=True)",
                  with_channel(ml.FocalLoss(to_onehot_y=True, use_softmax=True))),
        "ce_dice": ("DiceCELoss(no bg)", with_channel(ml.DiceCELoss(include_background=False, **common))),
        "focal_dice": ("DiceFocalLoss(no bg; sigmoid focal)",
                       with_channel(ml.DiceFocalLoss(include_background=False, **common))),
        "ce_gd": ("F.cross_entropy + GeneralizedDiceLoss(no bg)",
                  lambda x, t: F.cross_entropy(x, t) + gdl(x, t.unsqueeze(1))),
        # distance-map losses: MONAI computes the maps with scipy (cuCIM when installed) each step
        "hausdorff_dt": ("HausdorffDTLoss + DiceLoss (no bg)",
                         lambda x, t: hd(x, t.unsqueeze(1)) + dice_no_bg(x, t.unsqueeze(1))),
        "generalized_wasserstein_dice": (
            "GeneralizedWassersteinDiceLoss",
            ml.GeneralizedWassersteinDiceLoss(dist_matrix=1 - torch.eye(num_classes))),
    }
    if hasattr(ml, "BoundaryLoss"):  # MONAI >= 1.5; segbench's boundary at epoch 0: .99 Dice + .01 L_B
        dice, boundary = ml.DiceLoss(**common), ml.BoundaryLoss(include_background=False, **common)
        equivalents["boundary"] = ("0.99 DiceLoss + 0.01 BoundaryLoss",
                                   lambda x, t: 0.99 * dice(x, t.unsqueeze(1)) + 0.01 * boundary(x, t.unsqueeze(1)))
    return equivalents


def time_fns(fns: list[Callable], logits: torch.Tensor, target: torch.Tensor, repeats: int,
             warmup: int) -> list[float]:
    """Median wall time (ms) of forward + backward of each function.

    The functions run interleaved (ours, MONAI, ours, ...) so that both see the same
    machine load; on a shared CPU the spread between runs is still large.
    """
    cuda = logits.device.type == "cuda"
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + repeats):
        for k, fn in enumerate(fns):
            logits.grad = None
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(logits, target).backward()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--shapes", default="2d,3d", help="comma list of: " + ", ".join(SHAPES))
    parser.add_argument("--losses", default="", help="comma list (default: every registered loss)")
    parser.add_argument("--no-monai", action="store_true", help="time segbench's losses only")
    parser.add_argument("--out", type=Path, help="also write the table to a .md or .csv file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    names = [n for n in args.losses.split(",") if n] or available_losses()
    unknown = [n for n in names if n not in available_losses()]
    if unknown:
        parser.error(f"unknown losses {unknown}; available: {', '.join(available_losses())}")
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")

    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(*shape, generator=generator).to(device).requires_grad_(True)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator).to(device)
        references = {} if args.no_monai else monai_equivalents(shape[1])
        for name in names:
            loss = build_loss(name, num_classes=shape[1], class_names=CLASS_NAMES).to(device)
            reference = references.get(name, ("-", None))
            fns = [loss] + ([reference[1]] if reference[1] is not None else [])
            builder = loss.map_builder(shape[1])
            if builder is not None:  # maps as the loader would hand them over, already on the device
                maps = loader_maps(builder, target)
                fns.append(lambda x, t, loss=loss, maps=maps: loss(x, t, maps=maps))
            try:
                timings = time_fns(fns, logits, target, args.repeats, args.warmup)
            except Exception as error:  # noqa: BLE001 - a loss that cannot run at this size is reported, not fatal
                print(f"{name} [{shape_name}] failed: {error}", file=sys.stderr)
                timings = [float("nan")] * len(fns)
            ours = timings[0]
            ref_ms = timings[1] if reference[1] is not None else None
            maps_ms = timings[-1] if builder is not None else None
            rows.append({"shape": shape_name, "loss": name, "ours_ms": ours, "loader_maps_ms": maps_ms,
                         "monai": reference[0], "monai_ms": ref_ms, "ratio": None if ref_ms is None else ref_ms / ours})
            print(f"{shape_name} {name:30s} {ours:9.1f} ms" + ("" if maps_ms is None else
                  f"   with loader maps {maps_ms:9.1f} ms") + ("" if ref_ms is None else
                  f"   {reference[0]} {ref_ms:9.1f} ms"), file=sys.stderr, flush=True)

    header = f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, " \
             f"median of {args.repeats} after {args.warmup} warm-up"
    table = to_markdown(rows, header)
    print(table)
    if args.out is not None:
        if args.out.suffix == ".csv":
            with args.out.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            args.out.write_text(table + "\n")
    return 0


def loader_maps(builder, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss's target-only maps, sample by sample on the CPU as the loader's workers compute
    them, stacked and moved to the target's device."""
    samples = [builder(label) for label in target.cpu()]
    return {key: torch.stack([s[key] for s in samples]).to(target.device) for key in samples[0]}


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| shape | loss | ours ms | with loader maps ms | MONAI equivalent | MONAI ms "
             "| ratio (MONAI/ours) |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        maps_ms = "-" if r["loader_maps_ms"] is None else f"{r['loader_maps_ms']:.1f}"
        monai_ms = "-" if r["monai_ms"] is None else f"{r['monai_ms']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['shape']} | {r['loss']} | {r['ours_ms']:.1f} | {maps_ms} | {r['monai']} | {monai_ms} "
                     f"| {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
