"""Joint image + mask augmentation: labels, alignment, padding, randomness, config errors."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segforge.data import transforms as T
from segforge.data.transforms import (
    Compose,
    ElasticDeformation,
    HorizontalFlip,
    PhotometricJitter,
    RandomCrop,
    RandomScale,
    Rotate,
    VerticalFlip,
    build_transforms,
    cubic_interpolation_matrix,
    elastic_displacement,
)

IGNORE = -7  # negative, so that it never collides with the pixel ids below


def blob_mask(rng: np.random.Generator, height: int, width: int, ignore: int = IGNORE, block: int = 8) -> np.ndarray:
    """Blocks of labels 0..4 (no 1-pixel slivers) and a band of ignore_index at the top."""
    coarse = rng.integers(0, 5, (-(-height // block), -(-width // block)))
    mask = np.kron(coarse, np.ones((block, block), np.int64))[:height, :width]
    mask[: height // 6] = ignore
    return mask


def image_of(mask: np.ndarray, channels: int, ignore: int = IGNORE) -> np.ndarray:
    """Piecewise constant image: channel c of label k is ((17 k + 40 c) % 256) / 255 (ignore and padding: 0)."""
    values = ((17 * mask[..., None] + 40 * np.arange(channels)) % 256 / 255).astype(np.float32)
    return np.where((mask == ignore)[..., None], np.float32(0), values)


def interior(mask: np.ndarray, radius: int, ignore: int = IGNORE) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood is inside the array and holds one label other than ignore."""
    labels = cv2.copyMakeBorder(mask.astype(np.float32), *[radius] * 4, cv2.BORDER_CONSTANT, value=-1e9)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    same = (cv2.erode(labels, kernel) == cv2.dilate(labels, kernel))[radius:-radius, radius:-radius]
    return same & (mask != ignore)


def sample(seed: int = 0, height: int = 48, width: int = 64, channels: int = 3, ignore: int = IGNORE, block: int = 8):
    mask = blob_mask(np.random.default_rng(seed), height, width, ignore, block)
    return image_of(mask, channels, ignore), mask


