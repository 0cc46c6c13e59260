"""RoIAlign (He et al., Mask R-CNN, ICCV 2017): a fixed-size feature map for each box, without quantisation.

Each box is divided into an ``h x w`` grid of bins; each bin averages ``grid_h x grid_w`` regularly spaced
sampling points, each read from the feature map by bilinear interpolation. The semantics are
torchvision's ``roi_align``, rule for rule:

* ``aligned=True`` shifts the box by -0.5 pixel so that a box's corners fall on pixel *edges*: feature
  pixel ``j`` has its centre at ``j + 0.5`` in box coordinates. ``aligned=False`` is the original Mask
  R-CNN code (no shift, boxes at least 1 x 1).
* ``sampling_ratio <= 0``: ``ceil(box size / output size)`` points per bin side, per box.
* A sampling point outside ``[-1, H] x [-1, W]`` contributes 0; inside, its coordinates are clamped to
  the border pixels (a point in ``[-1, 0]`` reads row 0 as it is).

Since bilinear interpolation is a weighted sum of four pixels, a whole RoIAlign is a weighted sum of
feature vectors: each output bin is one "bag" of ``grid_h * grid_w * 4`` (pixel index, weight) pairs,
and ``torch.nn.functional.embedding_bag`` sums all the bags in one call over the channels-last feature
table. Nothing of size ``samples x C`` is ever materialised (the bags take ``K h w grid_h grid_w 4``
indices and weights, whatever C), and the gradient with respect to the features comes for free. Boxes
with different adaptive grid sizes are done in one call per distinct grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["roi_align", "rois_from_boxes"]


def rois_from_boxes(boxes: Tensor | Sequence[Tensor], batch_size: int, dtype: torch.dtype) -> Tensor:
    """``(K, 5)`` RoIs ``[batch_index, x1, y1, x2, y2]`` from either that or a list of per-image ``(Ki, 4)`` boxes.

    Raises:
        ValueError: wrong shapes, a list whose length is not the batch size, or batch indices that are
            not integers in ``[0, batch_size)``.
    """
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != batch_size:
            raise ValueError(
                f"boxes is a list of {len(boxes)} tensors but features hold {batch_size} images; "
                "pass one (Ki, 4) tensor per image (an empty torch.zeros(0, 4) for an image without boxes)"
            )
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"boxes[{i}] must be a (Ki, 4) tensor of x1, y1, x2, y2, got {shape}")
        if not boxes:
            return torch.zeros(0, 5, dtype=dtype)
        index = torch.cat([torch.full((len(b), 1), i, dtype=dtype, device=b.device) for i, b in enumerate(boxes)])
        return torch.cat([index, torch.cat(list(boxes)).to(dtype)], dim=1)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"boxes must be a (K, 5) tensor of [batch_index, x1, y1, x2, y2] or a list of per-image (Ki, 4) "
            f"tensors, got {shape}"
        )
    batch = boxes[:, 0]
    bad = (batch < 0) | (batch >= batch_size) | (batch != batch.round())
    if bool(bad.any()):
        raise ValueError(
            f"boxes[:, 0] must be image indices in [0, {batch_size}) (features hold {batch_size} images), "
            f"got {sorted(set(batch[bad].tolist()))[:10]}"
        )
    return boxes.to(dtype)


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"output_size must be an int >= 1 or a pair (h, w) of them, got {output_size!r}")
    return size


def _axis_samples(start: Tensor, bin_size: Tensor, bins: int, grid: int, size: int) -> tuple[Tensor, Tensor]:
    """Sampling along one axis: ``(K, bins, grid, 2)`` pixel indices (low, high) and their bilinear weights.

    Written as torchvision's ``bilinear_interpolate`` does it, one axis at a time: the weights of a 2-D
    sample are the products of the two axes' weights, and so is its in-range test.
    """
    position = torch.arange(bins, device=start.device, dtype=start.dtype)[:, None]
    offset = torch.arange(grid, device=start.device, dtype=start.dtype) + 0.5
    coord = start[:, None, None] + position * bin_size[:, None, None] + offset * bin_size[:, None, None] / grid
    inside = (coord >= -1.0) & (coord <= size)  # False for NaN too: such a point reads pixel 0 with weight 0
    coord = torch.where(inside, coord, 0.0).clamp(min=0)
    low = coord.long()  # >= 0, so truncation is floor
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    weights = torch.stack([1.0 - frac, frac], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1), weights


def _align_one_grid(
    table: Tensor,
    batch: Tensor,
    start: Tensor,
    size: Tensor,
    shape: tuple[int, int],
    out: tuple[int, int],
    grid: tuple[int, int],
) -> Tensor:
    """RoIAlign of boxes sharing one sampling grid; ``table`` is ``(N * H * W, C)``, ``start`` and ``size``
    are ``(K, 2)`` ``(x, y)`` in feature pixels, shifted and clamped as the caller's rules say."""
    k, (height, width), (out_h, out_w), (grid_h, grid_w) = batch.shape[0], shape, out, grid
    y_index, y_weight = _axis_samples(start[:, 1], size[:, 1] / out_h, out_h, grid_h, height)  # (K, h, gh, 2)
    x_index, x_weight = _axis_samples(start[:, 0], size[:, 0] / out_w, out_w, grid_w, width)  # (K, w, gw, 2)
    # one bag per output bin (K, h, w) of (gh, gw, y low/high, x low/high) table rows
    index = (
        (batch * (height * width))[:, None, None, None, None, None, None]
        + y_index[:, :, None, :, None, :, None] * width
        + x_index[:, None, :, None, :, None, :]
    )
    weight = y_weight[:, :, None, :, None, :, None] * x_weight[:, None, :, None, :, None, :] / (grid_h * grid_w)
    bags = index.reshape(k * out_h * out_w, -1)
    pooled = F.embedding_bag(bags, table, per_sample_weights=weight.reshape(bags.shape), mode="sum")
    return pooled.reshape(k, out_h, out_w, -1).permute(0, 3, 1, 2)


