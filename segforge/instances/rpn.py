"""The region proposal network (Ren et al., Faster R-CNN, NeurIPS 2015), on every FPN level.

Why a proposal stage: the RoI heads are costly per box, so a cheap, dense classifier first says which
anchors (:mod:`.anchors`) cover an object and nudges them; only the best few hundred boxes go on. One
small head is shared by all levels: a 3x3 convolution, then per anchor an objectness logit and four box
deltas (encoded with weights ``(1, 1, 1, 1)``, as torchvision's RPN does).

Proposals: per image and level, the ``pre_nms_top_n`` best-scored anchors are decoded, clipped to the
image, freed of tiny boxes, then suppressed by NMS (0.7) within each level, and the ``post_nms_top_n``
best over all levels are kept. Proposals carry no gradient (the RoI heads' losses do not train the RPN,
as in the approximate joint training of the paper).

Training: each anchor is matched to the ground truth box it overlaps most: IoU >= 0.7 positive, < 0.3
negative, in between ignored, and each box's best anchors positive too (so that no object goes without
an anchor). 256 anchors per image are sampled, at most half positive; the losses are binary cross-entropy
on their objectness and smooth L1 (beta 1/9) on the positives' deltas, both normalised by the number
sampled. :func:`match_boxes` and :func:`sample_balanced` serve the RoI heads too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segforge.instances.anchors import AnchorGenerator
from segforge.instances.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from segforge.instances.nms import batched_nms

__all__ = [
    "BACKGROUND",
    "IGNORED",
    "RPNHead",
    "RegionProposalNetwork",
    "match_boxes",
    "rpn_loss",
    "sample_balanced",
    "select_proposals",
]

#: what :func:`match_boxes` gives a box that overlaps no ground truth enough (a negative)
BACKGROUND = -1
#: what it gives a box between the two thresholds (neither positive nor negative: no loss)
IGNORED = -2
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def match_boxes(iou: Tensor, high: float, low: float, *, allow_low_quality: bool = False) -> Tensor:
    """Matches each predicted box to the ground truth it overlaps most.

    Args:
        iou: ``(G, P)`` IoU of every ground truth with every prediction (anchor or proposal).
        high: IoU at or above which a prediction is positive.
        low: IoU below which it is negative (``BACKGROUND``); between ``low`` and ``high``: ``IGNORED``.
        allow_low_quality: also match each ground truth's best predictions (all that tie, IoU > 0),
            whatever their IoU: Faster R-CNN's rule (ii) for anchors.

    Returns:
        ``(P,)`` int64: the index of the matched ground truth, ``BACKGROUND`` (-1) or ``IGNORED`` (-2).
    """
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64, device=iou.device)
    best, matched = iou.max(dim=0)
    result = matched.clone()
    result[best < low] = BACKGROUND
    result[(best >= low) & (best < high)] = IGNORED
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        result[is_best] = matched[is_best]
    return result


def sample_balanced(
    positive: Tensor, negative: Tensor, batch_size: int, positive_fraction: float
) -> tuple[Tensor, Tensor]:
    """A random sample of ``batch_size`` boxes, at most ``positive_fraction`` of them positive.

    Negatives fill what positives leave; fewer boxes come back when there are not enough of either.

    Args:
        positive, negative: ``(P,)`` bool, disjoint.

    Returns:
        ``(positive indices, negative indices)``, int64.
    """
    pos = torch.nonzero(positive).flatten()
    neg = torch.nonzero(negative).flatten()
    num_pos = min(int(batch_size * positive_fraction), pos.numel())
    num_neg = min(batch_size - num_pos, neg.numel())
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
    return pos, neg


class RPNHead(nn.Module):
    """Shared 3x3 convolution + ReLU, then 1x1 convolutions to ``A`` objectness logits and ``4 A`` deltas.

    ``forward(features)`` → ``(objectness, deltas)``: per level ``(N, H W A)`` and ``(N, H W A, 4)``, in
    the anchors' order (position-major).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            x = F.relu(self.conv(x))
            logits = self.objectness(x)
            n, a, h, w = logits.shape
            objectness.append(logits.permute(0, 2, 3, 1).reshape(n, h * w * a))
            deltas.append(self.deltas(x).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
        return objectness, deltas


def select_proposals(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Sequence[Sequence[int]],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float = 0.7,
    min_size: float = 1e-3,
) -> list[Tensor]:
    """The proposals of each image: top-k per level, decode, clip, drop tiny boxes, NMS per level, top-k.

    Args:
        objectness, deltas, anchors: per level ``(N, P_l)``, ``(N, P_l, 4)`` and ``(P_l, 4)``.
        image_sizes: each image's ``(H, W)`` to clip to (in a padded batch, its own, not the batch's).

    Returns:
        Per image ``(K_i, 4)`` boxes, ``K_i <= post_nms_top_n``, by decreasing objectness, without gradient.
    """
    batch = objectness[0].shape[0]
    scores, boxes, levels = [], [], []
    for level, (logits, level_deltas, level_anchors) in enumerate(zip(objectness, deltas, anchors)):
        top, index = logits.detach().topk(min(pre_nms_top_n, logits.shape[1]), dim=1)  # (N, k)
        picked = level_deltas.detach().gather(1, index[..., None].expand(-1, -1, 4))
        decoded = decode_boxes(picked.reshape(-1, 4), level_anchors[index].reshape(-1, 4), RPN_WEIGHTS)
        scores.append(top)
        boxes.append(decoded.view(batch, -1, 4))
        levels.append(torch.full_like(index, level))
    scores, boxes, levels = torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(levels, 1)
    proposals = []
    for i in range(batch):
        image_boxes = clip_boxes(boxes[i], image_sizes[i])
        keep = remove_small_boxes(image_boxes, min_size)
        keep = keep[torch.isfinite(scores[i, keep])]
        kept = batched_nms(image_boxes[keep], scores[i, keep], levels[i, keep], nms_threshold)[:post_nms_top_n]
        proposals.append(image_boxes[keep[kept]])
    return proposals


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: Sequence[Tensor],
    *,
    high: float = 0.7,
    low: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    beta: float = 1.0 / 9,
) -> tuple[Tensor, Tensor]:
    """The RPN's objectness and box losses over sampled anchors.

    Args:
        objectness: ``(N, P)`` logits of all anchors of all levels.
        deltas: ``(N, P, 4)``.
        anchors: ``(P, 4)``.
        gt_boxes: per image ``(G_i, 4)`` (``G_i`` may be 0: all anchors are then negatives).

    Returns:
        ``(objectness BCE, smooth-L1 box loss)``, both divided by the number of sampled anchors.
    """
    sampled, labels, box_pred, box_target = [], [], [], []
    for i, boxes in enumerate(gt_boxes):
        matched = match_boxes(box_iou(boxes, anchors), high, low, allow_low_quality=True)
        pos, neg = sample_balanced(matched >= 0, matched == BACKGROUND, batch_size_per_image, positive_fraction)
        sampled.append(objectness[i, torch.cat([pos, neg])])
        labels.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(objectness.dtype))
        box_pred.append(deltas[i, pos])
        box_target.append(encode_boxes(boxes[matched[pos]], anchors[pos], RPN_WEIGHTS))
    logits, labels = torch.cat(sampled), torch.cat(labels)
    count = max(1, logits.numel())
    objectness_loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / count
    box_loss = F.smooth_l1_loss(torch.cat(box_pred), torch.cat(box_target), beta=beta, reduction="sum") / count
    return objectness_loss, box_loss