def ramps_and_ids(height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image channels y / (H - 1), x / (W - 1), y, x, ... (bilinear sampling returns the sample point
    exactly) and a mask holding each pixel's flat index (nearest sampling returns the source pixel)."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    planes = [y / (height - 1), x / (width - 1)]
    image = np.stack([planes[c % 2] for c in range(channels)], axis=-1)
    return image, np.arange(height * width, dtype=np.int64).reshape(height, width)


def source_pixels(t, shape: tuple[int, int], seed: int) -> np.ndarray:
    """For each output pixel of ``t`` (drawing from ``seed``), the flat index of its input pixel; -1 for padding."""
    _, ids = t(*ramps_and_ids(*shape, 1), rng=np.random.default_rng(seed))
    return np.where(ids == IGNORE, -1, ids)


GEOMETRIC = {
    "hflip": lambda: HorizontalFlip(p=1.0),
    "vflip": lambda: VerticalFlip(p=1.0),
    "rotate": lambda: Rotate(30, p=1.0, ignore_index=IGNORE),
    "scale_down": lambda: RandomScale((0.6, 0.9)),
    "scale_up": lambda: RandomScale((1.1, 1.7)),
    "crop_with_padding": lambda: RandomCrop(56, 80, ignore_index=IGNORE),
    "elastic": lambda: ElasticDeformation(sigma=6.0, p=1.0, ignore_index=IGNORE),
}


# ---------------------------------------------------------------- labels and alignment
@st.composite
def pipelines(draw):
    config = {}
    if draw(st.booleans()):
        config["hflip"] = {"p": draw(st.floats(0, 1))}
    if draw(st.booleans()):
        config["vflip"] = {"p": draw(st.floats(0, 1))}
    if draw(st.booleans()):
        config["rotate"] = {"limit_degrees": draw(st.floats(0, 180)), "p": 1.0}
    if draw(st.booleans()):
        low = draw(st.floats(0.3, 2.0))
        config["scale"] = {"scale_range": (low, low * draw(st.floats(1.0, 1.5)))}
    if draw(st.booleans()):
        config["jitter"] = {"brightness": draw(st.floats(0, 1)), "gamma": draw(st.floats(0, 0.9)), "p": 1.0}
    if draw(st.booleans()):
        config["elastic"] = {
            "grid": (draw(st.integers(2, 5)), draw(st.integers(2, 5))),
            "sigma": draw(st.floats(0, 15)),
            "p": 1.0,
        }
    if draw(st.booleans()):
        config["crop"] = {"min_valid_fraction": draw(st.floats(0, 1)), "max_tries": draw(st.integers(1, 5))}
    crop = (draw(st.integers(8, 80)), draw(st.integers(8, 80))) if "crop" in config else None
    return config, crop


@settings(max_examples=300, deadline=None)
@given(
    pipelines(),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 3, 5]),
    st.sampled_from([255, 11, -100]),
    st.integers(8, 70),
    st.integers(8, 70),
)
def test_no_new_label_ever_appears(pipeline, seed, channels, ignore, height, width):
    config, crop = pipeline
    image, mask = sample(seed % 1000, height, width, channels, ignore)
    out, out_mask = build_transforms(config, ignore_index=ignore, crop_size=crop, seed=seed)(image, mask)
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {ignore}
    assert out.dtype == np.float32 and out_mask.dtype == np.int64
    assert out.shape == (*out_mask.shape, channels)
    assert out.flags.c_contiguous and out_mask.flags.c_contiguous
    assert out.min() >= 0.0 and out.max() <= 1.0
    if crop is not None:
        assert out_mask.shape == crop


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_mask_pixel_is_the_nearest_to_where_the_image_was_sampled(name):
    # The ramps make the output image say where (in input pixels) it was sampled; the ids make the
    # output mask say which input pixel it copied. Aligned means: that pixel is the nearest one, up
    # to OpenCV's 1/32-pixel quantisation of bilinear positions. A half-pixel shift fails this.
    h, w = 48, 64
    for seed in range(6):
        out, ids = GEOMETRIC[name]()(*ramps_and_ids(h, w, 2), rng=np.random.default_rng(seed))
        src_y, src_x = np.divmod(ids, w)
        # Away from the input's edge, so that the bilinear footprint has no padding in it.
        keep = (ids != IGNORE) & (src_y > 0) & (src_y < h - 1) & (src_x > 0) & (src_x < w - 1)
        assert keep.sum() > 500
        assert np.abs(out[..., 0] * (h - 1) - src_y)[keep].max() <= 0.5 + 1 / 32 + 1e-3
        assert np.abs(out[..., 1] * (w - 1) - src_x)[keep].max() <= 0.5 + 1 / 32 + 1e-3


def check_function_of_mask(t, make_t, image, mask, seed, radius):
    """Where the input pixel a mask value came from is ``radius`` px away from any label edge, the
    image must still be exactly the function of the mask that it was made as."""
    channels = image.shape[2]
    out, out_mask = t(image, mask, rng=np.random.default_rng(seed))
    src = source_pixels(make_t(), mask.shape, seed)  # same seed, same geometry
    assert np.array_equal(out_mask, np.where(src < 0, IGNORE, mask.reshape(-1)[src]))
    safe = (src >= 0) & interior(mask, radius).reshape(-1)[src]
    np.testing.assert_allclose(out[safe], image_of(out_mask, channels)[safe], atol=1e-5)
    return safe.sum()


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_transform_keeps_image_a_function_of_its_mask(name, channels):
    # Bilinear sampling reads the 2x2 pixels around the sample point; the nearest pixel is one of
    # them, so they all lie in its 3x3 neighbourhood (radius 1).
    checked = sum(
        check_function_of_mask(GEOMETRIC[name](), GEOMETRIC[name], *sample(seed, channels=channels), seed, radius=1)
        for seed in range(6)
    )
    assert checked > 3000


