"""Instance pictures and prediction files (segforge.instances.visualise, segforge.instances.predict): known
pixels of a drawing, the id map and JSON record on hand-made detections, then the files of a tiny model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segforge.instances import mask_rcnn, rle_decode
from segforge.instances.predict import detect, instance_id_map, instances_json, predict_instance_files
from segforge.instances.visualise import draw_instances, instance_colours, side_by_side

GREY = 100
ALPHA = 0.45
CLASSES = ["background", "cell", "nucleus"]


def square(top: int, left: int, side: int, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def detections(masks: list[np.ndarray], scores: list[float] | None, labels: list[int] | None = None) -> dict:
    """Detections as MaskRCNN gives them, each box the mask's extent."""
    boxes = []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    found = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        "labels": torch.tensor(labels or [1] * len(masks)),
        "masks": torch.from_numpy(np.stack(masks)),
    }
    if scores is not None:
        found["scores"] = torch.tensor(scores)
    return found


def blend(under: np.ndarray | int, colour: np.ndarray) -> np.ndarray:
    return np.round((1 - ALPHA) * np.asarray(under, dtype=np.float64) + ALPHA * colour).astype(np.uint8)


def test_instance_colours_are_distinct_bright_and_deterministic() -> None:
    colours = instance_colours(256)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours.tolist()}) == 256
    assert (colours.max(axis=1) >= 200).all()  # bright: no dark or grey colour
    assert (colours.max(axis=1).astype(int) - colours.min(axis=1) >= 80).all()
    np.testing.assert_array_equal(instance_colours(10), instance_colours(10))
    np.testing.assert_array_equal(instance_colours(10)[:5], instance_colours(5))  # a colour keeps to its rank
    assert not np.array_equal(instance_colours(10, seed=1), instance_colours(10))
    assert instance_colours(0).shape == (0, 3)
    with pytest.raises(ValueError, match="count must be an int >= 0"):
        instance_colours(-1)


def test_draw_instances_fills_outlines_and_leaves_the_rest() -> None:
    image = np.full((64, 80, 3), GREY, dtype=np.uint8)
    kept, dropped = square(30, 10, 20), square(30, 50, 20)
    found = detections([kept, dropped], [0.9, 0.3])
    picture = draw_instances(image, found, CLASSES, score_threshold=0.5, alpha=ALPHA)
    colour = instance_colours(1)[0]
    assert picture.shape == (64, 80, 3) and picture.dtype == np.uint8
    assert (image == GREY).all()  # the input is not drawn on
    np.testing.assert_array_equal(picture[32:48, 12:28], np.broadcast_to(blend(GREY, colour), (16, 16, 3)))
    outline = kept & ~square(31, 11, 18)
    np.testing.assert_array_equal(picture[outline], np.broadcast_to(colour, (int(outline.sum()), 3)))
    assert (picture[dropped] == GREY).all()  # under the threshold: not drawn
    changed = (picture != GREY).any(axis=-1)
    assert not changed[:15].any() and not changed[50:].any() and not changed[30:, 30:].any()  # away from it
    label = picture[15:30, 10:40]  # "cell 0.90" on a patch of the colour just above the box
    assert (label == colour).all(axis=-1).sum() > 20 and (label != colour).any(axis=-1).sum() > 10


def test_draw_instances_puts_the_best_score_on_top() -> None:
    image = np.full((64, 80, 3), GREY, dtype=np.uint8)
    low, high = square(20, 10, 30), square(25, 15, 30)
    picture = draw_instances(image, detections([low, high], [0.6, 0.8]), score_threshold=0.5, alpha=ALPHA)
    best, second = instance_colours(2)
    np.testing.assert_array_equal(picture[35, 30], blend(blend(GREY, second), best))  # both inside: best last
    np.testing.assert_array_equal(picture[30, 42], blend(GREY, best))
    np.testing.assert_array_equal(picture[45, 12], blend(GREY, second))


def test_draw_instances_takes_grey_float_many_channels_and_ground_truth() -> None:
    mask = square(20, 20, 20)
    truth = detections([mask], None, labels=[2])  # no scores: every instance drawn, whatever the threshold
    colour = instance_colours(1)[0]
    for image in (np.full((64, 80), 0.5), np.full((64, 80, 1), 0.5, np.float32), np.full((64, 80, 5), 128, np.uint8)):
        picture = draw_instances(image, truth, CLASSES, score_threshold=2.0, alpha=ALPHA)
        assert picture.shape == (64, 80, 3) and picture.dtype == np.uint8
        np.testing.assert_array_equal(picture[30, 30], blend(128, colour))
        assert (picture[50:, 50:] == 128).all()


def test_draw_instances_pads_small_masks_and_refuses_bad_input() -> None:
    image = np.zeros((64, 80, 3), dtype=np.uint8)
    small = detections([square(15, 5, 10, size=(32, 40))], [0.9])  # a mask at the image's corner of a batch
    picture = draw_instances(image, small, alpha=ALPHA)
    np.testing.assert_array_equal(picture[20, 10], blend(0, instance_colours(1)[0]))
    large = detections([square(5, 5, 10, size=(70, 80))], [0.9])
    with pytest.raises(ValueError, match="larger than the image"):
        draw_instances(image, large)
    with pytest.raises(ValueError, match=r"lack \['masks'\]"):
        draw_instances(image, {"boxes": small["boxes"], "labels": small["labels"]})
    with pytest.raises(ValueError, match="alpha"):
        draw_instances(image, small, alpha=1.5)
    with pytest.raises(ValueError, match="pixel type"):
        draw_instances(image.astype(np.int32), small)


