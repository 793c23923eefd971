#!/usr/bin/env python
"""The training pipeline's throughput, part by part, in one table: loading, the framework, the data.

    python scripts/bench_pipeline.py                      # the full run (minutes); CUDA when available
    python scripts/bench_pipeline.py --quick              # or QUICK=1: a tiny dry run (< 1 minute on a CPU)
    python scripts/bench_pipeline.py --workers 0,1,2,4,8 --out pipeline.md   # or .csv

Rows of the table:

* **loader**: training samples per second of segbench's loaders, per ``data.num_workers`` value
  (``--workers``), and per worker: 2D slices at the paper's settings (224 px, batch 24, flips and
  rotations up to 30 degrees) and 3D patches (``data=phantom3d``: 64 x 96 x 96, batch 2, flips and
  rotations). The first batch (worker start-up) is not timed.
* **training step**: the same network, loss, optimiser and batches four ways, in this process, as
  milliseconds per step and as a ratio to the first: a bare PyTorch loop on preloaded batches
  (``forward, loss, zero_grad, backward, step, lr step``); segbench's fit (Lightning with the run's
  real callbacks, logger and progress bar) on the same preloaded batches -- the framework's own
  cost; the bare loop fed by segbench's training loader; segbench's fit with its loader, as a run
  does. Each variant starts from the same weights; the first ``--warmup`` steps are not timed;
  ``--rounds`` rounds in rotating order, median per variant. Settings: the quickstart experiment
  (128 px, batch 8, width 16) on a CPU, the paper's (224 px, batch 24, width 32, bf16) on CUDA
  (``--train-settings``).
* **data**: phantom generation per case (the data config's 448 px phantom, written as NIfTI) and
  preprocessing per case (load, HU window, resize to the model size in 2D; load, window in 3D),
  without the preprocessing cache.

A second table (``--parts paths``) puts the two data paths side by side (``data.pipeline=loader``, with
``data.num_workers: auto``, and ``data.pipeline=device``: :mod:`segbench.data.device`) at the paper's 2D
settings (224 px, batch 24, width 32), the quickstart's (128 px, batch 8, width 16) and for 3D patches
(64 x 96 x 96, batch 2, ``unet3d``), flips and rotations on: milliseconds per batch for the data and its
augmentation as the training process gets them (from asking for the batch to having it augmented on the
device), the bare training step without them (preloaded batches) and with them (the bare loop fed by the
path), and the data's cost as a share of the step without it. Medians over ``--path-batches`` batches and
``--path-steps`` steps after ``--warmup``.

Data come from the phantom under ``--data-dir`` (default: the repository's ``data/``, so the
default run's phantom is reused; ``--quick``: a temporary directory).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench.config import CONFIG_DIR  # noqa: E402 - imported once sys.path holds the checkout

#: the overrides of each setting: "paper" = the AFW-Dice paper's 2D settings, "quickstart" = the default run
TRAIN_SETTINGS = {"paper": ["~experiment"], "quickstart": []}
#: --quick: a tiny phantom and network (a dry run of the script, not a measurement)
QUICK = ["data.phantom.num_cases=3", "data.phantom.size=96", "data.phantom.slice_thickness=[10.0]",
         "data.img_size=64", "data.batch_size=4", "model.width=4"]
QUICK_3D = ["data.phantom.num_cases=3", "data.phantom.size=96", "data.phantom.slice_thickness=[10.0]",
            "data.patch_size=[16,32,32]", "model.width=4"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_device(trainer_device: torch.device):
    """What the data modules read from a trainer (its device, one process, rank 0)."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=trainer_device), num_devices=1, global_rank=0,
                           world_size=1)


def data_overrides(args, cases: int) -> list[str]:
    return [f"paths.data_dir={args.data_dir}", "data.cache_dir=null", f"data.split.train={cases}",
            "data.split.val=0", "data.split.test=0"]


# -- loaders ---------------------------------------------------------------------------------------------------
def loader_rate(datamodule, workers: int, batches: int, device: torch.device) -> float:
    """Samples per second of the training loader with ``workers`` workers (first batch not timed)."""
    from segbench.data.loader import check_num_workers

    datamodule.num_workers = check_num_workers(workers)
    datamodule.trainer = as_device(device)
    loader = datamodule.train_dataloader()
    datamodule.trainer = None
    stream = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs after epochs (persistent workers)
    next(stream)
    samples = 0
    start = time.perf_counter()
    for batch in itertools.islice(stream, batches):
        samples += len(batch["image"])
    seconds = time.perf_counter() - start
    del stream, loader
    return samples / seconds


