"""VGG16 and VGG16-BN (Simonyan & Zisserman 2015), laid out exactly as torchvision's ``vgg16``.

``features.N`` indices match torchvision, so ImageNet weights load by key. Optionally the
classifier's fc6/fc7 are kept as convolutions (7x7 and 1x1), as FCN and DeconvNet do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segforge.encoders.base import Encoder, PooledFeatures
from segforge.encoders.registry import ENCODERS, check_options

# Output channels of each 3x3 convolution, "M" a 2x2 max pooling: torchvision's configuration "D".
VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


@dataclass(frozen=True)
class FullyConvolutional:
    """fc6/fc7 of the ImageNet classifier turned into convolutions.

    fc6 is a 7x7 convolution 512→4096 (the Linear 25088→4096 reshaped), fc7 a 1x1 convolution
    4096→4096. ``padding=0`` is the paper's valid 7x7 (DeconvNet: pool5 of 7x7 gives 1x1);
    ``padding=3`` keeps the pool5 size (FCN, so its upsampled scores align with the input).
    """

    padding: int = 3
    batch_norm: bool = False
    dropout: float = 0.5
    channels: int = 4096


class VGGEncoder(Encoder):
    """VGG16 features; returns pool1..pool5 (reductions 2..32) and fc7 when fc layers are kept."""

    first_conv_key = "features.0.weight"

    def __init__(
        self,
        *,
        in_channels: int = 3,
        batch_norm: bool = False,
        return_indices: bool = False,
        fc: FullyConvolutional | None = None,
    ) -> None:
        super().__init__()
        self.name = "vgg16_bn" if batch_norm else "vgg16"
        self.in_channels = in_channels
        self.return_indices = return_indices
        self.fc = fc
        layers: list[nn.Module] = []
        channels = in_channels
        widths = []
        for spec in VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2, return_indices=return_indices))
                widths.append(channels)
                continue
            layers.append(nn.Conv2d(channels, spec, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(spec))
            layers.append(nn.ReLU(inplace=True))
            channels = spec
        self.features = nn.Sequential(*layers)
        out_channels, reductions = list(widths), [2, 4, 8, 16, 32]
        self.classifier_prefixes = ("classifier.",)
        if fc is not None:
            self.fc6 = nn.Conv2d(512, fc.channels, 7, padding=fc.padding, bias=not fc.batch_norm)
            self.fc6_bn = nn.BatchNorm2d(fc.channels) if fc.batch_norm else nn.Identity()
            self.fc7 = nn.Conv2d(fc.channels, fc.channels, 1, bias=not fc.batch_norm)
            self.fc7_bn = nn.BatchNorm2d(fc.channels) if fc.batch_norm else nn.Identity()
            self.fc_dropout = nn.Dropout2d(fc.dropout) if fc.dropout > 0 else nn.Identity()
            out_channels.append(fc.channels)
            reductions.append(32)
            # classifier.6 is the 1000-way ImageNet layer; classifier.0 and .3 become fc6 and fc7.
            self.classifier_prefixes = ("classifier.6.",)
        self.out_channels = tuple(out_channels)
        self.reductions = tuple(reductions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | PooledFeatures:
        features: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                if self.return_indices:
                    x, switches = layer(x)
                    indices.append(switches)
                else:
                    x = layer(x)
                features.append(x)
            else:
                x = layer(x)
        if self.fc is not None:
            x = self.fc_dropout(torch.relu(self.fc6_bn(self.fc6(x))))
            x = self.fc_dropout(torch.relu(self.fc7_bn(self.fc7(x))))
            features.append(x)
        return PooledFeatures(features, indices) if self.return_indices else features

    def convert_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.fc is None:
            return state
        state = dict(state)
        own = self.state_dict()
        for src, dst in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
            weight = state.pop(f"{src}.weight", None)
            bias = state.pop(f"{src}.bias", None)
            if weight is not None:
                # Linear (out, in*kh*kw) → Conv2d (out, in, kh, kw): torchvision flattens pool5 as
                # (C, 7, 7) in row-major order, which is exactly a 7x7 convolution's layout.
                state[f"{dst}.weight"] = weight.reshape(own[f"{dst}.weight"].shape)
            if bias is not None:
                if self.fc.batch_norm:
                    # A bias before batch norm is cancelled by its mean subtraction: drop it.
                    continue
                state[f"{dst}.bias"] = bias
        # Batch norm after fc6/fc7 (DeconvNet) has no ImageNet counterpart: it starts fresh.
        for key, value in own.items():
            if key.startswith(("fc6_bn.", "fc7_bn.")):
                state[key] = value
        return state


@ENCODERS.register("vgg16")
def vgg16(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> VGGEncoder:
    check_options("vgg16", output_stride=output_stride, return_indices=return_indices, poolable=True)
    return VGGEncoder(in_channels=in_channels, batch_norm=False, return_indices=return_indices)


@ENCODERS.register("vgg16_bn")
def vgg16_bn(*, in_channels: int = 3, output_stride: int = 32, return_indices: bool = False) -> VGGEncoder:
    check_options("vgg16_bn", output_stride=output_stride, return_indices=return_indices, poolable=True)
    return VGGEncoder(in_channels=in_channels, batch_norm=True, return_indices=return_indices)