class RegionProposalNetwork(nn.Module):
    """Anchors + :class:`RPNHead` + proposal selection, and the losses in training.

    ``forward(features, strides, image_sizes, gt_boxes=None)`` → ``(proposals, losses)``: per image
    ``(K_i, 4)`` boxes, and ``{"rpn_objectness", "rpn_box"}`` when ``gt_boxes`` is given (else empty).

    Args:
        in_channels: the pyramid's width.
        anchor_generator: one size list per pyramid level.
        pre_nms_top_n, post_nms_top_n: ``(training, inference)`` counts: per level before NMS, per image after.
        nms_threshold, min_size: as :func:`select_proposals`.
        high, low, batch_size_per_image, positive_fraction: as :func:`rpn_loss`.
    """

    def __init__(
        self,
        in_channels: int,
        anchor_generator: AnchorGenerator,
        *,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (2000, 1000),
        nms_threshold: float = 0.7,
        min_size: float = 1e-3,
        high: float = 0.7,
        low: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if min(*pre_nms_top_n, *post_nms_top_n) < 1:
            raise ValueError(f"proposal counts must be >= 1, got pre {pre_nms_top_n} and post {post_nms_top_n}")
        if not 0 <= low <= high <= 1:
            raise ValueError(f"need 0 <= low <= high <= 1 for the anchor IoU thresholds, got low={low}, high={high}")
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels, anchor_generator.num_anchors_per_location)
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_threshold, self.min_size = nms_threshold, min_size
        self.high, self.low = high, low
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def forward(
        self,
        features: Sequence[Tensor],
        strides: Sequence[int],
        image_sizes: Sequence[Sequence[int]],
        gt_boxes: Sequence[Tensor] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator([f.shape[-2:] for f in features], strides, features[0].device)
        mode = 0 if self.training else 1
        proposals = select_proposals(
            objectness,
            deltas,
            anchors,
            image_sizes,
            pre_nms_top_n=self.pre_nms_top_n[mode],
            post_nms_top_n=self.post_nms_top_n[mode],
            nms_threshold=self.nms_threshold,
            min_size=self.min_size,
        )
        if gt_boxes is None:
            return proposals, {}
        objectness_loss, box_loss = rpn_loss(
            torch.cat(objectness, 1),
            torch.cat(deltas, 1),
            torch.cat(anchors),
            gt_boxes,
            high=self.high,
            low=self.low,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
        )
        return proposals, {"rpn_objectness": objectness_loss, "rpn_box": box_loss}