def bench_loaders(args, device: torch.device, rows: list[dict]) -> None:
    from hydra.utils import instantiate

    settings = {
        "2D": (["~experiment", "data=phantom", *(QUICK if args.quick else [])],
               "slices", lambda c: f"{c.data.img_size} px, batch {c.data.batch_size}, flips + rotations"),
        "3D": (["~experiment", "data=phantom3d", "model=unet3d", *(QUICK_3D if args.quick else [])],
               "patches", lambda c: f"{'x'.join(map(str, c.data.patch_size))} patches, batch {c.data.batch_size}, "
                                    "flips + rotations"),
    }
    for dims, (overrides, unit, describe) in settings.items():
        cfg = compose(*overrides, *data_overrides(args, args.cases))
        datamodule = instantiate(cfg.data, _recursive_=True, _convert_="all")
        datamodule.prepare_data()
        datamodule.setup("fit")
        for workers in args.workers:
            rate = loader_rate(datamodule, workers, args.loader_batches, device)
            rows.append({"part": "loader", "what": f"{dims}, data.num_workers={workers}", "setting": describe(cfg),
                         "value": f"{rate:.0f} {unit}/s", "per_unit": f"{rate / max(workers, 1):.0f} per worker"
                         if workers else "in the training process"})
            print(f"loader {dims} workers={workers}: {rate:.0f} {unit}/s", flush=True)


