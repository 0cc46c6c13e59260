"""Anchors: the reference boxes the RPN classifies and regresses, a few at every feature-map position.

Why anchors: regressing a box from nothing is hard; classifying "is there an object near this
reference box" and nudging the box is easy. Faster R-CNN (Ren et al., NeurIPS 2015) places ``A`` boxes
(sizes x aspect ratios) at every position of a feature map; with FPN each level gets its own size(s),
so that small objects are found on fine maps and large ones on coarse maps.

Conventions (those of :mod:`.boxes`: ``x1, y1, x2, y2`` in continuous pixel coordinates):

* feature pixel ``(i, j)`` of a stride-``s`` map covers ``[j s, (j + 1) s] x [i s, (i + 1) s]`` of the
  image, so its anchors are centred at ``((j + 0.5) s, (i + 0.5) s)``. (torchvision centres them at
  ``(j s, i s)`` and rounds the corners to integers; the half-pixel offset is Detectron2's ``offset=0.5``
  and matches RoIAlign's ``aligned=True``.)
* an anchor of size ``S`` and aspect ratio ``r = h / w`` is ``w = S / sqrt(r)``, ``h = S sqrt(r)``: its
  area is ``S^2`` whatever the ratio.
* order: position-major, row by row, then the ``A`` anchors of a position (sizes outer, ratios inner) —
  the order in which :mod:`.rpn` flattens its ``(N, A, H, W)`` outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "cell_anchors", "grid_anchors"]

#: anchor grids an AnchorGenerator keeps
MAX_CACHED = 32


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The ``(A, 4)`` anchors of one position, centred at 0: sizes outer, ratios inner (``A = sizes x ratios``).

    Raises:
        ValueError: an empty list, or a size or ratio that is not positive.
    """
    if not sizes or any(float(s) <= 0 for s in sizes):
        raise ValueError(f"anchor sizes must be a non-empty list of positive numbers (pixels), got {list(sizes)}")
    if not aspect_ratios or any(float(r) <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect ratios must be a non-empty list of positive h / w, got {list(aspect_ratios)}")
    size = torch.tensor([float(s) for s in sizes], dtype=torch.float64)[:, None]
    root = torch.tensor([math.sqrt(float(r)) for r in aspect_ratios], dtype=torch.float64)[None, :]
    half_w, half_h = (size / root / 2).flatten(), (size * root / 2).flatten()
    return torch.stack([-half_w, -half_h, half_w, half_h], dim=1).float()


def grid_anchors(cell: Tensor, feature_size: Sequence[int], stride: float) -> Tensor:
    """Every anchor of a feature map: ``(H * W * A, 4)`` in image coordinates, position-major.

    Args:
        cell: ``(A, 4)`` from :func:`cell_anchors`.
        feature_size: ``(H, W)`` of the map.
        stride: image pixels per feature pixel.
    """
    height, width = int(feature_size[0]), int(feature_size[1])
    ys = (torch.arange(height, dtype=torch.float32, device=cell.device) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32, device=cell.device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (centres + cell[None]).reshape(-1, 4)


class AnchorGenerator:
    """The anchors of every pyramid level, cached per (feature size, stride, device).

    The cache holds the last ``MAX_CACHED`` grids (inputs of many sizes would otherwise grow it without bound).

    Args:
        sizes: per level, the anchor sizes (pixels) of that level, e.g. ``((32,), (64,), (128,), (256,), (512,))``
            for FPN's P2-P6; every level must have the same number of sizes (the RPN head is shared).
        aspect_ratios: ``h / w`` of the anchors, the same at every level (FPN: 0.5, 1, 2).

    Raises:
        ValueError: levels with different numbers of sizes, or non-positive sizes or ratios.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> None:
        if not sizes or len({len(level) for level in sizes}) != 1:
            raise ValueError(
                f"sizes must give every level the same number of anchor sizes (the RPN head is shared), got {sizes!r}"
            )
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.cells = [cell_anchors(level, self.aspect_ratios) for level in self.sizes]
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def __call__(
        self, feature_sizes: Sequence[Sequence[int]], strides: Sequence[float], device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """Per level ``(H_l * W_l * A, 4)`` float32 anchors, the same for every image of a (padded) batch.

        Raises:
            ValueError: a number of levels other than the number of size lists.
        """
        if len(feature_sizes) != len(self.sizes) or len(strides) != len(self.sizes):
            raise ValueError(
                f"got {len(feature_sizes)} feature maps and {len(strides)} strides but anchor sizes for "
                f"{len(self.sizes)} levels; give one tuple of sizes per pyramid level"
            )
        anchors = []
        for cell, size, stride in zip(self.cells, feature_sizes, strides):
            key = (tuple(int(s) for s in size), float(stride), str(device), cell.data_ptr())
            if key not in self._cache:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.pop(next(iter(self._cache)))  # the oldest
                self._cache[key] = grid_anchors(cell.to(device), size, float(stride))
            anchors.append(self._cache[key])
        return anchors
