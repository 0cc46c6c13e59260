"""FCN-32s, FCN-16s, FCN-8s (Long, Shelhamer & Darrell, CVPR 2015) on VGG16.

VGG16 with fc6/fc7 turned into 7x7 and 1x1 convolutions, 1x1 score layers, bilinear-initialised
learnable transposed convolutions, and skip fusion by summation from pool4 (16s) and pool3 (8s).

Alignment: the Caffe reference pads conv1_1 by 100 pixels so that fc6's valid 7x7 convolution
works on small inputs, then crops the scores at fixed offsets. Here fc6 has padding 3 (pool5 size
kept) and the input is padded to a multiple of 32 and the output cropped back: every stage is
then exactly 2x its successor, the upsampled scores align with the input pixel for pixel, and the
network runs on the image instead of an image 200 pixels larger (about half the FLOPs at 512x512).
The layers and their parameters are the paper's (134M parameters for 21 classes).
"""

from __future__ import annotations

from torch import nn

from segforge.decoders.fcn import FCNDecoder
from segforge.encoders.vgg import FullyConvolutional, VGGEncoder
from segforge.encoders.weights import load_encoder_weights
from segforge.models.registry import MODELS, check_encoder
from segforge.models.segmenter import Segmenter


def _fcn(
    name: str, skips: int, num_classes: int, in_channels: int, encoder: str | None, encoder_weights: str | None
) -> Segmenter:
    encoder = encoder or "vgg16"
    check_encoder(name, encoder, ("vgg16", "vgg16_bn"))
    enc = VGGEncoder(in_channels=in_channels, batch_norm=encoder == "vgg16_bn", fc=FullyConvolutional(padding=3))
    if encoder_weights is not None:
        load_encoder_weights(enc, encoder_weights)
    decoder = FCNDecoder(enc.out_channels, enc.reductions, num_classes, skips=skips)
    return Segmenter(
        enc, decoder, nn.Identity(), num_classes=num_classes, in_channels=in_channels, stride=32, encoder_name=encoder
    )


@MODELS.register("fcn32s")
def fcn32s(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """FCN-32s: scores of fc7 upsampled 32x."""
    return _fcn("fcn32s", 0, num_classes, in_channels, encoder, encoder_weights)


@MODELS.register("fcn16s")
def fcn16s(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """FCN-16s: fc7 scores upsampled 2x + pool4 scores, upsampled 16x."""
    return _fcn("fcn16s", 1, num_classes, in_channels, encoder, encoder_weights)


@MODELS.register("fcn8s")
def fcn8s(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """FCN-8s: as FCN-16s, plus pool3 scores, upsampled 8x."""
    return _fcn("fcn8s", 2, num_classes, in_channels, encoder, encoder_weights)
