#!/usr/bin/env python
"""End-to-end training throughput on a GPU: images/s and the share of time the GPU is busy.

    python scripts/bench_throughput.py                     # on CUDA: the paper's settings, 4 rows
    python scripts/bench_throughput.py --quick --device cpu --compile-backend eager   # a dry run
    python scripts/bench_throughput.py --models unet --out throughput.md             # or .csv

A real ``segbench-train`` fit (the data module and its loader with the defaults of
``data.num_workers``/``pin_memory``/``prefetch_factor``, the LightningModule, the run's trainer,
callbacks, logger and progress bar) at the AFW-Dice paper's 2D settings: 224 px slices, batch
24, flips and rotations up to 30 degrees, CE + Dice, SGD, ``trainer=gpu`` (bf16 mixed precision),
each network with and without ``torch.compile``:

* ``unet``: segbench's plain U-Net of the paper (``model=unet``, width 32, 7.2 M parameters);
* ``basic_unet``: MONAI's ``BasicUNet`` (2D, its default features 32-32-64-128-256-32), a
  reference network from the library many users start from.

The data are the procedural phantom at 224 px in-plane (``data.phantom.size=224``, 2.5 mm slices:
no resize before training, the same 224 px training samples), ``--cases`` cases (16: all steps of a
row fall in one epoch) in a temporary directory, or ``--data-dir``. Per row, after ``--warmup``
steps (compilation, worker start-up):

* **images/s**: ``--steps`` steps timed from one ``torch.cuda.synchronize`` to the next;
* **GPU busy**: over the next ``--profile-steps`` steps, under ``torch.profiler``, the union of
  the intervals in which a CUDA kernel ran, divided by the wall time of those steps (the
  profiler's own cost on the host slightly lowers it: a lower bound);
* ``pipeline``: the data path (``--pipelines``: ``auto``, the default run's choice, ``device`` on CUDA;
  ``loader`` and ``device`` side by side compare the loader's CPU workers with batches cut and augmented on
  the GPU, :mod:`segbench.data.device`);
* ``num_workers``: what ``data.num_workers: auto`` resolved to on this machine (the loader path's; the
  device path uses none).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench.config import CONFIG_DIR  # noqa: E402 - imported once sys.path holds the checkout
from segbench.errors import unwrap  # noqa: E402 - imported once sys.path holds the checkout

BASIC_UNET = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 9}
#: --quick: a tiny phantom and network (a dry run of the script, not a measurement)
QUICK = {"data.phantom.size": "96", "data.phantom.slice_thickness": "[10.0]", "data.img_size": "64",
         "data.batch_size": "4", "model.width": "4"}


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def busy_seconds(prof) -> float:
    """Seconds in which at least one CUDA kernel ran (union of the kernels' intervals)."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA)
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1e6  # microseconds


def run_one(args, model: str, compiled: bool, data_dir: Path, workdir: Path, pipeline: str = "auto") -> dict:
    import pytorch_lightning as pl
    from omegaconf import open_dict

    from segbench.runtime.build import build, build_trainer

    cuda = args.device == "cuda"
    values = {"paths.data_dir": str(data_dir), "data.phantom.size": "224", "data.phantom.slice_thickness": "[2.5]",
              "data.phantom.num_cases": str(args.cases), "data.split.train": str(args.cases), "data.split.val": "0",
              "data.split.test": "0", "data.pipeline": pipeline, **(QUICK if args.quick else {})}
    cfg = compose("~experiment", "data=phantom", "loss=ce_dice", "trainer=gpu" if cuda else "trainer=cpu",
                  *(f"{key}={value}" for key, value in values.items()))
    total = args.warmup + args.steps + args.profile_steps
    with open_dict(cfg):
        if model == "basic_unet":
            cfg.model = dict(BASIC_UNET, out_channels=int(cfg.data.num_classes),
                             **({"features": [4, 4, 8, 16, 32, 4]} if args.quick else {}))
        cfg.paths.output_dir = str(workdir)
        cfg.trainer.max_epochs = 1000
        cfg.trainer.max_steps = total
        cfg.trainer.limit_val_batches = 0
        if args.precision:
            cfg.trainer.precision = args.precision
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule, module = build(cfg)
    if compiled:
        module.net.compile(backend=args.compile_backend)  # as compile=true does (in place), backend chosen here
    marks: dict[str, float] = {}
    state: dict = {"count": 0, "prof": None}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class Meter(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            n = state["count"]
            if n == args.warmup:
                sync()
                marks["start"] = time.perf_counter()
            if n == args.warmup + args.steps and cuda:
                from torch.profiler import ProfilerActivity, profile

                sync()
                state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                state["prof"].__enter__()
                marks["profile_start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            state["count"] += 1
            n = state["count"]
            if n == args.warmup + args.steps:
                sync()
                marks["end"] = time.perf_counter()
            if n == total and state["prof"] is not None:
                sync()
                marks["profile_end"] = time.perf_counter()
                state["prof"].__exit__(None, None, None)

    trainer = build_trainer(cfg, workdir)
    trainer.callbacks.append(Meter())
    trainer.fit(module, datamodule=datamodule)
    if "end" not in marks:
        raise RuntimeError(f"only {state['count']} steps ran; raise --cases")
    images = args.steps * datamodule.batch_size / (marks["end"] - marks["start"])
    busy, note = "-", ""
    if state["prof"] is not None:
        try:
            busy = f"{100 * busy_seconds(state['prof']) / (marks['profile_end'] - marks['profile_start']):.0f} %"
        except Exception as exc:  # noqa: BLE001 - the throughput stands without it
            note = f"GPU busy not measured: {str(exc).splitlines()[0][:80]}"
    loader = datamodule.train_loader_options()
    used = datamodule.pipeline_in_use()
    return {"model": model, "compile": "yes" if compiled else "no", "pipeline": used,
            "precision": str(cfg.trainer.precision),
            "batch": f"{datamodule.batch_size} x {cfg.data.img_size}^2", "images_per_s": f"{images:.0f}",
            "ms_per_step": f"{1000 * datamodule.batch_size / images:.1f}", "gpu_busy": busy,
            "num_workers": str(loader["num_workers"]) if used == "loader" else "-",
            "pin_memory": str(loader["pin_memory"]).lower(),
            "params_M": f"{sum(p.numel() for p in module.net.parameters()) / 1e6:.2f}", "note": note}


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")))
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", default="unet,basic_unet")
    parser.add_argument("--compile", default="no,yes", help="no, yes or both (no,yes)")
    parser.add_argument("--compile-backend", default="inductor", help="eager: a dry run of the compile path")
    parser.add_argument("--pipelines", default="auto", help="data.pipeline values, e.g. loader,device")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA (trainer=gpu), fp32 on CPU")
    parser.add_argument("--cases", type=int, default=None,
                        help="phantom training cases (~85-90 slices each: 16 fill one epoch of 48 steps)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--profile-steps", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help=".md or .csv")
    args = parser.parse_args(argv)
    table_out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the table only (progress bars to stderr)
    for key, full, quick in (("cases", 16, 2), ("warmup", 10, 1), ("steps", 30, 2), ("profile_steps", 8, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    what = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    temporary = tempfile.TemporaryDirectory()
    data_dir = args.data_dir or Path(temporary.name) / "data"
    columns = ["model", "compile", "pipeline", "precision", "batch", "images_per_s", "ms_per_step", "gpu_busy",
               "num_workers", "pin_memory", "params_M", "note"]
    header = (f"segbench-train end to end, {what}, torch {torch.__version__}, {args.cases} phantom cases, "
              f"{args.steps} timed steps after {args.warmup}, GPU busy over {args.profile_steps} profiled steps"
              + (" (QUICK: a dry run, not a measurement)" if args.quick else ""))
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    print(f"{header}\n\n" + "\n".join(table), file=table_out, flush=True)
    rows = []
    runs = [(m, c == "yes", p) for m in args.models.split(",") for c in args.compile.split(",")
            for p in args.pipelines.split(",")]
    for model, compiled, pipeline in runs:
        workdir = Path(temporary.name) / f"{model}-{int(compiled)}-{pipeline}"
        try:
            row = run_one(args, model, compiled, data_dir, workdir, pipeline)
        except Exception as exc:  # noqa: BLE001 - one row must not hide the others
            row = {c: "" for c in columns} | {"model": model, "compile": "yes" if compiled else "no",
                                              "pipeline": pipeline, "note": str(unwrap(exc)).splitlines()[0][:120]}
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print("| " + " | ".join(row[c] for c in columns) + " |", file=table_out, flush=True)
    if args.out is not None:
        if args.out.suffix == ".csv":
            with open(args.out, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        else:
            lines = table + ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
            args.out.write_text(f"{header}\n\n" + "\n".join(lines) + "\n")
    temporary.cleanup()
    return 1 if any(r["note"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
