"""The loss-behaviour probe: how does each registered loss respond to growing errors?

Every loss of :func:`segbench.losses.available_losses` is evaluated on synthetic
2D predictions (no training) with a growing number of false positives and,
separately, false negatives, for a large and a small object:

* a ``size x size`` image with three classes: background, the probed ``object``
  (a disc of radius ``large_radius`` or ``small_radius`` in the centre) and a
  ``reference`` disc in a corner that is always predicted correctly (so that
  multi-class averaging is exercised);
* predictions are one-hot label maps turned into confident logits (``+margin`` for
  the predicted class, ``-margin`` for the others), so the softmax is near one-hot;
* ``fp``: the ``f |G|`` background pixels nearest to the object are added to it
  (a dilation, pixel by pixel); ``fn``: the ``f |G|`` object pixels nearest to its
  boundary are removed (an erosion); ``f`` is the *error fraction*, 0 to 1
  (``fn`` at 1 = the object is missed entirely).

Each loss is built as training builds it: ``build_loss(name, num_classes=3,
class_names=[...], **options)`` with the options of ``configs/loss/<name>.yaml``
when that file exists. A loss whose construction or forward fails is reported
(``status``) and the probe goes on.

A curve *rises* when every step increases the loss by more than a tolerance
(``1e-6`` of the largest absolute value on the curve); *flat* when no step
decreases it but some do not increase it; *falls* when some step decreases it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

OBJECTS = ("large", "small")
ERRORS = ("fp", "fn")
CLASS_NAMES = ["background", "object", "reference"]


@dataclass
class ProbeSettings:
    size: int = 128
    large_radius: float = 40.0
    small_radius: float = 5.0
    reference_radius: float = 8.0
    margin: float = 10.0
    steps: int = 20                          # error fractions 0, 1/steps, ..., 1
    loss_config_dir: Path | None = None      # configs/loss: options as in training (None: the repository's)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-loss overrides

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.steps + 1)


# ----------------------------------------------------------------------------------------------
# synthetic scenes


def _disc(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    y, x = np.ogrid[:size, :size]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2


def make_target(settings: ProbeSettings, obj: str) -> np.ndarray:
    """Label map ``[size, size]``: 1 = the centred object disc, 2 = the reference disc in a corner."""
    size = settings.size
    radius = settings.large_radius if obj == "large" else settings.small_radius
    target = np.zeros((size, size), np.int64)
    target[_disc(size, (size - 1) / 2, (size - 1) / 2, radius)] = 1
    corner = size - 1 - settings.reference_radius - 1
    reference = _disc(size, corner, corner, settings.reference_radius)
    if (target[reference] == 1).any():
        raise ValueError("probe: the reference disc overlaps the object; use a larger --size")
    target[reference] = 2
    return target


def error_orders(target: np.ndarray) -> dict[str, np.ndarray]:
    """Flat pixel indices in the order errors are made: ``fp`` nearest background pixels first (never
    the reference disc), ``fn`` object pixels nearest to the boundary first."""
    from scipy.ndimage import distance_transform_edt

    obj = target == 1
    outside = distance_transform_edt(~obj).ravel()
    inside = distance_transform_edt(obj).ravel()
    flat = target.ravel()
    candidates_fp = np.flatnonzero(flat == 0)
    candidates_fn = np.flatnonzero(flat == 1)
    return {"fp": candidates_fp[np.argsort(outside[candidates_fp], kind="stable")],
            "fn": candidates_fn[np.argsort(inside[candidates_fn], kind="stable")]}


def erroneous_prediction(target: np.ndarray, order: np.ndarray, error: str, n_pixels: int) -> np.ndarray:
    pred = target.copy().ravel()
    pred[order[:n_pixels]] = 1 if error == "fp" else 0
    return pred.reshape(target.shape)


def confident_logits(labels: np.ndarray, num_classes: int, margin: float):
    """``[1, C, H, W]`` logits: ``+margin`` for the labelled class, ``-margin`` for the others."""
    import torch

    onehot = np.eye(num_classes, dtype=np.float32)[labels].transpose(2, 0, 1)[None]
    return torch.from_numpy(margin * (2.0 * onehot - 1.0))


# ----------------------------------------------------------------------------------------------
# losses


def loss_config_options(name: str, config_dir: Path | None) -> dict[str, Any]:
    """The options of ``configs/loss/<name>.yaml`` (interpolations dropped: no run config to resolve them)."""
    if config_dir is None:
        from ..config import CONFIG_DIR

        config_dir = Path(CONFIG_DIR) / "loss"
    path = Path(config_dir) / f"{name}.yaml"
    if not path.is_file():
        return {}
    options = yaml.safe_load(path.read_text()) or {}
    if not isinstance(options, dict):
        return {}
    options.pop("name", None)
    options.pop("defaults", None)
    return {k: v for k, v in options.items() if not (isinstance(v, str) and "${" in v)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def probe_loss(name: str, settings: ProbeSettings) -> tuple[list[dict], str]:
    """All four curves of one loss; returns (records, status) where status is ``ok`` or the failure."""
    import torch

    from ..losses import build_loss

    options = {**loss_config_options(name, settings.loss_config_dir), **settings.options.get(name, {})}
    try:
        loss = build_loss(name, num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES), **options)
        loss.eval()
        hook = getattr(loss, "on_train_epoch_start", None)
        if callable(hook):
            hook(0, 1)
    except Exception as exc:  # noqa: BLE001 - any loss may fail; the probe reports it
        return [], f"build failed: {_one_line(exc)}"
    records = []
    for obj in OBJECTS:
        target = make_target(settings, obj)
        orders = error_orders(target)
        n_object = int((target == 1).sum())
        target_t = torch.from_numpy(target)[None]
        # losses that read the input image (level_set) see an image whose regions are the labels
        image = {"image": target_t[:, None].float()} if getattr(loss, "needs_image", False) else {}
        for error in ERRORS:
            for fraction in settings.fractions:
                n_pixels = int(round(fraction * n_object))
                pred = erroneous_prediction(target, orders[error], error, n_pixels)
                logits = confident_logits(pred, len(CLASS_NAMES), settings.margin)
                try:
                    with torch.no_grad():
                        value = loss(logits, target_t, **image)
                    value = float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)
                except Exception as exc:  # noqa: BLE001 - a loss that fails on a probe case is reported in its row
                    return [], f"forward failed: {_one_line(exc)}"
                records.append({"loss": name, "object": obj, "error": error, "fraction": float(fraction),
                                "n_pixels": n_pixels, "object_pixels": n_object, "value": value})
    return records, "ok"


def monotonic_flag(values: Sequence[float], rel_tol: float = 1e-6) -> str:
    """``rises`` / ``flat`` / ``falls`` / ``non-finite`` for one curve (see the module docstring)."""
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        return "non-finite"
    tol = rel_tol * float(np.max(np.abs(v))) + 1e-12
    steps = np.diff(v)
    if np.all(steps > tol):
        return "rises"
    if np.all(steps >= -tol):
        return "flat"
    return "falls"


def run_probe(losses: Sequence[str] | None = None, settings: ProbeSettings | None = None) -> tuple[pd.DataFrame,
                                                                                                  pd.DataFrame]:
    """Probe ``losses`` (default: every registered loss); returns (curves, per-loss summary)."""
    from ..losses import available_losses

    settings = settings or ProbeSettings()
    names = list(available_losses()) if not losses or list(losses) == ["all"] else list(losses)
    unknown = [n for n in names if n not in available_losses()]
    if unknown:
        from .runs import ReportError

        raise ReportError(f"unknown loss(es) {', '.join(unknown)}; registered: {', '.join(available_losses())}")
    curves, summary = [], []
    for name in names:
        records, status = probe_loss(name, settings)
        row: dict[str, Any] = {"loss": name, "status": status}
        if records:
            frame = pd.DataFrame(records)
            # normalised: rise above the curve's error-free value, divided by the largest rise of the loss
            frame["rise"] = frame["value"] - frame.groupby(["object", "error"])["value"].transform("first")
            scale = float(np.nanmax(np.abs(frame["rise"].to_numpy()))) if np.isfinite(frame["rise"]).any() else 0.0
            frame["normalized"] = frame["rise"] / scale if scale > 0 and math.isfinite(scale) else 0.0
            curves.append(frame)
            for (obj, error), curve in frame.groupby(["object", "error"], sort=False):
                row[f"{obj}_{error}"] = monotonic_flag(curve["value"].to_numpy())
                half = curve.iloc[(curve["fraction"] - 0.5).abs().argmin()]
                row[f"{obj}_{error}_rise_at_half"] = float(half["rise"])
            large, small = row.get("large_fn_rise_at_half"), row.get("small_fn_rise_at_half")
            row["small_over_large_fn"] = (small / large) if large not in (None, 0.0) and math.isfinite(large) \
                else float("nan")
            if any(row.get(f"{o}_{e}") == "non-finite" for o in OBJECTS for e in ERRORS):
                row["status"] = "non-finite values"
        summary.append(row)
    columns = ["loss", "object", "error", "fraction", "n_pixels", "object_pixels", "value", "rise", "normalized"]
    curves_frame = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=columns)
    return curves_frame[columns], pd.DataFrame(summary)


# ----------------------------------------------------------------------------------------------
# outputs


_FLAG_TEXT = {"rises": "yes", "flat": "flat", "falls": "NO", "non-finite": "non-finite"}


def probe_markdown(summary: pd.DataFrame, settings: ProbeSettings) -> str:
    lines = [
        f"*Loss-behaviour probe: {settings.size}x{settings.size} 2D image, 3 classes (background, object, "
        f"reference), object a disc of radius {settings.large_radius:g} (large) or {settings.small_radius:g} "
        f"(small); confident logits (±{settings.margin:g}); error fraction 0 to 1 in {settings.steps} steps of "
        "false positives (fp: pixels nearest to the object added) or false negatives (fn: boundary pixels "
        "removed). yes = the loss rises at every step; flat = never falls but not always rises; NO = falls "
        "somewhere. small/large = rise at 50 % fn of the small object / of the large object (1 = "
        "size-independent, << 1 = small objects barely count).*",
        "",
        "| loss | large fp | large fn | small fp | small fn | small/large (fn 50 %) | status |",
        "|:---|:---:|:---:|:---:|:---:|---:|:---|",
    ]
    for _, row in summary.iterrows():
        flags = [_FLAG_TEXT.get(row.get(f"{o}_{e}"), "-") if isinstance(row.get(f"{o}_{e}"), str) else "-"
                 for o in OBJECTS for e in ERRORS]
        ratio = row.get("small_over_large_fn", float("nan"))
        ratio_text = "-" if ratio is None or not math.isfinite(float(ratio)) else f"{float(ratio):.3g}"
        status = str(row["status"]).replace("|", "\\|")
        lines.append(f"| {row['loss']} | " + " | ".join(flags) + f" | {ratio_text} | {status} |")
    return "\n".join(lines) + "\n"


def plot_probe(curves: pd.DataFrame, summary: pd.DataFrame, ncols: int = 4, title: str | None = None,
               width_in: float | None = None):
    """One panel per loss: normalised loss vs error fraction; large/small = colour, fp/fn = line style.

    ``width_in``: the whole figure's width in inches for a paper (e.g. 3.5 for one column, 7 for a
    page), panels 0.8 as high as wide and 6-7 pt text; ``None``: 3.2 x 2.6 in per panel, 7-9 pt."""
    import matplotlib.pyplot as plt

    names = list(summary["loss"])
    ncols = max(1, min(ncols, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    panel_w = 3.2 if width_in is None else float(width_in) / ncols
    panel_h = 2.6 if width_in is None else 0.8 * panel_w
    small = width_in is not None
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows), squeeze=False)
    colours = {"large": "tab:blue", "small": "tab:orange"}
    styles = {"fp": "-", "fn": "--"}
    for ax, (_, row) in zip(axes.ravel(), summary.iterrows()):
        ax.set_title(row["loss"], fontsize=7 if small else 9, pad=2 if small else 6)
        mine = curves[curves["loss"] == row["loss"]]
        if mine.empty:
            ax.text(0.5, 0.5, str(row["status"])[:80], ha="center", va="center", wrap=True, fontsize=7,
                    transform=ax.transAxes, color="tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for (obj, error), curve in mine.groupby(["object", "error"], sort=False):
            ax.plot(curve["fraction"], curve["normalized"], styles[error], color=colours[obj], lw=1.4,
                    label=f"{obj} {error}")
        if row["status"] != "ok":
            ax.text(0.02, 0.95, str(row["status"])[:40], transform=ax.transAxes, fontsize=6, color="tab:red",
                    va="top")
        ax.axhline(0, color="0.8", lw=0.6, zorder=0)
        ax.tick_params(labelsize=6 if small else 7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax in axes.ravel()[max(0, len(names) - ncols):len(names)]:
        ax.set_xlabel("error fraction", fontsize=7 if small else 8)
    if small:  # one label for the figure: per-row labels would overlap at paper size
        fig.supylabel("normalised loss rise", fontsize=7)
    else:
        for ax in axes[:, 0]:
            ax.set_ylabel("normalised loss rise", fontsize=8)
    handles, labels = [], []
    for ax in axes.ravel():
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            break
    height = panel_h * nrows
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=6 if small else 8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=7 if small else 9, wrap=small)
    if small:
        fig.tight_layout(rect=(0.02, 0.2 / height, 1, 1 - (0.4 / height if title else 0)), pad=0.3)
    else:
        fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - (0.3 / height if title else 0)))
    return fig
