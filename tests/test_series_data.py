"""Time-series data: the series layout, PASTIS as distributed, batches of different lengths, one transform
for every date, temporal dropout and the errors a user can meet."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segforge.data import create_dataset, detect_layout
from segforge.data.errors import DatasetError
from segforge.data.pastis import PASTIS_VOID, PastisDataset
from segforge.data.series import SeriesCollate, SeriesDataset, SeriesItem, day_reference, parse_day, read_series
from segforge.data.series_folder import SeriesFolderDataset, write_synthetic_series_dataset
from segforge.data.synthetic_series import synthetic_series
from segforge.data.transforms import build_transforms


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_series_dataset(tmp_path_factory.mktemp("series"), num_train=6, num_val=2, size=32)


def test_the_synthetic_dataset_reads_back_as_written(synthetic) -> None:
    train, val = SeriesFolderDataset(synthetic, "train"), SeriesFolderDataset(synthetic, "val")
    assert (len(train), len(val)) == (6, 2) and train.classes == [f"season_peak_{k}" for k in range(4)]
    for index in range(len(train)):
        expected = synthetic_series(index, size=32)
        sample = train[index]
        np.testing.assert_array_equal(
            sample.images.numpy(), np.where(expected.valid[:, None, None, None], expected.images, 0)
        )
        np.testing.assert_array_equal(sample.mask.numpy(), expected.mask)
        np.testing.assert_array_equal(sample.valid.numpy(), expected.valid)
        # days from 1 January of the earliest year: the generator's day of year
        np.testing.assert_array_equal(sample.days.numpy(), expected.days)
    assert val.reference == train.reference == dt.date(2024, 1, 1).toordinal()


def test_a_batch_pads_shorter_series_with_invalid_dates(synthetic) -> None:
    train = SeriesFolderDataset(synthetic, "train")
    samples = [train[i] for i in range(3)]
    batch = SeriesCollate(ignore_index=-100)(samples)
    t = max(len(s.days) for s in samples)
    assert batch.images.shape == (3, t, 4, 32, 32) and batch.valid.shape == (3, t)
    for i, sample in enumerate(samples):
        n = len(sample.days)
        assert torch.equal(batch.valid[i, :n], sample.valid) and not batch.valid[i, n:].any()
        assert torch.equal(batch.images[i, :n], sample.images) and batch.images[i, n:].abs().sum() == 0


def test_every_date_gets_the_same_spatial_transform(tmp_path) -> None:
    """A series whose dates are one image: after flips, scaling, rotation and a crop its dates still are."""
    image = np.random.default_rng(0).uniform(size=(40, 48, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", np.stack([image.transpose(2, 0, 1)] * 5))
    Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) % 3, (40, 1))).save(tmp_path / "a.png")
    dataset = SeriesDataset([SeriesItem(tmp_path / "a.npy", tmp_path / "a.png")], classes=["a", "b", "c"])
    augment = {"hflip": {"p": 1.0}, "scale": {"scale_range": (0.7, 1.3)}, "rotate": {"limit_degrees": 30}}
    transform = build_transforms(augment, ignore_index=255, crop_size=24, seed=0)
    for seed in range(4):
        sample = dataset.sample(0, transform=transform, augment_seed=seed)
        assert sample.images.shape == (5, 3, 24, 24) and sample.mask.shape == (24, 24)
        for t in range(1, 5):
            torch.testing.assert_close(sample.images[t], sample.images[0], rtol=0, atol=0)


def test_temporal_dropout_drops_dates_and_keeps_one(synthetic) -> None:
    train = SeriesFolderDataset(synthetic, "train")
    train.temporal_dropout = 0.5
    plain = train.sample(0)
    dropped = [train.sample(0, augment_seed=seed).valid for seed in range(8)]
    assert all(v.any() and not (v & ~plain.valid).any() for v in dropped)  # only valid dates, at least one
    assert any(v.sum() < plain.valid.sum() for v in dropped)
    assert torch.equal(train.sample(0, augment_seed=3).valid, train.sample(0, augment_seed=3).valid)  # seeded
    with pytest.raises(ValueError, match=r"temporal_dropout must be in \[0, 1\)"):
        SeriesDataset([], classes=[], temporal_dropout=1.0)


def test_a_folder_of_dates_named_by_their_days(tmp_path) -> None:
    root = tmp_path / "data"
    for day in ("2023-03-01", "2023-01-11", "2023-06-30"):
        (root / "series" / "field").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 20, 3), 7, np.uint8)).save(root / "series" / "field" / f"{day}.png")
    (root / "masks").mkdir()
    Image.fromarray(np.ones((16, 20), np.uint8)).save(root / "masks" / "field.png")
    dataset = SeriesFolderDataset(root, num_classes=2)
    sample = dataset[0]
    assert sample.images.shape == (3, 3, 16, 20)
    assert sample.days.tolist() == [10, 59, 180]  # sorted by name: 11 January, 1 March, 30 June 2023


@pytest.mark.parametrize("layout", ["pages_rgb", "planar", "one_band", "npy_3d"])
def test_series_files_in_every_arrangement(tmp_path, layout) -> None:
    rng = np.random.default_rng(0)
    series = rng.integers(0, 65535, size=(4, 3, 10, 12), dtype=np.uint16)  # T x C x H x W
    if layout == "pages_rgb":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, series.transpose(0, 2, 3, 1), photometric="rgb")
        expected = series
    elif layout == "planar":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, series, photometric="minisblack", metadata={"axes": "TCYX"})
        expected = series
    elif layout == "one_band":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, series[:, 0], photometric="minisblack")
        expected = series[:, :1]
    else:
        path = tmp_path / "s.npy"
        np.save(path, series[:, 0])
        expected = series[:, :1]
    np.testing.assert_array_equal(read_series(path), expected.transpose(0, 2, 3, 1))


def test_missing_dates_are_invalid_and_partly_missing_ones_refused(tmp_path) -> None:
    series = np.ones((3, 2, 8, 8), np.float32)
    series[1] = np.nan
    np.save(tmp_path / "a.npy", series)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    sample = SeriesDataset([SeriesItem(tmp_path / "a.npy", tmp_path / "a.png")], classes=["x", "y"])[0]
    assert sample.valid.tolist() == [True, False, True] and torch.isfinite(sample.images).all()
    series[1, 0, 0, 0] = 1.0
    np.save(tmp_path / "a.npy", series)
    with pytest.raises(DatasetError, match=r"series .*a\.npy holds 127 non-finite pixel value"):
        read_series(tmp_path / "a.npy")


def _pastis(root, patches: dict[int, int]) -> None:
    (root / "DATA_S2").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    features = []
    for patch, fold in patches.items():
        t = 3 + patch % 3
        np.save(root / "DATA_S2" / f"S2_{patch}.npy", np.full((t, 10, 16, 16), patch, np.int16))
        target = np.stack([np.full((16, 16), patch % 19), np.zeros((16, 16)), np.zeros((16, 16))]).astype(np.int64)
        target[0, 0, 0] = PASTIS_VOID
        np.save(root / "ANNOTATIONS" / f"TARGET_{patch}.npy", target)
        dates = {str(i): int((dt.date(2018, 9, 24) + dt.timedelta(days=10 * i)).strftime("%Y%m%d")) for i in range(t)}
        features.append({"type": "Feature", "properties": {"ID_PATCH": patch, "Fold": fold, "dates-S2": dates}})
    (root / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_pastis_as_distributed(tmp_path) -> None:
    _pastis(tmp_path, {10000: 1, 10001: 2, 10002: 4, 10003: 5})
    train, val, test = (PastisDataset(tmp_path, split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 1, 1) and len(PastisDataset(tmp_path, "all")) == 4
    assert len(train.classes) == 20 and train.ignore_index == PASTIS_VOID
    sample = val[0]  # patch 10002: 3 dates of 10 bands
    assert sample.images.shape == (3, 10, 16, 16) and sample.mask[0, 0] == PASTIS_VOID
    assert sample.mask[1, 1] == 10002 % 19
    start = (dt.date(2018, 9, 24) - dt.date(2018, 1, 1)).days
    assert sample.days.tolist() == [start + 10 * i for i in range(3)]
    with pytest.raises(DatasetError, match="PASTIS has no split 'fold9'; choose from"):
        PastisDataset(tmp_path, "fold9")


def test_dates_that_do_not_fit_their_series_are_named(synthetic, tmp_path) -> None:
    root = tmp_path / "bad"
    write_synthetic_series_dataset(root, num_train=2, num_val=1, size=16)
    rows = (root / "dates.csv").read_text().splitlines()
    last_of_first = [row for row in rows if row.startswith("0000,")][-1]
    (root / "dates.csv").write_text("\n".join(row for row in rows if row != last_of_first))  # one date short
    with pytest.raises(DatasetError, match=r"series .*0000\.npy has \d+ dates but \d+ are listed for it"):
        SeriesFolderDataset(root, "train")[0]
    (root / "dates.csv").write_text("series,date\n0000,spring\n")
    with pytest.raises(DatasetError, match=r"dates\.csv line 2: 'spring' is not a date"):
        SeriesFolderDataset(root, "train")
    (root / "masks" / "0001.png").unlink()
    (root / "dates.csv").unlink()
    with pytest.raises(DatasetError, match=r"1 series have no mask in .*masks \(e\.g\. 0001\)"):
        SeriesFolderDataset(root, "train")


def test_day_numbers() -> None:
    assert parse_day("2024-05-17") == parse_day("20240517") == dt.date(2024, 5, 17).toordinal()
    assert parse_day(" 42 ") == 42
    assert day_reference([parse_day("2019-03-01"), parse_day("2018-09-24")]) == dt.date(2018, 1, 1).toordinal()
    assert day_reference([3, 40]) == 0


@pytest.mark.parametrize("layout", ["series", "pastis"])
def test_each_series_layout_is_detected_and_survives_pickling(tmp_path, layout) -> None:
    """DataLoader workers started with "spawn" pickle the dataset."""
    if layout == "series":
        write_synthetic_series_dataset(tmp_path, num_train=2, num_val=1, size=16)
    else:
        _pastis(tmp_path, {1: 1, 2: 5})
    assert detect_layout(tmp_path) == layout
    dataset = create_dataset("auto", tmp_path, "train")
    copy = pickle.loads(pickle.dumps(dataset))
    for a, b in zip(dataset[0], copy[0], strict=True):
        assert torch.equal(a, b)


def test_a_series_without_a_valid_date_is_named(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 1, 8, 8), np.float32))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    item = SeriesItem(tmp_path / "a.npy", tmp_path / "a.png", days=(0, 5), valid=(False, False))
    dataset = SeriesDataset([item], classes=["x", "y"])
    for read in (dataset.__getitem__, dataset.load_pixels):
        with pytest.raises(DatasetError, match=r"series .*a\.npy has no valid date"):
            read(0)


def test_the_doctor_reads_series_by_their_valid_dates(synthetic) -> None:
    from segforge.data import diagnose

    report = diagnose(synthetic)
    assert report.errors == [] and report.layout == "series"
    expected = [int(synthetic_series(i, size=32).valid.sum()) for i in range(6)]
    assert f"{min(expected)}-{max(expected)} valid dates" in report.format()
