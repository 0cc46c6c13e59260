"""COCO's average precision for detections and instance masks, rule for rule as pycocotools' ``COCOeval``.

For every class, image and IoU threshold t in 0.50:0.05:0.95, detections are taken by decreasing score
and each is matched to the still unmatched ground truth of its class with the highest IoU >= t (the later
one on a tie). Crowd ground truths (``iscrowd``) and those outside the area range being scored are
*ignored*: a detection matches one only when no regular ground truth is left for it, and then counts
neither as a true nor as a false positive; a crowd can absorb any number of detections, and its IoU with
a detection is ``intersection / detection area`` (the detection may cover part of the crowd). Only the
``max_detections`` highest-scored detections of each class in each image count (COCOeval's ``maxDets``
is per image *and* class).

Per class, the detections of all images are ranked by score; precision is made monotone (each value
the best precision at any higher recall) and read at the 101 recall points 0:0.01:1 (0 beyond the
highest recall reached). AP is the mean over thresholds, recall points and classes; a class without any
(non-ignored) ground truth has no AP (-1, as COCO) and is left out of the mean.

The matching is sequential within a class of one image, so it runs as a loop over the detections'
rank (at most ``max_detections`` steps), each step one set of tensor operations over every image,
class, IoU threshold and area range at once. Only (detection, ground truth) pairs of one class with IoU
>= 0.5 can ever match, so those pairs are all that is kept of the IoU matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from segforge.instances.boxes import box_intersection

__all__ = ["AREA_RANGES", "IOU_THRESHOLDS", "RECALL_THRESHOLDS", "average_precision"]

# the values COCOeval uses (np.linspace, so that comparisons with them fall the same way)
IOU_THRESHOLDS = torch.from_numpy(np.linspace(0.5, 0.95, 10))
RECALL_THRESHOLDS = torch.from_numpy(np.linspace(0.0, 1.0, 101))
# object areas in pixels, bounds inclusive; "all" first
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}


class _Image(NamedTuple):
    """One image's detections (``d``) and ground truths (``g``), checked, on the CPU."""

    d_boxes: Tensor | None  # (D, 4) float64
    d_masks: Tensor | None  # (D, H, W) bool
    scores: Tensor  # (D,) float64
    d_labels: Tensor  # (D,) int64
    g_boxes: Tensor | None
    g_masks: Tensor | None
    g_labels: Tensor
    crowd: Tensor  # (G,) bool
    g_areas: Tensor  # (G,) float64


def _field(entry: Mapping[str, Any], key: str, where: str, required: bool) -> Tensor | None:
    if key not in entry or entry[key] is None:
        if required:
            raise ValueError(f"{where} has no {key!r} (it has {sorted(entry)})")
        return None
    value = entry[key]
    return (value.detach() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))).cpu()


def _masks(value: Tensor | None, count: int, where: str) -> Tensor | None:
    if value is None:
        return None
    if value.dim() == 4 and value.shape[1] == 1:  # (N, 1, H, W), as Mask R-CNN returns them
        value = value[:, 0]
    if value.dim() != 3 or value.shape[0] != count:
        raise ValueError(f"{where} masks must be ({count}, H, W), one per box/label, got {tuple(value.shape)}")
    if value.is_floating_point():
        raise ValueError(
            f"{where} masks must be bool (or 0/1 integers), got {value.dtype}; threshold them: masks > 0.5"
        )
    return value != 0


