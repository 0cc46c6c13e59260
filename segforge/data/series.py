"""Image time series: one sample is a stack of dates and one mask.

A series is read as ``(T, H, W, C)`` from a ``T x C x H x W`` ``.npy`` array, a multi-page TIFF (one page per
date) or a folder of one image per date; its dates (acquisition days and whether each is clear) come with it.
Days are counted from 1 January of the dataset's earliest year (the same reference for every split, so that
a day means one season for training and validation alike); a date whose pixels are all NaN counts as
missing. Series may differ in length: ``SeriesCollate`` pads a batch with empty, invalid dates.

The layouts that hold series: ``segforge.data.series_folder`` (``series/``, ``masks/``, ``dates.csv``) and
``segforge.data.pastis`` (PASTIS as distributed).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from segforge.data.base import SegmentationDataset, scale_image
from segforge.data.io import (
    DatasetError,
    _read_tiff,
    check_decoded_size,
    is_image_file,
    list_images,
    natural_key,
    pixel_dtype,
    read_image,
    read_mask,
)
from segforge.data.transforms import Transform as SeededTransform

SERIES_DIR = "series"
SERIES_EXTENSIONS = (".npy", ".tif", ".tiff")


class SeriesSample(NamedTuple):
    """One series as tensors."""

    images: torch.Tensor  # (T, C, H, W) float32, normalised
    mask: torch.Tensor  # (H, W) int64
    valid: torch.Tensor  # (T,) bool
    days: torch.Tensor  # (T,) int64


@dataclass(frozen=True)
class SeriesItem:
    """Where one series is stored, and its dates (None: days 0, 1, ... and all valid)."""

    source: Path  # an .npy or .tif file, or a folder of one image per date
    mask: Path | None
    days: tuple[int, ...] | None = None
    valid: tuple[bool, ...] | None = None


def parse_day(text: str | int) -> int:
    """A date as a day number: ``2024-05-17`` and ``20240517`` → the proleptic ordinal, a small integer (a day
    count already) → itself.

    Raises:
        ValueError: neither a date nor an integer.
    """
    value = str(text).strip()
    try:
        if len(value) == 10 and value[4] == "-":
            return dt.date.fromisoformat(value).toordinal()
        if len(value) == 8 and value.isdigit():
            return dt.date(int(value[:4]), int(value[4:6]), int(value[6:])).toordinal()
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD or YYYYMMDD) or a day number") from None


def day_reference(days: Sequence[int]) -> int:
    """What day 0 is for these day numbers: 1 January of the earliest year when they are calendar dates
    (ordinals), else 0 (they are day counts already)."""
    earliest = min(days, default=0)
    if earliest < dt.date(1900, 1, 1).toordinal():
        return 0
    return dt.date(dt.date.fromordinal(earliest).year, 1, 1).toordinal()


def read_series(source: Path) -> np.ndarray:
    """One series as ``(T, H, W, C)`` in a pixel type segforge computes with; a date whose pixels are all NaN
    is returned as NaN (a missing acquisition: ``SeriesDataset`` marks it invalid).

    Raises:
        DatasetError: missing, unreadable or of an unsupported shape; partly non-finite dates.
    """
    if source.is_dir():
        dates = list_images(source)
        if not dates:
            raise DatasetError(
                f"series folder {source} holds no images; put one image per date in it", path=source, kind="missing"
            )
        images = [read_image(path) for path in dates]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise DatasetError(
                f"the dates of series {source} differ in size or channels ({sorted(shapes)}); every date of a "
                "series must be the same (H, W, C)",
                path=source,
                kind="size_mismatch",
            )
        return np.stack(images)
    if not source.is_file():
        raise DatasetError(f"series {source} does not exist", path=source, kind="missing")
    if source.suffix.lower() == ".npy":
        try:
            array = np.load(source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatasetError(
                f"cannot read series {source}: {err}; save it with numpy.save as a T x C x H x W array",
                path=source,
                kind="unreadable",
            ) from None
        check_decoded_size(source, "series", array.shape, array.dtype.itemsize)
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4:
            raise DatasetError(
                f"series {source} has shape {array.shape}; expected T x C x H x W (or T x H x W for one band)",
                path=source,
                kind="unsupported",
            )
        array = np.moveaxis(np.asarray(array), 1, -1)
    else:
        array, axes = _read_tiff(source, "series")
        if array.ndim == 2 or (array.ndim == 3 and axes.endswith("S")):
            array = array[None]  # a single date
        if array.ndim == 3:
            array = array[..., None]  # pages of one band
        elif array.ndim == 4 and not axes.endswith("S"):
            array = np.moveaxis(array, 1, -1)  # dates of separate band planes: T x C x H x W
        if array.ndim != 4:
            raise DatasetError(
                f"series {source} has shape {array.shape}; expected one page per date", path=source, kind="unsupported"
            )
    return series_pixels(array, source)


def series_pixels(array: np.ndarray, name: str | Path) -> np.ndarray:
    """A ``(T, H, W, C)`` series in a pixel type segforge computes with; dates whose pixels are all NaN are kept
    as NaN (missing), partly non-finite dates are refused naming ``name``."""
    if array.dtype.kind == "f":
        missing = ~np.isfinite(array).any(axis=(1, 2, 3))
        pixel_dtype(array[~missing], name, "series")  # partly non-finite dates are refused, naming the file
        return array.astype(np.float32, copy=False)
    return np.ascontiguousarray(pixel_dtype(array, name, "series"))


class SeriesDataset(SegmentationDataset):
    """``dataset[i]`` → ``SeriesSample(images (T, C, H, W), mask (H, W), valid (T,), days (T,))``.

    Reading, label checks, augmentation and normalisation as ``SegmentationDataset`` does them for one image,
    with every date of a series transformed alike (the dates are stacked on the channel axis for the
    transform) and ``mean``/``std`` per band. ``temporal_dropout`` (training) drops each valid date with
    this chance, keeping at least one.

    Args:
        items: the series, their masks and dates.
        classes, palette, ignore_index, mean, std, transform: as ``SegmentationDataset``'s.
        reference: the day numbers' day 0 (``day_reference`` of the whole dataset's dates).
    """

    layout = "series"
    inputs = "series"

    def __init__(
        self,
        items: Sequence[SeriesItem],
        *,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform=None,
        reference: int = 0,
        temporal_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            [(item.source, item.mask) for item in items],
            classes=classes,
            palette=palette,
            ignore_index=ignore_index,
            mean=mean,
            std=std,
            transform=transform,
        )
        if not 0 <= temporal_dropout < 1:
            raise ValueError(f"temporal_dropout must be in [0, 1), got {temporal_dropout}")
        self.items, self.reference, self.temporal_dropout = list(items), reference, temporal_dropout

    def subset(self, indices: Sequence[int]) -> SeriesDataset:
        indices = [range(len(self))[i] for i in indices]
        subset = SeriesDataset(
            [self.items[i] for i in indices],
            classes=self.classes,
            palette=self.palette,
            ignore_index=self.ignore_index,
            mean=self.mean,
            std=self.std,
            transform=self.transform,
            reference=self.reference,
            temporal_dropout=self.temporal_dropout,
        )
        subset.label_map, subset.layout = self.label_map, self.layout
        return subset

    def load_image(self, index: int) -> np.ndarray:
        """``(T, H, W, C)`` in the files' dtype (missing dates NaN)."""
        return read_series(self.items[index].source)

    def load_pixels(self, index: int) -> np.ndarray:
        """The valid dates ``(T, H, W, C)`` (missing and cloud-covered ones left out)."""
        series = self.load_image(index)
        _, valid = self.dates(index, len(series))
        if series.dtype.kind == "f":
            valid = valid & np.isfinite(series).any(axis=(1, 2, 3))
        self._check_some_valid(index, valid)
        return series[valid]

    def _check_some_valid(self, index: int, valid: np.ndarray) -> None:
        if not valid.any():
            raise DatasetError(
                f"series {self.describe(index)} has no valid date (every one is marked invalid or holds no data): "
                "there is nothing to learn its mask from; remove it, or mark its clear dates valid",
                path=self.describe(index),
                kind="unsupported",
            )

    def load_raw_mask(self, index: int) -> np.ndarray | None:
        mask = self.items[index].mask
        if mask is None:
            return None
        if mask.suffix.lower() == ".npy":
            values = np.load(mask, allow_pickle=False)
            return np.asarray(values[0] if values.ndim == 3 else values).astype(np.int64)
        return read_mask(mask)

    def dates(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``(days (T,) int64 from the reference, valid (T,) bool)`` of series ``index`` with ``count`` dates.

        Raises:
            DatasetError: the dates listed for the series are not as many as it has.
        """
        item = self.items[index]
        if item.days is None:
            return np.arange(count, dtype=np.int64), np.ones(count, dtype=bool)
        if len(item.days) != count:
            raise DatasetError(
                f"series {item.source} has {count} dates but {len(item.days)} are listed for it; list one "
                "row per date, in the order of the series",
                path=item.source,
                kind="size_mismatch",
            )
        valid = np.ones(count, dtype=bool) if item.valid is None else np.asarray(item.valid, dtype=bool)
        return np.asarray(item.days, dtype=np.int64) - self.reference, valid

    def sample(self, index: int, *, transform=None, augment_seed: int | None = None) -> SeriesSample:
        series = self.load_image(index)
        t, height, width, channels = series.shape
        mask = self.load_mask(index, (height, width))
        days, valid = self.dates(index, t)
        if series.dtype.kind == "f":
            missing = ~np.isfinite(series).any(axis=(1, 2, 3))
            valid = valid & ~missing
            series = np.where(missing[:, None, None, None], 0, series)
        self._check_some_valid(index, valid)
        rng = None if augment_seed is None else np.random.default_rng([augment_seed, index])
        if self.temporal_dropout and rng is not None:
            kept = valid & (rng.uniform(size=t) >= self.temporal_dropout)
            valid = kept if kept.any() else valid
        stacked = scale_image(series.transpose(1, 2, 0, 3).reshape(height, width, t * channels))
        if isinstance(transform, SeededTransform) and rng is not None:
            stacked, mask = transform(stacked, mask, rng=rng)
        elif transform is not None:
            stacked, mask = transform(stacked, mask)
        images = np.ascontiguousarray(stacked.reshape(*stacked.shape[:2], t, channels).transpose(2, 3, 0, 1))
        if self.mean is not None and self.std is not None:
            if len(self.mean) != channels:
                raise ValueError(
                    f"series {self.describe(index)} has {channels} bands but mean/std have {len(self.mean)} "
                    "values; give one mean and std per band"
                )
            images -= np.asarray(self.mean, np.float32)[:, None, None]
            images /= np.asarray(self.std, np.float32)[:, None, None]
        images[~valid] = 0  # what an invalid date holds is never read; keep it finite and small
        return SeriesSample(
            torch.from_numpy(images),
            torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            torch.from_numpy(valid),
            torch.from_numpy(days),
        )


class SeriesCollate:
    """Batches series of different lengths and sizes: dates padded at the end (zeros, invalid, day 0), images
    at the bottom and right (zeros), masks with the ignore index: nothing padded reaches the loss."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: list[SeriesSample]) -> SeriesSample:
        t = max(sample.images.shape[0] for sample in batch)
        height = max(sample.images.shape[-2] for sample in batch)
        width = max(sample.images.shape[-1] for sample in batch)
        channels = batch[0].images.shape[1]
        images = batch[0].images.new_zeros((len(batch), t, channels, height, width))
        masks = torch.full((len(batch), height, width), self.ignore_index, dtype=torch.int64)
        valid = torch.zeros(len(batch), t, dtype=torch.bool)
        days = torch.zeros(len(batch), t, dtype=torch.int64)
        for i, sample in enumerate(batch):
            n, h, w = sample.images.shape[0], *sample.images.shape[-2:]
            images[i, :n, :, :h, :w] = sample.images
            masks[i, : sample.mask.shape[0], : sample.mask.shape[1]] = sample.mask
            valid[i, :n], days[i, :n] = sample.valid, sample.days
        return SeriesSample(images, masks, valid, days)


def read_dates_csv(path: Path) -> dict[str, tuple[list[int], list[bool] | None]]:
    """``{series name: (day numbers, valid flags or None)}`` from a ``series,date[,valid]`` CSV.

    Raises:
        DatasetError: a missing column, or a row whose date or flag cannot be read (naming the line).
    """
    table: dict[str, tuple[list[int], list[bool] | None]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"series", "date"} <= set(reader.fieldnames):
            raise DatasetError(
                f"{path} must have a header with the columns series,date (and optionally valid), got "
                f"{reader.fieldnames}",
                path=path,
                kind="unsupported",
            )
        flagged = "valid" in reader.fieldnames
        for line, row in enumerate(reader, start=2):
            try:
                day = parse_day(row["date"])
                ok = str(row["valid"]).strip().lower() in ("1", "true", "yes") if flagged else True
            except (ValueError, TypeError, AttributeError) as err:
                raise DatasetError(f"{path} line {line}: {err}", path=path, kind="unsupported") from None
            days, valid = table.setdefault(row["series"], ([], [] if flagged else None))
            days.append(day)
            if valid is not None:
                valid.append(ok)
    return table


def date_names(folder: Path) -> list[int] | None:
    """The day numbers of a folder of dates whose file stems are dates, else None."""
    try:
        return [parse_day(path.stem) for path in list_images(folder)]
    except ValueError:
        return None


def series_sources(folder: Path) -> list[Path]:
    """The series in ``folder``: .npy and TIFF files and sub-folders holding images, naturally sorted."""
    return sorted(
        (
            path
            for path in folder.iterdir()
            if not path.name.startswith(".")
            and (
                (path.is_file() and path.suffix.lower() in SERIES_EXTENSIONS)
                or (path.is_dir() and any(is_image_file(p) for p in path.iterdir()))
            )
        ),
        key=natural_key,
    )
