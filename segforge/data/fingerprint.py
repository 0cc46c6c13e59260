"""A fingerprint of a training split: what a training recipe needs to know about the data.

``fingerprint(dataset)`` reads every sample once, with the dataset doctor's checks
(``segforge.data.doctor``): a problem that would make training wrong (0/255 masks, labels out of
range, masks of another size, unreadable files) raises ``ValueError`` with the doctor's message and
fix, before any training starts. What it returns is small and printable: counts, sizes, channels,
pixel range, class shares, normalisation statistics, and whether the classes' layout has an up and
a down (road scenes) or not (micrographs, satellite tiles), which decides the flips and rotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segforge.data.base import SegmentationDataset
from segforge.data.class_weights import ClassPixels
from segforge.data.doctor import DoctorReport, SplitSummary, check_split
from segforge.data.normalisation import combine_moments


@dataclass(frozen=True)
class Fingerprint:
    """What the training split holds.

    Attributes:
        images: labelled samples.
        median_size, min_size: ``(height, width)`` of the images (median and smallest side by side).
        channels: bands per image; dtype: as stored (``uint8``, ``uint16``, ``float32``).
        max_value: the largest pixel value found (a 12-bit camera in uint16 files stops at 4095).
        num_classes: classes, as given or inferred from the labels like the doctor does.
        class_share: ``(C,)`` share of each class among the labelled pixels.
        ignored_share: share of the scored pixels (inside region masks) that carry the ignore label.
        mean, std: per-channel statistics of the [0, 1]-scaled images.
        up_down, left_right: total-variation distance between the class shares of the masks' top and
            bottom halves (left and right): near 0 when the classes' layout has no up and down.
        class_pixels: the counts behind median-frequency class weights.
        raw_values: the mask values as stored (before the label map).
        classes: the class names (``class_<i>`` where the dataset has none).
        inputs: ``"images"``, or ``"series"`` for image time series (the dataset's declaration).
        dates: the median number of valid dates per series (1 for images).
    """

    images: int
    median_size: tuple[int, int]
    min_size: tuple[int, int]
    channels: int
    dtype: str
    max_value: float
    num_classes: int
    class_share: tuple[float, ...]
    ignored_share: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    up_down: float
    left_right: float
    class_pixels: ClassPixels
    raw_values: tuple[int, ...]
    classes: tuple[str, ...]
    inputs: str = "images"
    dates: int = 1

    def describe(self) -> list[str]:
        """A few lines for the log."""
        h, w = self.median_size
        shares = ", ".join(f"{name} {share:.1%}" for name, share in zip(self.classes[:12], self.class_share))
        return [
            (
                f"{self.images} labelled images, median {w}x{h} (WxH), smallest side {min(self.min_size)} px, "
                f"{self.channels} channel(s) of {self.dtype} (largest value {self.max_value:g})"
            ),
            f"{self.num_classes} classes by share of pixels: {shares}{', ...' if self.num_classes > 12 else ''}"
            + (f"; {self.ignored_share:.1%} of pixels unlabelled" if self.ignored_share else ""),
            (
                f"class layout: top vs bottom differ by {self.up_down:.2f}, left vs right by {self.left_right:.2f} "
                "(0 = the same classes everywhere)"
            ),
        ]


def _half_difference(summary: SplitSummary, half: dict[int, int], to_class, num_classes: int) -> float:
    """Total-variation distance between the class shares of one half of the masks and of the other."""
    first, second = np.zeros(num_classes), np.zeros(num_classes)
    for value, pixels in summary.raw_values.items():
        label = to_class(value)
        if label is not None:
            first[label] += half.get(value, 0)
            second[label] += pixels - half.get(value, 0)
    if not first.sum() or not second.sum():
        return 0.0
    return float(0.5 * np.abs(first / first.sum() - second / second.sum()).sum())


def fingerprint(
    dataset: SegmentationDataset,
    *,
    report: DoctorReport | None = None,
    name: str = "train",
    workers: int | None = None,
    progress: bool | None = None,
) -> Fingerprint:
    """Reads every sample of ``dataset`` once and summarises it.

    Args:
        dataset: the training split (its transform is not applied). Without ``num_classes`` the
            classes are inferred from the labels, as ``segforge doctor`` infers them.
        report: the doctor's report to add this split to (its root and options make the fixes'
            command lines); default a new one.

    Raises:
        ValueError: the doctor found an error in this split; the message lists each with its fix.
    """
    if report is None:
        report = DoctorReport(Path("DATA_FOLDER"), dataset.layout, False, [], None)
    summary = check_split(report, dataset, name, workers=workers, progress=progress)
    if report.errors:
        problems = "\n".join(
            f"- {p.message}\n  fix: {p.fix}" + (f"\n  files: {', '.join(map(str, p.files[:3]))}" if p.files else "")
            for p in report.errors
        )
        raise ValueError(f"the {name} data cannot be trained on as it is:\n{problems}")
    if summary.pixels is None or not summary.pixels.class_pixels.any():
        raise ValueError(
            f"the {name} split has no labelled pixels: every mask is empty, unlabelled or outside the "
            "region masks; check the masks (segforge doctor shows their values)"
        )
    num_classes, lut, ignore = report.num_classes, dataset.label_map, dataset.ignore_index

    def to_class(value: int) -> int | None:
        label = int(lut[value]) if lut is not None and 0 <= value < len(lut) else value
        return label if 0 <= label < num_classes and label != ignore else None

    pixels = summary.pixels
    heights = sorted(h for (w, h), n in summary.sizes.items() for _ in range(n))
    widths = sorted(w for (w, h), n in summary.sizes.items() for _ in range(n))
    (channels, dtype), _ = summary.channels.most_common(1)[0]
    mean, std = combine_moments(summary.moments, describe=dataset.describe)
    labelled = pixels.class_pixels.sum()
    dates = sorted(summary.dates.elements())
    return Fingerprint(
        images=summary.labelled,
        median_size=(heights[len(heights) // 2], widths[len(widths) // 2]),
        min_size=(heights[0], widths[0]),
        channels=int(channels),
        dtype=dtype,
        max_value=float(summary.max_value),
        num_classes=int(num_classes),
        class_share=tuple(float(c) / labelled for c in pixels.class_pixels),
        ignored_share=float(1 - labelled / max(pixels.total_pixels, 1)),
        mean=mean,
        std=std,
        up_down=_half_difference(summary, summary.raw_top, to_class, num_classes),
        left_right=_half_difference(summary, summary.raw_left, to_class, num_classes),
        class_pixels=pixels,
        raw_values=tuple(int(v) for v in sorted(summary.raw_values)),
        classes=tuple(dataset.classes[c] if c < len(dataset.classes) else f"class_{c}" for c in range(num_classes)),
        inputs=dataset.inputs,
        dates=dates[len(dates) // 2] if dates else 1,
    )
