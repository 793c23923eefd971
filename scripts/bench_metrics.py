"""Benchmark segbench.metrics.evaluate_case against MONAI and medpy on one abdominal-CT-sized case.

Phantom: a (128, 512, 512) label map, spacing (2.5, 0.78, 0.78) mm, 8 organ-like
structures of realistic volume (liver ~1.5 L down to a ~30 mL gallbladder, a tubular
aorta, an elongated pancreas); the prediction is the same phantom with shifted
centres, rescaled radii, a bumpy boundary and a small false-positive blob for some
organs.

Prints a Markdown table: per organ, our DSC/HD95 next to MONAI's (DiceMetric +
HausdorffDistanceMetric(percentile=95) on the same one-hot data, spacing passed) and
medpy's hd95 (pooled percentile: different definition), then the timings.

    nice python scripts/bench_metrics.py [--medpy-size 120 256 256] [--no-medpy] [--repeats 3]

medpy does not crop and takes seconds per organ: by default it runs on a smaller case
(120 x 256 x 256, stated in the table) where ours is run too so that values can be compared.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from segbench.metrics import describe, evaluate_case

ORGANS = {  # label: (name, centre as a fraction of the volume (z, y, x), semi-axes in mm (z, y, x))
    1: ("spleen", (0.55, 0.55, 0.78), (55, 35, 30)),
    2: ("kidney_r", (0.45, 0.62, 0.30), (55, 28, 25)),
    3: ("kidney_l", (0.47, 0.62, 0.70), (55, 28, 25)),
    4: ("gallbladder", (0.48, 0.42, 0.30), (35, 15, 14)),
    5: ("liver", (0.62, 0.45, 0.30), (85, 80, 60)),
    6: ("stomach", (0.62, 0.35, 0.65), (55, 40, 50)),
    7: ("aorta", (0.50, 0.58, 0.52), (150, 11, 11)),
    8: ("pancreas", (0.46, 0.50, 0.50), (18, 14, 75)),
}
SPACING = (2.5, 0.78, 0.78)


def _ellipsoid(out, label, centre, semi_mm, spacing, rng, bump=0.0, shift=(0, 0, 0), scale=1.0):
    """Paint a (bumpy) ellipsoid into ``out`` within its bounding box only."""
    shape = np.asarray(out.shape)
    c = np.asarray(centre) * shape + np.asarray(shift)
    r = np.asarray(semi_mm) * scale / np.asarray(spacing)
    lo = np.maximum(np.floor(c - r * (1 + bump) - 1).astype(int), 0)
    hi = np.minimum(np.ceil(c + r * (1 + bump) + 2).astype(int), shape)
    grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    rho = sum(((g - cc) / rr) ** 2 for g, cc, rr in zip(grid, c, r))
    if bump:
        # low-frequency boundary perturbation: a few random plane waves
        wave = sum(
            np.cos(sum(k * g for k, g in zip(rng.normal(0, 0.08, 3), grid)) + rng.uniform(0, 6.3)) for _ in range(4)
        )
        rho = rho * (1 + bump * wave / 4)
    sub = out[tuple(slice(a, b) for a, b in zip(lo, hi))]
    sub[rho <= 1.0] = label


def phantom(shape=(128, 512, 512), seed=0):
    """(gt, pred) label maps (uint8) of one synthetic abdominal case."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(SPACING) * (128, 512, 512) / np.asarray(shape)  # same anatomy at any size
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    # largest first, so that small organs next to big ones stay visible
    for lab, (_, centre, semi) in sorted(ORGANS.items(), key=lambda kv: -np.prod(kv[1][2])):
        _ellipsoid(gt, lab, centre, semi, spacing, rng, bump=0.06)
        shift = rng.normal(0, 1.2, 3) * (0.5, 1, 1)
        _ellipsoid(pred, lab, centre, semi, spacing, rng, bump=0.08, shift=shift, scale=rng.uniform(0.94, 1.04))
        if lab in (1, 4, 8):  # a false-positive island a few cm away
            fp_centre = np.asarray(centre) + rng.uniform(-0.12, 0.12, 3)
            _ellipsoid(pred, lab, fp_centre, np.asarray(semi) * 0.15, spacing, rng)
    return gt, pred, tuple(float(s) for s in spacing)


def timed(fn, repeats):
    """(best wall-clock seconds, CPU seconds of that run, result) over ``repeats`` runs.

    CPU time (all threads of this process) is reported too because the machine may be
    shared: wall time then includes waiting for a core.
    """
    best, cpu, out = float("inf"), float("nan"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        if wall < best:
            best, cpu = wall, time.process_time() - c
    return (best, cpu), out


def run_monai(gt, pred, spacing, labels):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    n = max(labels) + 1
    g = torch.from_numpy(gt).long()[None, None]
    p = torch.from_numpy(pred).long()[None, None]
    def onehot(x):
        return torch.zeros((1, n) + x.shape[2:], dtype=torch.uint8).scatter_(1, x, 1)

    g1, p1 = onehot(g), onehot(p)

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=False, percentile=95.0, reduction="none")
            dc = DiceMetric(include_background=False, reduction="none")
            h = hd(p1, g1, spacing=list(spacing))
            d = dc(p1, g1)
        return {lab: (float(d[0, lab - 1]), float(h[0, lab - 1])) for lab in labels}

    return go


