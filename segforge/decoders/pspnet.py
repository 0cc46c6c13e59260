"""PSPNet's pyramid pooling module (Zhao et al. 2017).

The last encoder map is average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced to 1/4 of the
channels by a 1x1 convolution, upsampled bilinearly back to the map's size and concatenated with
it; a 3x3 convolution then fuses local and global context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segforge.layers.conv import ConvBNReLU


def _bin_average(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, size)`` matrix averaging each adaptive-pooling bin (torch's bin edges: bin i spans
    ``floor(i·size/bins) .. ceil((i+1)·size/bins)``)."""
    index = torch.arange(bins, device=like.device)
    start = index * size // bins
    end = ((index + 1) * size + bins - 1) // bins
    pixel = torch.arange(size, device=like.device)
    inside = (pixel >= start[:, None]) & (pixel < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` to ``bins x bins``, exported to ONNX as two matrix products so that the
    exported graph computes the bins from the input size at run time (ONNX has no adaptive pooling;
    a traced one would keep the bin edges of the example input)."""

    def __init__(self, bins: int) -> None:
        super().__init__(bins)
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():
            return super().forward(x)
        rows = _bin_average(x.shape[-2], self.bins, x)
        cols = _bin_average(x.shape[-1], self.bins, x)
        return rows @ x @ cols.transpose(0, 1)


class PyramidPooling(nn.Module):
    """Concatenates the input with its bin-pooled, 1x1-reduced, upsampled versions."""

    def __init__(
        self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), branch_channels: int | None = None
    ) -> None:
        super().__init__()
        branch_channels = branch_channels or in_channels // len(bins)  # the paper's: 1/N of the channels each
        self.branches = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(b), ConvBNReLU(in_channels, branch_channels, 1)) for b in bins
        )
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPDecoder(nn.Module):
    """Pyramid pooling → 3x3 conv (512) → dropout 0.1, on the encoder's last map.

    ``widths``: (each pyramid branch's channels, the fusing convolution's); default the paper's, a quarter
    of the encoder's channels per branch (512 on ResNet-50) and 512."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        bins: Sequence[int] = (1, 2, 3, 6),
        widths: Sequence[int] | None = None,
    ):
        super().__init__()
        widths = tuple(widths) if widths is not None else (encoder_channels[-1] // len(bins), 512)
        if len(widths) != 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(
                "PSPNet's decoder_channels are 2 widths: each pyramid branch's and the fusing convolution's "
                f"(the paper's on this encoder: {[encoder_channels[-1] // len(bins), 512]}), got {list(widths)}"
            )
        self.ppm = PyramidPooling(encoder_channels[-1], bins, branch_channels=widths[0])
        self.fuse = nn.Sequential(ConvBNReLU(self.ppm.out_channels, widths[1], 3), nn.Dropout2d(0.1))
        self.widths = widths
        self.out_channels = widths[1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.ppm(features[-1]))
