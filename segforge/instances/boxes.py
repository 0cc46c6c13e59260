"""Boxes as ``(K, 4)`` float tensors ``x1, y1, x2, y2`` in continuous pixel coordinates.

The convention is torchvision's (and COCO's, once its ``x, y, w, h`` is converted): pixel ``(i, j)``
covers ``[j, j + 1] x [i, i + 1]``, so a box's width is ``x2 - x1`` with no ``+ 1`` (the ``+ 1`` of
the original Faster R-CNN code belongs to integer, inclusive corners). Everything here is a tensor
operation over all boxes at once, differentiable where the maths is.

The regression parametrisation of Faster R-CNN (Ren et al., NeurIPS 2015, eq. 2) encodes a box
relative to a proposal as centre offsets in units of the proposal's size and log size ratios; the
weights ``(10, 10, 5, 5)`` scale the targets to unit-ish variance, as torchvision and Detectron do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BBOX_EXP_CLAMP",
    "box_area",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "masks_to_boxes",
    "remove_small_boxes",
]

# exp(dw) is clamped here when decoding: a box never grows beyond 1000/16 times its proposal (torchvision's
# bbox_xform_clip), so an untrained regressor cannot produce inf boxes
BBOX_EXP_CLAMP = math.log(1000.0 / 16)


def check_boxes(boxes: object, name: str = "boxes") -> Tensor:
    """Raises TypeError/ValueError unless ``boxes`` is a floating ``(K, 4)`` tensor; returns it."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (K, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have shape (K, 4) as x1, y1, x2, y2, got {tuple(boxes.shape)}; "
            "a single box is boxes[None], COCO's x, y, w, h needs x2 = x + w, y2 = y + h"
        )
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be floating point (continuous pixel coordinates), got {boxes.dtype}")
    return boxes


def box_area(boxes: Tensor) -> Tensor:
    """``(K, 4)`` boxes → ``(K,)`` areas ``(x2 - x1) * (y2 - y1)`` (negative for inverted boxes, as torchvision)."""
    check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """``(Ka, 4)``, ``(Kb, 4)`` → ``(Ka, Kb)`` areas of the pairwise intersections (0 where disjoint)."""
    # one axis at a time: (Ka, Kb) temporaries only, never (Ka, Kb, 2)
    width = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    height = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    return width * height


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        a: ``(Ka, 4)`` boxes.
        b: ``(Kb, 4)`` boxes, same dtype.

    Returns:
        ``(Ka, Kb)``: ``inter / (area_a + area_b - inter)``; 0 where the union is empty (two degenerate
        boxes), where torchvision would give NaN.

    Raises:
        TypeError, ValueError: not ``(K, 4)`` floating tensors.
    """
    check_boxes(a, "a")
    check_boxes(b, "b")
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.where(union > 0, torch.ones_like(union)), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clamps ``(K, 4)`` boxes into an image of ``size = (H, W)``: x into ``[0, W]``, y into ``[0, H]``."""
    check_boxes(boxes)
    if len(size) != 2 or any(int(s) < 0 for s in size):
        raise ValueError(f"size must be (H, W) of the image, two ints >= 0, got {size!r}")
    height, width = int(size[0]), int(size[1])
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    if len(weights) != 4 or any(float(w) <= 0 for w in weights):
        raise ValueError(f"weights must be four positive numbers (wx, wy, ww, wh), got {weights!r}")
    wx, wy, ww, wh = (float(w) for w in weights)
    return wx, wy, ww, wh


