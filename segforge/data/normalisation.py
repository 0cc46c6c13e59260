"""Normalisation statistics: the per-channel mean and standard deviation of a dataset's images.

Images are scaled as training scales them (``scale_image``: by the dtype's maximum), then each
channel is normalised by the training images' mean and standard deviation, which the checkpoint
records so evaluation and prediction normalise alike. ``image_moments`` summarises one image exactly
(8- and 16-bit images by a histogram of their levels); ``combine_moments`` merges the summaries (Chan
et al.'s parallel variance), so the statistics of any number of images cost one pass and no memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from segforge.data.base import SegmentationDataset, scale_image
from segforge.data.io import map_files


def image_moments(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(pixels, per-channel mean, per-channel sum of squared deviations)`` of one stored ``(H, W, C)``
    image as ``scale_image`` scales it, in float64: what ``combine_moments`` merges into a dataset's
    mean and standard deviation.

    8- and 16-bit images are counted by a histogram of their levels per channel (exact, and without
    the float copies of the image that made the statistics cost twice the reading of the file).
    """
    channels = image.shape[-1]
    flat = image.reshape(-1, channels)
    if not len(flat):
        return 0, np.zeros(channels), np.zeros(channels)
    if image.dtype in (np.uint8, np.uint16):
        top = np.iinfo(image.dtype).max
        levels = (np.arange(top + 1, dtype=np.float32) / np.float32(top)).astype(np.float64)  # as scale_image
        counts = [np.bincount(flat[:, c], minlength=top + 1) for c in range(channels)]
        mean = np.array([count @ levels for count in counts]) / len(flat)
        return len(flat), mean, np.array([count @ (levels - m) ** 2 for count, m in zip(counts, mean, strict=True)])
    values = scale_image(flat).astype(np.float64)
    mean = values.mean(axis=0)
    return len(flat), mean, ((values - mean) ** 2).sum(axis=0)


def combine_moments(
    moments: Iterable[tuple[int, np.ndarray, np.ndarray]], *, describe: Callable[[int], str] = str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Merges per-image moments pairwise (Chan et al.: exact and stable in float64 however many images).

    Returns:
        ``(mean, std)``, a tuple of C floats each.

    Raises:
        ValueError: no moments, or images with different channel counts (``describe(i)`` names image i).
    """
    total, mean, m2 = 0, None, None
    for index, (n, image_mean, image_m2) in enumerate(moments):
        if mean is None:
            total, mean, m2 = n, image_mean, image_m2
            continue
        if len(image_mean) != len(mean):
            raise ValueError(
                f"image {describe(index)} has {len(image_mean)} channels, the first image has "
                f"{len(mean)}; convert the images to one mode"
            )
        delta = image_mean - mean
        mean = mean + delta * n / max(total + n, 1)
        m2 = m2 + image_m2 + delta**2 * total * n / max(total + n, 1)
        total += n
    if mean is None:
        raise ValueError("cannot compute normalisation statistics of an empty dataset")
    std = np.sqrt(m2 / max(total, 1))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-12)) for v in std)


def compute_stats(
    dataset: SegmentationDataset,
    *,
    max_samples: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the [0, 1]-scaled images, streamed over the files.

    Args:
        dataset: the (training) dataset; its transform and normalisation are not applied.
        max_samples: use only the first N samples (a quick estimate on a large dataset).

    Returns:
        ``(mean, std)``, each a tuple of C floats; pass them as ``mean=``/``std=`` to every split.

    Raises:
        ValueError: the dataset is empty or its images differ in channel count.
    """
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    moments = map_files(
        lambda i: image_moments(dataset.load_pixels(i)), count, desc="statistics", workers=workers, progress=progress
    )
    return combine_moments(moments, describe=dataset.describe)