# -- training step ---------------------------------------------------------------------------------------------
class Preloaded:
    """Batches already in memory (on the device), iterated as a loader would be."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def built(cfg):
    """A fresh (data module, module) pair; the same seed gives the same initial weights."""
    import pytorch_lightning as pl

    from segbench.runtime.build import build

    pl.seed_everything(cfg.seed, verbose=False)
    return build(cfg)


def labels_checked(module) -> None:
    """As in a run, where the data module counted the label ids: no per-batch label check in the loss."""
    for m in module.loss_fn.modules():
        if hasattr(m, "check_labels"):
            m.check_labels = False


def bare_loop(cfg, batches, device: torch.device, warmup: int, total: int) -> float:
    """Seconds per step of a plain PyTorch loop over ``batches`` (an iterable of segbench batches;
    ``total`` of them: the poly learning-rate decay's horizon, as Lightning's for the fit)."""
    from segbench.module import poly_lambda

    _, module = built(cfg)
    labels_checked(module)
    module = module.to(device).train()
    net, loss_fn = module.net, module.loss_fn
    optimizer = module.optimizer_factory(params=module.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total, float(cfg.scheduler.power)))
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    start, steps = None, 0
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if module.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        steps += i >= warmup
    sync(device)
    return (time.perf_counter() - start) / steps


def segbench_fit(cfg, batches, device: torch.device, warmup: int, steps: int, workdir: Path) -> float:
    """Seconds per step of segbench's fit (the run's trainer, callbacks, logger, progress bar) on
    ``batches``, or on its own training loader when ``batches`` is None."""
    import pytorch_lightning as pl
    from omegaconf import open_dict

    from segbench.runtime.build import build_trainer

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(workdir)   # the checkpoint callbacks' directory
    datamodule, module = built(cfg)
    if batches is not None:
        labels_checked(module)

    class StepTimer(pl.Callback):
        count, start, end = 0, None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.count == warmup:
                sync(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.count += 1
            if self.count == warmup + steps:
                sync(device)
                self.end = time.perf_counter()

    timer = StepTimer()
    trainer = build_trainer(cfg, workdir)
    trainer.callbacks.append(timer)
    if batches is None:
        trainer.fit(module, datamodule=datamodule)
    else:
        trainer.fit(module, train_dataloaders=batches)
    return (timer.end - timer.start) / steps


def bench_training(args, device: torch.device, rows: list[dict]) -> None:
    from omegaconf import open_dict

    from segbench.runtime.build import build

    overrides = TRAIN_SETTINGS[args.train_settings] + (["trainer=gpu"] if device.type == "cuda" else [])
    cfg = compose(*overrides, "data=phantom", *(QUICK if args.quick else []), *data_overrides(args, args.cases))
    datamodule, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    per_epoch = len(datamodule.train_set) // datamodule.batch_size
    warmup = args.warmup
    steps = min(args.steps, per_epoch - warmup)
    if steps < 1:
        raise SystemExit(f"bench_pipeline: {per_epoch} batches per epoch leave no timed step; raise --cases")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = warmup + steps
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.accelerator = device.type if device.type != "cuda" else "gpu"
        if args.threads:
            cfg.num_threads = args.threads
    # the same batches for every preloaded variant: the real loader's first batches, on the device
    datamodule.trainer = as_device(device)
    loader = iter(datamodule.train_dataloader())
    datamodule.trainer = None
    preloaded = Preloaded([{k: v.to(device) if torch.is_tensor(v) else v for k, v in next(loader).items()}
                           for _ in range(warmup + steps)])
    del loader

    def real_loader():
        dm, _ = built(cfg)
        dm.prepare_data()
        dm.setup("fit")
        dm.trainer = as_device(device)
        loader = dm.train_dataloader()
        return itertools.islice(loader, warmup + steps)

    variants = {
        "bare PyTorch loop, preloaded batches": lambda d: bare_loop(cfg, preloaded, device, warmup, warmup + steps),
        "segbench fit, preloaded batches": lambda d: segbench_fit(cfg, preloaded, device, warmup, steps, d),
        "bare PyTorch loop, segbench's loader": lambda d: bare_loop(cfg, real_loader(), device, warmup, warmup + steps),
        "segbench fit, its loader (a run)": lambda d: segbench_fit(cfg, None, device, warmup, steps, d),
    }
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with tempfile.TemporaryDirectory() as workdir:
                times[name].append(variants[name](Path(workdir)))
            print(f"round {r + 1}: {name}: {1000 * times[name][-1]:.1f} ms/step", flush=True)
    base = statistics.median(times[names[0]])
    setting = (f"{cfg.data.img_size} px, batch {cfg.data.batch_size}, width {cfg.model.width}, {cfg.loss.name}, "
               f"{cfg.trainer.precision}, {steps} steps after {warmup}, median of {args.rounds}")
    for name in names:
        ms = 1000 * statistics.median(times[name])
        rows.append({"part": "training step", "what": name, "setting": setting, "value": f"{ms:.1f} ms/step",
                     "per_unit": f"{ms / (1000 * base):.3f}x"})


# -- the two data paths ------------------------------------------------------------------------------------------
#: the settings of the paths table: key -> (name, overrides, what a batch is)
PATH_SETTINGS = {
    "paper": ("2D, the paper's settings", ["~experiment", "data=phantom"], "224 px, batch 24, width 32"),
    "quickstart": ("2D, the quickstart", ["data=phantom"], "128 px, batch 8, width 16"),
    "3d": ("3D patches", ["~experiment", "data=phantom3d", "model=unet3d"], "64 x 96 x 96, batch 2, unet3d"),
}
QUICK_PATHS = {"paper": [*QUICK, "data.batch_size=6"], "quickstart": QUICK, "3d": [*QUICK_3D, "data.batch_size=2"]}


def to_device(batch: dict, device: torch.device) -> dict:
    """What Lightning's transfer does: every tensor to ``device`` (asynchronously on CUDA)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def path_batches(datamodule, pipeline: str, device: torch.device):
    """Training batches as the training step receives them through ``pipeline``, epoch after epoch: the
    loader's (workers as ``data.num_workers: auto`` gives them on ``device``) moved to the device, or the
    device path's index batches completed by the data module's transfer hooks."""
    datamodule.pipeline = pipeline
    datamodule.trainer = as_device(device)
    loader = datamodule.train_dataloader()
    workers = getattr(loader, "num_workers", 0)
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            if pipeline == "device":
                batch = datamodule.on_after_batch_transfer(
                    to_device(datamodule.on_before_batch_transfer(batch, 0), device), 0)
            else:
                batch = to_device(batch, device)
            yield batch, workers
        epoch += 1


def data_ms(datamodule, pipeline: str, device: torch.device, warmup: int, batches: int) -> tuple[float, int]:
    """Median milliseconds from asking for a batch to having it on the device, augmented; the workers used."""
    stream = path_batches(datamodule, pipeline, device)
    times, workers = [], 0
    for i in range(warmup + batches):
        sync(device)
        start = time.perf_counter()
        _, workers = next(stream)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    stream.close()
    return 1000 * statistics.median(times), workers


