"""Validation overlays for TensorBoard: image, ground truth and prediction side by side, with a title
over each column and a colour key naming the organs, so the picture says what it shows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Overlay colours per class id (background transparent); ids past the end reuse the last colour.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40]], dtype=np.float32) / 255.0

COLUMNS = ("image", "ground truth", "prediction")


def class_colour(label: int) -> np.ndarray:
    return PALETTE[min(int(label), len(PALETTE) - 1)]


def blend(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``gray`` (H, W, 3) with the classes of ``mask`` (H, W) painted over at ``alpha`` (background clear)."""
    colours = PALETTE[np.clip(mask, 0, len(PALETTE) - 1)]
    weight = (mask > 0)[..., None] * alpha
    return gray * (1 - weight) + colours * weight


def overlay_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """One row: the image, the label overlay, the prediction overlay (HWC float RGB in [0, 1])."""
    gray = np.repeat(image[..., None], 3, -1)
    return np.concatenate([gray, blend(gray, label, alpha), blend(gray, pred, alpha)], 1).astype(np.float32)


def overlay_figure(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                   class_names: Sequence[str], title: str = ""):
    """Rows of (image, ground truth, prediction) with column titles and a key of the organs' colours
    (a matplotlib ``Figure``; :func:`figure_to_rgb` renders it for TensorBoard).

    ``images`` in [0, 1], ``labels`` / ``preds`` integer class maps, all (H, W); ``class_names`` by id,
    background first (not in the key: it is left unpainted).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = len(images)
    key = [Patch(facecolor=class_colour(i), label=name) for i, name in enumerate(class_names) if i > 0]
    key_rows = -(-len(key) // 5)
    # inches: 2.2 per image row, 0.35 for the column titles (and the title), 0.25 per row of the key
    top, bottom = 0.35 + 0.25 * bool(title), 0.15 + 0.25 * key_rows
    height = rows * 2.2 + top + bottom
    fig = Figure(figsize=(3 * 2.2, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - top / height, bottom=bottom / height, wspace=0.03,
                        hspace=0.03)
    for r, (image, label, pred) in enumerate(zip(images, labels, preds)):
        panel = overlay_panel(image, label, pred)
        width = image.shape[1]
        for c in range(3):
            ax = axes[r][c]
            ax.imshow(np.clip(panel[:, c * width:(c + 1) * width], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=10)
    fig.legend(handles=key, loc="lower center", ncol=min(len(key), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    return fig


def figure_to_rgb(fig) -> np.ndarray:
    """An (H, W, 3) uint8 rendering of ``fig``, for ``add_image(..., dataformats="HWC")``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
