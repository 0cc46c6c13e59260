"""segforge.instances against plain-Python references written from the definitions (greedy NMS, torchvision's
RoIAlign loop), hand-computed answers, and pycocotools where it is installed (RLE, polygons, COCOeval)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from segforge.instances import (
    annotation_to_mask,
    average_precision,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    masks_to_boxes,
    nms,
    polygons_to_mask,
    remove_small_boxes,
    rle_decode,
    rle_encode,
    roi_align,
)
from segforge.instances.boxes import BBOX_EXP_CLAMP
from segforge.instances.coco import rle_from_string, rle_to_string


def random_boxes(count: int, generator: torch.Generator, extent: float = 50.0) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent / 2 + 1
    return torch.cat([corner, corner + size], dim=1)


# ---------------------------------------------------------------------------------------------------- boxes


def test_box_iou_and_area_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [4.0, 4.0, 4.0, 9.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(box_area(b), torch.tensor([4.0, 4.0, 1.0, 0.0]))
    degenerate = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0  # not NaN


def test_encode_decode_round_trip_and_clamp() -> None:
    g = torch.Generator().manual_seed(0)
    proposals, truth = random_boxes(20, g), random_boxes(20, g)
    deltas = encode_boxes(truth, proposals)
    torch.testing.assert_close(decode_boxes(deltas, proposals), truth)
    torch.testing.assert_close(decode_boxes(torch.zeros(20, 4, dtype=torch.float64), proposals), proposals)
    # per-class deltas (K, 4 * C) decode each set of four
    two = decode_boxes(torch.cat([deltas, torch.zeros_like(deltas)], 1), proposals)
    torch.testing.assert_close(two, torch.cat([truth, proposals], 1))
    # by hand: a box twice as wide, centred 1 px to the right of a 10 x 10 proposal
    proposal, box = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[-4.0, 0.0, 16.0, 10.0]])
    torch.testing.assert_close(encode_boxes(box, proposal), torch.tensor([[1.0, 0.0, 5 * math.log(2), 0.0]]))
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 1e4, 0.0]]), proposal)
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(10 * math.exp(BBOX_EXP_CLAMP)))


def test_clip_remove_small_and_masks_to_boxes() -> None:
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 8.0], [1.0, 1.0, 1.5, 9.0], [3.0, 3.0, 6.0, 7.0]])
    torch.testing.assert_close(clip_boxes(boxes, (10, 20))[0], torch.tensor([0.0, 2.0, 20.0, 8.0]))
    assert remove_small_boxes(boxes, 1.0).tolist() == [0, 2]
    masks = torch.zeros(3, 6, 7, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[2, 5, 0] = True
    expected = torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0], [0.0, 5.0, 1.0, 6.0]])
    torch.testing.assert_close(masks_to_boxes(masks), expected)
    assert box_area(masks_to_boxes(masks[:1])).item() == masks[0].sum()  # the pixels' outer edges


def test_box_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"shape \(K, 4\).*boxes\[None\]"):
        box_iou(torch.zeros(4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="floating point"):
        box_area(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pair up one to one"):
        encode_boxes(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"\(K, 4 \* C\) with K = 2"):
        decode_boxes(torch.zeros(2, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match="four positive numbers"):
        encode_boxes(torch.ones(1, 4), torch.ones(1, 4), weights=(1, 1, 0, 1))
    with pytest.raises(ValueError, match=r"mask\[None\]"):
        masks_to_boxes(torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------------------- NMS


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """The greedy definition: by decreasing score, keep a box unless a kept box overlaps it above the threshold."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(_iou(boxes[i].tolist(), boxes[j].tolist()) <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_the_greedy_definition(seed: int, threshold: float) -> None:
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(60, g)
    scores = torch.randperm(60, generator=g).double() / 60  # no ties
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, threshold)
    # class-aware: greedy within each class, merged by score
    classes = torch.randint(0, 3, (60,), generator=g)
    expected = []
    for c in range(3):
        members = torch.nonzero(classes == c).flatten()
        expected += members[reference_nms(boxes[members], scores[members], threshold)].tolist()
    expected.sort(key=lambda i: -float(scores[i]))
    assert batched_nms(boxes, scores, classes, threshold).tolist() == expected


def test_nms_chain_small_and_empty_inputs() -> None:
    # B overlaps A and C; A suppresses B, so C (which only B overlaps) is kept: greedy, not "any overlap"
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 1]), 0.3).tolist() == [0, 1]
    assert nms(boxes[:1], scores[:1], 0.5).tolist() == [0]
    for result in (
        nms(torch.zeros(0, 4), torch.zeros(0), 0.5),
        batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5),
    ):
        assert result.dtype == torch.int64 and result.shape == (0,)