def _check_entry(entry: object, where: str, keys: dict[str, bool]) -> dict[str, Tensor | None]:
    """The fields ``keys`` names (``{name: required}``) of one prediction or ground truth, shapes checked."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict of tensors or arrays, got {type(entry).__name__}")
    fields = {key: _field(entry, key, where, required) for key, required in keys.items()}
    labels = fields["labels"]
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"{where} labels must be a 1-D integer tensor, got {tuple(labels.shape)} {labels.dtype}")
    count = len(labels)
    for key in ("boxes", "scores", "iscrowd", "areas"):
        value = fields.get(key)
        want = (count, 4) if key == "boxes" else (count,)
        if value is not None and tuple(value.shape) != want:
            raise ValueError(f"{where} {key} must have shape {want} ({count} labels), got {tuple(value.shape)}")
    fields["masks"] = _masks(fields.get("masks"), count, where)
    return fields


def _prepare(prediction: object, truth: object, index: int, iou_type: str) -> _Image:
    segm = iou_type == "segm"
    # predicted masks are read only when they are scored; ground truth masks also give COCO's areas
    keys = {"boxes": not segm, "scores": True, "labels": True} | ({"masks": True} if segm else {})
    p = _check_entry(prediction, f"predictions[{index}]", keys)
    keys = {"boxes": not segm, "labels": True, "masks": segm, "iscrowd": False, "areas": False}
    g = _check_entry(truth, f"ground_truths[{index}]", keys)
    if segm and p["masks"].shape[1:] != g["masks"].shape[1:]:
        raise ValueError(
            f"image {index}: predicted masks are {tuple(p['masks'].shape[1:])} but the ground truth masks are "
            f"{tuple(g['masks'].shape[1:])}; paste the predictions into full-image masks of the image's size"
        )
    g_areas = g["areas"]
    if g_areas is None:  # COCO's annotation "area" is the mask's, also when boxes are scored
        g_areas = g["masks"].flatten(1).sum(1) if g["masks"] is not None else _box_area(g["boxes"].double())

    def double(value: Tensor | None) -> Tensor | None:
        return None if value is None else value.double()

    return _Image(
        d_boxes=double(p["boxes"]),
        d_masks=p["masks"],
        scores=double(p["scores"]),
        d_labels=p["labels"].long(),
        g_boxes=double(g["boxes"]),
        g_masks=g["masks"],
        g_labels=g["labels"].long(),
        crowd=g["iscrowd"] != 0 if g["iscrowd"] is not None else torch.zeros(len(g["labels"]), dtype=torch.bool),
        g_areas=double(g_areas),
    )


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _crowd_iou(image: _Image, keep: Tensor, iou_type: str) -> tuple[Tensor, Tensor]:
    """``(D', G)`` IoU of the kept detections with every ground truth (``inter / detection area`` for crowds),
    and the detections' areas."""
    if iou_type == "bbox":
        boxes = image.d_boxes[keep]
        inter, d_area, g_area = box_intersection(boxes, image.g_boxes), _box_area(boxes), _box_area(image.g_boxes)
    else:
        d, g = image.d_masks[keep].flatten(1), image.g_masks.flatten(1)
        exact = torch.float32 if d.shape[1] < 2**24 else torch.float64  # pixel counts stay exact integers
        inter = (d.to(exact) @ g.to(exact).T).double()
        d_area, g_area = d.sum(1).double(), g.sum(1).double()
    union = torch.where(image.crowd[None, :], d_area[:, None], d_area[:, None] + g_area[None, :] - inter)
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(inter))
    return iou, d_area


