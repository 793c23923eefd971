#!/usr/bin/env python
"""Parameter count and forward + backward time of every ``model=`` choice at its default size.

    python scripts/bench_models.py                               # CUDA when available, else CPU
    python scripts/bench_models.py --device cpu --models unet,unetr --dims 3
    python scripts/bench_models.py --precision bf16 --out models.md  # or models.csv

Each network is built from its real config (``configs/model/<name>.yaml``, composed with Hydra
without the quickstart experiment, so at the paper / library defaults) for 9 classes:

* 2D: ``B x 1 x 224 x 224`` slices, ``B = 24`` (the paper's batch) on CUDA, ``B = 4`` on a CPU;
* 3D: ``1 x 1 x 96^3`` patches (``--batch-3d``).

A step is ``loss = cross_entropy(net(x), y); loss.backward()`` in train mode; the time is the
median of ``--repeats`` steps after ``--warmup`` steps, with ``torch.cuda.synchronize`` on CUDA.
Models that cannot run here (a missing package, not enough memory) get a row saying why.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench.config import CONFIG_DIR  # noqa: E402 - imported once sys.path holds the checkout
from segbench.errors import unwrap  # noqa: E402 - imported once sys.path holds the checkout
from segbench.models import MODELS  # noqa: E402 - imported once sys.path holds the checkout
from segbench.models.common import parameter_count  # noqa: E402 - imported once sys.path holds the checkout

#: the dimensionalities each model supports
DIMS = {"unet": (2, 3), "unet3d": (3,), "unetpp": (2, 3), "attention_unet": (2, 3), "segresnet": (2, 3),
        "swin_unetr": (2, 3), "unetr": (2, 3), "unetr_pp": (3,), "transunet": (2,)}


def build_net(name: str, dims: int, size: int):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    data = ["data=phantom", f"data.img_size={size}"] if dims == 2 else \
        ["data=phantom3d", f"data.patch_size=[{size},{size},{size}]"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["~experiment", f"model={name}", *data])
    return instantiate(cfg.model), dict(cfg.model)


def time_step(net, x, y, device: torch.device, precision: str, warmup: int, repeats: int) -> float:
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        net.zero_grad(set_to_none=True)

    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(sorted(MODELS)))
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--batch-2d", type=int, default=None, help="default: 24 on CUDA, 4 on CPU")
    parser.add_argument("--batch-3d", type=int, default=1)
    parser.add_argument("--size-2d", type=int, default=224)
    parser.add_argument("--size-3d", type=int, default=96)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help=".md or .csv")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = {2: args.batch_2d or (24 if device.type == "cuda" else 4), 3: args.batch_3d}
    size = {2: args.size_2d, 3: args.size_3d}
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU, {torch.get_num_threads()} threads"
    rows = []
    for name in args.models.split(","):
        for dims in DIMS[name]:
            if str(dims) not in args.dims.split(","):
                continue
            shape = (batch[dims], 1, *[size[dims]] * dims)
            row = {"model": name, "dims": f"{dims}D", "input": "x".join(map(str, shape)), "params_M": "",
                   "ms_per_step": "", "note": ""}
            try:
                torch.manual_seed(0)
                net, cfg = build_net(name, dims, size[dims])
                row["params_M"] = f"{parameter_count(net) / 1e6:.2f}"
                row["note"] = f"width={cfg.get('width')}"
                net = net.to(device).train()
                x = torch.rand(shape, device=device)
                y = torch.randint(0, 9, (shape[0], *shape[2:]), device=device)
                seconds = time_step(net, x, y, device, args.precision, args.warmup, args.repeats)
                row["ms_per_step"] = f"{1000 * seconds:.0f}"
            except Exception as exc:  # noqa: BLE001 - report and go on: one model must not hide the others
                row["note"] = str(unwrap(exc)).splitlines()[0][:90]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"{row['model']:15s} {row['dims']} {row['input']:>16s} {row['params_M']:>8s} M "
                  f"{row['ms_per_step']:>8s} ms  {row['note']}", flush=True)
    header = f"forward + backward per batch, {args.precision}, {what}, median of {args.repeats}"
    table = ["| model | dims | input (B x C x spatial) | parameters (M) | ms / step | note |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['dims']} | {r['input']} | {r['params_M']} | {r['ms_per_step']} | {r['note']} |"
              for r in rows]
    print(f"\n{header}\n\n" + "\n".join(table))
    if args.out is not None:
        if args.out.suffix == ".csv":
            with open(args.out, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            args.out.write_text(f"{header}\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
