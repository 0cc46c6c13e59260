"""Pictures of a run: training curves and prediction overlays."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segforge.files import atomic_write


def plot_curves(csv_path: Path, png_path: Path) -> Path:
    """The loss and every metric of the run's metrics CSV (segmentation: mean IoU, pixel accuracy) per optimizer
    step, for train and val; four plots to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames or []
    # the loss, then each metric the run's task logs for train and/or val (segmentation: mean IoU, pixel accuracy)
    metrics = ["loss"]
    for name in header:
        split, _, metric = name.partition("_")
        if split in ("train", "val") and metric not in metrics:
            metrics.append(metric)
    columns = min(len(metrics), 4)
    rows_of_plots = -(-len(metrics) // columns)
    fig = Figure(figsize=(4 * columns, 3.6 * rows_of_plots), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        title = metric.replace("_", " ").replace("iou", "IoU").replace(" ap", " AP")
        ax = fig.add_subplot(rows_of_plots, columns, i + 1)
        for split in ("train", "val"):
            points = [(int(r["step"]), float(r[f"{split}_{metric}"])) for r in rows if r.get(f"{split}_{metric}")]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=split)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None = None) -> np.ndarray:
    """``(H, W)`` labels → ``(H, W, 3)`` uint8 colours; the ignore label and unknown labels black."""
    lut = np.zeros((len(palette) + 1, 3), np.uint8)
    lut[:-1] = np.asarray(palette, np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    if ignore_index is not None:
        valid &= mask != ignore_index
    return lut[np.where(valid, mask, len(palette))]


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` image → ``(H, W, 3)`` uint8 to look at: its first three bands, or its first band as grey;
    floats (``scale_image``'s [0, 1]) scaled to 0..255."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    return rgb if rgb.dtype == np.uint8 else np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def blend(
    rgb: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    opacity: float = 0.5,
    ignore_index: int | None = None,
) -> np.ndarray:
    """The classes' colours over ``rgb`` (uint8, ``display_rgb``) at ``opacity``, uint8."""
    return np.rint((1 - opacity) * rgb + opacity * colorize(labels, palette, ignore_index)).astype(np.uint8)


def overlay_panel(
    image: np.ndarray,
    target: np.ndarray | None,
    pred: np.ndarray,
    palette: Sequence[Sequence[int]],
    ignore_index: int | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Side by side: the image, the ground truth over it (when known), the prediction over it. uint8 RGB."""
    rgb = display_rgb(image)
    panels = [rgb] + [
        blend(rgb, labels, palette, alpha, ignore_index) for labels in [target, pred] if labels is not None
    ]
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)


def save_png(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def index_picture(labels: np.ndarray, palette: Sequence[Sequence[int]], what: str = "the mask") -> Image.Image:
    """An index mask (pixel value = class) as a picture to store as PNG: palette mode coloured with ``palette``
    for up to 256 classes, 16-bit grey beyond (the values stay the class indices)."""
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"{what}: labels must lie in 0..65535 to be stored as a PNG")
    if labels.max(initial=0) < 256 and len(palette) <= 256:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = [int(v) for colour in palette for v in colour]
        image.putpalette(flat + [0] * (768 - len(flat)))
        return image
    return Image.fromarray(labels.astype(np.uint16))


def save_index_png(labels: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> Path:
    """``index_picture`` written atomically as the PNG ``path``."""
    image = index_picture(labels, palette, str(path))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