def bench_paths(args, device: torch.device, rows: list[dict]) -> None:
    """The paths table: per setting, ``--path-rounds`` rounds of three variants in rotating order (the bare
    step on preloaded batches, fed by the loader path, fed by the device path), medians per variant."""
    from omegaconf import open_dict

    for key in args.path_settings.split(","):
        name, overrides, describe = PATH_SETTINGS[key]
        extra = QUICK_PATHS[key] if args.quick else []
        cfg = compose(*overrides, *extra, *data_overrides(args, args.path_cases),
                      *(["trainer=gpu"] if device.type == "cuda" else []))
        with open_dict(cfg):
            if args.threads:
                cfg.num_threads = args.threads
        datamodule, _ = built(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        setting = describe if not args.quick else f"{describe} (QUICK: smaller)"
        total = args.warmup + args.path_steps
        # the step without the data: the same preloaded batches (the device path's first ones) every round
        stream = path_batches(datamodule, "device", device)
        preloaded = Preloaded([next(stream)[0] for _ in range(total)])
        stream.close()

        def fed(pipeline: str, cfg=cfg, datamodule=datamodule, total=total):
            batches = (batch for batch, _ in path_batches(datamodule, pipeline, device))
            return bare_loop(cfg, itertools.islice(batches, total), device, args.warmup, total)

        variants = {"without": lambda cfg=cfg, preloaded=preloaded, total=total:
                    bare_loop(cfg, preloaded, device, args.warmup, total),
                    "loader": lambda: fed("loader"), "device": lambda: fed("device")}
        names = list(variants)
        steps: dict[str, list[float]] = {n: [] for n in names}
        data: dict[str, list[float]] = {"loader": [], "device": []}
        workers = 0
        for r in range(args.path_rounds):
            for variant in names[r % 3:] + names[:r % 3]:
                steps[variant].append(variants[variant]())
                if variant != "without":
                    ms, used = data_ms(datamodule, variant, device, args.warmup, args.path_batches)
                    data[variant].append(ms)
                    workers = used if variant == "loader" else workers
                print(f"paths {name}, round {r + 1}: {variant}: step {1000 * steps[variant][-1]:.1f} ms"
                      + (f", data {data[variant][-1]:.1f} ms/batch" if variant != "without" else ""), flush=True)
        without = 1000 * statistics.median(steps["without"])
        for pipeline in ("loader", "device"):
            ms = statistics.median(data[pipeline])
            what = f"data.pipeline={pipeline}" + (f" ({workers} workers)" if pipeline == "loader" else "")
            rows.append({"setting": f"{name}: {setting}", "path": what, "data_ms": f"{ms:.1f}",
                         "step_without_ms": f"{without:.1f}",
                         "step_with_ms": f"{1000 * statistics.median(steps[pipeline]):.1f}",
                         "share": f"{ms / without:.3f}"})
        datamodule.trainer = None


# -- phantom generation and preprocessing ------------------------------------------------------------------------
def bench_data(args, rows: list[dict]) -> None:
    from hydra.utils import instantiate

    from segbench.data.phantom import PhantomSpec, ensure_phantom

    cfg = compose("~experiment", "data=phantom", *(QUICK if args.quick else []))
    phantom = cfg.data.phantom
    kwargs = {"num_cases": args.phantom_cases, "size": int(phantom.size), "seed": int(phantom.seed)}
    if phantom.slice_thickness:
        kwargs["slice_thickness"] = tuple(float(t) for t in phantom.slice_thickness)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        ensure_phantom(root, PhantomSpec(**kwargs), progress=False)
        per_case = (time.perf_counter() - start) / args.phantom_cases
    rows.append({"part": "data", "what": "phantom generation", "setting": f"{phantom.size} px, written as NIfTI",
                 "value": f"{per_case:.2f} s/case", "per_unit": f"mean of {args.phantom_cases}"})
    print(f"phantom generation: {per_case:.2f} s/case", flush=True)
    for dims, overrides in (("2D", ["data=phantom"] + (QUICK if args.quick else [])),
                            ("3D", ["data=phantom3d", "model=unet3d"] + (QUICK_3D if args.quick else []))):
        cfg = compose("~experiment", *overrides, *data_overrides(args, args.cases))
        datamodule = instantiate(cfg.data, _recursive_=True, _convert_="all")
        datamodule.prepare_data()
        datamodule._resolve_splits()
        cases = datamodule.splits["train"]
        start = time.perf_counter()
        for case_id in cases:
            if dims == "2D":
                datamodule._case_slices(case_id)
            else:
                datamodule._prepared(case_id)
        per_case = (time.perf_counter() - start) / len(cases)
        what = (f"load, HU window, resize to {cfg.data.img_size} px" if dims == "2D"
                else "load, HU window (native grid)")
        rows.append({"part": "data", "what": f"preprocessing, {dims}", "setting": what,
                     "value": f"{per_case:.2f} s/case", "per_unit": f"mean of {len(cases)}"})
        print(f"preprocessing {dims}: {per_case:.2f} s/case", flush=True)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")),
                        help="a tiny dry run (also QUICK=1)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=None,
                        help="training cases the loaders draw from (8: ~70 quickstart batches, one epoch)")
    parser.add_argument("--workers", default=None, help="data.num_workers values, e.g. 0,1,2")
    parser.add_argument("--loader-batches", type=int, default=None)
    parser.add_argument("--train-settings", choices=sorted(TRAIN_SETTINGS), default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--phantom-cases", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--path-cases", type=int, default=None, help="training cases of the paths table")
    parser.add_argument("--path-batches", type=int, default=None, help="timed batches per path (data alone)")
    parser.add_argument("--path-steps", type=int, default=None, help="timed training steps per path")
    parser.add_argument("--path-rounds", type=int, default=None, help="rounds of the paths table (rotating order)")
    parser.add_argument("--path-settings", default="paper,quickstart,3d", help="settings of the paths table")
    parser.add_argument("--parts", default="loader,training,data,paths")
    parser.add_argument("--out", type=Path, default=None, help=".md or .csv")
    args = parser.parse_args(argv)
    table_out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the table only (progress to stderr)
    quick = args.quick
    defaults = {"cases": 1 if quick else 8, "workers": "0,1" if quick else ("0,1,2,4,8" if cuda else "0,1,2"),
                "loader_batches": 3 if quick else 20, "train_settings": "paper" if cuda else "quickstart",
                "steps": 3 if quick else 60, "warmup": 1 if quick else 5, "rounds": 1 if quick else 3,
                "phantom_cases": 1 if quick else 2, "path_cases": 1 if quick else 4,
                "path_batches": 3 if quick else 20, "path_steps": 2 if quick else 5, "path_rounds": 1 if quick else 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    temporary = None
    if args.data_dir is None:
        if quick:
            temporary = tempfile.TemporaryDirectory()
            args.data_dir = Path(temporary.name)
        else:
            args.data_dir = Path(__file__).resolve().parents[1] / "data"
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch threads, {len(os.sched_getaffinity(0))} CPUs"
    rows: list[dict] = []
    path_rows: list[dict] = []
    parts = args.parts.split(",")
    if "loader" in parts:
        bench_loaders(args, device, rows)
    if "training" in parts:
        bench_training(args, device, rows)
    if "data" in parts:
        bench_data(args, rows)
    if "paths" in parts:
        bench_paths(args, device, path_rows)
    header = (f"segbench pipeline, {what}, torch {torch.__version__}"
              + (" (QUICK: a dry run, not a measurement)" if quick else ""))
    text = [header, ""]
    if rows:
        text += ["| part | what | setting | result | |", "|---|---|---|---|---|"]
        text += [f"| {r['part']} | {r['what']} | {r['setting']} | {r['value']} | {r['per_unit']} |" for r in rows]
    if path_rows:
        text += ([""] if rows else []) + [
            "| setting | path | data + augmentation, ms/batch | step without data, ms | step with data, ms | "
            "data / step |", "|---|---|---|---|---|---|"]
        text += [f"| {r['setting']} | {r['path']} | {r['data_ms']} | {r['step_without_ms']} | {r['step_with_ms']} | "
                 f"{r['share']} |" for r in path_rows]
    print("\n".join(text), file=table_out)
    if args.out is not None:
        if args.out.suffix == ".csv":
            with open(args.out, "w", newline="") as fh:
                for table_rows in (rows, path_rows):
                    if table_rows:
                        writer = csv.DictWriter(fh, fieldnames=list(table_rows[0]))
                        writer.writeheader()
                        writer.writerows(table_rows)
        else:
            args.out.write_text("\n".join(text) + "\n")
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
