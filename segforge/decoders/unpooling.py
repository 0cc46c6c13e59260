"""Decoders that mirror a pooling encoder and upsample with its max-pooling switches.

SegNet (Badrinarayanan et al. 2017) unpools and applies convolutions; DeconvNet (Noh et al. 2015)
unpools and applies transposed convolutions ("deconvolutions"). Both keep the encoder's stage
structure: stage ``i`` unpools to the resolution before pool ``i`` and its last convolution maps
the stage's channels to those of the stage above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from segforge.encoders.base import PooledFeatures
from segforge.layers.upsampling import MaxUnpool


def _layer(kind: str, c_in: int, c_out: int, kernel: int, relu: bool) -> list[nn.Module]:
    conv_type = nn.Conv2d if kind == "conv" else nn.ConvTranspose2d
    layers: list[nn.Module] = [conv_type(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class UnpoolingDecoder(nn.Module):
    """Max-unpooling + convolutions, one stage per encoder pooling, deepest first.

    Args:
        stage_channels: channels of each pooled encoder map, shallowest first (64, 128, 256, 512, 512).
        convs_per_stage: convolutions after each unpooling, shallowest first.
        kind: "conv" (SegNet) or "deconv" (DeconvNet, 3x3 transposed convolutions).
        kernel_size: 3, or 7 for SegNet-Basic.
        relu: ReLU after batch norm (SegNet-Basic's decoder has none).
        bottleneck: applied to the deepest map before the first unpooling (DeconvNet's deconv-fc6).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        convs_per_stage: Sequence[int],
        *,
        kind: Literal["conv", "deconv"] = "conv",
        kernel_size: int = 3,
        relu: bool = True,
        bottleneck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(convs_per_stage):
            raise ValueError(f"{len(stage_channels)} stages but {len(convs_per_stage)} convolution counts")
        self.bottleneck = bottleneck if bottleneck is not None else nn.Identity()
        self.unpool = MaxUnpool(2, 2)
        stages = []
        for i in reversed(range(len(stage_channels))):
            c = stage_channels[i]
            c_next = stage_channels[i - 1] if i > 0 else c
            layers: list[nn.Module] = []
            for j in range(convs_per_stage[i]):
                last = j == convs_per_stage[i] - 1
                layers += _layer(kind, c, c_next if last else c, kernel_size, relu)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = stage_channels[0]

    def forward(self, pooled: PooledFeatures) -> torch.Tensor:
        x = self.bottleneck(pooled.features[-1])
        for stage, indices in zip(self.stages, reversed(pooled.indices)):
            x = stage(self.unpool(x, indices))
        return x
