"""Image time series through the same commands as images: train (the recipe picks the temporal U-Net) and
evaluate, repeatably; and a model that takes the other kind of input is refused before training."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from segforge.checkpoint import load_model
from segforge.cli import main
from segforge.data.series_folder import write_synthetic_series_dataset
from segforge.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_synthetic_series_dataset(
        tmp_path_factory.mktemp("series"), num_train=6, num_val=2, size=24, dates=(3, 6)
    )


def _rows(run) -> list[dict]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("temporal", [pytest.param("gru", marks=pytest.mark.slow), "attention"])
def test_train_and_evaluate_a_series_dataset_with_the_plain_commands(series, tmp_path, capsys, temporal) -> None:
    out = tmp_path / "runs"
    command = ["train", "--data", str(series), "--iterations", "4", "--eval-steps", "2", "--workers", "0"]
    assert main([*command, "--temporal", temporal, "--out", str(out), "--name", "run"]) == 0
    printed = capsys.readouterr().out
    assert "model.name            temporal_unet" in printed and "dates' pixels" in printed
    run = out / "run"
    assert [row["step"] for row in _rows(run)] == ["2", "4"]
    model, info = load_model(run / "best.safetensors")
    assert model.config["temporal"] == temporal and model.inputs == "series"
    assert json.loads((run / "report.json").read_text())["mean_iou"] >= 0
    assert (run / "overlays" / "000.png").is_file()
    assert main(["evaluate", "--checkpoint", str(run / "last.safetensors"), "--data", str(series)]) == 0
    assert "mean IoU (%)" in capsys.readouterr().out


@pytest.mark.slow  # 5 s (image runs' exact repeats and resumes: tests/test_training.py)
def test_a_series_run_repeats_exactly(series, tmp_path) -> None:
    """Seeded batches, augmentation and temporal dropout: the same command gives the same weights."""
    common = ["train", "--data", str(series), "--workers", "0", "--iterations", "3", "--out", str(tmp_path)]
    dropout = ["--set", "data.temporal_dropout=0.3"]
    assert main([*common, *dropout, "--name", "a"]) == 0
    assert main([*common, *dropout, "--name", "b"]) == 0
    a = load_model(tmp_path / "a" / "last.safetensors")[0].state_dict()
    b = load_model(tmp_path / "b" / "last.safetensors")[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_model_of_the_other_kind_of_input_is_refused(series, tmp_path, capsys) -> None:
    common = ["train", "--iterations", "2", "--workers", "0", "--out", str(tmp_path / "runs")]
    assert main([*common, "--data", str(series), "--model", "unet_padded"]) == 2
    assert "model 'unet_padded' takes images but the data at" in capsys.readouterr().err
    images = write_synthetic_dataset(tmp_path / "images", num_train=4, num_val=2, size=32)
    assert main([*common, "--data", str(images), "--model", "temporal_unet"]) == 2
    assert "model 'temporal_unet' takes series but the data at" in capsys.readouterr().err
    assert main([*common, "--data", str(images), "--set", "data.temporal_dropout=0.2"]) == 2
    assert "data.temporal_dropout leaves dates out of time series" in capsys.readouterr().err
    assert not any((tmp_path / "runs").glob("*/state.pt"))  # nothing trained


def test_predict_writes_one_mask_per_series_whole_or_in_tiles(series, tmp_path, capsys) -> None:
    """Masks equal the network's answer on the series with its dates (whole), and tiles cover every pixel."""
    import numpy as np
    from PIL import Image

    from segforge.data.series_folder import SeriesFolderDataset

    out = tmp_path / "runs"
    assert main(["train", "--data", str(series), "--iterations", "2", "--workers", "0", "--out", str(out)]) == 0
    checkpoint = next(out.glob("*/last.safetensors"))
    dates = ["--checkpoint", str(checkpoint), "--dates", str(series / "dates.csv")]
    assert main(["predict", *dates, "--out", str(tmp_path / "p"), str(series / "series")]) == 0
    assert "8 image(s) predicted, written to" in capsys.readouterr().out
    model, info = load_model(checkpoint)
    dataset = SeriesFolderDataset(series, "val", mean=info["mean"], std=info["std"])
    sample = dataset[0]
    with torch.no_grad():
        expected = model.eval()(sample.images[None], sample.valid[None], sample.days[None]).argmax(1)[0]
    written = np.asarray(Image.open(tmp_path / "p" / f"{dataset.sample_name(0)}.png"))
    np.testing.assert_array_equal(written, expected.numpy())
    # from Python: a file or an array, with the dates' days and validity
    import segforge

    known = {"days": sample.days.tolist(), "valid": sample.valid.tolist()}
    source = series / "series" / f"{dataset.sample_name(0)}.npy"
    np.testing.assert_array_equal(segforge.predict(model, source, **known).mask, expected.numpy())
    array = np.load(source).transpose(0, 2, 3, 1)  # (T, H, W, C), as files hold images: bands last
    np.testing.assert_array_equal(segforge.predict(model, array, **known).mask, expected.numpy())
    tiled = ["--tile", "16", "--out", str(tmp_path / "t"), str(series / "series" / "0006.npy")]
    assert main(["predict", *dates, *tiled]) == 0
    assert np.asarray(Image.open(tmp_path / "t" / "0006.png")).shape == (24, 24)
    assert main(["predict", "--checkpoint", str(checkpoint), "--stream", "--tile", "16", *tiled[2:]]) == 2
    assert "--stream reads one TIFF image by rows" in capsys.readouterr().err


def test_a_model_of_time_series_is_not_exported_to_onnx(tmp_path) -> None:
    from segforge import create_model
    from segforge.export import export_onnx

    with pytest.raises(ValueError, match="reads a time series date by date .* predict time series with segforge"):
        export_onnx(create_model("temporal_unet", 2), tmp_path / "m.onnx")


@pytest.mark.slow  # 4-5 s (a budgeted image run: tests/test_own_data.py)
def test_a_series_run_fits_a_time_budget(series, tmp_path) -> None:
    """The budget's first estimate of a validation round reads a series sample, whose fields are more than
    an image's (image, mask)."""
    out = tmp_path / "runs"
    assert main(["train", "--data", str(series), "--time-budget", "10s", "--workers", "0", "--out", str(out)]) == 0
    (run,) = out.iterdir()
    assert int(_rows(run)[-1]["step"]) > 0 and (run / "best.safetensors").is_file()