def _ranks(labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """The detections ordered by (label, decreasing score), stably, and each one's rank within its label."""
    order = torch.sort(-scores, stable=True).indices
    order = order[torch.sort(labels[order], stable=True).indices]
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return order, torch.arange(len(order)) - torch.repeat_interleave(starts, counts)


class _Flat(NamedTuple):
    """Every image's kept detections and ground truths end to end, and the pairs that can match."""

    d_labels: Tensor  # (D,)
    scores: Tensor
    ranks: Tensor
    d_areas: Tensor
    g_labels: Tensor  # (G,)
    crowd: Tensor
    g_areas: Tensor
    pairs: Tensor  # (P, 2) detection, ground truth
    pair_iou: Tensor  # (P,)


def _flatten(images: list[_Image], iou_type: str, max_detections: int) -> _Flat:
    parts: dict[str, list[Tensor]] = {name: [] for name in _Flat._fields}
    d_offset = g_offset = 0
    for image in images:
        order, ranks = _ranks(image.d_labels, image.scores)
        keep = order[ranks < max_detections]
        iou, d_areas = _crowd_iou(image, keep, iou_type)
        d_labels = image.d_labels[keep]
        possible = (iou >= IOU_THRESHOLDS[0]) & (d_labels[:, None] == image.g_labels[None, :])
        pairs = torch.nonzero(possible)
        parts["pair_iou"].append(iou[possible])
        parts["pairs"].append(pairs + torch.tensor([d_offset, g_offset]))
        parts["d_labels"].append(d_labels)
        parts["scores"].append(image.scores[keep])
        parts["ranks"].append(ranks[ranks < max_detections])
        parts["d_areas"].append(d_areas)
        parts["g_labels"].append(image.g_labels)
        parts["crowd"].append(image.crowd)
        parts["g_areas"].append(image.g_areas)
        d_offset, g_offset = d_offset + len(keep), g_offset + len(image.g_labels)
    empty = {"pairs": torch.zeros(0, 2, dtype=torch.long), "crowd": torch.zeros(0, dtype=torch.bool)}
    return _Flat(**{k: torch.cat(v) if v else empty.get(k, torch.zeros(0)) for k, v in parts.items()})


def _outside(areas: Tensor) -> Tensor:
    """``(A, len(areas))``: whether each area falls outside each of :data:`AREA_RANGES`."""
    bounds = torch.tensor(list(AREA_RANGES.values()), dtype=torch.float64)
    return (areas[None, :] < bounds[:, :1]) | (areas[None, :] > bounds[:, 1:])


def _match(flat: _Flat) -> tuple[Tensor, Tensor]:
    """COCOeval's greedy matching for every IoU threshold and area range at once.

    Returns:
        ``(A, T, D)`` bools: matched (to any ground truth) and ignored (matched to an ignored ground truth,
        or unmatched and outside the area range).
    """
    g_ignore = flat.crowd[None, :] | _outside(flat.g_areas)  # (A, G)
    areas, thresholds, count = len(AREA_RANGES), IOU_THRESHOLDS.clamp(max=1 - 1e-10), len(flat.d_labels)
    matched = torch.full((areas, len(thresholds), count), -1, dtype=torch.long)  # the ground truth taken, or -1
    taken = torch.zeros(areas, len(thresholds), len(flat.g_labels), dtype=torch.bool)
    by_rank = torch.sort(flat.ranks[flat.pairs[:, 0]], stable=True)
    pairs, pair_iou = flat.pairs[by_rank.indices], flat.pair_iou[by_rank.indices]
    steps = int(by_rank.values[-1]) + 1 if len(pairs) else 0
    bounds = torch.searchsorted(by_rank.values, torch.arange(steps + 1)).tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):  # the detections of rank r, in every image and class
        if start == stop:
            continue
        det, gt, iou = pairs[start:stop, 0], pairs[start:stop, 1], pair_iou[start:stop]
        dets, local = torch.unique_consecutive(det, return_inverse=True)  # pairs are in detection order
        shape = (areas, len(thresholds), len(dets))
        local = local.expand(areas, len(thresholds), -1)
        candidate = (~taken[:, :, gt] | flat.crowd[gt]) & (iou >= thresholds[:, None])  # (A, T, P)
        regular = candidate & ~g_ignore[:, None, gt]
        # an ignored ground truth is taken only by a detection that has no regular one left
        has_regular = torch.zeros(shape, dtype=torch.uint8).scatter_reduce(-1, local, regular.to(torch.uint8), "amax")
        pool = candidate & (regular == has_regular.gather(-1, local).bool())
        best = torch.full(shape, -1.0, dtype=torch.float64).scatter_reduce(
            -1, local, torch.where(pool, iou, -1.0), "amax"
        )
        at_best = pool & (iou == best.gather(-1, local))
        chosen = torch.full(shape, -1).scatter_reduce(-1, local, torch.where(at_best, gt, -1), "amax")  # ties: last
        matched[:, :, dets] = chosen
        a, t, u = torch.nonzero(chosen >= 0, as_tuple=True)
        taken[a, t, chosen[a, t, u]] = True
    hit = matched >= 0
    on_ignored = g_ignore[:, None, :].expand(-1, len(thresholds), -1).gather(-1, matched.clamp(min=0)) & hit
    return hit, on_ignored | (~hit & _outside(flat.d_areas)[:, None, :])


