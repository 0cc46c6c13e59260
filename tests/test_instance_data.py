"""Instance data: the synthetic generator's promises, the folder and COCO layouts against the mask decoders,
transforms that move instances with the image, batching, and every error a user can hit."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segforge.data.io import DatasetError
from segforge.data.transforms import build_transforms
from segforge.instances.boxes import masks_to_boxes
from segforge.instances.coco import polygons_to_mask, rle_decode, rle_encode
from segforge.instances.coco_dataset import CocoInstanceDataset
from segforge.instances.data import collate_instances, masks_to_regions, regions_to_masks
from segforge.instances.folder import InstanceFolderDataset
from segforge.instances.synthetic import (
    synthetic_instance_classes,
    synthetic_instance_sample,
    touching_pairs_of,
    write_synthetic_instance_dataset,
)

NAMES = ("background", "disk", "square")


def write_folder(
    root: Path,
    ids: np.ndarray,
    classes: dict[int, int] | None = None,
    *,
    class_map: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> Path:
    """One sample ``a`` in the instance folder layout, its classes in instances.json or a class map."""
    for folder in ("images", "instances"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = np.full((*ids.shape, 3), 90, np.uint8) if image is None else image
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(ids.astype(np.uint16)).save(root / "instances" / "a.png")
    if classes is not None:
        (root / "instances.json").write_text(json.dumps({"a": {str(k): v for k, v in classes.items()}}))
    if class_map is not None:
        (root / "classes").mkdir(exist_ok=True)
        Image.fromarray(class_map.astype(np.uint8)).save(root / "classes" / "a.png")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


def three_instances() -> tuple[np.ndarray, dict[int, int]]:
    """A 16x32 map: instance 1 at the left edge, 2 in the middle, 3 at the right edge."""
    ids = np.zeros((16, 32), np.int64)
    ids[2:10, 0:6], ids[4:12, 12:21], ids[1:7, 26:32] = 1, 2, 3
    return ids, {1: 1, 2: 2, 3: 1}


def masks_of(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids == k for k in range(1, ids.max() + 1)])


# --- the synthetic generator -----------------------------------------------------------------------------


def test_generator_is_a_pure_function_of_seed_and_index() -> None:
    first, again = synthetic_instance_sample(3, size=32), synthetic_instance_sample(3, size=32)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.image, synthetic_instance_sample(4, size=32).image)
    assert not np.array_equal(first.image, synthetic_instance_sample(3, size=32, seed=1).image)
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    assert first.instances.dtype == np.int32 and first.classes.dtype == np.int64
    with pytest.raises(ValueError, match="at least 24x24"):
        synthetic_instance_sample(0, size=16)


def test_touching_instances_are_one_blob_of_the_class_map_but_two_instances() -> None:
    for index in range(6):
        sample = synthetic_instance_sample(index, size=48, num_classes=4, seed=1, touching_pairs=2)
        ids, classes = sample.instances, sample.classes
        areas = np.bincount(ids.ravel(), minlength=len(classes) + 1)[1:]
        assert len(areas) == len(classes) and areas.min() >= 8  # ids 1..K all visible, none a sliver
        assert set(classes.tolist()) <= {1, 2, 3}
        pairs = touching_pairs_of(ids, classes)
        assert len(pairs) >= 2, f"sample {index} has {len(pairs)} touching same-class pairs, 2 promised"
        class_map = np.concatenate([[0], classes])[ids]
        for a, b in pairs:
            assert classes[a - 1] == classes[b - 1]
            _, blobs = cv2.connectedComponents((class_map == classes[a - 1]).astype(np.uint8), connectivity=4)
            # one connected component of the class map holds pixels of both: a semantic mask cannot split them
            assert set(np.unique(blobs[ids == a])) & set(np.unique(blobs[ids == b]))


# --- the folder layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_source", ["json", "png"])
def test_folder_layout_reads_back_what_the_writer_wrote(tmp_path: Path, class_source: str) -> None:
    root = write_synthetic_instance_dataset(
        tmp_path, num_train=2, num_val=1, size=40, num_classes=4, seed=3, class_source=class_source
    )
    train = InstanceFolderDataset(root, "train", mean=[0.5] * 3, std=[0.25] * 3)
    val = InstanceFolderDataset(root, "val")
    assert (len(train), len(val)) == (2, 1)
    assert train.classes == synthetic_instance_classes(4) and train.num_classes == 4
    for dataset, index, normalised in ((train, 0, True), (train, 1, True), (val, 0, False)):
        sample = synthetic_instance_sample(index + (2 if dataset is val else 0), size=40, num_classes=4, seed=3)
        image, target = dataset[index]
        expected_image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(image, (expected_image - 0.5) / 0.25 if normalised else expected_image)
        masks = torch.from_numpy(masks_of(sample.instances))
        assert torch.equal(target["masks"], masks)
        assert torch.equal(target["labels"], torch.from_numpy(sample.classes))
        assert torch.equal(target["boxes"], masks_to_boxes(masks))
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["iscrowd"].dtype == torch.bool and not target["iscrowd"].any()


def test_min_area_drops_small_instances_and_ids_need_not_be_contiguous(tmp_path: Path) -> None:
    ids = np.zeros((16, 16), np.int64)
    ids[0:5, 0:4], ids[10:12, 10:11] = 300, 3  # ids 3 (2 pixels) and 300 (20 pixels: a 16-bit id)
    write_folder(tmp_path, ids, {3: 2, 300: 1})
    _, target = InstanceFolderDataset(tmp_path)[0]
    assert target["labels"].tolist() == [2, 1]  # in id order
    _, target = InstanceFolderDataset(tmp_path, min_area=3)[0]
    assert target["labels"].tolist() == [1] and torch.equal(target["masks"][0], torch.from_numpy(ids == 300))


# --- the COCO layout ---------------------------------------------------------------------------------------


def column_major_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts, written out the slow way: runs down each column, background first."""
    counts, current, run = [], False, 0
    for value in mask.T.ravel():
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return counts + [run]