def roi_align(
    features: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Pools a fixed-size ``(C, h, w)`` feature map for every box; torchvision's ``roi_align``.

    Args:
        features: ``(N, C, H, W)`` float.
        boxes: ``(K, 5)`` ``[batch_index, x1, y1, x2, y2]`` in image coordinates, or a list of N per-image
            ``(Ki, 4)`` tensors.
        output_size: ``h`` or ``(h, w)``, the bins per box.
        spatial_scale: feature pixels per image pixel (``1 / stride``: 0.25 for a stride-4 map).
        sampling_ratio: sampling points per bin side; ``<= 0``: ``ceil(box size / output size)`` per box.
        aligned: shift boxes by -0.5 feature pixel (Detectron2's and torchvision's ``aligned=True``).

    Returns:
        ``(K, C, h, w)`` in ``features``' dtype, on its device, differentiable with respect to ``features``.

    Raises:
        ValueError: features not ``(N, C, H, W)`` float, malformed boxes or batch indices, a bad output
            size or spatial scale.
    """
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        shape = f"{tuple(features.shape)} {features.dtype}" if isinstance(features, Tensor) else type(features)
        raise ValueError(f"features must be an (N, C, H, W) float tensor, got {shape}")
    out = _pair(output_size)
    if not float(spatial_scale) > 0:
        raise ValueError(f"spatial_scale must be > 0 (1 / the feature stride), got {spatial_scale!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}")
    n, c, height, width = features.shape
    rois = rois_from_boxes(boxes, n, features.dtype).to(features.device)
    if rois.shape[0] == 0 or height == 0 or width == 0:
        return features.new_zeros(rois.shape[0], c, *out)
    batch = rois[:, 0].long()
    corners = rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)
    start, size = corners[:, :2], corners[:, 2:] - corners[:, :2]  # (K, 2) each: x, y
    if not aligned:  # the original Mask R-CNN code makes every box at least one feature pixel
        size = size.clamp(min=1.0)
    table = features.permute(0, 2, 3, 1).reshape(n * height * width, c)
    if sampling_ratio > 0:
        return _align_one_grid(table, batch, start, size, (height, width), out, (sampling_ratio, sampling_ratio))
    # adaptive: ceil(bin size) points per bin side, each box its own; one call per distinct (grid_h, grid_w)
    grids = torch.ceil(size.flip(1) / size.new_tensor(out)).long()  # (K, 2): grid_h, grid_w
    distinct, group = torch.unique(grids, dim=0, return_inverse=True)
    parts, order = [], []
    for g, (grid_h, grid_w) in enumerate(distinct.tolist()):
        members = torch.nonzero(group == g).flatten()
        order.append(members)
        if grid_h <= 0 or grid_w <= 0:  # an empty (or inverted) box with aligned=True: no sampling point
            parts.append(features.new_zeros(len(members), c, *out))
        else:
            grid = (grid_h, grid_w)
            parts.append(
                _align_one_grid(table, batch[members], start[members], size[members], (height, width), out, grid)
            )
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(parts)[inverse]