def _precision_recall(tp: Tensor, fp: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """One class: ``(A, T, M)`` true/false positives in score order, ``(A,)`` ground truths → ``(A, T, R)``
    interpolated precision and ``(A, T)`` final recall, -1 where there is no ground truth."""
    tp_sum, fp_sum = torch.cumsum(tp, -1).double(), torch.cumsum(fp, -1).double()
    recall = tp_sum / positives[:, None, None]
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision = torch.flip(torch.cummax(torch.flip(precision, [-1]), -1).values, [-1])  # best at any higher recall
    points = RECALL_THRESHOLDS.expand(*tp.shape[:2], -1).contiguous()
    if tp.shape[-1]:
        index = torch.searchsorted(recall.contiguous(), points)
        interpolated = torch.where(index < tp.shape[-1], precision.gather(-1, index.clamp(max=tp.shape[-1] - 1)), 0.0)
        final = recall[..., -1]
    else:
        interpolated, final = torch.zeros_like(points), torch.zeros(tp.shape[:2], dtype=torch.float64)
    valid = (positives > 0)[:, None]
    return torch.where(valid[..., None], interpolated, -1.0), torch.where(valid, final, -1.0)


def _mean(values: Tensor) -> float:
    """COCO's summary: the mean of the entries that exist (> -1), or -1 if none."""
    present = values[values > -1]
    return float(present.mean()) if present.numel() else -1.0


def average_precision(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_type: Literal["bbox", "segm"] = "bbox",
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO's AP, AP50, AP75, AP by object size, AR and per-class AP, as pycocotools' ``COCOeval`` gives them.

    Args:
        predictions: one dict per image: ``boxes`` ``(D, 4)`` x1, y1, x2, y2 (for ``"bbox"``), ``scores``
            ``(D,)``, ``labels`` ``(D,)`` int, ``masks`` ``(D, H, W)`` bool (for ``"segm"``; ``(D, 1, H, W)`` too).
            Tensors or numpy arrays.
        ground_truths: one dict per image, in the same order: ``boxes`` ``(G, 4)`` (for ``"bbox"``), ``labels``,
            ``masks`` ``(G, H, W)`` (for ``"segm"``), optionally ``iscrowd`` ``(G,)`` and ``areas`` ``(G,)`` (for
            the size ranges; default the mask's pixel count if there are masks, else the box's area).
        iou_type: ``"bbox"`` scores boxes, ``"segm"`` masks.
        max_detections: the highest-scored detections of each class in each image that count.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR<max_detections>": float, "per_class": {label: AP}}``:
        AP over IoU 0.50:0.05:0.95 (AP50, AP75 at one threshold; APs/m/l for areas < 32², 32²..96², > 96²),
        AR the recall averaged over thresholds and classes; -1 where no class has a ground truth. Equal
        scores are ranked in image order, then in input order.

    Raises:
        ValueError: unequal numbers of images, an unknown ``iou_type``, missing or misshapen fields, float
            masks, or predicted masks of another size than the image's ground truth masks.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"unknown iou_type {iou_type!r}; choose from ['bbox', 'segm']")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections must be an int >= 1, got {max_detections!r}")
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} predictions but {len(ground_truths)} ground truths; pass one of each per image, "
            "in the same order (an image without detections: empty tensors)"
        )
    images = [_prepare(p, g, i, iou_type) for i, (p, g) in enumerate(zip(predictions, ground_truths))]
    flat = _flatten(images, iou_type, max_detections)
    hit, ignored = _match(flat)
    tp, fp = hit & ~ignored, ~hit & ~ignored
    positives = ~(flat.crowd[None, :] | _outside(flat.g_areas))  # (A, G): ground truths a detection must find
    classes = torch.unique(torch.cat([flat.d_labels, flat.g_labels])).tolist()
    shape = (len(AREA_RANGES), len(IOU_THRESHOLDS), len(classes))
    precision = torch.full((*shape, len(RECALL_THRESHOLDS)), -1.0, dtype=torch.float64)
    recall = torch.full(shape, -1.0, dtype=torch.float64)
    for k, label in enumerate(classes):  # per class: the detections of every image, by decreasing score
        members = torch.nonzero(flat.d_labels == label).flatten()
        members = members[torch.sort(-flat.scores[members], stable=True).indices]
        count = positives[:, flat.g_labels == label].sum(1)
        precision[:, :, k], recall[:, :, k] = _precision_recall(tp[:, :, members], fp[:, :, members], count)
    result: dict[str, Any] = {
        "AP": _mean(precision[0]),
        "AP50": _mean(precision[0, 0]),
        "AP75": _mean(precision[0, 5]),
        "APs": _mean(precision[1]),
        "APm": _mean(precision[2]),
        "APl": _mean(precision[3]),
        f"AR{max_detections}": _mean(recall[0]),
    }
    result["per_class"] = {label: _mean(precision[0, :, k]) for k, label in enumerate(classes)}
    return result