def test_nms_errors() -> None:
    with pytest.raises(ValueError, match=r"scores must be a \(3,\) tensor"):
        nms(torch.ones(3, 4), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\]"):
        nms(torch.ones(3, 4), torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="classes must be a .* integer tensor"):
        batched_nms(torch.ones(3, 4), torch.ones(3), torch.ones(3), 0.5)


# ---------------------------------------------------------------------------------------------------- RoIAlign


def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate (roi_align_kernel.cpp), for one point, all channels."""
    height, width = feature.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feature.new_zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )


def reference_roi_align(features, rois, output_size, scale, sampling_ratio, aligned) -> torch.Tensor:
    """torchvision's RoIAlign forward, loop for loop."""
    out_h, out_w = output_size
    result = features.new_zeros(len(rois), features.shape[1], out_h, out_w)
    offset = 0.5 if aligned else 0.0
    for k, (index, x1, y1, x2, y2) in enumerate(rois.tolist()):
        start_x, start_y = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = x2 * scale - offset - start_x, y2 * scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = features.new_zeros(features.shape[1])
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear(features[int(index)], y, x)
                result[k, :, ph, pw] = total / count
    return result


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_roi_align_equals_torchvisions_loop(aligned: bool, sampling_ratio: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(sampling_ratio + 2 * aligned)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=dtype)
    # in image coordinates at spatial_scale 0.5: corners from well outside to well past the 18 x 22 image
    corner = torch.rand(8, 2, generator=g, dtype=dtype) * 30 - 6
    size = torch.rand(8, 2, generator=g, dtype=dtype) * 16
    rois = torch.cat([torch.randint(0, 2, (8, 1), generator=g).to(dtype), corner, corner + size], dim=1)
    rois[0, 1:] = torch.tensor([-30.0, -30.0, -25.0, -28.0])  # entirely outside: zeros
    rois[1, 1:] = torch.tensor([4.0, 4.0, 4.0, 4.0])  # empty box
    ours = roi_align(features, rois, (3, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    expected = reference_roi_align(features.double(), rois.double(), (3, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=0)
    # the same boxes given per image
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    by_list = roi_align(features, per_image, (3, 4), 0.5, sampling_ratio, aligned)
    order = torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(2)])
    torch.testing.assert_close(by_list, ours[order])


def test_roi_align_of_a_ramp_reads_the_bin_centres() -> None:
    # on f(y, x) = x, RoIAlign (aligned) gives each bin's centre in pixel-centre coordinates
    features = torch.arange(12.0).expand(1, 1, 10, 12).contiguous()
    out = roi_align(features, torch.tensor([[0.0, 2.0, 3.0, 6.0, 7.0]]), (2, 2), sampling_ratio=2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.5, 4.5], [2.5, 4.5]]))


def test_roi_align_gradients_reach_the_features() -> None:
    features = torch.randn(2, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, -1.3, 0.4, 4.2, 3.9], [1, 2.2, 1.1, 5.5, 5.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_align(x, rois, (2, 2), 1.0, 0, True), (features,))
    assert torch.autograd.gradcheck(lambda x: roi_align(x, rois, (2, 3), 1.0, 2, False), (features,))


def test_roi_align_errors() -> None:
    features = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"image indices in \[0, 2\).*\[2.0\]"):
        roi_align(features, torch.tensor([[2.0, 0, 0, 4, 4]]), 2)
    with pytest.raises(ValueError, match=r"\(K, 5\) tensor of \[batch_index"):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="list of 1 tensors but features hold 2 images"):
        roi_align(features, [torch.zeros(1, 4)], 2)
    with pytest.raises(ValueError, match="output_size must be an int >= 1"):
        roi_align(features, torch.zeros(1, 5), (2, 0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) float"):
        roi_align(features[0], torch.zeros(1, 5), 2)


# ---------------------------------------------------------------------------------------------------- COCO masks


def test_rle_round_trip_and_known_answers() -> None:
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 17), (13, 1), (24, 31), (40, 7)]
    for (h, w), density in zip(shapes * 3, np.linspace(0, 1, 15)):
        mask = rng.random((h, w)) < density
        assert np.array_equal(rle_decode(rle_encode(mask)).numpy(), mask)
    # [[0, 1, 1], [0, 0, 1]] column by column: 0 0 | 1 0 | 1 1 -> runs 2, 1, 1, 2
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert rle_encode(mask) == {"size": [2, 3], "counts": "2111"}  # the 4th count as 2 - 1
    assert torch.equal(rle_decode({"size": [2, 3], "counts": [2, 1, 1, 2]}), mask)
    assert torch.equal(rle_decode({"size": [2, 3], "counts": b"2111"}), mask)
    # 100 = 4 + 3 * 32: "T" (4 | 0x20, more follows), "3"; 3 - 100 = -97: "o", "L" (sign bit in the last group)
    assert rle_from_string("0T35oL").tolist() == [0, 100, 5, 3]
    assert rle_to_string([0, 100, 5, 3]) == "0T35oL"