def test_whole_geometric_pipeline_keeps_image_a_function_of_its_mask():
    # Per axis, each bilinear step reads pixels within 1 px of its nearest-neighbour twin's pick, and
    # a pick is within 0.5 px of the sample point. Elastic (1) -> scale (x 1/0.75, + 1 + 0.5) ->
    # rotation (x sqrt 2, + 1 + 0.5) adds up to 5.5 input pixels: radius 6 (3 passes in practice).
    # The labels sit inside a wide ignore margin, because the frame
    # edges of the intermediate images (rotated corners cut off, the elastic step's border) are
    # padding edges inside the input, where the image is legitimately blended with 0.
    def make():
        config = {"hflip": {}, "rotate": {"limit_degrees": 15, "p": 1}, "scale": {}, "elastic": {"p": 1}}
        return build_transforms(config, ignore_index=IGNORE)

    checked = 0
    for seed in range(20):
        mask = np.full((96, 96), IGNORE, np.int64)
        mask[24:72, 24:72] = blob_mask(np.random.default_rng(seed), 48, 48, block=16)
        mask[24:72, 24:72][mask[24:72, 24:72] == IGNORE] = 1
        checked += check_function_of_mask(make(), make, image_of(mask, 3), mask, seed, radius=6)
    assert checked > 2000


@pytest.mark.parametrize("name", ["rotate", "crop_with_padding", "elastic"])
def test_padding_is_ignore_in_the_mask_and_zero_in_the_image(name):
    mask = np.ones((48, 64), np.int64)  # no ignore pixels: every ignore in the output is padding
    image = np.ones((48, 64, 2), np.float32)
    padded = 0
    for seed in range(8):
        out, out_mask = GEOMETRIC[name]()(image, mask, rng=np.random.default_rng(seed))
        assert set(np.unique(out_mask)) <= {1, IGNORE}
        # The nearest pixel carries at least ~1/4 of the bilinear weight, so: a padded mask pixel has
        # image <= 0.76; an image pixel with no input in its footprint (0) is padding in the mask; one
        # with only input in it (1) is not.
        pad = out_mask == IGNORE
        assert out[pad].max(initial=0) <= 0.76
        assert np.all(pad[out[..., 0] == 0]) and not np.any(pad[out[..., 0] >= 1 - 1e-6])
        padded += pad.sum()
    assert padded > 100


# ---------------------------------------------------------------- known answers
def test_flips_and_identities_are_exact():
    image, mask = sample(0, channels=5)
    assert np.array_equal(HorizontalFlip(p=1.0)(image, mask)[1], mask[:, ::-1])
    assert np.array_equal(VerticalFlip(p=1.0)(image, mask)[0], image[::-1])
    for identity in [
        Rotate(0, p=1.0, ignore_index=255),
        RandomScale((1, 1)),
        ElasticDeformation(sigma=0.0, p=1.0, ignore_index=255),
        HorizontalFlip(p=0.0),
    ]:
        out, out_mask = identity(image, mask)
        np.testing.assert_allclose(out, image, atol=1e-6)
        assert np.array_equal(out_mask, mask)


def test_scaling_by_two_repeats_and_by_a_half_subsamples_the_mask():
    _, mask = sample(3)
    image = np.zeros((*mask.shape, 1), np.float32)
    assert np.array_equal(RandomScale((2, 2))(image, mask)[1], mask.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(RandomScale((0.5, 0.5))(image, mask)[1], mask[1::2, 1::2])


def test_inputs_are_not_modified_and_mask_dtype_is_int64():
    image, mask = sample(1)
    before = image.copy(), mask.copy()
    t = build_transforms({"hflip": {"p": 1}, "jitter": {"p": 1}, "elastic": {"p": 1}}, ignore_index=255, seed=0)
    for mask_in in (mask, mask.astype(np.int32)):  # the int64 mask itself, and an int32 one
        out, out_mask = t(image, mask_in)
        assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])
        assert out_mask.dtype == np.int64
        assert out.flags.c_contiguous and out_mask.flags.c_contiguous


