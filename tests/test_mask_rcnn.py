"""Mask R-CNN (segforge.instances.model and its stages): known answers for anchors, matching and losses,
then the whole network: losses and gradients in training, detections in eval, and a short overfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segforge.instances import MaskRCNN, mask_rcnn, synthetic_instance_sample
from segforge.instances.anchors import AnchorGenerator
from segforge.instances.boxes import box_iou, encode_boxes
from segforge.instances.data import instance_target
from segforge.instances.fpn import pyramid_levels
from segforge.instances.heads import box_losses, paste_masks, roi_levels
from segforge.instances.rpn import BACKGROUND, IGNORED, match_boxes, rpn_loss, sample_balanced
from segforge.models import geometry_of

NUM_CLASSES = 4


def tiny_model(**overrides) -> MaskRCNN:
    """Small enough for a few training steps a second on two CPU cores."""
    options = dict(
        encoder="unet16",
        fpn_channels=32,
        representation_size=64,
        anchor_sizes=(16, 32, 64, 128),  # 64-pixel images hold 10-30 pixel objects
        rpn_pre_nms_top_n=(300, 200),
        rpn_post_nms_top_n=(100, 50),
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
    )
    return mask_rcnn(NUM_CLASSES, **{**options, **overrides})


def sample(index: int, size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    s = synthetic_instance_sample(index, size=size, num_classes=NUM_CLASSES, touching_pairs=1, max_extra=1)
    masks = s.instances[None] == np.arange(1, len(s.classes) + 1)[:, None, None]
    target = instance_target(masks, s.classes, np.zeros(len(s.classes), dtype=bool))
    return torch.from_numpy(s.image).permute(2, 0, 1).float() / 255, target


def test_anchors_count_and_centres() -> None:
    generator = AnchorGenerator([(16.0,), (32.0,)], aspect_ratios=(0.5, 1.0, 2.0))
    fine, coarse = generator([(3, 4), (2, 2)], strides=(4, 8))
    assert fine.shape == (3 * 4 * 3, 4) and coarse.shape == (2 * 2 * 3, 4)
    grid = fine.view(3, 4, 3, 4)  # (H, W, A, x1 y1 x2 y2)
    centre_x, centre_y = (grid[..., 0] + grid[..., 2]) / 2, (grid[..., 1] + grid[..., 3]) / 2
    assert torch.allclose(centre_x, ((torch.arange(4) + 0.5) * 4).view(1, 4, 1).expand(3, 4, 3))
    assert torch.allclose(centre_y, ((torch.arange(3) + 0.5) * 4).view(3, 1, 1).expand(3, 4, 3))
    width, height = grid[..., 2] - grid[..., 0], grid[..., 3] - grid[..., 1]
    assert torch.allclose(width * height, torch.full_like(width, 256.0))  # size 16 at every ratio
    assert torch.allclose(height / width, torch.tensor([0.5, 1.0, 2.0]).expand(3, 4, 3))
    assert generator([(3, 4), (2, 2)], strides=(4, 8))[0] is fine  # cached


def test_pyramid_levels_follow_the_reductions() -> None:
    assert pyramid_levels((2, 4, 8, 16, 32)) == [1, 2, 3, 4]  # ResNet: strides 4..32
    assert pyramid_levels((2, 4, 8, 16, 16)) == [1, 2, 4]  # dilated: the deepest map of stride 16
    assert pyramid_levels((1, 2, 4, 8, 16)) == [2, 3, 4]  # U-Net's encoder
    with pytest.raises(ValueError, match="none >= 4"):
        pyramid_levels((1, 2))


def test_matching_positive_negative_ignored() -> None:
    iou = torch.tensor([[0.8, 0.5, 0.1, 0.0, 0.2], [0.1, 0.2, 0.25, 0.6, 0.0]])
    plain = match_boxes(iou, 0.7, 0.3)
    assert plain.tolist() == [0, IGNORED, BACKGROUND, IGNORED, BACKGROUND]
    # box 1's best prediction (3, IoU 0.6) becomes positive: no ground truth goes without an anchor
    assert match_boxes(iou, 0.7, 0.3, allow_low_quality=True).tolist() == [0, IGNORED, BACKGROUND, 1, BACKGROUND]
    assert match_boxes(torch.zeros(0, 3), 0.7, 0.3).tolist() == [BACKGROUND] * 3


def test_balanced_sampling_caps_the_positives() -> None:
    positive = torch.arange(100) < 80
    pos, neg = sample_balanced(positive, ~positive, batch_size=32, positive_fraction=0.25)
    assert len(pos) == 8 and len(neg) == 20  # 24 would be asked for, only 20 negatives exist
    assert positive[pos].all() and not positive[neg].any()


def test_box_losses_are_zero_when_the_deltas_equal_the_targets() -> None:
    anchors = AnchorGenerator([(16.0,)], (0.5, 1.0, 2.0))([(8, 8)], [8])[0]
    gt = torch.tensor([[5.0, 6.0, 25.0, 20.0], [30.0, 30.0, 60.0, 62.0]])
    matched = match_boxes(box_iou(gt, anchors), 0.7, 0.3, allow_low_quality=True)
    deltas = torch.randn(1, len(anchors), 4)
    positive = matched >= 0
    deltas[0, positive] = encode_boxes(gt[matched[positive]], anchors[positive], (1.0, 1.0, 1.0, 1.0))
    objectness = torch.zeros(1, len(anchors))
    assert rpn_loss(objectness, deltas, anchors, [gt])[1].item() == pytest.approx(0.0, abs=1e-6)
    assert rpn_loss(objectness, torch.zeros_like(deltas), anchors, [gt])[1].item() > 1e-3
    # the RoI heads: only the true class's deltas of each positive count
    labels = torch.tensor([2, 0, 1])
    targets = torch.randn(2, 4)
    predicted = torch.randn(3, NUM_CLASSES, 4)
    predicted[0, 2], predicted[2, 1] = targets[0], targets[1]
    assert box_losses(torch.randn(3, NUM_CLASSES), predicted.flatten(1), labels, targets)[1].item() == 0.0


def test_roi_levels_follow_fpn_rule() -> None:
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 8.0, 8.0], [0, 0, 900, 900.0]])
    assert roi_levels(boxes, 2, 5).tolist() == [4, 3, 2, 5]


def test_paste_masks_is_bilinear_grid_sample() -> None:
    probabilities = torch.rand(3, 28, 28)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [0.0, 0.0, 50.0, 50.0], [20.5, 10.25, 27.0, 44.0]])
    height, width = 48, 56
    xs, ys = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    gx = (xs[None] - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]) * 2 - 1  # (K, W)
    gy = (ys[None] - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    expected = F.grid_sample(probabilities[:, None], grid, mode="bilinear", align_corners=False)[:, 0]
    for threshold in (0.3, 0.5):
        pasted = paste_masks(probabilities, boxes, (height, width), threshold)
        assert pasted.shape == (3, height, width) and pasted.dtype == torch.bool
        near = (expected - threshold).abs() < 1e-5  # float rounding may flip a pixel exactly at the threshold
        assert torch.equal(pasted[~near], (expected >= threshold)[~near])


def test_training_losses_are_finite_and_reach_every_parameter() -> None:
    model = tiny_model().train()
    images, targets = zip(sample(0), sample(1))
    losses = model(torch.stack(images), list(targets))
    assert set(losses) == {"rpn_objectness", "rpn_box", "classifier", "box", "mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    untouched = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untouched == []  # every parameter, encoder to mask predictor, is trained by these losses


def test_an_image_without_objects_gives_only_background_losses() -> None:
    model = tiny_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64)}
    losses = model(torch.rand(1, 3, 64, 64), [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["rpn_box"].item() == losses["box"].item() == losses["mask"].item() == 0.0
    assert losses["rpn_objectness"].item() > 0 and losses["classifier"].item() > 0
    sum(losses.values()).backward()  # the zero losses stay in the graph


@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_eval_detections_have_the_input_size(size: tuple[int, int]) -> None:
    model = tiny_model(detections_per_image=20, score_threshold=0.0).eval()
    height, width = size
    with torch.no_grad():
        detections = model(torch.rand(2, 3, height, width))
    assert len(detections) == 2
    for d in detections:
        count = len(d["scores"])
        assert 0 < count <= 20  # an untrained model scores every class about 1/C: the limit is reached
        assert d["boxes"].shape == (count, 4) and d["labels"].dtype == torch.int64
        assert d["masks"].shape == (count, height, width) and d["masks"].dtype == torch.bool
        assert ((d["labels"] >= 1) & (d["labels"] < NUM_CLASSES)).all()
        boxes = d["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 3] <= height).all() and (boxes[:, 2] > boxes[:, 0]).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()


def test_a_padded_batch_keeps_each_image_inside_its_own_size() -> None:
    """Two images padded to one batch: with image_sizes, the second image's detections stay inside its 40x48,
    with masks of its size; in training, each target's mask size says where its image ends."""
    model = tiny_model(detections_per_image=20, score_threshold=0.0).eval()
    images = torch.rand(2, 3, 64, 64)
    images[1, :, 40:] = images[1, :, :, 48:] = 0  # the padding of a 40x48 image
    with torch.no_grad():
        first, second = model(images, image_sizes=[(64, 64), (40, 48)])
    assert first["masks"].shape[1:] == (64, 64) and second["masks"].shape[1:] == (40, 48)
    assert len(second["boxes"]) > 0
    assert (second["boxes"][:, 2] <= 48).all() and (second["boxes"][:, 3] <= 40).all()
    with pytest.raises(ValueError, match="image_sizes must give each of the 2 images its"):
        model(images, image_sizes=[(64, 64)])
    assert model._image_sizes(images, [{"masks": torch.zeros(0, 40, 48)}] * 2, None) == [(40, 48)] * 2
    geometry = geometry_of(model)  # declared like every model's: masks at the input's size, any size
    assert geometry.output_size(37) == 37 and geometry.tile_period == model.size_divisor