def test_polygons_and_annotation_forms_agree() -> None:
    rectangle = [2.3, 10.3, 7.7, 10.3, 7.7, 20.7, 2.3, 20.7]  # pixel centres 2.5..7.5, 10.5..20.5 inside
    mask = polygons_to_mask([rectangle], 30, 25)
    expected = torch.zeros(30, 25, dtype=torch.bool)
    expected[10:21, 2:8] = True
    assert torch.equal(mask, expected)
    uncompressed = {"size": [30, 25], "counts": [int(c) for c in rle_from_string(rle_encode(expected)["counts"])]}
    for segmentation in ([rectangle], rle_encode(expected), uncompressed):
        assert torch.equal(annotation_to_mask({"segmentation": segmentation}, 30, 25), expected)
    # the union of overlapping polygons
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    assert polygons_to_mask([square, [x + 5 for x in square]], 20, 20).sum() == 175


def test_coco_mask_errors() -> None:
    with pytest.raises(ValueError, match=r"add up to 5 pixels but size 2x3 has 6.*\[height, width\]"):
        rle_decode({"size": [2, 3], "counts": [2, 1, 2]})
    with pytest.raises(ValueError, match=r"size must be \[height, width\]"):
        rle_decode({"size": [6], "counts": [6]})
    with pytest.raises(ValueError, match=r"'counts' and 'size'"):
        rle_decode({"counts": [6]})
    with pytest.raises(ValueError, match="truncated"):
        rle_decode({"size": [2, 3], "counts": "2T"})
    with pytest.raises(ValueError, match="outside COCO's alphabet"):
        rle_decode({"size": [2, 3], "counts": "2 11"})
    with pytest.raises(ValueError, match=r"RLE is 2x3 but its image is 3x2"):
        annotation_to_mask({"segmentation": {"size": [2, 3], "counts": "2111"}}, 3, 2)
    with pytest.raises(ValueError, match="polygon 1 must be a flat list .* at least 3 points"):
        polygons_to_mask([[0, 0, 4, 0, 4, 4], [0, 0, 4, 0, 4]], 5, 5)
    with pytest.raises(ValueError, match="with a 'segmentation'"):
        annotation_to_mask({"bbox": [0, 0, 1, 1]}, 5, 5)
    with pytest.raises(ValueError, match="encode masks one at a time"):
        rle_encode(np.zeros((2, 3, 4)))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_rle_and_polygons_agree_with_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (5, 9), (37, 23), (64, 80)]:
        for density in (0.0, 0.1, 0.5, 0.97, 1.0):
            mask = rng.random((h, w)) < density
            theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert rle_encode(mask)["counts"] == theirs["counts"].decode()
            assert np.array_equal(rle_decode(theirs).numpy(), mask_api.decode(theirs).astype(bool))
            uncompressed = {"size": [h, w], "counts": [int(c) for c in rle_from_string(theirs["counts"])]}
            assert mask_api.frPyObjects(uncompressed, h, w)["counts"] == theirs["counts"]
    # polygons: the same pixels but for a few along the boundary
    assert polygons_to_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 12, 12).sum() == 100
    for _ in range(40):
        count = int(rng.integers(3, 9))
        angle, radius = np.sort(rng.random(count)) * 2 * np.pi, rng.random(count) * 20 + 4
        centre = rng.random(2) * 50
        points = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], 1)
        ours = polygons_to_mask([points.ravel().tolist()], 50, 60).numpy()
        theirs = mask_api.decode(mask_api.frPyObjects([points.ravel().tolist()], 50, 60))[..., 0].astype(bool)
        perimeter = np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1).sum()
        assert abs(int(ours.sum()) - int(theirs.sum())) <= 0.25 * perimeter + 1
        assert (ours ^ theirs).sum() <= 0.5 * perimeter + 1


