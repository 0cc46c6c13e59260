"""Evaluation: a streaming confusion matrix and the FCN paper's metrics computed from it.

>>> cm = ConfusionMatrix(num_classes=12, ignore_index=255)
>>> cm.update(logits, masks)                       # per batch, on the data's device
>>> result = cm.all_reduce().compute()             # scores(cm.matrix)
>>> print(format_table(result, class_names))
"""

from __future__ import annotations

from segforge.metrics.confusion import ConfusionMatrix, check_labels, confusion_matrix, logits_to_labels
from segforge.metrics.report import format_table, load_json, plot_confusion, save_json
from segforge.metrics.scoring import frequency_weighted_iou, mean_accuracy, mean_iou, pixel_accuracy, scores

__all__ = [
    "ConfusionMatrix",
    "check_labels",
    "confusion_matrix",
    "format_table",
    "frequency_weighted_iou",
    "load_json",
    "logits_to_labels",
    "mean_accuracy",
    "mean_iou",
    "pixel_accuracy",
    "plot_confusion",
    "save_json",
    "scores",
]
