"""FCN's decoder (Long, Shelhamer & Darrell 2015): class scores at several strides, fused by summation.

FCN-32s scores fc7 and upsamples 32x in one step. FCN-16s upsamples those scores 2x, adds a 1x1
scoring of pool4 and upsamples 16x; FCN-8s adds pool3 the same way and upsamples 8x. Every
upsampling is a transposed convolution initialised to bilinear interpolation and left learnable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segforge.layers.upsampling import TransposedConvUpsample


class FCNDecoder(nn.Module):
    """Returns logits at reduction 1 from an encoder whose last map is fc7.

    Args:
        encoder_channels, reductions: the encoder's contract; skips are taken from the first
            map at half, then a quarter, of the last map's reduction (pool4 and pool3 for VGG16).
        num_classes: number of score channels.
        skips: 0 for FCN-32s, 1 for FCN-16s, 2 for FCN-8s.
    """

    def __init__(self, encoder_channels: Sequence[int], reductions: Sequence[int], num_classes: int, *, skips: int):
        super().__init__()
        reduction = reductions[-1]
        self.score_fr = nn.Conv2d(encoder_channels[-1], num_classes, 1)
        self.skip_indices: list[int] = []
        self.score_skips = nn.ModuleList()
        self.upscore_skips = nn.ModuleList()
        for _ in range(skips):
            reduction //= 2
            if reduction not in reductions:
                raise ValueError(
                    f"FCN needs an encoder map at reduction {reduction}; this encoder has {tuple(reductions)}"
                )
            index = list(reductions).index(reduction)
            score = nn.Conv2d(encoder_channels[index], num_classes, 1)
            # "initialized to zero ... so that the net starts with unmodified predictions" (FCN, 4.2)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.skip_indices.append(index)
            self.score_skips.append(score)
            self.upscore_skips.append(TransposedConvUpsample(num_classes, num_classes, 2))
        self.upscore = TransposedConvUpsample(num_classes, num_classes, reduction)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        scores = self.score_fr(features[-1])
        for index, score, upscore in zip(self.skip_indices, self.score_skips, self.upscore_skips):
            scores = upscore(scores) + score(features[index])
        return self.upscore(scores)
