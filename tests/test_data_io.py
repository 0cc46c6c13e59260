"""Reading images and masks: every format gives the documented array, every bad file a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segforge.data import DatasetError, load_colour_map, read_image, read_mask, read_volume
from segforge.data.colour import colour_map_from_data, parse_inline

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 17) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb_image_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}")
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_is_read_as_rgb_uint8(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (12, 17, 3) and out.dtype == np.uint8


def test_grey_image_gets_a_channel_axis(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(9, 11), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (9, 11, 1)
    np.testing.assert_array_equal(out[:, :, 0], grey)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[:, :, :3])


def test_palette_image_is_expanded_to_its_colours(tmp_path: Path) -> None:
    image = Image.frombytes("P", (4, 2), bytes([0, 1, 1, 0, 1, 1, 0, 0]))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (2, 4, 3)
    assert tuple(out[0, 1]) == (200, 100, 50) and tuple(out[0, 0]) == (10, 20, 30)


def test_16_bit_png_keeps_its_values(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, size=(10, 13), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint16 and out.shape == (10, 13, 1)
    np.testing.assert_array_equal(out[:, :, 0], values)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "pages"])
def test_five_band_tiff_is_channels_last(tmp_path: Path, layout: str) -> None:
    bands = RNG.integers(0, 65536, size=(24, 30, 5), dtype=np.uint16)
    path = tmp_path / "b.tif"
    if layout == "channels_last":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    elif layout == "channels_first":
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0), photometric="minisblack", planarconfig="separate")
    else:  # one band per page
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0))
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (24, 30, 5)
    np.testing.assert_array_equal(out, bands)


def test_float_tiff_stays_float32_and_int16_becomes_float32(tmp_path: Path) -> None:
    values = RNG.normal(size=(6, 7, 2)).astype(np.float64)
    tifffile.imwrite(tmp_path / "f.tif", values, photometric="minisblack", planarconfig="contig")
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, values, rtol=1e-6)
    tifffile.imwrite(tmp_path / "i.tif", np.array([[-5, 7]], dtype=np.int16))
    assert read_image(tmp_path / "i.tif").dtype == np.float32


def test_volume_reads_every_page(tmp_path: Path) -> None:
    stack = RNG.integers(0, 256, size=(4, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_volume(tmp_path / "v.tif"), stack)


# --- image errors: each names the file ---------------------------------------------------------------


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image .*nope.png does not exist") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.kind == "missing"


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_names_the_file(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(_rgb(64, 64)).save(path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.png.*re-export it or remove it") as info:
        read_image(path)
    assert info.value.kind == "unreadable" and info.value.path == path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_naming_the_file(tmp_path: Path, bad: float) -> None:
    image = np.ones((6, 5), np.float32)
    image[2, 3] = bad
    tifffile.imwrite(tmp_path / "scan.tif", image)
    with pytest.raises(
        DatasetError,
        match=r"image .*scan.tif holds 1 non-finite pixel value\(s\) \(NaN or infinity; "
        r"the first at index \(2, 3\)\).*numpy.nan_to_num",
    ):
        read_image(tmp_path / "scan.tif")


def test_images_too_large_to_decode_are_refused_before_anything_is_allocated(tmp_path: Path, monkeypatch) -> None:
    Image.new("L", (12000, 12000)).save(tmp_path / "big.png")  # 144 megapixels in a file of 140 KB
    monkeypatch.setenv("SEGFORGE_MAX_IMAGE_MB", "64")
    with pytest.raises(
        DatasetError,
        match=r"image .*big.png would decode to 137 MB \(12000 x 12000 x 1\), over the "
        r"64 MB limit.*--tile 1024 --stream.*--max-image-mb",
    ):
        read_image(tmp_path / "big.png")
    monkeypatch.delenv("SEGFORGE_MAX_IMAGE_MB")
    assert read_image(tmp_path / "big.png").shape == (12000, 12000, 1)  # under the default 4096 MB
    tifffile.imwrite(tmp_path / "liar.tif", np.zeros((4, 4), np.uint8))
    with tifffile.TiffFile(tmp_path / "liar.tif", mode="r+b") as tif:  # a header that claims 100000 x 100000
        tif.pages[0].tags["ImageWidth"].overwrite(100000)
        tif.pages[0].tags["ImageLength"].overwrite(100000)
    with pytest.raises(DatasetError, match=r"liar.tif would decode to 9,537 MB \(100000 x 100000\), over the 4,096 MB"):
        read_image(tmp_path / "liar.tif")


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_rgb_png_keeps_every_value(tmp_path: Path, channels: int) -> None:
    import cv2

    rgb = np.random.default_rng(0).integers(0, 4096, (5, 7, channels)).astype(np.uint16)  # 12-bit data
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[:, :, [2, 1, 0, 3][:channels]])  # OpenCV writes BGR(A)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint16 and np.array_equal(image, rgb[:, :, :3])  # (Pillow keeps the high byte only)


def test_corrupt_tiff_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.tif"):
        read_image(tmp_path / "bad.tif")


def test_unsupported_mode_names_the_file(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(DatasetError, match=r"mask .*cmyk\.jpg has unsupported mode 'CMYK'; save masks as") as info:
        read_mask(tmp_path / "cmyk.jpg")
    assert info.value.kind == "unsupported"
    assert read_image(tmp_path / "cmyk.jpg").shape == (4, 4, 3)  # as an image, CMYK converts to RGB


def test_complex_tiff_is_an_unsupported_pixel_type(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 4), np.complex64))
    with pytest.raises(DatasetError, match=r"image .*c\.tif has unsupported pixel type complex64"):
        read_image(tmp_path / "c.tif")


def test_four_d_tiff_is_refused_as_an_image(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"image .*s\.tif holds a 4-D stack.*ISBI layout"):
        read_image(tmp_path / "s.tif")


# --- masks ---------------------------------------------------------------------------------------------


def test_palette_mask_gives_indices_not_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 255], [20, 0, 1]], dtype=np.uint8)
    mask = Image.frombytes("P", (3, 2), indices.tobytes())
    mask.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    mask.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, indices)


def test_grey_and_16_bit_masks(tmp_path: Path) -> None:
    grey = np.array([[0, 3], [11, 2]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)
    wide = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "w.png"), wide)


def test_grey_mask_saved_as_rgb_is_read_as_grey(tmp_path: Path) -> None:
    grey = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)


def test_rgb_mask_without_mapping_is_refused_naming_file_and_colours(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (128, 64, 128)
    Image.fromarray(rgb).save(tmp_path / "road.png")
    with pytest.raises(DatasetError) as info:
        read_mask(tmp_path / "road.png")
    message = str(info.value)
    assert (
        f"mask {tmp_path / 'road.png'} is RGB: colour-coded masks need a palette mapping (--palette file.yaml"
        in message
    )
    assert "(128, 64, 128)" in message and "(0, 0, 0)" in message
    assert info.value.kind == "colour_mask"


def test_fractional_mask_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(DatasetError, match=r"mask .*f\.tif holds fractional values.*nearest"):
        read_mask(tmp_path / "f.tif")


def test_missing_and_corrupt_masks_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"mask .*none\.png does not exist"):
        read_mask(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DatasetError, match=r"cannot read mask .*bad\.png"):
        read_mask(tmp_path / "bad.png")


# --- colour maps -----------------------------------------------------------------------------------------


def test_colour_mask_maps_to_indices_and_ignore(tmp_path: Path) -> None:
    (tmp_path / "palette.yaml").write_text(
        "classes:\n  road: [128, 64, 128]\n  sky: '#4682b4'\n  car: [[0, 0, 142], [0, 0, 143]]\nignore: [[0, 0, 0]]\n"
    )
    colour_map = load_colour_map(tmp_path / "palette.yaml")
    assert colour_map.classes == ("road", "sky", "car") and colour_map.ignore_index == 255
    assert colour_map.palette == [(128, 64, 128), (70, 130, 180), (0, 0, 142)]
    rgb = np.array([[[128, 64, 128], [70, 130, 180]], [[0, 0, 143], [0, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", colour_map), [[0, 1], [2, 255]])


def test_unexpected_colour_lists_it_with_the_file(tmp_path: Path) -> None:
    colour_map = parse_inline("road=128,64,128;sky=70,130,180")
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[...] = (128, 64, 128)
    rgb[0, :2] = (12, 34, 56)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DatasetError) as info:
        read_mask(tmp_path / "m.png", colour_map)
    message = str(info.value)
    assert f"mask {tmp_path / 'm.png'} has 1 colour(s) not in" in message
    assert "(12, 34, 56) in 2 px" in message and "add them to the mapping" in message
    assert info.value.kind == "unexpected_colour"


def test_json_list_form(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([["bg", [0, 0, 0]], {"name": "fg", "color": [255, 255, 255]}]))
    colour_map = load_colour_map(path)
    assert colour_map.classes == ("bg", "fg") and colour_map.ignore_index is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("road: [128, 64]\n", r"class 'road'.*is not a colour"),
        ("road: [1, 2, 3]\nsky: [1, 2, 3]\n", r"colour \(1, 2, 3\) is given to two classes"),
        ("road: [1, 2, 3\n", "cannot parse palette mapping"),
        ("{}\n", "defines no classes"),
    ],
)
def test_bad_mapping_file_names_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "palette.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        load_colour_map(path)
    assert str(path) in str(info.value)


def test_missing_mapping_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"palette mapping .*nope\.yaml does not exist"):
        load_colour_map(tmp_path / "nope.yaml")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_colourise_then_map_back_is_the_identity(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    colours = rng.choice(2**24, size=num_classes, replace=False)
    data = {f"c{i}": [int(c >> 16), int((c >> 8) & 255), int(c & 255)] for i, c in enumerate(colours)}
    colour_map = colour_map_from_data(data)
    labels = rng.integers(0, num_classes, size=(7, 9))
    rgb = colour_map.colours[labels]  # each class has exactly one colour here
    np.testing.assert_array_equal(colour_map.to_index(rgb), labels)