# ---------------------------------------------------------------- crop
def test_crop_with_min_valid_fraction_honours_it():
    mask = np.full((100, 100), 255, np.int64)
    mask[:, 50:] = 1  # a 40-wide crop is >= 90% valid for 15 of its 61 horizontal offsets
    image = np.zeros((100, 100, 1), np.float32)
    shares = []
    for seed in range(20):
        for fraction in (0.0, 0.9):
            crop = RandomCrop(40, 40, ignore_index=255, min_valid_fraction=fraction, max_tries=60)
            shares.append((fraction, np.mean(crop(image, mask, rng=np.random.default_rng(seed))[1] != 255)))
    assert all(share >= 0.9 for fraction, share in shares if fraction == 0.9)
    assert any(share < 0.9 for fraction, share in shares if fraction == 0.0)  # the option did something


def test_crop_returns_the_best_draw_when_none_is_good_enough():
    mask = np.full((100, 100), 255, np.int64)
    mask[:, 50:80] = 1  # at most 30 of 40 columns valid: min_valid_fraction=1 is impossible
    image = np.zeros((100, 100, 1), np.float32)
    for seed in range(5):
        one = RandomCrop(40, 40, ignore_index=255, min_valid_fraction=1.0, max_tries=1)
        many = RandomCrop(40, 40, ignore_index=255, min_valid_fraction=1.0, max_tries=200)
        share_one = np.mean(one(image, mask, rng=np.random.default_rng(seed))[1] != 255)
        share_many = np.mean(many(image, mask, rng=np.random.default_rng(seed))[1] != 255)
        assert share_many == 0.75 >= share_one  # the best possible; the same first draw plus more


def test_crop_pads_a_small_image_and_keeps_all_of_it():
    image, mask = sample(2, 10, 12, channels=3)
    out, out_mask = RandomCrop(16, 20, ignore_index=IGNORE)(image, mask, rng=np.random.default_rng(0))
    assert out.shape == (16, 20, 3)
    assert np.count_nonzero(out_mask == IGNORE) == 16 * 20 - 10 * 12 + np.count_nonzero(mask == IGNORE)
    assert np.isclose(out.sum(), image.sum())


# ---------------------------------------------------------------- photometric
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_jitter_changes_the_image_never_the_mask(channels):
    image, mask = sample(4, channels=channels)
    jitter = PhotometricJitter(0.5, 0.5, 0.5, gamma=0.5, p=1.0)
    for seed in range(10):
        out, out_mask = jitter(image, mask, rng=np.random.default_rng(seed))
        assert np.array_equal(out_mask, mask)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1
        assert not np.allclose(out, image)


def test_jitter_with_zero_strength_is_the_identity():
    image, mask = sample(5)
    out, _ = PhotometricJitter(0, 0, 0, 0, p=1.0)(image, mask)
    np.testing.assert_allclose(out, image, atol=1e-6)


# ---------------------------------------------------------------- elastic deformation
def test_cubic_interpolation_matrix_known_answer():
    expected = [[1, 0, 0], [0.5, 0.5625, -0.0625], [0, 1, 0], [-0.0625, 0.5625, 0.5], [0, 0, 1]]
    np.testing.assert_allclose(cubic_interpolation_matrix(5, 3), expected, atol=1e-7)
    weights = cubic_interpolation_matrix(257, 5)
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(weights[::64], np.eye(5))  # one-hot where a grid point is a pixel


def test_elastic_field_passes_through_the_gaussian_grid_values():
    field = elastic_displacement(65, 97, grid=(3, 4), sigma=10.0, rng=np.random.default_rng(1))
    coarse = np.random.default_rng(1).normal(0.0, 10.0, size=(2, 3, 4)).astype(np.float32)
    assert field.shape == (2, 65, 97) and field.dtype == np.float32
    np.testing.assert_allclose(field[:, ::32, ::32], coarse, rtol=1e-6)


