"""Class pixel statistics and SegNet's median-frequency class weights.

SegNet (Badrinarayanan et al., PAMI 2017, after Eigen & Fergus 2015) weights class ``c`` of the
cross-entropy by ``median(freq) / freq(c)``, where ``freq(c)`` is the number of pixels of class c
divided by the total number of pixels **of the images in which c is present** (not of all images):
a class that appears rarely but fills its images is not over-weighted. The ignore class is left
out of both the frequencies and their median.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segforge.data.base import SegmentationDataset
from segforge.data.io import map_files


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class in one mask.

    Args:
        mask: ``(H, W)`` integer labels; values outside ``0..num_classes-1`` (the ignore index) are
            not counted.
        num_classes: C.

    Returns:
        ``(C,)`` int64.
    """
    flat = mask.ravel()
    if flat.size and flat.min() < 0:
        flat = flat[flat >= 0]
    return np.bincount(flat, minlength=num_classes)[:num_classes].astype(np.int64)


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """SegNet's median-frequency balancing.

    Args:
        class_pixels: ``(C,)`` pixels of each class over the dataset.
        present_pixels: ``(C,)`` total pixels of the images in which each class is present.

    Returns:
        ``(C,)`` float64 ``median(freq) / freq(c)`` with ``freq = class_pixels / present_pixels``; the
        median is over the classes that occur. A class that never occurs gets weight 1.0 (the median
        class's weight): it contributes no pixels to the loss anyway.

    Raises:
        ValueError: shapes differ, or no class occurs.
    """
    class_pixels = np.asarray(class_pixels, dtype=np.float64)
    present_pixels = np.asarray(present_pixels, dtype=np.float64)
    if class_pixels.shape != present_pixels.shape or class_pixels.ndim != 1:
        raise ValueError(
            f"class_pixels {class_pixels.shape} and present_pixels {present_pixels.shape} must both be (C,)"
        )
    occurs = class_pixels > 0
    if not occurs.any():
        raise ValueError("no class occurs in the masks, so there are no frequencies to balance")
    freq = np.zeros_like(class_pixels)
    freq[occurs] = class_pixels[occurs] / present_pixels[occurs]
    weights = np.ones_like(freq)
    weights[occurs] = np.median(freq[occurs]) / freq[occurs]
    return weights


@dataclass
class ClassPixels:
    """Per-class pixel statistics of a dataset (arrays are ``(C,)`` int64).

    Attributes:
        class_pixels: pixels of each class.
        present_pixels: total pixels of the images in which the class is present.
        images: number of images in which the class is present.
        ignored_pixels: pixels labelled with the ignore index.
        total_pixels: all labelled-image pixels.
    """

    class_pixels: np.ndarray
    present_pixels: np.ndarray
    images: np.ndarray
    ignored_pixels: int = 0
    total_pixels: int = 0

    def add(self, counts: np.ndarray, size: int, ignored: int) -> None:
        present = counts > 0
        self.class_pixels += counts
        self.present_pixels[present] += size
        self.images[present] += 1
        self.ignored_pixels += ignored
        self.total_pixels += size

    @classmethod
    def zeros(cls, num_classes: int) -> ClassPixels:
        return cls(*(np.zeros(num_classes, dtype=np.int64) for _ in range(3)))

    def weights(self) -> np.ndarray:
        """``median_frequency_weights`` of these counts."""
        return median_frequency_weights(self.class_pixels, self.present_pixels)


def count_class_pixels(
    dataset: SegmentationDataset, *, workers: int | None = None, progress: bool | None = None
) -> ClassPixels:
    """Reads every mask of ``dataset`` once (no images) and counts class pixels.

    Raises:
        ValueError: the dataset does not know its number of classes; any ``DatasetError`` of a mask
            (unreadable, labels out of range, ...).
    """
    num_classes = dataset.num_classes
    if num_classes is None:
        raise ValueError("the dataset does not know its classes; give classes= or num_classes= when building it")

    def count(index: int) -> tuple[np.ndarray, int, int] | None:
        raw = dataset.load_raw_mask(index)
        if raw is None:
            return None
        mask = dataset.labels(raw, index)
        ignored = int(np.count_nonzero(mask == dataset.ignore_index)) if dataset.ignore_index is not None else 0
        return class_pixel_counts(mask, num_classes), mask.size, ignored

    result = ClassPixels.zeros(num_classes)
    for item in map_files(count, len(dataset), desc="masks", workers=workers, progress=progress):
        if item is not None:
            result.add(*item)
    return result


def class_weights(
    dataset: SegmentationDataset, *, workers: int | None = None, progress: bool | None = None
) -> np.ndarray:
    """Median-frequency class weights of a (training) dataset: ``(C,)`` float64, for the loss's ``weight=``."""
    return count_class_pixels(dataset, workers=workers, progress=progress).weights()
