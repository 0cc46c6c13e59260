"""Prediction for image time series: one mask per series, whole or tile by tile through every date.

A series of ``T`` dates of ``C`` bands goes through the image machinery (test-time flips and scales, the
tiler, the memory check) as one image of ``T * C`` channels: ``SeriesAsImage`` wraps the model so that a
tile taken from that image is every date's tile, given back to the network as a series with the dates'
validity and days. Days are counted as training counted them (``segforge.data.series.day_reference``: from
1 January of the earliest year among the dates given).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segforge.data.base import scale_image
from segforge.data.io import is_image_file
from segforge.data.series import (
    SERIES_EXTENSIONS,
    date_names,
    day_reference,
    read_dates_csv,
    read_series,
    series_pixels,
    series_sources,
)
from segforge.inference.image import Prediction, image_probabilities
from segforge.inference.inputs import expand_inputs
from segforge.metrics import logits_to_labels


class SeriesAsImage(nn.Module):
    """``model`` seen as an image model: ``(N, T * C, H, W)`` in, logits out, for one series' dates.

    Args:
        model: a model of time series (``inputs == "series"``).
        valid, days: ``(T,)`` the series' validity and days.
    """

    inputs = "images"

    def __init__(self, model: nn.Module, valid: torch.Tensor, days: torch.Tensor) -> None:
        super().__init__()
        self.model, self.valid, self.days = model, valid, days
        self.every_date_valid = bool(valid.all())  # (decided here: the memory check runs on the meta device)
        self.geometry, self.num_classes = model.geometry, model.num_classes
        self.in_channels = len(valid) * model.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], len(self.valid)
        series = x.unflatten(1, (t, self.model.in_channels))
        valid, days = (v.to(x.device).expand(n, t) for v in (self.valid, self.days))
        # (the memory check's pass on the meta device counts every date: an upper bound, and no gather to size)
        every = self.every_date_valid or x.device.type == "meta"
        return self.model(series, None if every else valid, days)


def expand_series_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The series that ``inputs`` name: ``.npy`` and TIFF files, folders of one image per date, and folders of
    such series (a dataset's ``series/``); file patterns expand as for images.

    Raises:
        ValueError: an input that names no series.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            inside = series_sources(path)
            holds_series = any(p.is_dir() or p.suffix.lower() == ".npy" for p in inside)
            if holds_series:
                found += inside
            elif any(is_image_file(p) for p in path.iterdir()):
                found.append(path)  # one series: a folder of dates
            else:
                raise ValueError(f"{path} holds no series (.npy or TIFF files, or folders of one image per date)")
        elif path.is_file():
            if path.suffix.lower() not in SERIES_EXTENSIONS:
                raise ValueError(f"{path} is not a series: give .npy or TIFF files, or folders of one image per date")
            found.append(path)
        else:
            found += [p for p in expand_inputs([item]) if p.suffix.lower() in SERIES_EXTENSIONS]
    return list(dict.fromkeys(found))


def series_dates(
    sources: list[Path], dates_csv: str | Path | None
) -> dict[Path, tuple[np.ndarray | None, np.ndarray | None]]:
    """Each series' ``(days from the reference, valid)``: from a ``series,date[,valid]`` CSV (by the series'
    name), from a folder of dates named by them, else None (days 0, 1, ...)."""
    table = read_dates_csv(Path(dates_csv)) if dates_csv is not None else {}
    found: dict[Path, tuple[list[int] | None, list[bool] | None]] = {}
    for source in sources:
        name = source.name if source.is_dir() else source.stem
        days, valid = table.get(name, (None, None))
        if days is None and source.is_dir():
            days = date_names(source)
        found[source] = (days, valid)
    reference = day_reference([d for days, _ in found.values() for d in days or ()])
    return {
        source: (
            None if days is None else np.asarray(days, dtype=np.int64) - reference,
            None if valid is None else np.asarray(valid, dtype=bool),
        )
        for source, (days, valid) in found.items()
    }


def prepare_series(
    path: Path | np.ndarray, info: Mapping, model: nn.Module, dates: tuple[np.ndarray | None, np.ndarray | None]
) -> tuple[np.ndarray, torch.Tensor, SeriesAsImage]:
    """Reads the series ``path`` (or takes the array ``(T, H, W[, C])`` as a file holds it) → ``(the last valid
    date to show (H, W, C) in [0, 1], the normalised series as one image (T * C, H, W), the model wrapped to
    take it)``.

    Raises:
        ValueError: a band count the model cannot take, dates that do not fit the series.
    """
    if isinstance(path, np.ndarray):
        array = path[..., None] if path.ndim == 3 else path
        if array.ndim != 4:
            raise ValueError(f"a series array is (T, H, W) or (T, H, W, C), bands last; got {path.shape}")
        path = f"array {tuple(path.shape)}"
        series = series_pixels(array, path)
    else:
        series = read_series(path)
    t, height, width, channels = series.shape
    if channels != model.in_channels:
        raise ValueError(
            f"series {path} has {channels} band(s) per date but the model expects {model.in_channels}; "
            "use a model trained on such series"
        )
    days, valid = dates
    for values in (days, valid):
        if values is not None and len(values) != t:
            raise ValueError(
                f"series {path} has {t} dates but {len(values)} are listed for it; list one row per date, in order"
            )
    valid = np.ones(t, dtype=bool) if valid is None else valid.copy()
    if series.dtype.kind == "f":
        valid &= np.isfinite(series).any(axis=(1, 2, 3))
        series = np.where(np.isfinite(series), series, 0)
    if not valid.any():
        raise ValueError(f"series {path} has no valid date: every date is marked invalid or holds no data")
    images = scale_image(series)  # (T, H, W, C)
    display = images[np.flatnonzero(valid)[-1]]
    normalised = images.copy()
    if info.get("mean") is not None and info.get("std") is not None:
        normalised = (normalised - np.asarray(info["mean"], np.float32)) / np.asarray(info["std"], np.float32)
    normalised[~valid] = 0
    x = torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2).reshape(t * channels, height, width)))
    days_t = torch.arange(t) if days is None else torch.from_numpy(days)
    return (
        np.clip(display[..., :3] if channels > 3 else display, 0, 1),
        x,
        SeriesAsImage(model, torch.from_numpy(valid), days_t),
    )


def predict_series(
    model: nn.Module,
    series: str | Path | np.ndarray,
    *,
    days: Sequence[int] | None = None,
    valid: Sequence[bool] | None = None,
    info: Mapping | None = None,
    device: torch.device | str | None = None,
    **tiling,
) -> Prediction:
    """The mask and class probabilities of one time series (``segforge.predict`` for a model of time series).

    Args:
        series: a ``.npy``/TIFF file or folder of dates, or an array ``(T, H, W[, C])`` as a file holds it.
        days: each date's day (counted as in training: from 1 January of the earliest year, or 0, 1, ...).
        valid: which dates are clear (default: all that hold data).
        tiling: ``tile``, ``overlap``, ``tile_batch``, ``blend``, ``flip``, ``scales`` as ``segforge.predict``.
    """
    info = getattr(model, "info", {}) if info is None else info
    if device is None:
        device = next(model.parameters()).device
    dates = (
        None if days is None else np.asarray(days, dtype=np.int64),
        None if valid is None else np.asarray(valid, dtype=bool),
    )
    source = Path(series) if isinstance(series, (str, Path)) else np.asarray(series)
    _, x, network = prepare_series(source, info, model.eval(), dates)
    what = f"series {series}" if isinstance(series, (str, Path)) else "the series"
    probs = image_probabilities(network, x, what, device=device, **tiling)
    return Prediction(mask=logits_to_labels(probs[None])[0].numpy(), probabilities=probs.numpy())