def test_elastic_field_has_the_configured_std_at_grid_points():
    rng = np.random.default_rng(2)
    at_grid = np.stack(
        [elastic_displacement(33, 33, grid=(3, 3), sigma=10.0, rng=rng)[:, ::16, ::16] for _ in range(500)]
    )  # 9000 values: the std's standard error is ~0.75%
    assert at_grid.mean() == pytest.approx(0.0, abs=0.5)
    assert at_grid.std() == pytest.approx(10.0, rel=0.04)


def test_elastic_field_is_smooth():
    # The field is a tensor product of Keys cubic weights (a = -0.5): per unit of grid spacing, the
    # sum of |weights| is <= 1.25, of |first derivatives| <= 3 and of |second derivatives| <= 13.
    # Neighbouring pixels therefore differ by at most 1.25 * 3 * max|grid| / spacing, and second
    # differences are at most 1.25 * 13 * max|grid| / spacing^2: a white-noise field would break both.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        field = elastic_displacement(129, 129, grid=(3, 3), sigma=10.0, rng=rng)
        largest = np.abs(field[:, ::64, ::64]).max()
        for axis in (1, 2):
            assert np.abs(np.diff(field, axis=axis)).max() <= 1.25 * 3 * largest / 64 + 1e-4
            assert np.abs(np.diff(field, n=2, axis=axis)).max() <= 1.25 * 13 * largest / 64**2 + 1e-4


# ---------------------------------------------------------------- randomness
def test_a_seed_makes_the_pipeline_reproducible():
    image, mask = sample(6, 64, 64)
    config = {"hflip": {}, "rotate": {}, "scale": {}, "jitter": {}, "elastic": {}}

    def run(seed):
        t = build_transforms(config, ignore_index=255, crop_size=32, seed=seed)
        return [t(image, mask) for _ in range(4)]

    first, again, other = run(0), run(0), run(1)
    for (a, am), (b, bm) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(am, bm)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))
    assert not all(np.array_equal(first[0][0], a) for a, _ in first[1:])  # calls differ from each other
    # An explicit generator, or a Generator as the seed, works the same way.
    t = build_transforms(config, ignore_index=255, crop_size=32)
    out1, out2 = t(image, mask, rng=np.random.default_rng(5)), t(image, mask, rng=np.random.default_rng(5))
    assert np.array_equal(out1[0], out2[0])
    g1, g2 = (Compose([Rotate(ignore_index=255)], seed=np.random.default_rng(9)) for _ in range(2))
    assert np.array_equal(g1(image, mask)[0], g2(image, mask)[0])


def test_each_dataloader_worker_gets_its_own_stream(monkeypatch):
    image, mask = sample(7)
    parent = Rotate(90, p=1.0, ignore_index=255, seed=0)
    draws = {}
    for worker_seed in (100, 101, 100):
        worker = copy.deepcopy(parent)  # what fork / pickling gives each worker
        monkeypatch.setattr(T, "get_worker_info", lambda: SimpleNamespace(seed=worker_seed))
        first, second = worker(image, mask)[1], worker(image, mask)[1]
        assert not np.array_equal(first, second)  # re-derived once per worker, not on every call
        draws.setdefault(worker_seed, []).append(first)
    assert np.array_equal(*draws[100])  # the same worker seed reproduces the stream
    assert not np.array_equal(draws[100][0], draws[101][0])


class _Augmented(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.transform = Rotate(90, p=1.0, ignore_index=255, seed=0)
        self.image, self.mask = sample(8)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(self.image, self.mask)[1])


def test_dataloader_workers_draw_different_augmentations_and_repeat_with_torch_seed():
    def epoch() -> list[torch.Tensor]:
        torch.manual_seed(0)
        return list(torch.utils.data.DataLoader(_Augmented(), batch_size=None, num_workers=2))

    first = epoch()
    assert not torch.equal(first[0], first[1])  # items 0 and 1 are each their worker's first draw
    assert all(torch.equal(a, b) for a, b in zip(first, epoch()))