def test_side_by_side_joins_with_a_gap_under_titles() -> None:
    left, right = np.zeros((20, 30, 3), np.uint8), np.full((20, 25), 0.5)
    plain = side_by_side(left, right, titles=None)
    assert plain.shape == (20, 30 + 4 + 25, 3)
    assert (plain[:, :30] == 0).all() and (plain[:, 30:34] == 255).all() and (plain[:, 34:] == 128).all()
    titled = side_by_side(left, right)
    strip = titled.shape[0] - 20
    assert titled.shape[1] == 59 and 8 <= strip <= 30
    np.testing.assert_array_equal(titled[strip:], plain)
    assert (titled[:strip] < 128).any()  # the titles' ink
    with pytest.raises(ValueError, match="heights 20 and 21"):
        side_by_side(left, np.zeros((21, 30, 3), np.uint8))


def test_instance_id_map_gives_overlaps_to_the_higher_score() -> None:
    low, high = square(10, 10, 20), square(20, 20, 20)  # low scores 0.4, high 0.8: high is id 1
    found = detections([low, high], [0.4, 0.8])
    ids = instance_id_map(found, (64, 80), score_threshold=0.3)
    assert ids.dtype == np.uint16 and ids.shape == (64, 80)
    assert (ids[high] == 1).all() and (ids[low & ~high] == 2).all() and (ids[~(low | high)] == 0).all()
    only_high = instance_id_map(found, (64, 80), score_threshold=0.5)
    np.testing.assert_array_equal(only_high, high.astype(np.uint16))
    assert not instance_id_map(found, (64, 80), score_threshold=0.9).any()


def test_instances_json_round_trips_masks_by_decreasing_score() -> None:
    masks = [square(10, 10, 5), square(30, 40, 12), square(40, 5, 8), square(0, 60, 4)]
    found = detections(masks, [0.55, 0.95, 0.7, 0.2], labels=[1, 2, 7, 1])
    found["boxes"][0] += torch.tensor([0.123, 0.456, 0.001, 0.999])
    record = json.loads(json.dumps(instances_json(found, CLASSES, image="a.png", size=(64, 80), score_threshold=0.5)))
    assert (record["image"], record["height"], record["width"]) == ("a.png", 64, 80)
    instances = record["instances"]
    assert [i["id"] for i in instances] == [1, 2, 3] and [i["score"] for i in instances] == pytest.approx(
        [0.95, 0.7, 0.55]
    )
    assert [(i["class"], i["class_name"]) for i in instances] == [(2, "nucleus"), (7, None), (1, "cell")]
    for instance, mask in zip(instances, [masks[1], masks[2], masks[0]]):
        assert set(instance) == {"id", "class", "class_name", "score", "box", "area", "mask"}
        np.testing.assert_array_equal(rle_decode(instance["mask"]).numpy(), mask)
        assert instance["area"] == mask.sum() and instance["mask"]["size"] == [64, 80]
    assert instances[2]["box"] == [10.12, 10.46, 15.0, 16.0]
    with pytest.raises(ValueError, match="need scores"):
        instances_json(detections(masks, None), CLASSES, image="a.png", size=(64, 80), score_threshold=0.5)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    # fewer proposals and detections than the defaults: an untrained model keeps all it may, slowly on a CPU
    return mask_rcnn(
        3,
        encoder="resnet18",
        fpn_channels=32,
        representation_size=64,
        rpn_pre_nms_top_n=(300, 100),
        rpn_post_nms_top_n=(100, 50),
        detections_per_image=10,
    )


def test_detect_refuses_a_batch(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        detect(tiny_model, torch.zeros(3, 64, 64))


def test_predict_instance_files_writes_three_consistent_files(tiny_model, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    out, info = tmp_path / "out", {"mean": [0.5] * 3, "std": [0.25] * 3, "classes": CLASSES[:3]}
    written = predict_instance_files(tiny_model, [tmp_path / "*.png"], out, info=info, score_threshold=0.0)
    assert written == [out / "a.json", out / "b.json"]
    for name in ("a", "b"):
        record = json.loads((out / f"{name}.json").read_text())
        assert (record["image"], record["height"], record["width"]) == (f"{name}.png", 64, 64)
        ids = cv2.imread(str(out / f"{name}_ids.png"), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16 and ids.shape == (64, 64)
        picture = np.asarray(Image.open(out / f"{name}_instances.png"))
        assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
        union = np.zeros((64, 64), dtype=bool)  # an untrained model may find nothing: then all ids are 0
        for instance in record["instances"]:
            mask = rle_decode(instance["mask"]).numpy()
            assert instance["class_name"] == CLASSES[instance["class"]]
            assert mask[ids == instance["id"]].all()  # an id's pixels lie in its mask
            union |= mask
        np.testing.assert_array_equal(ids > 0, union)
        assert ids.max() <= len(record["instances"])

    stamp = (out / "a.json").stat().st_mtime_ns
    (out / "b_ids.png").unlink()
    assert predict_instance_files(
        tiny_model, [tmp_path / "*.png"], out, info=info, score_threshold=0.0, skip_existing=True
    ) == [out / "b.json"]
    assert (out / "a.json").stat().st_mtime_ns == stamp  # a skipped
    assert (out / "b_ids.png").exists()  # b redone


def test_predict_instance_files_errors_name_the_file(tiny_model, tmp_path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predict_instance_files(tiny_model, [tmp_path / "broken.png"], tmp_path / "out", info={})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c.bmp")
    with pytest.raises(ValueError, match="would both write"):
        predict_instance_files(tiny_model, [tmp_path / "c.png", tmp_path / "c.bmp"], tmp_path / "out", info={})
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="grey.png has 1 channel"):
        predict_instance_files(tiny_model, [tmp_path / "grey.png"], tmp_path / "out", info={})