def write_coco(root: Path) -> list[dict]:
    """Image 1 (12x10) with a polygon, an uncompressed RLE and a crowd RLE overlapping the polygon; image 2 bare."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    for name in ("one.png", "two.png"):
        Image.fromarray(np.full((10, 12, 3), 120, np.uint8)).save(root / "val2017" / name)
    plain, crowd = np.zeros((10, 12), bool), np.zeros((10, 12), bool)
    plain[6:9, 2:10], crowd[3:8, 4:11] = True, True
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [[1, 1, 6.5, 1, 6.5, 5, 1, 5]]},
        {
            "id": 12,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": {"counts": column_major_counts(plain), "size": [10, 12]},
        },
        {"id": 13, "image_id": 1, "category_id": 7, "iscrowd": 1, "segmentation": rle_encode(crowd)},
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": 10, "width": 12},
            {"id": 2, "file_name": "two.png", "height": 10, "width": 12},
        ],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return annotations


def test_coco_layout_reads_polygons_rle_and_crowds(tmp_path: Path) -> None:
    annotations = write_coco(tmp_path)
    dataset = CocoInstanceDataset(tmp_path, "val2017")
    assert len(dataset) == 2 and dataset.classes == ["background", "dog", "cat"] and dataset.category_ids == [3, 7]
    image, target = dataset[0]
    assert image.shape == (3, 10, 12)
    expected = torch.stack(
        [
            polygons_to_mask(annotations[0]["segmentation"], 10, 12),
            rle_decode(annotations[1]["segmentation"]),
            rle_decode(annotations[2]["segmentation"]),
        ]
    )
    assert (expected[0] & expected[2]).any()  # the crowd overlaps the polygon: both keep the shared pixels
    assert torch.equal(target["masks"], expected)
    assert target["labels"].tolist() == [2, 1, 2]  # cat (id 7) -> 2, dog (id 3) -> 1
    assert target["iscrowd"].tolist() == [False, False, True]
    assert torch.equal(target["boxes"], masks_to_boxes(expected))
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 10, 12) and empty["labels"].numel() == 0
    # overlapping masks move with the image, each whole
    dataset.transform = build_transforms({"hflip": {"p": 1.0}}, ignore_index=0, seed=0)
    _, flipped = dataset[0]
    assert torch.equal(flipped["masks"], expected.flip(-1))


def test_masks_to_regions_round_trips_overlapping_masks() -> None:
    masks = np.random.default_rng(0).random((11, 9, 7)) < 0.3  # 11 instances: two bytes per pixel, overlaps
    regions, members = masks_to_regions(masks)
    assert not members[0].any()
    np.testing.assert_array_equal(regions_to_masks(regions, members), masks)


# --- transforms --------------------------------------------------------------------------------------------


def test_a_flip_mirrors_boxes(tmp_path: Path) -> None:
    ids, classes = three_instances()
    dataset = InstanceFolderDataset(write_folder(tmp_path, ids, classes))
    _, plain = dataset[0]
    dataset.transform = build_transforms({"hflip": {"p": 1.0}}, ignore_index=0, seed=0)
    _, flipped = dataset[0]
    width = ids.shape[1]
    x1, y1, x2, y2 = plain["boxes"].unbind(1)
    assert torch.equal(flipped["boxes"], torch.stack([width - x2, y1, width - x1, y2], dim=1))  # x1' = W - x2
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert torch.equal(flipped["labels"], plain["labels"])


def test_a_crop_keeps_what_it_cuts_and_drops_what_it_removes(tmp_path: Path) -> None:
    ids, classes = three_instances()
    columns = np.broadcast_to((np.arange(32) * 8).astype(np.uint8)[None, :, None], (16, 32, 3)).copy()
    dataset = InstanceFolderDataset(write_folder(tmp_path, ids, classes, image=columns))
    dataset.transform = build_transforms({}, ignore_index=0, crop_size=(16, 16), seed=0)
    full, labels = masks_of(ids), np.asarray([1, 2, 1])
    seen_cut = seen_dropped = False
    for seed in range(30):
        dataset.augment_seed = seed
        image, target = dataset[0]
        left = round(image[0, 0, 0].item() * 255 / 8)  # the image says where the crop began
        window = full[:, :, left : left + 16]
        kept = window.any(axis=(1, 2))
        assert torch.equal(target["masks"], torch.from_numpy(window[kept]))
        assert target["labels"].tolist() == labels[kept].tolist()
        assert torch.equal(target["boxes"], masks_to_boxes(torch.from_numpy(window[kept])))
        seen_dropped |= not kept.all()
        visible = window.sum(axis=(1, 2))
        seen_cut |= bool(((visible > 0) & (visible < full.sum(axis=(1, 2)))).any())
    assert seen_cut and seen_dropped


def test_rotation_brings_in_background(tmp_path: Path) -> None:
    ids = np.ones((32, 32), np.int64)
    ids[:, 16:] = 2  # instances cover every pixel: whatever the rotation brings in must become background
    dataset = InstanceFolderDataset(write_folder(tmp_path, ids, {1: 1, 2: 2}))
    dataset.transform = transform = build_transforms({"rotate": {"limit_degrees": 90, "p": 1.0}}, ignore_index=0)
    brought_in = 0
    for seed in range(4):
        dataset.augment_seed = seed
        _, target = dataset[0]
        # the same draws on an all-ones mask: 0 marks what the rotation brought in
        _, inside = transform(
            np.zeros((32, 32, 3), np.float32), np.ones((32, 32), np.int64), rng=np.random.default_rng([seed, 0])
        )
        assert torch.equal(target["masks"].any(dim=0), torch.from_numpy(inside == 1))
        assert target["labels"].tolist() == [1, 2]
        brought_in += int((inside == 0).sum())
    assert brought_in > 0


def test_a_transform_that_fills_with_the_ignore_index_is_refused(tmp_path: Path) -> None:
    dataset = InstanceFolderDataset(write_folder(tmp_path, np.ones((32, 32), np.int64), {1: 1}))
    dataset.transform = build_transforms({"rotate": {"limit_degrees": 90, "p": 1.0}}, ignore_index=255, seed=0)
    with pytest.raises(ValueError, match=r"value 255 .* ignore_index=0"):
        dataset[0]


# --- batching ----------------------------------------------------------------------------------------------


def test_collate_pads_bottom_right_and_keeps_targets() -> None:
    first, second = ({"labels": torch.tensor([1])}, {"labels": torch.tensor([2, 1])})
    batch = [(torch.ones(3, 20, 30), first), (torch.full((3, 24, 16), 2.0), second)]
    images, targets = collate_instances(batch)
    assert images.shape == (2, 3, 24, 30) and targets[0] is first and targets[1] is second
    assert (images[0, :, :20, :] == 1).all() and (images[0, :, 20:, :] == 0).all()
    assert (images[1, :, :, :16] == 2).all() and (images[1, :, :, 16:] == 0).all()
    assert collate_instances(batch, size_divisor=32)[0].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="one channel count"):
        collate_instances([batch[0], (torch.ones(1, 8, 8), first)])


# --- errors ------------------------------------------------------------------------------------------------


def _image_without_instance_map(root: Path) -> None:
    write_folder(root, np.ones((8, 8), np.int64), {1: 1})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "b.png")
    InstanceFolderDataset(root)


def _split_naming_a_missing_image(root: Path) -> None:
    write_folder(root, np.ones((8, 8), np.int64), {1: 1})
    (root / "train.txt").write_text("a\nzz\n")
    InstanceFolderDataset(root, "train")


def _size_mismatch(root: Path) -> None:
    write_folder(root, np.ones((16, 12), np.int64), {1: 1}, image=np.zeros((16, 16, 3), np.uint8))
    InstanceFolderDataset(root)[0]


def _inconsistent_classes(root: Path) -> None:
    class_map = np.zeros((8, 8), np.uint8)
    class_map[:, :5], class_map[:, 5:] = 1, 2  # instance 1 covers both halves
    write_folder(root, np.ones((8, 8), np.int64), class_map=class_map)
    InstanceFolderDataset(root)[0]


def _bad_coco_json(root: Path) -> None:
    write_coco(root)
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    CocoInstanceDataset(root, "val2017")


def _unknown_coco_category(root: Path) -> None:
    write_coco(root)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(data))
    CocoInstanceDataset(root, "val2017")


def _coco_without_images(root: Path) -> None:
    write_coco(root)
    (root / "val2017").rename(root / "elsewhere")
    CocoInstanceDataset(root, "val2017")


ERRORS = {
    "missing root": (lambda root: InstanceFolderDataset(root / "nowhere"), "does not exist; pass the folder"),
    "missing instances folder": (
        lambda root: ((root / "images").mkdir(), InstanceFolderDataset(root)),
        r"instances does not exist; expected images/ and instances/",
    ),
    "no class source": (
        lambda root: (write_folder(root, np.ones((8, 8), np.int64)), InstanceFolderDataset(root)),
        "neither instances.json nor a classes/ folder",
    ),
    "image without instance map": (_image_without_instance_map, r"have no instance map .* e\.g\. b\.png"),
    "split names a missing image": (_split_naming_a_missing_image, r"have no image in .* e\.g\. zz"),
    "missing split list": (
        lambda root: (write_folder(root, np.ones((8, 8), np.int64), {1: 1}), InstanceFolderDataset(root, "test")),
        r"split list .*test\.txt does not exist",
    ),
    "size mismatch": (_size_mismatch, r"instance map .*a\.png is 12x16 but image .* is 16x16"),
    "id without class (json)": (
        lambda root: (
            write_folder(root, np.arange(4).reshape(2, 2).repeat(4, 0).repeat(4, 1), {1: 1, 3: 2}),
            InstanceFolderDataset(root)[0],
        ),
        r"instance id\(s\) \[2\] .* have no class",
    ),
    "id without class (class map)": (
        lambda root: (
            write_folder(root, np.ones((8, 8), np.int64), class_map=np.zeros((8, 8))),
            InstanceFolderDataset(root)[0],
        ),
        "instance 1 of .* has no class",
    ),
    "instance spanning classes": (_inconsistent_classes, r"spans classes inconsistently \(1: 6\d%, 2: 3\d%"),
    "class out of range": (
        lambda root: (write_folder(root, np.ones((8, 8), np.int64), {1: 5}), InstanceFolderDataset(root)[0]),
        r"instance 1 of .* has class 5, outside 1\.\.2",
    ),
    "class 0": (
        lambda root: (write_folder(root, np.ones((8, 8), np.int64), {1: 0}), InstanceFolderDataset(root)[0]),
        r"has class 0, outside 1\.\.2 .* 0 is the background",
    ),
    "unreadable instances.json": (
        lambda root: (
            write_folder(root, np.ones((8, 8), np.int64)),
            (root / "instances.json").write_text('{"a": {"1": 1'),
            InstanceFolderDataset(root),
        ),
        r"instances\.json: not valid JSON .* line 1",
    ),
    "instances.json of the wrong form": (
        lambda root: (
            write_folder(root, np.ones((8, 8), np.int64)),
            (root / "instances.json").write_text('{"a": [1, 2]}'),
            InstanceFolderDataset(root),
        ),
        r"the entry of 'a' is not \{instance id: class\}",
    ),
    "missing COCO file": (lambda root: CocoInstanceDataset(root, "val2017"), r"instances_val2017\.json does not exist"),
    "unreadable COCO JSON": (_bad_coco_json, r"instances_val2017\.json: not valid JSON"),
    "COCO category not listed": (_unknown_coco_category, r"category_id 9, which 'categories' does not list"),
    "COCO image folder missing": (_coco_without_images, "no image folder for COCO split 'val2017'"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_name_the_problem_and_the_fix(tmp_path: Path, case: str) -> None:
    action, message = ERRORS[case]
    with pytest.raises(DatasetError, match=message):
        action(tmp_path)