# ---------------------------------------------------------------------------------------------------- AP


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_average_precision_by_hand() -> None:
    # two ground truths; detections: A exactly (0.9), A again (0.8, a duplicate: false positive),
    # B with IoU 100 / 160 = 0.625 (0.7): a true positive at t <= 0.6 only
    truth = {"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "labels": torch.tensor([0, 0])}
    boxes = _boxes([0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 36])
    prediction = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])}
    result = average_precision([prediction], [truth])
    # t <= 0.6: TP FP TP -> recall .5 .5 1, monotone precision 1 2/3 2/3: (51 * 1 + 50 * 2/3) / 101 = 253/303
    # t > 0.6: TP FP FP -> precision 1 up to recall .5, then nothing: 51/101
    assert result["AP50"] == pytest.approx(253 / 303, abs=1e-12)
    assert result["AP75"] == pytest.approx(51 / 101, abs=1e-12)
    assert result["AP"] == pytest.approx((3 * 253 / 303 + 7 * 51 / 101) / 10, abs=1e-12)
    assert result["AR100"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)
    # a crowd absorbs a detection inside it (IoU = intersection / detection area = 1) without a false
    # positive; a class without ground truth is -1 and left out of the mean
    truth_crowd = {
        "boxes": torch.cat([truth["boxes"], _boxes([40, 40, 80, 80])]),
        "labels": torch.tensor([0, 0, 0]),
        "iscrowd": torch.tensor([0, 0, 1]),
    }
    extra = {
        "boxes": torch.cat([boxes, _boxes([45, 45, 55, 55], [0, 0, 5, 5])]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.95, 0.99]),
        "labels": torch.tensor([0, 0, 0, 0, 1]),
    }
    crowded = average_precision([extra], [truth_crowd])
    assert crowded["AP"] == pytest.approx(result["AP"], abs=1e-12)
    assert crowded["per_class"] == {0: pytest.approx(result["AP"], abs=1e-12), 1: -1.0}


