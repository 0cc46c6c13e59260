"""SegNet and SegNet-Basic (Badrinarayanan, Kendall & Cipolla, PAMI 2017).

SegNet: the 13 convolutions of VGG16-BN as encoder; a mirrored decoder that upsamples with the
encoder's max-pooling indices (no learned upsampling, no transferred feature maps) followed by
convolutions; the last decoder convolution (conv1_1_D) is the 3x3 classifier. 29.5M parameters.

SegNet-Basic (the CamVid model of the SegNet tutorial): local response normalisation, then four
encoder levels of a 7x7 convolution with 64 channels, batch norm, ReLU and 2x2 max pooling; four
decoder levels of unpooling, a 7x7 convolution and batch norm (no ReLU); a 1x1 classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from segforge.decoders.unpooling import UnpoolingDecoder
from segforge.encoders import create_encoder
from segforge.encoders.base import Encoder, PooledFeatures
from segforge.models.registry import MODELS, check_encoder
from segforge.models.segmenter import SegmentationHead, Segmenter


@MODELS.register("segnet")
def segnet(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """SegNet: VGG16-BN encoder, decoder upsampling with the max-pooling indices."""
    encoder = encoder or "vgg16_bn"
    check_encoder("segnet", encoder, ("vgg16_bn", "vgg16"))
    enc = create_encoder(encoder, in_channels=in_channels, return_indices=True, weights=encoder_weights)
    # Shallowest stage first: conv1_2_D; conv2_2_D, conv2_1_D; ... conv5_1_D. conv1_1_D is the head.
    decoder = UnpoolingDecoder(enc.out_channels, (1, 2, 3, 3, 3), kind="conv")
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=3)
    return Segmenter(
        enc, decoder, head, num_classes=num_classes, in_channels=in_channels, stride=32, encoder_name=encoder
    )


class SegNetBasicEncoder(Encoder):
    """LRN, then four levels of conv 7x7 (64) + BN + ReLU + max pooling with switches."""

    first_conv_key = "levels.0.0.weight"

    def __init__(self, in_channels: int, *, levels: int = 4, channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels if i == 0 else channels, channels, 7, padding=3),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for i in range(levels)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.out_channels = (channels,) * levels
        self.reductions = tuple(2 ** (i + 1) for i in range(levels))

    def forward(self, x: torch.Tensor) -> PooledFeatures:
        x = self.norm(x)
        features, indices = [], []
        for level in self.levels:
            x, switches = self.pool(level(x))
            features.append(x)
            indices.append(switches)
        return PooledFeatures(features, indices)


@MODELS.register("segnet_basic")
def segnet_basic(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """SegNet-Basic: 4 levels of 7x7 convolutions with 64 channels, index unpooling (CamVid)."""
    if encoder is not None or encoder_weights is not None:
        raise ValueError(
            "segnet_basic has its own 4-level encoder and no pretrained weights; "
            "leave encoder and encoder_weights unset, or use 'segnet' for a VGG16 encoder"
        )
    enc = SegNetBasicEncoder(in_channels)
    decoder = UnpoolingDecoder(enc.out_channels, (1, 1, 1, 1), kind="conv", kernel_size=7, relu=False)
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=1)
    return Segmenter(
        enc, decoder, head, num_classes=num_classes, in_channels=in_channels, stride=16, encoder_name="segnet_basic"
    )
