"""MobileNetV2 (Sandler et al. 2018), laid out exactly as torchvision's ``mobilenet_v2`` (width 1.0).

``features.N`` indices and the inner ``conv.K`` indices match torchvision, so ImageNet weights
load by key. The encoder taps the last block of each resolution: features 1, 3, 6, 13 and 18.
"""

from __future__ import annotations

import torch
from torch import nn

from segforge.encoders.base import Encoder, init_like_torchvision
from segforge.encoders.registry import ENCODERS, check_options

# (expand ratio t, output channels c, repeats n, stride of the first repeat s), from the paper's
# Table 2 and torchvision's default inverted_residual_setting.
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Indices into ``features`` whose outputs are returned: the last block at reductions 2, 4, 8, 16, 32.
TAPS: tuple[int, ...] = (1, 3, 6, 13, 18)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU6: torchvision's ``Conv2dNormActivation`` as used here.

    A Sequential, so its keys are ``.0.weight`` (conv) and ``.1.*`` (batch norm) as torchvision's.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) → 3x3 depthwise → linear 1x1 projection, + shortcut.

    The projection has no activation: the paper's "linear bottleneck", since ReLU on the narrow
    representation would destroy information.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Encoder(Encoder):
    """MobileNetV2 features without the classifier; returns 5 maps at reductions 2..32.

    Args:
        in_channels: channels of the input image.
    """

    first_conv_key = "features.0.0.weight"
    classifier_prefixes = ("classifier.",)
    name = "mobilenet_v2"

    def __init__(self, *, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, 32, 3, stride=2)]
        channels = 32
        for t, c, n, s in MOBILENET_V2_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, stride=s if i == 0 else 1, expand_ratio=t))
                channels = c
        layers.append(ConvBNReLU6(channels, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.out_channels = (16, 24, 32, 96, 1280)
        self.reductions = (2, 4, 8, 16, 32)

        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                features.append(x)
        return features


@ENCODERS.register("mobilenet_v2")
def mobilenet_v2(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> MobileNetV2Encoder:
    check_options("mobilenet_v2", output_stride=output_stride, return_indices=return_indices)
    return MobileNetV2Encoder(in_channels=in_channels)
