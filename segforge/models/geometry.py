"""How a network's output covers its input: the one interface tiling, export, the CLI and the summary read.

Most networks pad their convolutions: the logits have the input's size, any size above a minimum
works, and shifting a window by the network's stride keeps its pooling grid. ``Geometry`` describes
them. Valid-convolution networks (the original U-Net) trim every convolution's border: the output
is smaller than the input, only some input sizes pass the poolings evenly, and an image is covered
by extending it by mirroring (the paper's overlap-tile strategy); ``segforge.models.unet.UNetGeometry``
describes that. Every model answers ``model.geometry``; ``geometry_of`` also answers for wrapped
models and plain modules (same size in and out).
"""

from __future__ import annotations

import torch
from torch import nn


class Geometry:
    """A network whose logits have its input's size.

    Args:
        min_size: the smallest input side the architecture accepts.
        tile_period: window shifts that are multiples of this keep the network's pooling grid, so
            overlapping tiles agree where they overlap (a padded network's largest reduction).
    """

    #: whether the output is smaller than the input (valid convolutions)
    valid_convolutions = False
    #: the input sides the network takes, in words (for messages and the export summary)
    sides = "any"

    def __init__(self, *, min_size: int = 1, tile_period: int = 1) -> None:
        self.min_size, self.tile_period = int(min_size), int(tile_period)

    def output_size(self, input_size: int) -> int:
        """The logits' side for an input side (raises ``ValueError`` for a side the network cannot take)."""
        if input_size < self.min_size:
            raise ValueError(
                f"an input side of {input_size} pixels is smaller than the network can take "
                f"(at least {self.min_size}); resize or pad the image"
            )
        return input_size

    def input_size(self, output_size: int) -> int:
        """The smallest valid input side whose logits cover ``output_size`` pixels."""
        return max(output_size, self.min_size)

    def border(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) pixels by which an ``height x width`` image is extended (by mirroring) so
        that the logits cover all of it: none for a same-size network."""
        return 0, 0, 0, 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, tile_period={self.tile_period})"


class ValidGeometry(Geometry):
    """A valid-convolution network: ``output_size`` and ``input_size`` are the architecture's arithmetic, the
    border centres the output on the input (the original U-Net: 92 pixels before, enough after). Its valid
    input sides are ``tile_period * k + offset`` from ``min_size`` on (the original U-Net: 16k + 124, k >= 4)."""

    valid_convolutions = True

    def __init__(self, *, min_size: int, tile_period: int, offset: int) -> None:
        super().__init__(min_size=min_size, tile_period=tile_period)
        self.offset = offset

    def border(self, height: int, width: int) -> tuple[int, int, int, int]:
        in_h, in_w = self.input_size(height), self.input_size(width)
        top, left = (in_h - self.output_size(in_h)) // 2, (in_w - self.output_size(in_w)) // 2
        return top, in_h - height - top, left, in_w - width - left


def geometry_of(model: nn.Module | None) -> Geometry:
    """``model.geometry`` (through ``DistributedDataParallel``'s ``module``); a same-size ``Geometry`` for a
    module or function that declares none."""
    net = getattr(model, "module", model)
    geometry = getattr(net, "geometry", None)
    return geometry if isinstance(geometry, Geometry) else Geometry()


def mirror_coordinates(coordinates: torch.Tensor, size: int) -> torch.Tensor:
    """Maps coordinates along an axis of ``size`` pixels, any of them outside it, to the pixel that
    mirroring at the edges (edge pixel not repeated) puts there."""
    if size == 1:
        return torch.zeros_like(coordinates)
    period = 2 * (size - 1)
    index = coordinates.remainder(period)
    return torch.where(index >= size, period - index, index)


def _mirror_indices(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    return mirror_coordinates(torch.arange(-before, size + after, device=device), size)


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Extends the last two dimensions by mirroring at the edges, the edge pixel not repeated (the
    U-Net paper's extrapolation), by any amount: the reflections repeat when a pad exceeds the image."""
    if top == bottom == left == right == 0:
        return x
    rows = _mirror_indices(x.shape[-2], top, bottom, x.device)
    cols = _mirror_indices(x.shape[-1], left, right, x.device)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        padded = padded.contiguous(memory_format=torch.channels_last)
    return padded