def synthetic_set(seed: int, images: int = 5, classes: int = 3, size: tuple[int, int] = (120, 150)):
    """Ground truths (rectangles of noisy masks, some crowds) and detections: jittered copies, wrong classes,
    strays; boxes from 3 to 100 px so that every size range has some."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    predictions, truths = [], []
    for i in range(images):
        count = int(torch.randint(0, 8, (1,), generator=g))
        corner = torch.rand(count, 2, generator=g) * torch.tensor([w - 10.0, h - 10.0])
        boxes = torch.minimum(corner + torch.rand(count, 2, generator=g) * 100 + 3, torch.tensor([w, h]))
        boxes = torch.cat([corner, boxes], 1).floor()
        labels = torch.randint(0, classes, (count,), generator=g)
        crowd = (torch.arange(count) == 0) & (i % 2 == 0)
        masks = torch.zeros(count, h, w, dtype=torch.bool)
        for j, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[j, y1:y2, x1:x2] = torch.rand(y2 - y1, x2 - x1, generator=g) < 0.9
        n = int(torch.randint(0, 14, (1,), generator=g))
        source = torch.randint(0, max(count, 1), (n,), generator=g)
        if count:
            d_boxes = boxes[source] + torch.randn(n, 4, generator=g) * 3
            wrong = torch.randint(0, classes + 1, (n,), generator=g)  # class `classes` has no ground truth
            d_labels = torch.where(torch.rand(n, generator=g) < 0.8, labels[source], wrong)
        else:
            d_boxes, d_labels = torch.rand(n, 4, generator=g) * 60, torch.randint(0, classes, (n,), generator=g)
        d_boxes = torch.cat([d_boxes[:, :2], torch.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)], 1).clamp(0, w)
        d_masks = torch.zeros(n, h, w, dtype=torch.bool)
        for j, (x1, y1, x2, y2) in enumerate(d_boxes.round().long().tolist()):
            d_masks[j, y1:y2, x1:x2] = torch.rand(max(min(y2, h) - y1, 0), x2 - x1, generator=g) < 0.85
        scores = torch.rand(n, generator=g)
        predictions.append({"boxes": d_boxes, "scores": scores, "labels": d_labels, "masks": d_masks})
        truths.append({"boxes": boxes, "labels": labels, "masks": masks, "iscrowd": crowd.long()})
    return predictions, truths, size


def coco_eval(predictions, truths, size, iou_type: str, classes: int = 4, max_dets=(1, 10, 100)):
    """pycocotools' COCOeval on the same data, evaluated, accumulated and summarised."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from pycocotools.mask import area, encode

    def rle(mask: torch.Tensor) -> dict:
        return encode(np.asfortranarray(mask.numpy().astype(np.uint8)))

    h, w = size
    images, annotations, results = [], [], []
    for i, (prediction, truth) in enumerate(zip(predictions, truths)):
        images.append({"id": i + 1, "height": h, "width": w})
        for box, label, mask, crowd in zip(
            truth["boxes"].double().tolist(), truth["labels"], truth["masks"], truth["iscrowd"]
        ):
            segmentation = rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "iscrowd": int(crowd),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": float(area(segmentation)),
                    "segmentation": segmentation,
                }
            )
        for box, score, label, mask in zip(
            prediction["boxes"].double().tolist(), prediction["scores"], prediction["labels"], prediction["masks"]
        ):
            result = {"image_id": i + 1, "category_id": int(label), "score": float(score)}
            if iou_type == "bbox":
                result["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            else:
                result["segmentation"] = rle(mask)
            results.append(result)
    truth_set = COCO()
    truth_set.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth_set.createIndex()
        evaluation = COCOeval(truth_set, truth_set.loadRes(results), iou_type)
        evaluation.params.maxDets = list(max_dets)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_agrees_with_cocoeval(iou_type: str, seed: int) -> None:
    pytest.importorskip("pycocotools")
    predictions, truths, size = synthetic_set(seed)
    assert any(bool(t["iscrowd"].any()) for t in truths)
    stats = coco_eval(predictions, truths, size, iou_type).stats
    ours = average_precision(predictions, truths, iou_type)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [ours[name] for name in names] == pytest.approx(list(stats[:6]), abs=1e-6)
    assert ours["AR100"] == pytest.approx(stats[8], abs=1e-6)
    assert ours["AP"] > 0.05  # the comparison says something: detections did match
    # numpy inputs give the same
    as_numpy = [{k: v.numpy() for k, v in p.items()} for p in predictions]
    assert average_precision(as_numpy, truths, iou_type)["AP"] == ours["AP"]


def test_max_detections_agrees_with_cocoeval() -> None:
    pytest.importorskip("pycocotools")
    predictions, truths, size = synthetic_set(3)
    coco = coco_eval(predictions, truths, size, "bbox", max_dets=(1, 2, 2)).eval
    precision, recall = coco["precision"][:, :, :, 0, 2], coco["recall"][:, :, 0, 2]  # area "all", 2 detections

    def mean(values: np.ndarray) -> float:
        return float(values[values > -1].mean())

    ours = average_precision(predictions, truths, "bbox", max_detections=2)
    expected = [mean(precision), mean(precision[0]), mean(precision[5]), mean(recall)]
    assert [ours["AP"], ours["AP50"], ours["AP75"], ours["AR2"]] == pytest.approx(expected, abs=1e-6)
    assert ours["AP"] != average_precision(predictions, truths, "bbox")["AP"]  # the limit made a difference


def test_average_precision_edge_cases_and_errors() -> None:
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    truth = {"boxes": _boxes([0, 0, 4, 4]), "labels": torch.tensor([2])}
    assert average_precision([empty], [truth])["per_class"] == {2: 0.0}  # missed: 0, not -1
    assert average_precision([], [])["AP"] == -1.0
    prediction = {"boxes": _boxes([0, 0, 4, 4]), "scores": torch.tensor([0.5]), "labels": torch.tensor([2])}
    with pytest.raises(ValueError, match="1 predictions but 2 ground truths"):
        average_precision([prediction], [truth, truth])
    with pytest.raises(ValueError, match=r"unknown iou_type 'mask'; choose from \['bbox', 'segm'\]"):
        average_precision([prediction], [truth], "mask")
    with pytest.raises(ValueError, match=r"predictions\[0\] has no 'masks'"):
        average_precision([prediction], [truth], "segm")
    with pytest.raises(ValueError, match=r"ground_truths\[0\] boxes must have shape \(1, 4\)"):
        average_precision([prediction], [{**truth, "boxes": torch.zeros(2, 4)}])
    masks = {"masks": torch.rand(1, 8, 8)}
    with pytest.raises(ValueError, match="threshold them: masks > 0.5"):
        average_precision(
            [{**prediction, **masks}], [{**truth, "masks": torch.ones(1, 8, 8, dtype=torch.bool)}], "segm"
        )
    with pytest.raises(ValueError, match=r"image 0: predicted masks are \(8, 8\).*\(9, 9\)"):
        average_precision(
            [{**prediction, "masks": torch.ones(1, 8, 8, dtype=torch.bool)}],
            [{**truth, "masks": torch.ones(1, 9, 9, dtype=torch.bool)}],
            "segm",
        )
