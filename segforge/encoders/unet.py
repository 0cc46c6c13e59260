"""The contracting path of U-Net (Ronneberger et al. 2015).

Five stages of two 3x3 convolutions each (64, 128, 256, 512, 1024 channels), separated by 2x2
max pooling. The original uses unpadded ("valid") convolutions, so every convolution trims one
pixel from each border; the padded variant keeps the sizes and adds batch norm.
"""

from __future__ import annotations

import torch
from torch import nn

from segforge.encoders.base import Encoder
from segforge.encoders.registry import ENCODERS, check_options

UNET_WIDTHS = (64, 128, 256, 512, 1024)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: bool, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=int(padding), bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNetEncoder(Encoder):
    """Returns the output of each stage before its pooling: reductions 1, 2, 4, 8, 16."""

    first_conv_key = "stages.0.0.weight"

    def __init__(
        self,
        *,
        in_channels: int = 3,
        widths: tuple[int, ...] = UNET_WIDTHS,
        padding: bool = True,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.padding = padding
        stages: list[nn.Module] = [DoubleConv(in_channels, widths[0], padding=padding, batch_norm=batch_norm)]
        for c_in, c_out in zip(widths, widths[1:]):
            stages.append(
                nn.Sequential(nn.MaxPool2d(2, 2), DoubleConv(c_in, c_out, padding=padding, batch_norm=batch_norm))
            )
        self.stages = nn.ModuleList(stages)
        # "Drop-out layers at the end of the contracting path perform further implicit data
        # augmentation" (U-Net paper, section 3.1).
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = tuple(widths)
        self.reductions = tuple(2**i for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        features[-1] = self.dropout(features[-1])
        return features


@ENCODERS.register("unet")
def unet_encoder(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> UNetEncoder:
    """U-Net's own contracting path, padded and with batch norm (for ``unet_padded``)."""
    check_options("unet", output_stride=output_stride, return_indices=return_indices)
    return UNetEncoder(in_channels=in_channels, padding=True, batch_norm=True)


@ENCODERS.register("unet32")
def unet32_encoder(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> UNetEncoder:
    """U-Net's contracting path at half the paper's widths (32 → 512): a quarter of the FLOPs."""
    check_options("unet32", output_stride=output_stride, return_indices=return_indices)
    return UNetEncoder(in_channels=in_channels, widths=tuple(w // 2 for w in UNET_WIDTHS))


@ENCODERS.register("unet16")
def unet16_encoder(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> UNetEncoder:
    """U-Net's contracting path at a quarter of the paper's widths (16 → 256): 1/16 of the FLOPs, for CPUs."""
    check_options("unet16", output_stride=output_stride, return_indices=return_indices)
    return UNetEncoder(in_channels=in_channels, widths=tuple(w // 4 for w in UNET_WIDTHS))
