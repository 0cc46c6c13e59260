"""The held-out figures of a ``segforge evaluate`` report, as the README tables print them."""

from __future__ import annotations


def held_out(scores: dict, *, membranes: bool) -> str:
    """``membranes``: ISBI 2012's pixel error and membrane IoU; else CamVid's global / class average / mIoU."""
    if membranes:
        return (
            f"pixel error {1 - scores['pixel_accuracy']:.4f}, membrane IoU {100 * scores['iou'][1]:.1f} %, "
            f"mIoU {100 * scores['mean_iou']:.1f} %"
        )
    return (
        f"global {100 * scores['pixel_accuracy']:.1f} / class avg {100 * scores['mean_accuracy']:.1f} / "
        f"mIoU {100 * scores['mean_iou']:.1f}"
    )
