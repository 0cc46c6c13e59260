"""Every dataset layout, written small in tmp_path, gives the documented labels; every bad input a clear error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segforge.data import (
    CamVidDataset,
    DatasetError,
    FolderDataset,
    ISBIDataset,
    compute_stats,
    create_dataset,
    default_palette,
    detect_layout,
    list_dataset_layouts,
)

SHARED = Path(__file__).parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)


def _image(path: Path, h: int = 6, w: int = 8) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return rgb


def _mask(path: Path, values: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.astype(np.uint8).tobytes())
        image.putpalette([v for c in default_palette(256) for v in c])
    else:
        image = Image.fromarray(values.astype(np.uint8))
    image.save(path)


LABELS = np.array([[0, 1, 2, 3, 0, 1, 2, 3]] * 6)


def _folder(root: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for name in names:
        _image(root / "images" / f"{name}.png")
        _mask(root / "masks" / f"{name}.png", LABELS)
    return root


# --- each layout: the raw values it stores and the labels they must become -----------------------------


def _voc(root: Path) -> tuple[Path, np.ndarray]:
    base = root / "VOCdevkit" / "VOC2012"
    raw = np.array([[0, 0, 15, 15], [255, 255, 15, 20]] * 2)  # 255: the object borders
    for name in ("2007_000032", "2007_000039"):
        _image(base / "JPEGImages" / f"{name}.jpg", 4, 4)
        _mask(base / "SegmentationClass" / f"{name}.png", raw, mode="P")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    return root, raw  # palette indices are the labels


def _cityscapes(root: Path) -> tuple[Path, np.ndarray]:
    raw = np.array([[0, 7, 8, 26], [4, 33, 24, 1]])  # unlabeled, road, sidewalk, car / static, bicycle, person, ego
    stem = "aachen_000000_000019"
    _image(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", 2, 4)
    _mask(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", raw)
    return root, np.array([[255, 0, 1, 13], [255, 18, 11, 255]])


def _camvid(root: Path) -> tuple[Path, np.ndarray]:
    raw = np.array([[0, 3, 11], [10, 8, 11]])
    _image(root / "train" / "0001TP_006690.png", 2, 3)
    _mask(root / "trainannot" / "0001TP_006690.png", raw)
    return root, raw


def _ade20k(root: Path) -> tuple[Path, np.ndarray]:
    raw = np.array([[0, 1, 2], [150, 0, 13]])
    base = root / "ADEChallengeData2016"
    _image(base / "images" / "training" / "ADE_train_00000001.jpg", 2, 3)
    _mask(base / "annotations" / "training" / "ADE_train_00000001.png", raw)
    return root, np.array([[255, 0, 1], [149, 255, 12]])


def _isbi_volume(root: Path) -> tuple[Path, np.ndarray]:
    root.mkdir(parents=True)
    tifffile.imwrite(
        root / "train-volume.tif", RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8), photometric="minisblack"
    )
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[:, :2] = 255  # cell interior on top, membrane below
    tifffile.imwrite(root / "train-labels.tif", labels, photometric="minisblack")
    return root, np.array([[0] * 5] * 2 + [[1] * 5] * 2)  # membrane is class 1


def _isbi_slices(root: Path) -> tuple[Path, np.ndarray]:
    raw = np.array([[255, 0], [0, 255]])
    for i in range(3):
        grey = RNG.integers(0, 256, (2, 2), dtype=np.uint8)
        (root / "train" / "image").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(root / "train" / "image" / f"{i}.png")
        _mask(root / "train" / "label" / f"{i}.png", raw)
    return root, np.array([[0, 1], [1, 0]])


def _folder_layout(root: Path) -> tuple[Path, np.ndarray]:
    return _folder(root), LABELS


LAYOUTS = {
    "voc": _voc,
    "cityscapes": _cityscapes,
    "camvid": _camvid,
    "ade20k": _ade20k,
    "isbi": _isbi_volume,
    "folder": _folder_layout,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_gives_float_chw_images_and_its_labels(tmp_path: Path, layout: str) -> None:
    root, expected = LAYOUTS[layout](tmp_path / layout)
    assert detect_layout(root) == layout
    dataset = create_dataset("auto", root, num_classes=4 if layout == "folder" else None)
    image, mask = dataset[0]
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[1:] == mask.shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert len(dataset.palette) == len(dataset.classes)
    copy = pickle.loads(pickle.dumps(dataset))  # DataLoader workers started with "spawn" pickle it
    np.testing.assert_array_equal(copy[0][1].numpy(), expected)


def test_every_layout_is_tested() -> None:
    series_layouts = {"series", "pastis"}  # time series: tests/test_series_data.py
    instance_layouts = {"instance_folder", "coco"}  # tests/test_instance_data.py, tests/test_instance_training.py
    assert set(LAYOUTS) | series_layouts | instance_layouts == set(list_dataset_layouts())


def test_isbi_slices_and_foreground_choice(tmp_path: Path) -> None:
    root, expected = _isbi_slices(tmp_path)
    membrane = ISBIDataset(root)
    assert membrane.classes == ["cell", "membrane"]
    np.testing.assert_array_equal(membrane[2][1].numpy(), expected)
    cell = ISBIDataset(root, foreground="cell")
    np.testing.assert_array_equal(cell[2][1].numpy(), 1 - expected)  # 255 (cell interior) -> 1
    assert membrane[0][0].shape == (1, 2, 2)


def test_unlabelled_split_gives_an_all_ignored_mask(tmp_path: Path) -> None:
    root, _ = _isbi_slices(tmp_path)
    (root / "test" / "image").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "test" / "image" / "0.png")
    _, mask = ISBIDataset(root, "test")[0]
    assert mask.tolist() == [[-100, -100], [-100, -100]]  # torch's CrossEntropyLoss ignore value


def test_ade_value_beyond_the_label_map_names_the_mask(tmp_path: Path) -> None:
    root, _ = _ade20k(tmp_path)
    mask_path = root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
    _mask(mask_path, np.array([[0, 151, 2], [1, 1, 1]]))
    with pytest.raises(DatasetError, match=rf"mask {mask_path} has value 151, which the ade20k label map does not"):
        create_dataset("ade20k", root)[0]


# --- the folder layout ----------------------------------------------------------------------------------


def test_split_lists_and_split_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path / "lists")
    (root / "train.txt").write_text("a\nc.png  # a comment after the name\n")
    assert [p[0].name for p in FolderDataset(root, "train").samples] == ["a.png", "c.png"]
    assert FolderDataset.splits(root) == ["train"]
    nested = tmp_path / "nested"
    for split, name in (("train", "x"), ("val", "y")):
        _image(nested / "images" / split / f"{name}.jpg")
        _mask(nested / "masks" / split / f"{name}.png", LABELS)
    assert [p[0].name for p in FolderDataset(nested, "val").samples] == ["y.jpg"]


def test_classes_from_num_classes_or_classes_txt(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    assert FolderDataset(root, num_classes=4).classes == ["class_0", "class_1", "class_2", "class_3"]
    (root / "classes.txt").write_text("bg\nx\ny\nz\n")
    assert FolderDataset(root).classes == ["bg", "x", "y", "z"]


def test_label_map_turns_0_255_masks_into_0_1(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 2, 2)
    _mask(tmp_path / "masks" / "a.png", np.array([[0, 255], [255, 0]]))
    dataset = FolderDataset(tmp_path, num_classes=2, label_map={255: 1})
    assert dataset[0][1].tolist() == [[0, 1], [1, 0]]


def test_colour_coded_folder(tmp_path: Path) -> None:
    (tmp_path / "palette.yaml").write_text("road: [128, 64, 128]\nsky: [70, 130, 180]\n")
    _image(tmp_path / "images" / "a.png", 1, 3)
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.array([[[70, 130, 180], [128, 64, 128], [70, 130, 180]]], np.uint8)).save(
        tmp_path / "masks" / "a.png"
    )
    dataset = FolderDataset(tmp_path, colour_map=tmp_path / "palette.yaml")
    assert dataset.classes == ["road", "sky"] and dataset.palette == [(128, 64, 128), (70, 130, 180)]
    assert dataset[0][1].tolist() == [[1, 0, 1]]
    mask = tmp_path / "masks" / "a.png"
    Image.fromarray(np.array([[[70, 130, 180], [1, 2, 3], [70, 130, 180]]], np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=rf"mask {mask} has 1 colour\(s\) not in .*\(1, 2, 3\)"):
        dataset[0]


def test_16_bit_and_5_band_tiff_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    wide = np.full((4, 4), 65535, np.uint16)
    wide[0, 0] = 0
    tifffile.imwrite(tmp_path / "images" / "a.tif", wide)
    tifffile.imwrite(
        tmp_path / "images" / "b.tif",
        RNG.integers(0, 65536, (5, 4, 4), dtype=np.uint16),
        photometric="minisblack",
        planarconfig="separate",
    )
    for name in "ab":
        _mask(tmp_path / "masks" / f"{name}.png", np.zeros((4, 4)))
    dataset = FolderDataset(tmp_path, num_classes=1)
    assert dataset[0][0][0, 0, 0] == 0.0 and dataset[0][0][0, 1, 1] == 1.0  # scaled by 65535
    assert dataset[1][0].shape == (5, 4, 4)


def test_normalisation_and_transform_order(tmp_path: Path) -> None:
    root = _folder(tmp_path, ("a",))
    seen = {}

    def flip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.update(dtype=image.dtype, shape=image.shape, max=float(image.max()), mask_dtype=mask.dtype)
        return image[:, ::-1], mask[:, ::-1]

    dataset = FolderDataset(root, num_classes=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), transform=flip)
    image, mask = dataset[0]
    raw = np.asarray(Image.open(root / "images" / "a.png"), np.float32) / 255
    np.testing.assert_allclose(image.numpy(), ((raw[:, ::-1] - 0.5) / 0.25).transpose(2, 0, 1), atol=1e-6)
    assert mask.tolist() == LABELS[:, ::-1].tolist()
    assert seen == {
        "dtype": np.float32,
        "shape": (6, 8, 3),
        "max": pytest.approx(float(raw.max())),
        "mask_dtype": np.int64,
    }  # the transform sees [0, 1] images, before normalisation


def test_compute_stats_equals_numpy_over_all_pixels(tmp_path: Path) -> None:
    root = tmp_path
    images = [_image(root / "images" / f"{i}.png", 5 + i, 7) for i in range(4)]  # different sizes on purpose
    for i in range(4):
        _mask(root / "masks" / f"{i}.png", np.zeros((5 + i, 7)))
    mean, std = compute_stats(FolderDataset(root, num_classes=1), workers=2)
    pixels = (np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float32) / 255).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-10)


def test_a_dataloader_batches_it(tmp_path: Path) -> None:
    loader = torch.utils.data.DataLoader(FolderDataset(_folder(tmp_path), num_classes=4), batch_size=3)
    images, masks = next(iter(loader))
    assert images.shape == (3, 3, 6, 8) and masks.shape == (3, 6, 8)


# --- bad input: every message names the file or folder -------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"data folder {tmp_path / 'nope'} does not exist"):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=rf"mask folder {tmp_path / 'masks'} does not exist; put the masks in"):
        FolderDataset(tmp_path)
    with pytest.raises(DatasetError, match=rf"CamVid folder {tmp_path / 'train'} does not exist"):
        CamVidDataset(tmp_path)


def test_missing_split_list(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    with pytest.raises(
        DatasetError,
        match=rf"split 'val' is neither a list {root / 'val.txt'} nor a folder "
        rf".*splits found: none.*the split 'all'",
    ):
        FolderDataset(root, "val")


def test_no_pairs(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a_mask.png", LABELS)
    (tmp_path / "masks" / "notes.txt").write_text("x")
    with pytest.raises(
        DatasetError,
        match=rf"no image/mask pairs in {tmp_path}: .*images holds 1 file\(s\) "
        r"\(.png 1\), "
        r".*masks holds 2 file\(s\) \(.png 1, .txt 1\); not read: .txt .*images e.g. a.png; masks e.g. "
        r"a_mask.png\); name each mask like",
    ):
        FolderDataset(tmp_path)


def test_image_without_mask_is_an_error_unless_not_strict(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _image(root / "images" / "lonely.png")
    with pytest.raises(DatasetError, match=r"1 images in .* have no mask .*\(lonely\.png\)"):
        FolderDataset(root)
    dataset = FolderDataset(root, strict=False)
    assert len(dataset) == 3 and dataset.unpaired_images == [root / "images" / "lonely.png"]


def test_two_images_with_one_stem(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _image(root / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"a\.(png|jpg) and .*a\.(png|jpg) share the stem 'a'"):
        FolderDataset(root)


def test_mask_with_the_wrong_size(tmp_path: Path) -> None:
    root = _folder(tmp_path, ("a",))
    _mask(root / "masks" / "a.png", np.zeros((5, 8)))
    with pytest.raises(DatasetError, match=rf"mask {root / 'masks' / 'a.png'} is 8x5 but image .*a.png is 8x6"):
        FolderDataset(root)[0]


def test_corrupt_image_in_a_dataset(tmp_path: Path) -> None:
    root = _folder(tmp_path, ("a",))
    (root / "images" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=rf"cannot read image {root / 'images' / 'a.png'}"):
        FolderDataset(root)[0]


def test_label_out_of_range(tmp_path: Path) -> None:
    root = _folder(tmp_path, ("a",))
    with pytest.raises(DatasetError, match=rf"mask {root / 'masks' / 'a.png'} has label values \[3\] outside 0..2"):
        FolderDataset(root, num_classes=3)[0]
    assert FolderDataset(root, num_classes=3, ignore_index=3)[0][1].max() == 3  # unless it is the ignore index


def test_bad_options(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="give both mean and std, or neither"):
        FolderDataset(root, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"std must be positive in every channel, got \[0.2, 0.0, 0.2\]"):
        FolderDataset(root, mean=(0.5,) * 3, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match=rf"image {root / 'images' / 'a.png'} has 3 channels but mean/std have 1"):
        FolderDataset(root, mean=(0.5,), std=(0.2,))[0]
    with pytest.raises(ValueError, match="num_classes=3 but 2 class names are given"):
        FolderDataset(root, num_classes=3, classes=["a", "b"])
    with pytest.raises(ValueError, match="label_map key -1 is negative"):
        FolderDataset(root, label_map={-1: 0})
    with pytest.raises(ValueError, match="foreground must be 'membrane' or 'cell'"):
        ISBIDataset(root, foreground="nucleus")  # type: ignore[arg-type]


def test_compute_stats_refuses_mixed_channels(tmp_path: Path) -> None:
    root = _folder(tmp_path, ("a",))
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "images" / "b.png")
    _mask(root / "masks" / "b.png", LABELS)
    with pytest.raises(ValueError, match=rf"image {root / 'images' / 'b.png'} has 1 channels, the first image has 3"):
        compute_stats(FolderDataset(root))


def test_create_dataset_refuses_unknown_kinds_and_contradictions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset layout 'kitti'; choose from \['ade20k', 'camvid', "):
        create_dataset("kitti", tmp_path)
    root, _ = _camvid(tmp_path / "camvid")
    with pytest.raises(ValueError, match="the camvid layout has 11 classes, not 12"):
        create_dataset("camvid", root, num_classes=12)
    with pytest.raises(ValueError, match="label_map applies to the folder layout only"):
        create_dataset("camvid", root, label_map={1: 2})


def test_undetectable_layout_lists_what_each_expects(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match=rf"cannot tell the layout of {tmp_path}.*camvid: train/ and trainannot/"):
        detect_layout(tmp_path)


# --- the real datasets (../shared/data beside the repository) -----------------------------------------


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (CI clones the repository with shared/data beside it)")
    return path


def test_real_camvid_splits() -> None:
    root = _shared("camvid")
    assert detect_layout(root) == "camvid"
    sizes = {split: len(CamVidDataset(root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    image, mask = CamVidDataset(root, "train")[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    assert int(mask.max()) <= 11


def test_real_isbi_membrane_is_class_1() -> None:
    root = _shared("isbi2012")
    train = ISBIDataset(root, "train")
    assert len(train) == 30 and len(ISBIDataset(root, "test")) == 30
    image, mask = train[0]
    raw = np.asarray(Image.open(root / "train" / "label" / "0.png"))
    assert image.shape == (1, 512, 512)
    np.testing.assert_array_equal(mask.numpy(), (raw == 0).astype(np.int64))  # 0 = membrane -> 1
    assert 0.15 < float(mask.float().mean()) < 0.3  # about 22% membrane (SOURCE.md)


def test_a_slice_of_a_split_holds_samples_out(tmp_path) -> None:
    from segforge.data import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "syn", num_train=6, num_val=2, size=16, num_classes=3, seed=0)
    whole = create_dataset("folder", root, "train")
    head, tail = create_dataset("folder", root, "train[:4]"), create_dataset("folder", root, "train[4:]")
    assert (len(head), len(tail)) == (4, 2)
    assert [tail.describe(i) for i in range(2)] == [whole.describe(4), whole.describe(5)]
    torch.testing.assert_close(tail[1][1], whole[5][1])
    assert tail.classes == whole.classes and tail.ignore_index == whole.ignore_index
    with pytest.raises(ValueError, match=r"split 'train\[9:\]' selects no samples of the 6 in 'train'"):
        create_dataset("folder", root, "train[9:]")


def test_a_slice_of_an_isbi_volume_reads_the_right_pages(tmp_path) -> None:
    import tifffile

    pages = np.stack([np.full((8, 8), 10 * i, np.uint8) for i in range(5)])
    tifffile.imwrite(tmp_path / "train-volume.tif", pages)
    tifffile.imwrite(tmp_path / "train-labels.tif", np.full((5, 8, 8), 255, np.uint8))
    tail = create_dataset("isbi", tmp_path, "train[3:]")
    assert len(tail) == 2 and tail.load_image(0).max() == 30 and tail.load_image(1).max() == 40
