"""Tiled inference: the tiler's invariants, overlap-tile equals the whole image, streaming equals in memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
import torch
from conftest import image_models

from segforge import create_model
from segforge.inference import plan_tiles, predict_tiff, predict_tiled, prepare_image, tiled_map
from segforge.models.segmenter import full_size_forward


# (29, 203) and (203, 29): rows of tiles wider than the working columns, handed on in several blocks
@pytest.mark.parametrize("height,width", [(37, 53), (5, 9), (64, 64), (65, 31), (1, 1), (29, 203), (203, 29)])
@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_an_identity_model_through_the_tiler_gives_back_the_input(height, width, overlap, blend) -> None:
    image = torch.randn(2, height, width)
    out = tiled_map(lambda tiles: tiles.clone(), image, tile=16, overlap=overlap, blend=blend, batch=3)
    torch.testing.assert_close(out, image, rtol=1e-6, atol=1e-6)


def test_a_constant_model_gives_a_constant_output_and_every_pixel_is_covered() -> None:
    image = torch.randn(3, 77, 100)
    out = tiled_map(lambda t: torch.full((t.shape[0], 4, *t.shape[-2:]), 0.25), image, tile=32, overlap=0.3)
    assert out.shape == (4, 77, 100) and torch.allclose(out, torch.full_like(out, 0.25))
    plan = plan_tiles(77, 100, tile=32, overlap=0.3)
    covered = torch.zeros(77, 100, dtype=torch.bool)
    for y in plan.ys:
        for x in plan.xs:
            covered[y : y + 32, x : x + 32] = True
    assert covered.all() and plan.ys[-1] == 77 - 32 and plan.xs[-1] == 100 - 32  # snapped to the edge


def test_tiles_are_not_padded_beyond_an_image_smaller_than_a_tile() -> None:
    plan = plan_tiles(20, 300, tile=64, overlap=0.25)
    assert plan.window == (20, 64) and plan.ys == (0,)
    with pytest.raises(ValueError, match=r"overlap is a share of the tile in \[0, 1\), got 1.5"):
        plan_tiles(20, 30, tile=8, overlap=1.5)


def test_padded_network_windows_move_by_multiples_of_its_stride() -> None:
    model = create_model("segnet_basic", 3)
    plan = plan_tiles(500, 400, tile=128, overlap=0.25, model=model)
    assert all(b - a == 96 for a, b in zip(plan.ys[:-1], plan.ys[1:-1])) and 96 % model.stride == 0


@pytest.mark.parametrize("width,tile,batch,tiles", [(70, 48, 2, 6), (150, 32, 1, 20)])  # 150: blocks within a row
def test_overlap_tile_equals_the_original_unet_on_the_whole_mirrored_image(width, tile, batch, tiles) -> None:
    torch.manual_seed(0)
    model = create_model("unet", 2).eval()
    image = torch.randn(1, 100, width)
    with torch.no_grad():
        whole = full_size_forward(model, image[None]).softmax(1)[0]
    tiled = predict_tiled(model, image, tile=tile, batch=batch, progress=False)
    plan = plan_tiles(100, width, tile=tile, model=model)
    assert plan.output == (tile, tile) and plan.border == 92 and plan.num_tiles == tiles
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_tiled_prediction_of_a_padded_network_is_close_to_the_whole_image() -> None:
    torch.manual_seed(0)
    model = create_model("segnet_basic", 3).eval()
    image = torch.randn(3, 96, 130)
    with torch.no_grad():
        whole = model(image[None]).softmax(1)[0]
    tiled = predict_tiled(model, image, tile=64, overlap=0.5, progress=False)
    assert torch.allclose(tiled.sum(0), torch.ones(96, 130), atol=1e-5)  # still probabilities
    assert (tiled.argmax(0) == whole.argmax(0)).float().mean() > 0.8  # borders differ, the bulk agrees


def test_test_time_augmentation_works_with_tiles() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 60, 60)
    unet = create_model("unet", 2).eval()
    flipped = predict_tiled(unet, image, tile=32, flip=True, progress=False)
    assert flipped.shape == (2, 60, 60) and torch.allclose(flipped.sum(0), torch.ones(60, 60), atol=1e-5)
    with pytest.raises(ValueError, match="multi-scale test-time augmentation does not fit overlap-tile"):
        predict_tiled(unet, image, tile=32, scales=(0.5, 1.0), progress=False)
    segnet = create_model("segnet_basic", 2, in_channels=1).eval()
    averaged = predict_tiled(segnet, image, tile=32, flip=True, scales=(0.75, 1.0), progress=False)
    assert torch.allclose(averaged.sum(0), torch.ones(60, 60), atol=1e-5)


@pytest.mark.parametrize("name,tile", [("segnet_basic", 64), pytest.param("unet", 48, marks=pytest.mark.slow)])
def test_streaming_a_tiff_gives_the_labels_of_in_memory_tiling(tmp_path, name, tile) -> None:
    torch.manual_seed(0)
    image = (np.random.default_rng(0).random((150, 209)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image)
    model = create_model(name, 3, in_channels=1).eval()
    info = {"mean": [0.5], "std": [0.25]}
    written = predict_tiff(
        model,
        info,
        tmp_path / "big.tif",
        tmp_path / "out" / "big.tif",
        tile=tile,
        overlap=0.25,
        batch=1,
        block=64,
        progress=False,
    )  # batch 1: each row of tiles in several blocks
    _, x = prepare_image(tmp_path / "big.tif", info, 1)
    expected = predict_tiled(model, x[0], tile=tile, overlap=0.25, progress=False).argmax(0).numpy()
    labels = tifffile.imread(written)
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    assert tifffile.TiffFile(written).pages.first.is_tiled


@pytest.mark.parametrize(
    "layout",
    [{"compression": "zlib", "rowsperstrip": 7}, {"compression": "zlib", "tile": (32, 48)}, {"tile": (16, 16)}],
)
def test_compressed_and_tiled_tiffs_stream_by_their_strips_and_tiles(tmp_path, layout) -> None:
    from segforge.inference import TiffRows

    image = (np.random.default_rng(2).random((75, 101, 3)) * 65535).astype(np.uint16)  # edge chunks are partial
    tifffile.imwrite(tmp_path / "c.tif", image, **layout)
    tifffile.imwrite(tmp_path / "plain.tif", image)
    info = {"mean": [0.5] * 3, "std": [0.25] * 3}
    packed, plain = TiffRows(tmp_path / "c.tif", info, 3), TiffRows(tmp_path / "plain.tif", info, 3)
    assert not packed._raw and plain._raw
    for y0, y1, x0, x1 in [(0, 75, 0, 101), (5, 40, 17, 99), (70, 75, 0, 3), (33, 34, 100, 101)]:
        torch.testing.assert_close(packed(y0, y1, x0, x1), plain(y0, y1, x0, x1), rtol=0, atol=0)
    packed.close(), plain.close()
    model = create_model("segnet_basic", 3, in_channels=3).eval()
    a = predict_tiff(model, info, tmp_path / "c.tif", tmp_path / "a.tif", tile=32, batch=2, progress=False)
    b = predict_tiff(model, info, tmp_path / "plain.tif", tmp_path / "b.tif", tile=32, batch=2, progress=False)
    assert np.array_equal(tifffile.imread(a), tifffile.imread(b))


def test_streaming_refuses_planar_tiffs_and_non_tiffs_and_says_what_to_do(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((3, 40, 40), np.uint8), planarconfig="separate", photometric="rgb")
    model = create_model("segnet_basic", 2, in_channels=3)
    with pytest.raises(ValueError, match=r"p.tif stores its channels in separate planes.*planarconfig='contig'"):
        predict_tiff(model, {}, tmp_path / "p.tif", tmp_path / "o.tif", tile=32)
    (tmp_path / "n.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"cannot read .*n.tif as a TIFF"):
        predict_tiff(model, {}, tmp_path / "n.tif", tmp_path / "o.tif", tile=32)


def test_cli_predict_with_tiles_and_streaming(tmp_path, capsys) -> None:
    from segforge.checkpoint import save_checkpoint
    from segforge.cli import main

    model = create_model("segnet_basic", 2, in_channels=1)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model, classes=["bg", "fg"], mean=[0.5], std=[0.25])
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", (np.random.default_rng(1).random((90, 70)) * 255).astype(np.uint8))
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "png"),
                "--tile",
                "32",
                "--overlap",
                "0.5",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "tif"),
                "--tile",
                "32",
                "--overlap",
                "0.5",
                "--stream",
            ]
        )
        == 0
    )
    from PIL import Image

    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "png" / "a.png")), tifffile.imread(tmp_path / "tif" / "a.tif")
    )
    assert (
        main(
            ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "x"), "--stream"]
        )
        == 2
    )
    assert "--stream reads and writes tile by tile: give --tile N" in capsys.readouterr().err


def test_streaming_with_threaded_compression_holds_one_row_of_blocks(tmp_path, monkeypatch) -> None:
    # tifffile compresses with several threads on machines with more cores; it then gathers blocks
    # before compressing them: the labels must stay right and the blocks gathered one row at most.
    monkeypatch.setattr(tifffile.TiffWriter, "_maxworkers", staticmethod(lambda *args: 2))
    gathered, executor_map = [], ThreadPoolExecutor.map

    def spy(self, fn, *iterables, **kwargs):
        items = list(iterables[0])
        gathered.append(len(items))
        return executor_map(self, fn, items, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "map", spy)
    image = (np.random.default_rng(3).random((130, 200)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image)
    model = create_model("segnet_basic", 3, in_channels=1).eval()
    info = {"mean": [0.5], "std": [0.25]}
    written = predict_tiff(model, info, tmp_path / "a.tif", tmp_path / "o.tif", tile=64, block=32, progress=False)
    _, x = prepare_image(tmp_path / "a.tif", info, 1)
    expected = predict_tiled(model, x[0], tile=64, progress=False).argmax(0).numpy()
    assert np.array_equal(tifffile.imread(written), expected)
    assert gathered and max(gathered) <= 7  # 200 px = 7 blocks of 32 per row; 35 blocks in all


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name == "deconvnet" else name for name in image_models()]
)  # (deconvnet's smallest tile is 224 pixels)
def test_every_model_goes_through_the_tiler_by_its_declared_geometry(name) -> None:
    # A tile of the geometry's smallest valid size covering 64 pixels, an image of about 1.5 x 1.2 tiles:
    # every pixel gets probabilities, and a valid-convolution network gives exactly its whole-image answer.
    model = create_model(name, 3).eval()
    geometry = model.geometry
    tile = 48 if geometry.valid_convolutions else geometry.input_size(64)
    height, width = tile + tile // 2 + 3, tile + tile // 5 + 1
    image = torch.randn(model.in_channels, height, width)
    probs = predict_tiled(model, image, tile=tile, overlap=0.25, batch=2)
    assert probs.shape == (3, height, width)
    torch.testing.assert_close(probs.sum(0), torch.ones(height, width))
    plan = plan_tiles(height, width, tile=tile, model=model)
    assert len(plan.ys) * len(plan.xs) > 1  # more than one tile
    if geometry.valid_convolutions:
        with torch.no_grad():
            whole = full_size_forward(model, image[None])[0].softmax(0)
        torch.testing.assert_close(probs, whole, atol=1e-5, rtol=1e-4)
