"""ResNet-18/34/50/101 (He et al. 2016), laid out exactly as torchvision's ``resnet*``.

Parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``...) match
torchvision, so ImageNet weights load by key. ResNet-50/101 are torchvision's "v1.5": the stride
of a bottleneck sits on its 3x3 convolution, not on the first 1x1.

``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by dilation, as torchvision's
``replace_stride_with_dilation`` does: DeepLab-style dense features at the cost of compute.
"""

from __future__ import annotations

import torch
from torch import nn

from segforge.encoders.base import Encoder, init_like_torchvision
from segforge.encoders.registry import ENCODERS, check_options


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the size at stride 1 whatever the dilation.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34).

    ``dilation`` is that of conv1, the convolution that takes the block's input and carries its
    stride; ``next_dilation`` that of conv2, which already sees the stride-reduced grid. When a
    dilated layer replaces a stride, its first block has ``dilation`` = the previous dilation and
    ``next_dilation`` = the new one, so every tap lands where the strided network's would.
    (torchvision refuses dilation in BasicBlock; this is the natural extension of its rule.)
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        next_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation if next_dilation is None else next_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (stride and dilation here, torchvision v1.5) → 1x1 expand by 4, + shortcut.

    ``next_dilation`` is accepted for a common signature with BasicBlock; the only convolution
    after the 3x3 is a 1x1, which dilation does not affect.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        next_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(Encoder):
    """ResNet without avgpool/fc; returns the stem (r2) and layer1..layer4 (r4..r32).

    Args:
        block: ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50/101).
        layers: number of blocks in layer1..layer4, e.g. ``(3, 4, 6, 3)``.
        in_channels: channels of the input image.
        output_stride: 32; 16 dilates layer4 (dilation 2); 8 dilates layer3 (2) and layer4 (4).
        name: the registered name, used in error messages (weights that do not fit).
    """

    first_conv_key = "conv1.weight"
    classifier_prefixes = ("fc.",)

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        output_stride: int = 32,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.name = name
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # layer3 is dilated only at output stride 8, layer4 at 16 and 8 (replace_stride_with_dilation).
        dilate = {32: (False, False), 16: (False, True), 8: (True, True)}[output_stride]
        self._channels, self._dilation = 64, 1
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=False)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[0])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[1])
        e = block.expansion
        self.out_channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)
        self.reductions = {32: (2, 4, 8, 16, 32), 16: (2, 4, 8, 16, 16), 8: (2, 4, 8, 8, 8)}[output_stride]

        init_like_torchvision(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, *, stride: int, dilate: bool
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            # The stride this layer would have had becomes dilation of everything after it.
            self._dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._channels != out_channels:
            downsample = nn.Sequential(
                conv1x1(self._channels, out_channels, stride=stride), nn.BatchNorm2d(out_channels)
            )
        # The first block's input-side 3x3 sits where the stride was, so it keeps the old dilation.
        layers = [
            block(
                self._channels,
                planes,
                stride=stride,
                dilation=previous_dilation,
                next_dilation=self._dilation,
                downsample=downsample,
            )
        ]
        self._channels = out_channels
        layers += [block(out_channels, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(stem))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [stem, c2, c3, c4, c5]


def _resnet(
    name: str,
    block: type[BasicBlock | Bottleneck],
    layers: tuple[int, int, int, int],
    *,
    in_channels: int,
    output_stride: int,
    return_indices: bool,
) -> ResNetEncoder:
    check_options(name, output_stride=output_stride, return_indices=return_indices, dilatable=True)
    return ResNetEncoder(block=block, layers=layers, in_channels=in_channels, output_stride=output_stride, name=name)


@ENCODERS.register("resnet18")
def resnet18(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> ResNetEncoder:
    return _resnet(
        "resnet18",
        BasicBlock,
        (2, 2, 2, 2),
        in_channels=in_channels,
        output_stride=output_stride,
        return_indices=return_indices,
    )


@ENCODERS.register("resnet34")
def resnet34(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> ResNetEncoder:
    return _resnet(
        "resnet34",
        BasicBlock,
        (3, 4, 6, 3),
        in_channels=in_channels,
        output_stride=output_stride,
        return_indices=return_indices,
    )


@ENCODERS.register("resnet50")
def resnet50(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> ResNetEncoder:
    return _resnet(
        "resnet50",
        Bottleneck,
        (3, 4, 6, 3),
        in_channels=in_channels,
        output_stride=output_stride,
        return_indices=return_indices,
    )


@ENCODERS.register("resnet101")
def resnet101(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> ResNetEncoder:
    return _resnet(
        "resnet101",
        Bottleneck,
        (3, 4, 23, 3),
        in_channels=in_channels,
        output_stride=output_stride,
        return_indices=return_indices,
    )
