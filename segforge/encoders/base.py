"""The encoder contract that every decoder relies on."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class PooledFeatures(NamedTuple):
    """What an encoder built with ``return_indices=True`` returns.

    ``features[i]`` is the map produced by the i-th max-pooling (or the layer after it) and
    ``indices[i]`` are that pooling's switches, to be consumed by a max-unpooling decoder.
    """

    features: list[torch.Tensor]
    indices: list[torch.Tensor]


class Encoder(nn.Module):
    """Base class of all encoders.

    Contract (checked for every registered encoder by ``tests/test_encoders.py``):
    ``forward(x: (N, in_channels, H, W))`` returns a list of feature maps, shallowest first;
    map ``i`` has ``out_channels[i]`` channels and spatial size ``(H / reductions[i], W /
    reductions[i])`` whenever H and W are multiples of ``max(reductions)``.

    Parameter names follow torchvision's, so an ImageNet state dict in torchvision format
    loads into the encoder (see ``segforge.encoders.weights``). Subclasses say which torchvision
    keys are the first convolution (adapted when ``in_channels != 3``) and which belong to the
    ImageNet classifier that a segmentation encoder drops.
    """

    out_channels: tuple[int, ...]
    reductions: tuple[int, ...]
    in_channels: int
    #: torchvision key of the first convolution's weight, adapted when in_channels != 3
    first_conv_key: str = ""
    #: prefixes of torchvision keys that belong to the ImageNet classifier and are dropped
    classifier_prefixes: tuple[str, ...] = ()
    #: what the weights were loaded from (``load_encoder_weights``' record), None when trained from scratch
    pretrained: dict[str, str] | None = None

    def convert_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turns a torchvision state dict (classifier already dropped) into this module's keys.

        The default is the identity; VGG overrides it to turn fc6/fc7 into convolutions.
        """
        return state

    @property
    def stride(self) -> int:
        """The largest reduction: inputs whose sides are multiples of it give exact sizes."""
        return max(self.reductions)


def init_like_torchvision(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions with zero bias, unit batch norm: torchvision's ResNet/MobileNet init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
