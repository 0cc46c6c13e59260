"""Convolution blocks shared by the decoders."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """``k x k`` convolution (no bias when followed by batch norm) → BatchNorm → ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        padding: int | None = None,
        dilation: int = 1,
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=not batch_norm)
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
