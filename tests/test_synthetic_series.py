"""The built-in time series: only the sequence tells the classes apart, dates are irregular, clouds invalid."""

from __future__ import annotations

import numpy as np
import pytest

from segforge.data.synthetic_series import (
    YEAR,
    band_weights,
    class_peaks,
    seasonal_curve,
    synthetic_series,
)


def _signal(series, channels: int) -> np.ndarray:
    """``(T, H, W)``: the bands projected back onto the seasonal signal (level minus 0.5)."""
    weights = band_weights(channels)
    return np.einsum("tchw,c->thw", series.images - 0.5, weights) / (weights**2).sum()


def _nearest_curve(signal: np.ndarray, days: np.ndarray, num_classes: int) -> np.ndarray:
    """Each pixel's class by correlation of its (centred) values with each class's curve on those days."""
    templates = seasonal_curve(days[:, None], class_peaks(num_classes)[None, :])  # (t, K)
    if len(days) > 1:
        signal, templates = signal - signal.mean(0), templates - templates.mean(0)
    norms = np.maximum(np.linalg.norm(templates, axis=0), 1e-9)
    return np.einsum("thw,tk->khw", signal, templates / norms).argmax(0)


def test_only_the_sequence_tells_the_classes_apart() -> None:
    """An oracle that knows the classes' curves: from every clear date it is right almost everywhere; from
    one date it is wrong about half the time; and every class has the same temporal mean."""
    classes, channels = 4, 4
    full, one, temporal_means, masks = [], [], [], []
    for index in range(24):
        series = synthetic_series(index, num_classes=classes, channels=channels)
        signal, clear = _signal(series, channels), np.flatnonzero(series.valid)
        full.append((_nearest_curve(signal[clear], series.days[clear], classes) == series.mask).mean())
        one.append((_nearest_curve(signal[clear[:1]], series.days[clear[:1]], classes) == series.mask).mean())
        temporal_means.append(signal[clear].mean(0).ravel())
        masks.append(series.mask.ravel())
    assert np.mean(full) > 0.97
    assert np.mean(one) < 0.65
    # the temporal mean: the nearest class average (fitted on these very pixels) does little better than
    # always answering the commonest class
    values, labels = np.concatenate(temporal_means), np.concatenate(masks)
    averages = np.array([values[labels == k].mean() for k in range(classes)])
    nearest = np.abs(values[:, None] - averages[None, :]).argmin(1)
    commonest = np.bincount(labels, minlength=classes).max() / len(labels)
    assert (nearest == labels).mean() < commonest + 0.1


def test_a_series_is_a_pure_function_of_seed_and_index() -> None:
    a, b = synthetic_series(5, seed=1), synthetic_series(5, seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, synthetic_series(6, seed=1).images[: len(a.images)])


@pytest.mark.parametrize(("size", "channels", "dates"), [(64, 4, (8, 16)), ((17, 40), 1, (1, 1)), (8, 10, (3, 5))])
def test_shapes_dates_and_clouds(size, channels, dates) -> None:
    height, width = (size, size) if isinstance(size, int) else size
    for index in range(6):
        series = synthetic_series(index, size=size, channels=channels, dates=dates, cloud_rate=0.5)
        t = len(series.days)
        assert dates[0] <= t <= dates[1]
        assert series.images.shape == (t, channels, height, width) and series.images.dtype == np.float32
        assert series.mask.shape == (height, width) and series.valid.shape == (t,)
        assert series.valid.any()  # at least one clear date
        assert np.all(np.diff(series.days) > 0) and series.days.min() >= 0 and series.days.max() < YEAR
        assert series.images.min() >= 0 and series.images.max() <= 1
        if (~series.valid).any():  # clouds are bright
            assert series.images[~series.valid].mean() > series.images[series.valid].mean() + 0.2


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        synthetic_series(0, num_classes=1)
    with pytest.raises(ValueError, match=r"dates must be \(least, most\)"):
        synthetic_series(0, dates=(5, 2))
    with pytest.raises(ValueError, match=r"cloud_rate must be in \[0, 1\)"):
        synthetic_series(0, cloud_rate=1.0)
    with pytest.raises(ValueError, match="at least 8x8"):
        synthetic_series(0, size=4)
