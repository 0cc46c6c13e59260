"""COCO's mask formats: polygons, uncompressed RLE and compressed RLE, to and from ``(H, W)`` bool masks.

A COCO ``segmentation`` is one of

* a list of polygons, each a flat list ``[x1, y1, x2, y2, ...]`` in continuous pixel coordinates
  (object annotations: the polygons of one object, holes not represented);
* an uncompressed RLE ``{"counts": [ints], "size": [h, w]}`` (crowd annotations);
* a compressed RLE ``{"counts": "string", "size": [h, w]}`` (results, and crowds in some files).

Run lengths are counted in *column-major* order (down the first column, then the next), alternating
background and foreground and starting with background: a mask whose first pixel is foreground starts
with a count of 0. The compressed string stores each count, from the fourth on as the difference to the
count two before it, in 5-bit groups, least significant first; a group is one character ``48 + bits``,
bit 0x20 set when another group follows, bit 0x10 of the last group the sign (pycocotools' ``maskApi.c``).

Masks here are ``torch.bool`` tensors; the run-length work is vectorised with numpy, on the host, where
COCO files live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["annotation_to_mask", "polygons_to_mask", "rle_decode", "rle_encode", "rle_from_string", "rle_to_string"]

# 5 bits a character: 13 characters hold any int64 difference
_GROUPS = 13
# cv2.fillPoly takes fixed-point vertices with this many fractional bits
_SHIFT = 8
# polygons are filled on a grid this many times finer; odd, so that the centre of pixel j is fine pixel k j + k // 2
_SUPERSAMPLE = 5


def _check_size(height: object, width: object, what: str) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{what}: {name} must be an int >= 0, got {value!r}")
    return int(height), int(width)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> Tensor:
    """Rasterises COCO polygons (the union of them) into an ``(height, width)`` bool mask.

    Vertices are in continuous pixel coordinates; a pixel is inside when its centre ``(j + 0.5, i + 0.5)``
    is, which is pycocotools' rule. ``cv2.fillPoly`` alone also fills every pixel the outline passes
    through (about a third of a pixel too much along the whole perimeter), so each polygon is filled on a
    grid 5 times finer and read back at the pixel centres: the masks then agree with pycocotools' but for
    a few boundary pixels (pycocotools rounds the vertices to 1/5 pixel).

    Args:
        polygons: a list of flat ``[x1, y1, x2, y2, ...]`` lists, each at least 3 points.
        height, width: the image's size.

    Returns:
        ``(height, width)`` bool tensor.

    Raises:
        ValueError: a polygon that is not a flat list of at least 3 finite (x, y) pairs, or a bad size.
    """
    height, width = _check_size(height, width, "polygons_to_mask")
    if isinstance(polygons, (str, bytes, Mapping)) or not isinstance(polygons, Sequence):
        raise ValueError(f"polygons must be a list of flat [x1, y1, x2, y2, ...] lists, got {type(polygons).__name__}")
    outlines = []
    for i, polygon in enumerate(polygons):
        points = np.asarray(polygon, dtype=np.float64)
        if points.ndim != 1 or len(points) < 6 or len(points) % 2:
            raise ValueError(
                f"polygon {i} must be a flat list [x1, y1, x2, y2, ...] of at least 3 points, got shape "
                f"{points.shape}; pairs [[x1, y1], ...] are flattened with sum(pairs, [])"
            )
        if not np.isfinite(points).all():
            raise ValueError(f"polygon {i} has a non-finite coordinate: {points[~np.isfinite(points)][:3].tolist()}")
        outlines.append(points.reshape(-1, 2))
    mask = np.zeros((height, width), dtype=bool)
    if not outlines:
        return torch.from_numpy(mask)
    # only the polygons' bounding region is drawn on the fine grid
    every = np.concatenate(outlines)
    x0, y0 = np.clip(np.floor(every.min(0)).astype(np.int64) - 1, 0, [width, height])
    x1, y1 = np.clip(np.ceil(every.max(0)).astype(np.int64) + 1, 0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return torch.from_numpy(mask)
    k = _SUPERSAMPLE
    fine = np.zeros(((y1 - y0) * k, (x1 - x0) * k), dtype=np.uint8)
    for outline in outlines:  # one call per polygon: fillPoly's scanline would leave overlaps out (even-odd)
        # continuous x -> fine-grid pixel-centre coordinate k * x - 0.5, fixed point for cv2
        fixed = np.round(((outline - [x0, y0]) * k - 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(fine, [fixed], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    mask[y0:y1, x0:x1] = fine[k // 2 :: k, k // 2 :: k] != 0  # the fine pixel at each pixel's centre
    return torch.from_numpy(mask)


def _counts_from_mask(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a 2-D bool mask in column-major order, starting with a (possibly empty) background run."""
    flat = mask.ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds)
    return np.concatenate([[0], counts]) if flat[0] else counts