def run_medpy(gt, pred, spacing, labels):
    from medpy.metric import binary

    def go():
        return {lab: binary.hd95(pred == lab, gt == lab, voxelspacing=spacing) for lab in labels}

    return go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(128, 512, 512))
    ap.add_argument("--medpy-size", type=int, nargs=3, default=(120, 256, 256))
    ap.add_argument("--no-medpy", action="store_true")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    labels = list(ORGANS)

    gt, pred, spacing = phantom(tuple(args.shape))
    print(f"case {tuple(args.shape)} spacing {tuple(round(s, 3) for s in spacing)} mm, torch threads "
          f"{torch.get_num_threads()}, CUDA {torch.cuda.is_available()}")
    vol_ml = {lab: np.count_nonzero(gt == lab) * np.prod(spacing) / 1000 for lab in labels}

    big, small_size = tuple(args.shape), tuple(args.medpy_size)
    times = {}
    times[("ours (CPU)", big)], ours = timed(lambda: evaluate_case(pred, gt, spacing, labels), args.repeats)
    ours_medpy = evaluate_case(pred, gt, spacing, labels, convention="medpy")
    if torch.cuda.is_available():
        pg, gg = torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda()
        evaluate_case(pg, gg, spacing, labels)  # warm-up (CUDA context, kernels)
        times[("ours (CUDA)", big)], ours_cuda = timed(lambda: evaluate_case(pg, gg, spacing, labels), args.repeats)
        for lab in labels:
            for k, v in ours[lab].items():
                assert abs(ours_cuda[lab][k] - v) <= 1e-6, (lab, k, v, ours_cuda[lab][k])
    monai = None
    if not args.no_monai:
        times[("MONAI (CPU)", big)], monai = timed(run_monai(gt, pred, spacing, labels), 1)
    medpy, small = None, None
    if not args.no_medpy:
        sgt, spred, sspacing = phantom(tuple(args.medpy_size))
        times[("ours (CPU)", small_size)], small = timed(
            lambda: evaluate_case(spred, sgt, sspacing, labels, convention="medpy"), args.repeats
        )
        times[("medpy (CPU)", small_size)], medpy = timed(run_medpy(sgt, spred, sspacing, labels), 1)

    print()
    print(f"Convention: {describe('default')}")
    print()
    head = ("| label | organ | GT mL | DSC ours | DSC MONAI | HD95 ours (mm) | HD95 MONAI (mm) "
            "| HD95 medpy-pooled ours (mm) |")
    sep = "|---|---|---|---|---|---|---|---|"
    if medpy is not None:
        head += f" ours medpy-conv. {tuple(args.medpy_size)} | medpy hd95 {tuple(args.medpy_size)} |"
        sep += "---|---|"
    print(head)
    print(sep)
    for lab in labels:
        row = f"| {lab} | {ORGANS[lab][0]} | {vol_ml[lab]:.0f} | {ours[lab]['dsc']:.6f} | "
        row += f"{monai[lab][0]:.6f} | " if monai else "- | "
        row += f"{ours[lab]['hd95']:.4f} | "
        row += f"{monai[lab][1]:.4f} | " if monai else "- | "
        row += f"{ours_medpy[lab]['hd95']:.4f} |"
        if medpy is not None:
            row += f" {small[lab]['hd95']:.4f} | {medpy[lab]:.4f} |"
        print(row)
    if monai:
        diff_dsc = max(abs(ours[lab]["dsc"] - monai[lab][0]) for lab in labels)
        diff_hd95 = max(abs(ours[lab]["hd95"] - monai[lab][1]) for lab in labels)
        print(f"\nmax |ours - MONAI|: DSC {diff_dsc:.2e}, HD95 {diff_hd95:.2e} mm (MONAI computes in float32)")
    if medpy is not None:
        diff = max(abs(small[lab]["hd95"] - medpy[lab]) for lab in labels)
        print(f"max |ours (medpy convention) - medpy.hd95| on {tuple(args.medpy_size)}: {diff:.2e} mm")
    print()
    print("| implementation | case | wall s | CPU s | wall time / ours (CPU, same case) |")
    print("|---|---|---|---|---|")
    for (name, size), (wall, cpu) in times.items():
        ref = times[("ours (CPU)", size)][0]
        print(f"| {name} | {'x'.join(map(str, size))} | {wall:.3f} | {cpu:.3f} | {wall / ref:.2f} |")


if __name__ == "__main__":
    main()