def test_a_few_steps_overfit_one_image() -> None:
    # fewer proposals and sampled RoIs than tiny_model(): 30 steps in a few seconds on two busy cores
    model = tiny_model(
        rpn_pre_nms_top_n=(100, 100),
        rpn_post_nms_top_n=(50, 50),
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    ).train()
    image, target = sample(3)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3, fused=True)  # fused: a third less time on CPU
    history = []
    for _ in range(30):
        loss = sum(model(image[None], [target]).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    # the RPN's losses fall ~30x and the classifier's ~3x, while the box loss *rises* as more proposals
    # become positives: the total falls ~2.2x here, asserted with a margin for other machines' rounding
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    assert last < first / 1.8, f"loss went from {first:.3f} to {last:.3f}"


def test_errors_say_what_to_do() -> None:
    model = tiny_model().train()
    image, target = sample(0)
    with pytest.raises(ValueError, match="needs targets"):
        model(image[None])
    with pytest.raises(ValueError, match="channels but the model was built for 3"):
        model(torch.rand(1, 1, 64, 64), [target])
    with pytest.raises(ValueError, match=r"labels must be integers in 1\.\.3"):
        model(image[None], [{**target, "labels": torch.zeros_like(target["labels"])}])
    with pytest.raises(ValueError, match="one dict per image"):
        model(image[None], [target, target])
    with pytest.raises(ValueError, match="num_classes counts the background"):
        mask_rcnn(1)
    with pytest.raises(ValueError, match="one size per pyramid level"):
        mask_rcnn(2, encoder="unet16", anchor_sizes=(8, 16))
