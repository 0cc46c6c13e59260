"""Pictures of instance segmentations: each object filled with its own colour, outlined, boxed and labelled.

>>> picture = draw_instances(image, detections, classes, score_threshold=0.5)   # (H, W, 3) uint8 RGB
>>> side_by_side(draw_instances(image, target, classes), picture)              # truth | prediction

``detections`` is what :class:`~segforge.instances.model.MaskRCNN` gives in eval mode for one image
(``boxes (K, 4)`` x1 y1 x2 y2, ``labels (K,)``, ``scores (K,)``, ``masks (K, H, W)`` bool) or a ground-truth
target (no ``scores``: every instance is drawn, in the order given). Kept instances are ranked by decreasing
score; the one ranked ``i`` (from 0) gets colour ``instance_colours(n)[i]``, and id ``i + 1`` in the files of
:mod:`segforge.instances.predict`, so a picture and its id map agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import cv2
import numpy as np
from torch import Tensor

__all__ = [
    "DetectionArrays",
    "as_rgb8",
    "class_name",
    "detection_arrays",
    "draw_instances",
    "instance_colours",
    "ranked",
    "side_by_side",
]

# successive multiples of the golden ratio's fraction spread hues as evenly as any sequence can
_GOLDEN = (np.sqrt(5.0) - 1) / 2
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.35
# white columns between the panels of side_by_side, as segforge.plots.overlay_panel has them
_GAP = 4


class DetectionArrays(NamedTuple):
    """One image's instances as numpy arrays, masks at the image's size."""

    boxes: np.ndarray  # (K, 4) float64 x1 y1 x2 y2
    labels: np.ndarray  # (K,) int64
    scores: np.ndarray | None  # (K,) float64; None for ground truth
    masks: np.ndarray  # (K, H, W) bool


def instance_colours(count: int, *, seed: int = 0) -> np.ndarray:
    """``(count, 3)`` uint8 RGB colours, bright and distinct (for up to a few hundred), the same for the same seed.

    Hues step by the golden ratio from a start the seed picks; saturation alternates between two levels,
    so that instances next to each other in rank differ in more than hue.

    Raises:
        ValueError: ``count`` not an int >= 0.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    index = np.arange(count)
    hue = (np.random.default_rng(seed).random() + index * _GOLDEN) % 1.0
    saturation = np.where(index % 2 == 0, 0.85, 0.6)
    return _hsv_to_rgb(hue, saturation, np.full(count, 0.95))


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """HSV, each ``(N,)`` in [0, 1] → ``(N, 3)`` uint8 RGB (the textbook six sectors, vectorised)."""
    sector = np.floor(hue * 6).astype(np.int64) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    rows = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    table = np.stack([np.stack(row, axis=-1) for row in rows])  # (6, N, 3)
    return np.round(table[sector, np.arange(len(hue))] * 255).astype(np.uint8)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """An image to show → a fresh ``(H, W, 3)`` uint8 RGB array.

    ``(H, W)`` and 1- or 2-channel images show their first channel as grey; more than 3 channels, the first 3.
    uint8 is kept, uint16 scaled to 8 bits, bool is 0/255, floats are taken to lie in [0, 1] (clipped; NaN black).

    Raises:
        ValueError: not 2-D or 3-D, no channels, or another pixel type.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), channels last, got shape {np.shape(image)}")
    array = array[:, :, :3] if array.shape[-1] >= 3 else np.repeat(array[:, :, :1], 3, axis=-1)
    if array.dtype == np.uint8:
        rgb = array
    elif array.dtype == np.uint16:
        rgb = np.round(array / 257.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        rgb = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        rgb = np.round(np.clip(np.nan_to_num(array, nan=0.0), 0, 1) * 255).astype(np.uint8)
    else:
        raise ValueError(f"image has pixel type {array.dtype}; give uint8, uint16, bool or float in [0, 1]")
    return np.array(rgb, order="C")  # a copy OpenCV can draw on, never the caller's array


def _numpy(value: Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def detection_arrays(detections: Mapping[str, Tensor | np.ndarray], size: tuple[int, int]) -> DetectionArrays:
    """``detections`` (tensors or arrays) checked and as numpy, masks padded at the bottom and right to ``size``.

    Raises:
        ValueError: a missing key, shapes that disagree, masks larger than ``size``, or non-finite boxes.
    """
    missing = [key for key in ("boxes", "labels", "masks") if key not in detections]
    if missing:
        raise ValueError(
            f"detections lack {missing}; give boxes (K, 4), labels (K,), masks (K, H, W) and, for predictions, "
            "scores (K,), as MaskRCNN returns them in eval mode"
        )
    boxes, labels, masks = (_numpy(detections[key]) for key in ("boxes", "labels", "masks"))
    scores = _numpy(detections["scores"]) if detections.get("scores") is not None else None
    count = len(boxes) if boxes.ndim == 2 else -1
    if boxes.shape[1:] != (4,) or labels.shape != (count,) or masks.ndim != 3 or len(masks) != count:
        raise ValueError(
            f"detections must hold boxes (K, 4), labels (K,) and masks (K, H, W) for one K, got "
            f"{boxes.shape}, {labels.shape}, {masks.shape}"
        )
    if scores is not None and scores.shape != (count,):
        raise ValueError(f"detections hold {count} boxes but scores of shape {scores.shape}; give one score each")
    height, width = size
    if masks.shape[1] > height or masks.shape[2] > width:
        raise ValueError(
            f"masks are {masks.shape[1:]}, larger than the image ({height}, {width}); is it another one's?"
        )
    if not np.isfinite(boxes).all():
        raise ValueError("detections hold non-finite boxes; drop them first")
    full = np.zeros((count, height, width), dtype=bool)
    full[:, : masks.shape[1], : masks.shape[2]] = masks != 0  # a mask of a padded batch covers the image's corner
    return DetectionArrays(
        boxes.astype(np.float64), labels.astype(np.int64), None if scores is None else scores.astype(np.float64), full
    )


def ranked(scores: np.ndarray | None, count: int, score_threshold: float) -> np.ndarray:
    """Indices of the instances kept (``score >= score_threshold``; all when there are no scores), by decreasing
    score, ties in the order given."""
    if scores is None:
        return np.arange(count)
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] >= score_threshold]  # NaN scores sort last and are never kept


def draw_instances(
    image: np.ndarray,
    detections: Mapping[str, Tensor | np.ndarray],
    classes: Sequence[str] = (),
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.45,
) -> np.ndarray:
    """One image's instances over it: each filled with its own colour at ``alpha``, its outline solid, its box a
    1-pixel rectangle and a ``"class score"`` label above the box. The best-scoring instances are drawn last.

    Args:
        image: ``(H, W)``, ``(H, W, C)`` uint8, uint16 or float in [0, 1] (see ``as_rgb8``).
        detections: ``boxes (K, 4)`` x1 y1 x2 y2, ``labels (K,)``, ``masks (K, h, w)`` bool with ``h <= H``,
            ``w <= W`` and, for predictions, ``scores (K,)`` (without them every instance is drawn).
        classes: class names by label (background first); a label without one shows its number.
        score_threshold: instances scoring less are left out.
        alpha: the fill's opacity, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or what ``as_rgb8`` and ``detection_arrays`` raise.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the fill's opacity: it must lie in [0, 1], got {alpha}")
    picture = as_rgb8(image)
    found = detection_arrays(detections, picture.shape[:2])
    order = ranked(found.scores, len(found.labels), score_threshold)
    colours = instance_colours(len(order))
    lowest_first = list(reversed(list(enumerate(order))))
    for rank, i in lowest_first:
        mask, colour = found.masks[i], colours[rank]
        picture[mask] = np.round((1 - alpha) * picture[mask] + alpha * colour).astype(np.uint8)
        picture[_outline(mask)] = colour
        x1, y1, x2, y2 = _pixel_box(found.boxes[i], picture.shape)
        cv2.rectangle(picture, (x1, y1), (x2, y2), _cv_colour(colour), thickness=1)
    for rank, i in lowest_first:  # labels after every fill, so that no fill hides one
        name = class_name(int(found.labels[i]), classes) or str(int(found.labels[i]))
        text = name if found.scores is None else f"{name} {found.scores[i]:.2f}"
        _draw_label(picture, text, found.boxes[i], colours[rank])
    return picture


