"""Built-in image time series whose classes only their change over time tells apart.

A scene is a mosaic of parcels (the cells of a random Voronoi partition, like fields seen from orbit);
each parcel's class ``k`` fixes its seasonal curve: every band follows
``0.5 + amplitude * weight_b * sin(2 pi (day - peak_k) / 365)``, the classes' peaks spread evenly over the
year. The amplitude, offset and peak of each parcel, and every pixel, are jittered. Hence:

* **one date is ambiguous**: on any day two classes whose peaks mirror each other around it have the same
  expected value, and the amplitudes overlap;
* **the temporal mean is uninformative**: every class has the same mean (0.5 plus the parcel's offset);
* **the sequence is not**: a few dates spread over the year give the curve's phase.

Acquisitions are irregular (each series has its own number of dates and days), and some dates are
covered by cloud: bright, textured, and marked invalid, as a cloud mask would mark them. Every series
is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from segforge.data.synthetic import _size, _texture

YEAR = 365


class Series(NamedTuple):
    """One sample of a time series."""

    images: np.ndarray  # (T, C, H, W) float32 in [0, 1]
    valid: np.ndarray  # (T,) bool: False for a cloud-covered date
    days: np.ndarray  # (T,) int64, acquisition day of year, increasing
    mask: np.ndarray  # (H, W) int64 classes


def class_peaks(num_classes: int) -> np.ndarray:
    """The day of year each class's curve peaks, spread evenly over the year."""
    return (np.arange(num_classes) * YEAR / num_classes + 30) % YEAR


def band_weights(channels: int) -> np.ndarray:
    """How strongly each band follows the seasonal curve (some bands in opposite phase, as red and
    near-infrared are over vegetation)."""
    weights = np.linspace(1.0, 0.4, channels)
    weights[1::2] *= -1
    return weights


def seasonal_curve(days: np.ndarray, peak: float | np.ndarray) -> np.ndarray:
    """``sin(2 pi (day - peak) / 365 + pi / 2)``: 1 at the peak day, -1 half a year away."""
    return np.cos(2 * np.pi * (np.asarray(days, dtype=np.float64) - peak) / YEAR)


def _parcels(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """``(H, W)`` int: the index of the nearest of ``count`` random centres (a Voronoi mosaic)."""
    centres = rng.uniform(0, 1, size=(count, 2)) * (height, width)
    y, x = np.mgrid[0:height, 0:width]
    distance = (y[None] - centres[:, 0, None, None]) ** 2 + (x[None] - centres[:, 1, None, None]) ** 2
    return distance.argmin(0)


def synthetic_series(
    index: int,
    *,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    channels: int = 4,
    seed: int = 0,
    dates: tuple[int, int] = (8, 16),
    cloud_rate: float = 0.2,
    noise: float = 0.03,
) -> Series:
    """One synthetic time series and its mask.

    Args:
        index: sample number (>= 0).
        size: side, or ``(height, width)``; at least 8.
        num_classes: classes (>= 2), each a seasonal curve with its own peak day.
        channels: bands per date (>= 1).
        seed: picks the dataset.
        dates: the least and most dates a series has (each series draws its own count and days).
        cloud_rate: the chance that a date is covered by cloud (invalid); at least one date stays clear.
        noise: standard deviation of the per-pixel noise.

    Raises:
        ValueError: fewer than 2 classes or 1 channel, an impossible date range or cloud rate.
    """
    height, width = _size(size)
    low, high = dates
    if num_classes < 2 or channels < 1:
        raise ValueError(f"need num_classes >= 2 and channels >= 1; got {num_classes}, {channels}")
    if not 1 <= low <= high <= YEAR:
        raise ValueError(f"dates must be (least, most) with 1 <= least <= most <= {YEAR}, got {dates}")
    if not 0 <= cloud_rate < 1:
        raise ValueError(f"cloud_rate must be in [0, 1), got {cloud_rate}")
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(low, high + 1))
    days = np.sort(rng.choice(YEAR, size=count, replace=False)).astype(np.int64)
    valid = rng.uniform(size=count) >= cloud_rate
    valid[rng.integers(count)] = True

    parcels = _parcels(rng, height, width, count=int(rng.integers(3, 9)))
    parcel_count = parcels.max() + 1
    labels = rng.integers(0, num_classes, size=parcel_count)
    amplitude = rng.uniform(0.12, 0.3, size=parcel_count)
    offset = rng.normal(0, 0.04, size=parcel_count)
    peak = class_peaks(num_classes)[labels] + rng.uniform(-12, 12, size=parcel_count)

    curves = seasonal_curve(days[:, None], peak[None, :])  # (T, parcels)
    level = 0.5 + offset[None, :] + amplitude[None, :] * curves  # (T, parcels)
    images = 0.5 + (level[:, parcels] - 0.5)[:, None] * band_weights(channels)[None, :, None, None]
    images = images + 0.05 * _texture(rng, height, width, cells=3)[None, None]
    images = images + rng.normal(0, noise, size=images.shape)
    for t in np.flatnonzero(~valid):  # clouds: bright, textured, hiding the ground
        images[t] = 0.85 + 0.1 * _texture(rng, height, width, cells=4)[None] + rng.normal(0, noise, (channels, 1, 1))
    return Series(np.clip(images, 0, 1).astype(np.float32), valid, days, labels[parcels].astype(np.int64))
