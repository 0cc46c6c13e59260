"""U-Net's expansive path, for its own encoder or any other.

Each level upsamples with a learned up-convolution that halves the channels (2x2, stride 2 in
the paper), concatenates the encoder's feature map of the same resolution, and applies two 3x3
convolutions. The original U-Net's unpadded convolutions make the encoder maps larger than the
decoder's, so they are centre-cropped before concatenation ("crop-and-concatenate").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segforge.encoders.unet import DoubleConv


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crops the centre ``height x width`` of ``x: (N, C, H, W)``; floor offsets as in Caffe's crop."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class UpBlock(nn.Module):
    """Up-convolution → (crop-and-)concatenate the skip → two 3x3 convolutions."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, *, scale: int, padding: bool, batch_norm: bool
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=scale, stride=scale)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, padding=padding, batch_norm=batch_norm)
        self.crop = not padding  # valid convolutions: the skip is larger and always cropped

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            # (an export cannot compare symbolic sizes: the valid U-Net's crop is written unconditionally)
            if (self.crop and torch.compiler.is_exporting()) or skip.shape[-2:] != x.shape[-2:]:
                skip = center_crop(skip, x.shape[-2], x.shape[-1])
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNetDecoder(nn.Module):
    """Consumes encoder maps from deepest to shallowest, then upsamples without skips to reduction 1.

    Each level's width is the skip's channel count, which reproduces the paper's 1024→512→...→64
    with U-Net's own encoder. Encoders whose shallowest map is at reduction 2 (VGG, ResNet,
    MobileNetV2) get a last level without a skip, at half the width.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[int],
        *,
        padding: bool = True,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        channels, reduction = encoder_channels[-1], reductions[-1]
        blocks = []
        for skip_channels, skip_reduction in zip(reversed(encoder_channels[:-1]), reversed(reductions[:-1])):
            scale = reduction // skip_reduction
            blocks.append(
                UpBlock(channels, skip_channels, skip_channels, scale=scale, padding=padding, batch_norm=batch_norm)
            )
            channels, reduction = skip_channels, skip_reduction
        self.num_skips = len(blocks)
        while reduction > 1:
            width = max(channels // 2, 16)
            blocks.append(UpBlock(channels, 0, width, scale=2, padding=padding, batch_norm=batch_norm))
            channels, reduction = width, reduction // 2
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.num_skips else None)
        return x
