"""A feature pyramid (Lin et al., FPN, CVPR 2017) over any segforge encoder.

Why a pyramid: a detector must find objects of every size, and one feature map serves only one scale
well. Deep maps know *what* but are coarse; shallow maps are fine but know little. FPN gives every level
both: a 1x1 "lateral" convolution brings each chosen encoder map to a common width, the coarser sum is
upsampled (nearest) and added level by level from the top down, and a 3x3 convolution smooths each sum
(the aliasing of the upsampling). One extra, coarser level is a stride-2 subsampling of the top one
(torchvision's ``LastLevelMaxPool``, a 1x1 max pool): it gives the RPN's largest anchors a home without
another convolution.

Which encoder maps: one per distinct reduction of at least ``min_reduction`` (4 by default, FPN's P2),
the last map of each (a dilated encoder repeats a reduction; its deepest map is the richest), at most
``max_levels`` of them from the shallowest: strides 4/8/16/32 for a ResNet, 4/8/16 for U-Net's encoder.
The level choice reads only the encoder's declared ``reductions``, never its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeaturePyramid", "pyramid_levels"]


def pyramid_levels(reductions: Sequence[int], *, min_reduction: int = 4, max_levels: int = 4) -> list[int]:
    """The indices of the encoder maps a pyramid uses: the last map of each distinct reduction >= ``min_reduction``.

    Args:
        reductions: the encoder's ``reductions``, shallowest first (``(2, 4, 8, 16, 32)`` for a ResNet).
        min_reduction: the finest stride the pyramid keeps.
        max_levels: at most this many levels, the finest first.

    Returns:
        Increasing indices into the encoder's feature list, e.g. ``[1, 2, 3, 4]`` for a ResNet.

    Raises:
        ValueError: no map is at least ``min_reduction`` coarser than the input, or ``max_levels < 1``.
    """
    if max_levels < 1:
        raise ValueError(f"max_levels must be >= 1, got {max_levels}")
    last_of: dict[int, int] = {}
    for index, reduction in enumerate(reductions):
        if reduction >= min_reduction:
            last_of[int(reduction)] = index
    if not last_of:
        raise ValueError(
            f"the encoder's reductions {tuple(reductions)} have none >= {min_reduction}; "
            f"lower min_reduction or use an encoder that downsamples at least {min_reduction}x"
        )
    return [last_of[r] for r in sorted(last_of)][:max_levels]


class FeaturePyramid(nn.Module):
    """Top-down pathway with lateral connections, plus one max-pooled extra level.

    ``forward(features)`` takes the encoder's full feature list and returns ``len(strides)`` maps of
    ``channels`` channels, finest first; map ``i`` is ``1 / strides[i]`` of the (padded) input size.

    Args:
        in_channels: the encoder's ``out_channels``.
        reductions: the encoder's ``reductions``.
        channels: the width of every pyramid level (FPN: 256).
        min_reduction, max_levels: which encoder maps become levels (:func:`pyramid_levels`).

    Attributes:
        strides: stride of each returned map, the extra level last (e.g. ``(4, 8, 16, 32, 64)``).
        roi_strides: the levels RoIAlign reads (all but the extra one: FPN pools RoIs from P2-P5).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        *,
        channels: int = 256,
        min_reduction: int = 4,
        max_levels: int = 4,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(reductions):
            raise ValueError(f"in_channels {tuple(in_channels)} and reductions {tuple(reductions)} must pair up")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.levels = pyramid_levels(reductions, min_reduction=min_reduction, max_levels=max_levels)
        self.channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels[i], channels, 1) for i in self.levels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in self.levels)
        self.roi_strides = tuple(int(reductions[i]) for i in self.levels)
        self.strides = (*self.roi_strides, 2 * self.roi_strides[-1])
        for conv in [*self.lateral, *self.output]:  # FPN's (and torchvision's) init
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        chosen = [features[i] for i in self.levels]
        top = self.lateral[-1](chosen[-1])
        outputs = [self.output[-1](top)]
        for i in range(len(chosen) - 2, -1, -1):  # coarse to fine
            lateral = self.lateral[i](chosen[i])
            # size= rather than scale_factor=2: exact whatever rounding the encoder did at odd sizes
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output[i](top))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs
