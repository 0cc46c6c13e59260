"""The RoI heads of Mask R-CNN (He et al., ICCV 2017): a class, a refined box and a mask for each proposal.

Why per-RoI heads: once the RPN has said *where*, a fixed-size crop of the pyramid (RoIAlign) lets
small, dense heads say *what* and *which pixels*, the same way for an object of any size.

* **Which level** a box is pooled from: FPN's rule ``k = floor(k0 + log2(sqrt(w h) / 224))``, ``k0 = 4``,
  clamped to the pyramid (a 224-pixel box reads stride 16, half that size stride 8, ...). RoIAlign runs
  with ``aligned=True``, matching the boxes' continuous coordinates (torchvision's FPN uses ``False``).
* **Box head**: 7x7 RoIAlign → two fully connected layers (``representation_size``) → ``C`` class logits
  and ``4 C`` class-specific deltas (weights ``(10, 10, 5, 5)``).
* **Mask head**: 14x14 RoIAlign → four 3x3 convolutions → 2x transposed convolution → ``C`` 28x28 mask
  logits; only the predicted (or true) class's channel is used: masks do not compete across classes.

Training: the ground truth boxes join the proposals, each is matched at IoU 0.5, and 512 RoIs per image
are sampled, at most 25% positive. Losses: cross-entropy over all sampled RoIs; smooth L1 (beta 1/9) on
the positives' true-class deltas, divided by the number sampled; binary cross-entropy of the positives'
true-class masks against the ground truth mask RoIAligned into the same box at 28x28, thresholded at 0.5.

Inference: softmax scores, per-class decoding and clipping, a score threshold, NMS 0.5 within each class,
the 100 best; then the mask head on those boxes, each 28x28 probability resized into its box in the image
(bilinear) and thresholded at 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segforge.instances.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from segforge.instances.nms import batched_nms
from segforge.instances.roi_align import roi_align, rois_from_boxes
from segforge.instances.rpn import BACKGROUND, match_boxes, sample_balanced

__all__ = [
    "BoxHead",
    "MaskHead",
    "RoIHeads",
    "box_losses",
    "mask_targets",
    "multilevel_roi_align",
    "paste_masks",
    "roi_levels",
    "sample_rois",
]

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def roi_levels(boxes: Tensor, min_level: int, max_level: int, *, k0: int = 4, canonical_size: float = 224.0) -> Tensor:
    """FPN's eq. 1: the pyramid level (``log2`` of its stride) each ``(K, 4)`` box is pooled from, as ``(K,)`` int64."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    level = torch.floor(k0 + torch.log2(scale / canonical_size + 1e-6))  # the epsilon: torchvision's, for scale 0
    return level.clamp(min_level, max_level).long()


def multilevel_roi_align(
    features: Sequence[Tensor], strides: Sequence[int], boxes: Sequence[Tensor], output_size: int, sampling_ratio: int
) -> Tensor:
    """RoIAlign of each box from its level (:func:`roi_levels`): ``(sum K_i, C, s, s)``, the images' boxes in order.

    Args:
        features: the RoI levels ``(N, C, H_l, W_l)``, finest first; ``strides`` their strides (powers of 2).
        boxes: per image ``(K_i, 4)`` in image coordinates.
    """
    rois = rois_from_boxes(list(boxes), features[0].shape[0], features[0].dtype)
    logs = [round(math.log2(s)) for s in strides]
    level = roi_levels(rois[:, 1:], logs[0], logs[-1]) - logs[0]
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for index, (feature, stride) in enumerate(zip(features, strides)):
        members = torch.nonzero(level == index).flatten()
        if members.numel():
            out[members] = roi_align(feature, rois[members], output_size, 1.0 / stride, sampling_ratio, aligned=True)
    return out


class BoxHead(nn.Module):
    """Two fully connected layers, then class logits ``(K, C)`` and per-class deltas ``(K, 4 C)``."""

    def __init__(self, in_channels: int, resolution: int, representation_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution**2, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.classifier = nn.Linear(representation_size, num_classes)
        self.regressor = nn.Linear(representation_size, 4 * num_classes)
        for layer, std in ((self.classifier, 0.01), (self.regressor, 0.001)):  # Detectron's init
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))
        return self.classifier(x), self.regressor(x)


class MaskHead(nn.Module):
    """``convs`` 3x3 convolutions + ReLU, a 2x transposed convolution + ReLU, a 1x1 to ``C`` mask logits."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, convs: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(channels if convs else in_channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(F.relu(self.upsample(self.convs(x))))


class RoISample(NamedTuple):
    """The RoIs sampled for one image, positives first: ``boxes (S, 4)``, ``labels (S,)`` (0 for negatives),
    ``gt_index (P,)`` the ground truth of each positive, ``box_targets (P, 4)`` its encoded deltas."""

    boxes: Tensor
    labels: Tensor
    gt_index: Tensor
    box_targets: Tensor


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    iou_threshold: float = 0.5,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
) -> RoISample:
    """Adds the ground truth to the proposals, matches at ``iou_threshold`` and samples (``sample_balanced``)."""
    boxes = torch.cat([proposals, gt_boxes.to(proposals.dtype)])
    matched = match_boxes(box_iou(gt_boxes.to(proposals.dtype), boxes), iou_threshold, iou_threshold)
    pos, neg = sample_balanced(matched >= 0, matched == BACKGROUND, batch_size_per_image, positive_fraction)
    gt_index = matched[pos]
    labels = torch.cat([gt_labels[gt_index], gt_labels.new_zeros(neg.numel())])
    targets = encode_boxes(gt_boxes[gt_index].to(boxes.dtype), boxes[pos], BOX_WEIGHTS)
    return RoISample(boxes[torch.cat([pos, neg])], labels, gt_index, targets)


def box_losses(
    class_logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor, *, beta: float = 1.0 / 9
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over all ``(S, C)`` logits; smooth L1 of the positives' true-class deltas (of ``(S, 4 C)``)
    against ``(P, 4)`` targets (the positives in order), divided by ``S``."""
    classifier = F.cross_entropy(class_logits, labels)
    positive = torch.nonzero(labels > 0).flatten()
    predicted = deltas.view(deltas.shape[0], -1, 4)[positive, labels[positive]]
    box = F.smooth_l1_loss(predicted, box_targets, beta=beta, reduction="sum") / max(1, labels.numel())
    return classifier, box


def mask_targets(gt_masks: Tensor, gt_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """The ``(K, size, size)`` float 0/1 target of each box: its ground truth mask RoIAligned into it, >= 0.5."""
    masks = gt_masks[:, None].to(boxes.dtype)  # (G, 1, H, W): each mask its own "image" of the batch
    rois = torch.cat([gt_index[:, None].to(boxes.dtype), boxes], dim=1)
    return (roi_align(masks, rois, size, 1.0, sampling_ratio=-1, aligned=True)[:, 0] >= 0.5).to(boxes.dtype)


def paste_masks(probabilities: Tensor, boxes: Tensor, image_size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Resizes each ``(M_h, M_w)`` mask probability into its box of an image, bilinearly; ``(K, H, W)`` bool.

    Bilinear resizing is separable: ``image = R_y @ mask @ R_x^T`` with ``R`` the tent weights
    ``max(0, 1 - |u - j|)`` of each image pixel centre ``u`` (in mask cells) on mask cell ``j``. This is
    exactly ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` of the box's pixels,
    in ``K (H + W) M`` memory instead of a ``(K, H, W, 2)`` grid; outside the box the mask fades to 0.
    """
    height, width = int(image_size[0]), int(image_size[1])

    def tent(start: Tensor, end: Tensor, cells: int, pixels: int) -> Tensor:  # (K, pixels, cells)
        centres = torch.arange(pixels, dtype=boxes.dtype, device=boxes.device) + 0.5
        u = (centres[None] - start[:, None]) / (end - start).clamp(min=1e-6)[:, None] * cells - 0.5
        return (1 - (u[..., None] - torch.arange(cells, dtype=boxes.dtype, device=boxes.device)).abs()).clamp(min=0)

    rows = tent(boxes[:, 1], boxes[:, 3], probabilities.shape[1], height)
    cols = tent(boxes[:, 0], boxes[:, 2], probabilities.shape[2], width)
    return rows @ probabilities.to(boxes.dtype) @ cols.transpose(1, 2) >= threshold


class RoIHeads(nn.Module):
    """Box and mask heads with their sampling, losses and post-processing.

    ``forward(features, strides, proposals, image_sizes, targets=None)`` → ``(detections, losses)``: with
    targets, no detections and ``{"classifier", "box", "mask"}``; without, per image a dict ``boxes (K, 4)``,
    ``labels (K,)``, ``scores (K,)``, ``masks (K, H, W) bool`` (``K <= detections_per_image``, by score).

    Args:
        box_resolution, mask_resolution, sampling_ratio: the RoIAlign grids (7, 14: the mask is twice that).
        iou_threshold, batch_size_per_image, positive_fraction: training's matching and sampling.
        score_threshold, nms_threshold, detections_per_image, mask_threshold: what inference keeps.
    """

    def __init__(
        self,
        box_head: BoxHead,
        mask_head: MaskHead,
        *,
        box_resolution: int = 7,
        mask_resolution: int = 14,
        sampling_ratio: int = 2,
        iou_threshold: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.box_head, self.mask_head = box_head, mask_head
        self.box_resolution, self.mask_resolution, self.sampling_ratio = box_resolution, mask_resolution, sampling_ratio
        self.iou_threshold, self.positive_fraction = iou_threshold, positive_fraction
        self.batch_size_per_image = batch_size_per_image
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image, self.mask_threshold = detections_per_image, mask_threshold

    def forward(
        self,
        features: Sequence[Tensor],
        strides: Sequence[int],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[Sequence[int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if targets is not None:
            return [], self.losses(features, strides, proposals, targets)
        return self.detect(features, strides, proposals, image_sizes), {}

    def losses(
        self,
        features: Sequence[Tensor],
        strides: Sequence[int],
        proposals: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        samples = [
            sample_rois(
                p,
                t["boxes"],
                t["labels"],
                iou_threshold=self.iou_threshold,
                batch_size_per_image=self.batch_size_per_image,
                positive_fraction=self.positive_fraction,
            )
            for p, t in zip(proposals, targets)
        ]
        crops = multilevel_roi_align(
            features, strides, [s.boxes for s in samples], self.box_resolution, self.sampling_ratio
        )
        class_logits, deltas = self.box_head(crops)
        labels = torch.cat([s.labels for s in samples])
        classifier, box = box_losses(class_logits, deltas, labels, torch.cat([s.box_targets for s in samples]))
        positives = [s.boxes[: s.gt_index.numel()] for s in samples]
        crops = multilevel_roi_align(features, strides, positives, self.mask_resolution, self.sampling_ratio)
        mask_logits = self.mask_head(crops)
        if mask_logits.shape[0] == 0:  # no positive anywhere: a zero that still belongs to the graph
            return {"classifier": classifier, "box": box, "mask": mask_logits.sum() * 0}
        size = mask_logits.shape[-1]
        target = torch.cat(
            [mask_targets(t["masks"], s.gt_index, b, size) for t, s, b in zip(targets, samples, positives)]
        )
        chosen = mask_logits[torch.arange(len(target)), labels[labels > 0]]
        return {"classifier": classifier, "box": box, "mask": F.binary_cross_entropy_with_logits(chosen, target)}

    def detect(
        self,
        features: Sequence[Tensor],
        strides: Sequence[int],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[Sequence[int]],
    ) -> list[dict[str, Tensor]]:
        crops = multilevel_roi_align(features, strides, proposals, self.box_resolution, self.sampling_ratio)
        class_logits, deltas = self.box_head(crops)
        num_classes = class_logits.shape[1]
        scores = F.softmax(class_logits, dim=1)
        boxes = decode_boxes(deltas, torch.cat(list(proposals)), BOX_WEIGHTS)
        counts = [len(p) for p in proposals]
        detections = []
        for image_scores, image_boxes, size in zip(scores.split(counts), boxes.split(counts), image_sizes):
            image_boxes = clip_boxes(image_boxes.reshape(-1, 4), size).view(-1, num_classes, 4)
            labels = torch.arange(num_classes, device=scores.device).expand_as(image_scores)
            # drop the background column; one candidate per (proposal, class)
            image_scores, labels = image_scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            image_boxes = image_boxes[:, 1:].reshape(-1, 4)
            keep = torch.nonzero(image_scores > self.score_threshold).flatten()
            keep = keep[remove_small_boxes(image_boxes[keep], 1e-2)]
            kept = batched_nms(image_boxes[keep], image_scores[keep], labels[keep], self.nms_threshold)
            keep = keep[kept[: self.detections_per_image]]
            detections.append({"boxes": image_boxes[keep], "labels": labels[keep], "scores": image_scores[keep]})
        crops = multilevel_roi_align(
            features, strides, [d["boxes"] for d in detections], self.mask_resolution, self.sampling_ratio
        )
        mask_logits = self.mask_head(crops)
        all_labels = torch.cat([d["labels"] for d in detections])
        probabilities = torch.sigmoid(mask_logits[torch.arange(len(all_labels)), all_labels])
        for d, p, size in zip(detections, probabilities.split([len(d["labels"]) for d in detections]), image_sizes):
            d["masks"] = paste_masks(p, d["boxes"], size, self.mask_threshold)
        return detections