def _centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def encode_boxes(reference: Tensor, proposals: Tensor, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> Tensor:
    """The regression targets that turn each proposal into its reference box (torchvision's ``encode_boxes``).

    ``dx = wx (x_ref - x_prop) / w_prop``, ``dy`` alike, ``dw = ww log(w_ref / w_prop)``, ``dh`` alike, with
    ``x, y`` the box centres.

    Args:
        reference: ``(K, 4)`` the boxes to encode (the ground truth matched to each proposal).
        proposals: ``(K, 4)`` the boxes they are encoded relative to (anchors or proposals), with
            positive width and height.
        weights: ``(wx, wy, ww, wh)``.

    Returns:
        ``(K, 4)`` deltas ``dx, dy, dw, dh``; ``decode_boxes(deltas, proposals, weights)`` gives ``reference`` back.

    Raises:
        ValueError: shapes that are not ``(K, 4)`` alike, or weights that are not four positive numbers.
    """
    check_boxes(reference, "reference")
    check_boxes(proposals, "proposals")
    if reference.shape != proposals.shape:
        raise ValueError(
            f"reference {tuple(reference.shape)} and proposals {tuple(proposals.shape)} must pair up one to one"
        )
    wx, wy, ww, wh = _check_weights(weights)
    ref_x, ref_y, ref_w, ref_h = _centres_and_sizes(reference)
    prop_x, prop_y, prop_w, prop_h = _centres_and_sizes(proposals)
    dx = wx * (ref_x - prop_x) / prop_w
    dy = wy * (ref_y - prop_y) / prop_h
    dw = ww * torch.log(ref_w / prop_w)
    dh = wh * torch.log(ref_h / prop_h)
    return torch.stack([dx, dy, dw, dh], dim=1)


def decode_boxes(deltas: Tensor, reference: Tensor, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> Tensor:
    """Applies regression deltas to boxes: the inverse of :func:`encode_boxes` (torchvision's ``decode_single``).

    ``dw`` and ``dh`` (after dividing by their weights) are clamped at ``log(1000 / 16)`` before ``exp``.

    Args:
        deltas: ``(K, 4)`` ``dx, dy, dw, dh``, or ``(K, 4 * C)`` with one set of four per class.
        reference: ``(K, 4)`` the boxes the deltas are relative to (the proposals or anchors; the second
            argument of :func:`encode_boxes`).
        weights: ``(wx, wy, ww, wh)``, those the deltas were encoded with.

    Returns:
        Boxes of ``deltas``' shape: ``(K, 4)`` or ``(K, 4 * C)``.

    Raises:
        ValueError: ``deltas`` not ``(K, 4 * C)`` for ``reference``'s K, or bad weights.
    """
    check_boxes(reference, "reference")
    if deltas.dim() != 2 or deltas.shape[0] != reference.shape[0] or deltas.shape[1] % 4 or deltas.shape[1] == 0:
        raise ValueError(
            f"deltas must have shape (K, 4) or (K, 4 * C) with K = {reference.shape[0]} (one row per reference box), "
            f"got {tuple(deltas.shape)}"
        )
    wx, wy, ww, wh = _check_weights(weights)
    d = deltas.unflatten(1, (-1, 4)).to(reference.dtype)  # (K, C, 4)
    ref_x, ref_y, ref_w, ref_h = (v[:, None] for v in _centres_and_sizes(reference))
    x = d[..., 0] / wx * ref_w + ref_x
    y = d[..., 1] / wy * ref_h + ref_y
    w = torch.exp((d[..., 2] / ww).clamp(max=BBOX_EXP_CLAMP)) * ref_w
    h = torch.exp((d[..., 3] / wh).clamp(max=BBOX_EXP_CLAMP)) * ref_h
    boxes = torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=2)
    return boxes.flatten(1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """The indices (int64, increasing) of the boxes whose width and height are both at least ``min_size``."""
    check_boxes(boxes)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((width >= min_size) & (height >= min_size)).flatten()


def masks_to_boxes(masks: Tensor) -> Tensor:
    """The tight box around each mask, in continuous coordinates.

    A mask whose pixels span columns ``x0..x1`` and rows ``y0..y1`` gives ``(x0, y0, x1 + 1, y1 + 1)``:
    the pixels' outer edges, so ``box_area`` of a full rectangle is its pixel count and the box agrees with
    COCO's ``toBbox``. (torchvision's ``masks_to_boxes`` returns ``(x0, y0, x1, y1)``, one pixel short.)
    An empty mask gives ``(0, 0, 0, 0)``.

    Args:
        masks: ``(K, H, W)`` bool, or integers / floats where nonzero means inside.

    Returns:
        ``(K, 4)`` float32 boxes.

    Raises:
        ValueError: ``masks`` not 3-D.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a (K, H, W) tensor, got {shape}; a single mask is mask[None]")
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        return masks.new_zeros(masks.shape[0], 4, dtype=torch.float32)
    inside = masks != 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # (K, H), (K, W)
    box = torch.stack([_first(cols), _first(rows), _last(cols) + 1, _last(rows) + 1], dim=1)
    return torch.where(inside.flatten(1).any(1, keepdim=True), box, torch.zeros_like(box)).float()


def _first(flags: Tensor) -> Tensor:
    """The index of the first True along the last axis (0 if none)."""
    return flags.to(torch.uint8).argmax(dim=-1)


def _last(flags: Tensor) -> Tensor:
    """The index of the last True along the last axis."""
    return flags.shape[-1] - 1 - flags.flip(-1).to(torch.uint8).argmax(dim=-1)