def rle_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """COCO's compressed form of a list of run lengths (pycocotools' ``rleToString``)."""
    counts = np.asarray(counts, dtype=np.int64)
    values = counts.copy()
    values[3:] -= counts[1:-2]  # from the fourth count on, the difference to the count two before
    chars, alive = [], np.ones(len(values), dtype=bool)
    for group in range(_GROUPS):
        bits = (values >> (5 * group)) & 0x1F
        rest = values >> (5 * (group + 1))  # arithmetic shift: a negative value's rest ends at -1
        more = np.where(bits & 0x10, rest != -1, rest != 0)
        chars.append(np.where(alive, 48 + (bits | np.where(more, 0x20, 0)), -1))
        alive &= more
    table = np.stack(chars, axis=1)  # (len, groups), -1 after each value's last group
    return table[table >= 0].astype(np.uint8).tobytes().decode("ascii")


def rle_from_string(counts: str | bytes) -> np.ndarray:
    """The run lengths stored in a COCO compressed string (pycocotools' ``rleFrString``), as int64.

    Raises:
        ValueError: characters outside COCO's alphabet, or a string that ends inside a number.
    """
    data = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else bytes(counts), dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    codes = data.astype(np.int64) - 48
    if codes.min() < 0 or codes.max() > 0x3F:
        raise ValueError("compressed RLE counts hold characters outside COCO's alphabet ('0' to 'o'); is it corrupted?")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise ValueError("compressed RLE counts end in the middle of a number; the string is truncated")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    position = np.arange(len(codes)) - starts[group]  # the 5-bit group's place within its number
    values = np.zeros(len(ends), dtype=np.int64)
    np.add.at(values, group, (codes & 0x1F) << (5 * position))
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends[negative]] + 1))  # sign-extend the last group
    # undo the differences: counts 1, 3, 5, ... and 2, 4, 6, ... are each a running sum
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    return counts


def _rle_size(rle: Mapping[str, Any]) -> tuple[int, int]:
    if not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
        keys = sorted(rle) if isinstance(rle, Mapping) else type(rle).__name__
        raise ValueError(f"an RLE must be a dict with 'counts' and 'size' ([height, width]), got {keys}")
    size = rle["size"]
    if not isinstance(size, Sequence) or isinstance(size, (str, bytes)) or len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    return _check_size(size[0], size[1], "RLE size")


def rle_decode(rle: Mapping[str, Any]) -> Tensor:
    """An RLE, compressed (``counts`` a str or bytes) or not (``counts`` a list of ints), as an ``(h, w)`` bool mask.

    Raises:
        ValueError: no ``counts``/``size``, a size that is not two ints >= 0, negative counts, or counts that
            do not add up to ``h * w``.
    """
    height, width = _rle_size(rle)
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        counts = rle_from_string(raw)
    else:
        counts = np.asarray(raw)
        if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
            raise ValueError(f"RLE counts must be a flat list of ints or a COCO string, got {type(raw).__name__}")
        counts = counts.astype(np.int64)
    if (counts < 0).any():
        raise ValueError(f"RLE counts must be >= 0, got {counts[counts < 0][:5].tolist()}; is the string corrupted?")
    if counts.sum() != height * width:
        raise ValueError(
            f"RLE counts add up to {int(counts.sum())} pixels but size {height}x{width} has {height * width}; "
            "the counts or the size are wrong (size is [height, width], not [width, height])"
        )
    values = np.arange(len(counts)) % 2 == 1  # background runs first
    flat = np.repeat(values, counts)
    return torch.from_numpy(np.ascontiguousarray(flat.reshape(width, height).T))


def rle_encode(mask: Tensor | np.ndarray) -> dict[str, Any]:
    """An ``(h, w)`` mask as COCO's compressed RLE ``{"size": [h, w], "counts": str}``.

    ``counts`` is a str (JSON-ready, as in COCO result files); pycocotools gives the same characters as bytes.

    Raises:
        ValueError: ``mask`` not 2-D.
    """
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {array.shape}; encode masks one at a time")
    return {"size": [int(array.shape[0]), int(array.shape[1])], "counts": rle_to_string(_counts_from_mask(array != 0))}


def annotation_to_mask(annotation: Mapping[str, Any], height: int, width: int) -> Tensor:
    """The ``(height, width)`` bool mask of a COCO annotation, whichever form its ``segmentation`` takes.

    Raises:
        ValueError: no ``segmentation``, an RLE whose size is not ``(height, width)``, or what the
            decoders raise.
    """
    height, width = _check_size(height, width, "annotation_to_mask")
    if not isinstance(annotation, Mapping) or "segmentation" not in annotation:
        keys = sorted(annotation) if isinstance(annotation, Mapping) else type(annotation).__name__
        raise ValueError(f"a COCO annotation must be a dict with a 'segmentation', got {keys}")
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, Mapping):
        rle_height, rle_width = _rle_size(segmentation)
        if (rle_height, rle_width) != (height, width):
            raise ValueError(
                f"the annotation's RLE is {rle_height}x{rle_width} but its image is {height}x{width}; "
                "is it from another image?"
            )
        return rle_decode(segmentation)
    return polygons_to_mask(segmentation, height, width)