def class_name(label: int, classes: Sequence[str]) -> str | None:
    """``classes[label]``, or None for a label without a name."""
    return str(classes[label]) if 0 <= label < len(classes) else None


def _cv_colour(colour: np.ndarray) -> tuple[int, int, int]:
    """A colour as OpenCV's drawing functions take it: plain ints, in the picture's channel order (RGB here)."""
    return tuple(int(c) for c in colour)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that have a 4-neighbour outside it (the image's edge counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _pixel_box(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Continuous x1 y1 x2 y2 → the first and last pixel columns and rows it covers (clipped near the image)."""
    height, width = shape[:2]
    x1, y1 = np.floor(box[:2]).astype(np.int64)
    x2, y2 = np.maximum(np.ceil(box[2:]).astype(np.int64) - 1, (x1, y1))
    return (
        int(np.clip(x1, -1, width)),
        int(np.clip(y1, -1, height)),
        int(np.clip(x2, -1, width)),
        int(np.clip(y2, -1, height)),
    )


def _draw_label(picture: np.ndarray, text: str, box: np.ndarray, colour: np.ndarray) -> None:
    """``text`` on a patch of ``colour`` above the box's top left corner (inside the box when there is no room)."""
    (w, h), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    height, width = picture.shape[:2]
    x = int(np.clip(np.floor(box[0]), 0, max(width - w - 2, 0)))
    top = int(np.floor(box[1])) - h - baseline - 2
    if top < 0:
        top = int(np.clip(np.floor(box[1]), 0, max(height - h - baseline - 2, 0)))
    cv2.rectangle(picture, (x, top), (x + w + 1, top + h + baseline + 1), _cv_colour(colour), thickness=-1)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(picture, text, (x + 1, top + h + 1), _FONT, _FONT_SCALE, ink, 1, cv2.LINE_AA)


def _title_strip(text: str, width: int) -> np.ndarray:
    """A white ``(h, width, 3)`` strip with ``text`` in black at its left; ``h`` is the same for every text."""
    (_, h), baseline = cv2.getTextSize("Ag", _FONT, _FONT_SCALE, 1)  # a capital's height and a descender's depth
    strip = np.full((h + baseline + 4, width, 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (2, h + 2), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def side_by_side(
    left: np.ndarray, right: np.ndarray, *, titles: Sequence[str] | None = ("truth", "prediction")
) -> np.ndarray:
    """Two pictures of the same height joined with a white gap, each under its title (``titles=None``: none).

    Returns:
        ``(H', W_left + 4 + W_right, 3)`` uint8 RGB, ``H'`` the height plus the title strip's.

    Raises:
        ValueError: different heights, a number of titles other than 2, or what ``as_rgb8`` raises.
    """
    panels = [as_rgb8(left), as_rgb8(right)]
    if panels[0].shape[0] != panels[1].shape[0]:
        raise ValueError(
            f"pictures of heights {panels[0].shape[0]} and {panels[1].shape[0]} cannot stand side by side; "
            "draw both over the same image"
        )
    if titles is not None:
        if isinstance(titles, str) or len(titles) != 2:
            raise ValueError(f"titles must be two strings (left, right) or None, got {titles!r}")
        panels = [np.concatenate([_title_strip(str(t), p.shape[1]), p]) for t, p in zip(titles, panels)]
    gap = np.full((panels[0].shape[0], _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)
