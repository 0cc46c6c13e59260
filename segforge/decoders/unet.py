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

#: a light decoder for pretrained encoders, as segmentation_models.pytorch's U-Net has: the levels' widths,
#: deepest first, whatever the encoder's (ResNet-50's skips would make it 2048→1024→512→256 wide)
LIGHT_WIDTHS = (256, 128, 64, 32, 16)


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


def decoder_levels(reductions: Sequence[int]) -> int:
    """How many up-blocks a U-Net decoder has on an encoder with these reductions: one per skip, then one per
    doubling without a skip down to reduction 1."""
    return len(reductions) - 1 + max(int(reductions[0]).bit_length() - 1, 0)


def skip_widths(encoder_channels: Sequence[int], reductions: Sequence[int]) -> tuple[int, ...]:
    """Each level as wide as its skip (the paper's 1024→512→...→64 with U-Net's own encoder), the levels
    without a skip at half the width before them (at least 16)."""
    widths = list(reversed(encoder_channels[:-1]))
    while len(widths) < decoder_levels(reductions):
        widths.append(max(widths[-1] // 2 if widths else encoder_channels[-1] // 2, 16))
    return tuple(widths)


class UNetDecoder(nn.Module):
    """Consumes encoder maps from deepest to shallowest, then upsamples without skips to reduction 1.

    ``widths``: each level's output channels, deepest first (``decoder_levels`` of them); by default
    each level is as wide as its skip (``skip_widths``), which reproduces the paper's 1024→512→...→64
    with U-Net's own encoder. Encoders whose shallowest map is at reduction 2 (VGG, ResNet,
    MobileNetV2, EfficientNet) get a last level without a skip.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[int],
        *,
        padding: bool = True,
        batch_norm: bool = True,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        levels = decoder_levels(reductions)
        widths = tuple(skip_widths(encoder_channels, reductions) if widths is None else widths)
        if len(widths) != levels or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(
                f"decoder_channels must be {levels} positive widths on this encoder, one per up-block, deepest "
                f"first (e.g. {list(LIGHT_WIDTHS[:levels])}), got {list(widths)}"
            )
        channels, reduction = encoder_channels[-1], reductions[-1]
        skips = list(zip(reversed(encoder_channels[:-1]), reversed(reductions[:-1])))
        blocks = []
        for level, width in enumerate(widths):
            skip_channels, skip_reduction = skips[level] if level < len(skips) else (0, reduction // 2)
            scale = reduction // skip_reduction
            blocks.append(UpBlock(channels, skip_channels, width, scale=scale, padding=padding, batch_norm=batch_norm))
            channels, reduction = width, skip_reduction
        self.num_skips = len(skips)
        self.blocks = nn.ModuleList(blocks)
        self.widths = widths
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.num_skips else None)
        return x