# ---------------------------------------------------------------- configuration and errors
def test_build_transforms_orders_and_defaults():
    names = lambda t: [type(x).__name__ for x in t.transforms]  # noqa: E731
    assert names(build_transforms(None, ignore_index=255, crop_size=32)) == [
        "HorizontalFlip",
        "RandomScale",
        "RandomCrop",
        "PhotometricJitter",
    ]
    assert names(build_transforms({}, ignore_index=255)) == []
    assert names(build_transforms({"crop": None}, ignore_index=255, crop_size=32)) == []
    t = build_transforms(
        {"elastic": True, "crop": {"height": 8, "width": 9}, "scale": {"scale_range": [0.5, 0.6]}},
        ignore_index=3,
        crop_size=32,
    )
    assert names(t) == ["RandomScale", "RandomCrop", "ElasticDeformation"]
    assert (t.transforms[1].height, t.transforms[1].width, t.transforms[1].ignore_index) == (8, 9, 3)
    assert t.transforms[0].scale_range == (0.5, 0.6)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"flip": {}},
            r"unknown augmentation 'flip'; choose from \['hflip', 'vflip', 'rotate', 'scale', 'crop', "
            r"'jitter', 'elastic'\]",
        ),
        (
            {"rotate": {"limit": 10}},
            r"unknown option 'limit' for augmentation 'rotate'; choose from "
            r"\['limit_degrees', 'p'\]",
        ),
        ({"crop": {}}, r"augmentation 'crop' needs a size: pass crop_size=, or set crop.height and crop.width"),
        ({"hflip": 0.5}, r"augmentation 'hflip' takes a dict of options, true or null, got 0.5"),
        (["hflip"], r"augmentation config must be a dict or None, got list"),
        ({}, r"crop_size must be an int or \(height, width\), got 25.6"),
    ],
)
def test_config_errors_name_the_problem_and_the_choices(config, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(config, ignore_index=255, crop_size=25.6 if message.startswith("crop_size") else None)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: HorizontalFlip(p=1.5), ValueError, r"p must be in \[0.0, 1.0\], got 1.5"),
        (lambda: Rotate(200, ignore_index=1), ValueError, r"limit_degrees must be in \[0.0, 180.0\]"),
        (lambda: Rotate(ignore_index=2**40), ValueError, r"ignore_index must be an int that fits in int32"),
        (lambda: RandomScale((0, 1)), ValueError, r"scale_range must be \(low, high\) with 0 < low <= high"),
        (lambda: RandomCrop(0, 5, ignore_index=1), ValueError, r"crop height and width must be positive ints"),
        (lambda: RandomCrop(5, 5, ignore_index=1, min_valid_fraction=2), ValueError, r"min_valid_fraction must be"),
        (lambda: RandomCrop(5, 5, ignore_index=1, max_tries=0), ValueError, r"max_tries must be an int >= 1"),
        (lambda: PhotometricJitter(brightness=2), ValueError, r"brightness must be in \[0.0, 1.0\]"),
        (lambda: PhotometricJitter(gamma=1), ValueError, r"gamma must be in \[0.0, 0.99\]"),
        (lambda: ElasticDeformation(grid=(1, 3), ignore_index=1), ValueError, r"at least 2 points per axis"),
        (lambda: ElasticDeformation(sigma=-1, ignore_index=1), ValueError, r"sigma must be in"),
        (lambda: HorizontalFlip(seed="abc"), TypeError, r"seed must be an int, a numpy.random.Generator or None"),
    ],
)
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "image, mask, error, message",
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64), ValueError, r"add a channel axis"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), TypeError, r"image.astype\(np.float32\) / 255"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 5), np.int64), ValueError, r"mask must be an integer \(H, W\)"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.float32), ValueError, r"mask must be an integer"),
    ],
)
def test_input_errors(image, mask, error, message):
    with pytest.raises(error, match=message):
        HorizontalFlip()(image, mask)
