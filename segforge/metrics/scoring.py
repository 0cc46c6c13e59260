"""The FCN paper's four metrics, and per-class IoU, Dice, precision and recall, from a confusion matrix.

With ``n_ij`` the pixels of class ``i`` predicted as ``j`` (rows: ground truth), ``t_i = Σ_j n_ij``
the pixels of class ``i`` and ``p_j = Σ_i n_ij`` the pixels predicted as ``j`` (Long, Shelhamer &
Darrell, *Fully Convolutional Networks for Semantic Segmentation*, section 5)::

    pixel accuracy   Σ_i n_ii / Σ_i t_i
    mean accuracy    (1/n_cl) Σ_i n_ii / t_i
    mean IU          (1/n_cl) Σ_i n_ii / (t_i + p_i − n_ii)
    f.w. IU          (Σ_k t_k)^−1 Σ_i t_i n_ii / (t_i + p_i − n_ii)

Absent classes. A per-class ratio whose denominator is 0 is undefined and reported as NaN, never as
0 or 1. In particular a class absent from both the ground truth and the prediction has NaN IoU,
Dice, precision and recall, and ``n_cl`` counts only the classes for which the averaged ratio is
defined: mean IU and mean Dice average over classes present in the ground truth or the prediction
(a class that is only predicted has IoU 0 and does count: false positives are errors); mean
accuracy averages over classes present in the ground truth. (With every class present, these are
exactly the paper's formulas.) The frequency-weighted IU needs no such rule: an absent class has
``t_i = 0``. Precision is NaN for a class that is never predicted, recall for one never in the
ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["frequency_weighted_iou", "mean_accuracy", "mean_iou", "pixel_accuracy", "scores"]

Confusion = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


def _as_matrix(confusion: Any) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"confusion must be a square (num_classes, num_classes) matrix, got shape {matrix.shape}; "
            "build it with segforge.metrics.confusion_matrix(pred, target, num_classes)"
        )
    if not (np.issubdtype(matrix.dtype, np.number) or matrix.dtype == bool):
        raise ValueError(f"confusion must hold pixel counts, got dtype {matrix.dtype}")
    matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise ValueError("confusion must hold non-negative, finite pixel counts; got negative, NaN or inf entries")
    return matrix


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator``, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean(values: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


class _Counts:
    """The sums every metric reads off a checked confusion matrix ``n``."""

    def __init__(self, confusion: Confusion) -> None:
        self.n = _as_matrix(confusion)
        self.true_positives = np.diag(self.n)  # n_ii
        self.support = self.n.sum(axis=1)  # t_i: ground-truth pixels of class i
        self.predicted = self.n.sum(axis=0)  # p_i = Σ_j n_ji: pixels predicted as i
        self.total = self.support.sum()
        self.iou = _ratio(self.true_positives, self.support + self.predicted - self.true_positives)
        self.recall = _ratio(self.true_positives, self.support)  # the paper's per-class accuracy


def pixel_accuracy(confusion: Confusion) -> float:
    """``Σ_i n_ii / Σ_i t_i``: the share of labelled pixels predicted right (NaN when none was counted)."""
    c = _Counts(confusion)
    return float(c.true_positives.sum() / c.total) if c.total > 0 else math.nan


def mean_accuracy(confusion: Confusion) -> float:
    """``(1/n_cl) Σ_i n_ii / t_i`` over the classes present in the ground truth."""
    return _mean(_Counts(confusion).recall)


def mean_iou(confusion: Confusion) -> float:
    """``(1/n_cl) Σ_i n_ii / (t_i + p_i − n_ii)`` over the classes in the ground truth or the prediction."""
    return _mean(_Counts(confusion).iou)


def frequency_weighted_iou(confusion: Confusion) -> float:
    """``(Σ_k t_k)^−1 Σ_i t_i n_ii / (t_i + p_i − n_ii)``: each class's IU weighted by its pixels."""
    c = _Counts(confusion)
    # classes with t_i = 0 carry no weight (their IoU is 0 or undefined): skip them so NaN cannot leak in
    return float((c.support * np.nan_to_num(c.iou)).sum() / c.total) if c.total > 0 else math.nan


def scores(confusion: Confusion) -> dict[str, Any]:
    """Every segmentation metric of a confusion matrix.

    Args:
        confusion: ``(C, C)`` pixel counts, rows = ground truth, columns = prediction (the output of
            :func:`confusion_matrix` or ``ConfusionMatrix.matrix``); a tensor on any device, an array
            or nested lists.

    Returns:
        A dict of plain Python values:

        - ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou``, ``mean_dice``: floats
          (NaN only when nothing at all was counted);
        - ``iou``, ``dice``, ``precision``, ``recall``: per-class lists of C floats, NaN where
          undefined (see the module docstring); ``recall`` is the paper's per-class accuracy
          ``n_ii / t_i``, and ``dice`` equals the F1 score;
        - ``support``: per-class list of C ints, the ground-truth pixel counts ``t_i``;
        - for a binary task (C == 2) also ``foreground_iou`` and ``foreground_dice``: class 1's.

    Raises:
        ValueError: not a square matrix, or negative / non-finite counts.
    """
    c = _Counts(confusion)
    dice = _ratio(2 * c.true_positives, c.support + c.predicted)
    result: dict[str, Any] = {
        "pixel_accuracy": pixel_accuracy(c.n),
        "mean_accuracy": mean_accuracy(c.n),
        "mean_iou": mean_iou(c.n),
        "fw_iou": frequency_weighted_iou(c.n),
        "mean_dice": _mean(dice),
        "iou": c.iou.tolist(),
        "dice": dice.tolist(),
        "precision": _ratio(c.true_positives, c.predicted).tolist(),
        "recall": c.recall.tolist(),
        "support": [int(x) for x in c.support],
    }
    if c.n.shape[0] == 2:
        result["foreground_iou"] = float(c.iou[1])
        result["foreground_dice"] = float(dice[1])
    return result
