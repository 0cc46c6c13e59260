"""An evaluation report three ways: a text table, a JSON file, and the confusion matrix as a heat map.

Files are written atomically (a temporary file in the target folder, then ``os.replace``), so an
interrupted run never leaves a half-written report where a good one used to be.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segforge.files import atomic_write
from segforge.metrics.scoring import _as_matrix

__all__ = ["format_table", "load_json", "plot_confusion", "save_json"]

_SUMMARY = [
    ("pixel_accuracy", "pixel accuracy"),
    ("mean_accuracy", "mean accuracy"),
    ("mean_iou", "mean IoU"),
    ("fw_iou", "f.w. IoU"),
    ("mean_dice", "mean Dice"),
    ("foreground_iou", "foreground IoU"),
    ("foreground_dice", "foreground Dice"),
]
_PER_CLASS = [("iou", "IoU"), ("dice", "Dice"), ("precision", "precision"), ("recall", "recall")]


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes; give one name per class, in order")
    return names


def _num_classes(scores: dict[str, Any]) -> int:
    if not isinstance(scores, dict) or "iou" not in scores:
        raise ValueError(
            "expected the dict returned by segforge.metrics.scores(confusion) (or ConfusionMatrix.compute())"
        )
    return len(scores["iou"])


def _percent(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def format_table(scores: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """The summary metrics, then one row per class, as fixed-width text; values in percent.

    Args:
        scores: the dict from :func:`segforge.metrics.scores`.
        class_names: one per class; default ``"0"``, ``"1"``, ...

    Returns:
        A multi-line string; undefined values (absent classes) are shown as ``-``.

    Raises:
        ValueError: not a scores dict, or the number of names differs from the number of classes.
    """
    names = _class_names(class_names, _num_classes(scores))
    lines = [f"{label + ' (%)':<20}{_percent(scores[key]):>8}" for key, label in _SUMMARY if key in scores]
    width = max([len("class"), *map(len, names)])
    header = f"{'class':<{width}}" + "".join(f"{label:>11}" for _, label in _PER_CLASS) + f"{'pixels':>14}"
    lines += ["", header, "-" * len(header)]
    support = scores.get("support", [0] * len(names))
    for i, name in enumerate(names):
        cells = "".join(f"{_percent(scores[key][i]):>11}" for key, _ in _PER_CLASS)
        lines.append(f"{name:<{width}}{cells}{support[i]:>14,}")
    return "\n".join(lines)


def _to_json(value: Any) -> Any:
    """Plain JSON values, with NaN (an undefined metric) as null, which strict JSON readers accept."""
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_json(scores: dict[str, Any], path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> Path:
    """Writes the scores (plus ``class_names``) as JSON; NaN is written as ``null``.

    Args:
        scores: the dict from :func:`segforge.metrics.scores`; extra JSON-able keys are kept.
        path: the file to (over)write; missing folders are created.
        class_names: one per class, stored under ``"class_names"``; default ``"0"``, ``"1"``, ...

    Returns:
        The path written.

    Raises:
        ValueError: not a scores dict, or the number of names differs from the number of classes.
    """
    names = _class_names(class_names, _num_classes(scores))
    text = json.dumps(_to_json({**scores, "class_names": names}), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a report written by :func:`save_json`, turning ``null`` metrics back into NaN."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for key, value in data.items():
        if value is None:
            data[key] = math.nan
        elif isinstance(value, list) and key != "class_names":
            data[key] = [math.nan if v is None else v for v in value]
    return data


def plot_confusion(
    confusion: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str] | None,
    path: str | os.PathLike[str],
    *,
    title: str = "confusion matrix (rows: ground truth, normalised)",
    dpi: int = 100,
) -> Path:
    """Draws the row-normalised confusion matrix (each ground-truth class sums to 1) as a PNG heat map.

    Cells are annotated with their value when there are at most 30 classes; a class absent from the
    ground truth has an empty (grey) row. Uses matplotlib's Agg canvas directly, so it neither needs
    a display nor changes the pyplot backend of the calling program.

    Args:
        confusion: ``(C, C)`` counts, rows = ground truth (e.g. ``ConfusionMatrix.matrix``).
        class_names: one per class, for both axes; None for ``"0"``, ``"1"``, ...
        path: the PNG to (over)write; missing folders are created.
        title: figure title.
        dpi: resolution; the figure grows with the number of classes.

    Returns:
        The path written.

    Raises:
        ValueError: not a square count matrix, or wrong number of class names.
        ImportError: matplotlib is not installed.
    """
    counts = _as_matrix(confusion)
    num_classes = counts.shape[0]
    names = _class_names(class_names, num_classes)
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plot_confusion needs matplotlib; install it with `pip install matplotlib`") from err

    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.ma.masked_invalid(np.divide(counts, row_sums, out=np.full_like(counts, np.nan), where=row_sums > 0))
    side = min(max(5.0, 0.45 * num_classes + 2.5), 40.0)  # inches: readable labels, bounded size
    fig = Figure(figsize=(side, side * 0.9), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap=colormaps["Blues"].with_extremes(bad="0.85"), vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    font = max(4, min(10, int(300 / num_classes)))
    ax.set_xticks(range(num_classes), names, rotation=90, fontsize=font)
    ax.set_yticks(range(num_classes), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if num_classes <= 30:
        for i in range(num_classes):
            for j in range(num_classes):
                if row_sums[i, 0] > 0:
                    value = normalised[i, j]
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if value > 0.5 else "black",
                    )
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
