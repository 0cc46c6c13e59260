"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017).

A dilated ResNet (output stride 8), the pyramid pooling module (bins 1, 2, 3, 6), a 3x3 fusion
convolution, a 1x1 classifier and bilinear upsampling to the input size. An auxiliary head on the
third stage (layer3) deepens supervision during training; its logits are returned in training
mode only, for a loss weighted 0.4 in the paper.

The encoder is torchvision's ResNet (7x7 stem) so ImageNet weights load by key; the paper's
Caffe ResNet has a three-convolution stem instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from segforge.decoders.pspnet import PSPDecoder
from segforge.encoders import create_encoder
from segforge.layers.conv import ConvBNReLU
from segforge.models.registry import MODELS, check_encoder
from segforge.models.segmenter import SegmentationHead, Segmenter


@MODELS.register("pspnet")
def pspnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    decoder_channels: Sequence[int] | str | None = None,
) -> Segmenter:
    """PSPNet: dilated ResNet (output stride 8), pyramid pooling 1/2/3/6, auxiliary head.

    ``decoder_channels``: (each pyramid branch's width, the fusing convolution's); default (and ``"skips"``,
    a checkpoint's from before the option) the paper's: a quarter of the encoder's channels, and 512."""
    encoder = encoder or "resnet50"
    check_encoder("pspnet", encoder, ("resnet50", "resnet101", "resnet18", "resnet34"))
    enc = create_encoder(encoder, in_channels=in_channels, output_stride=8, weights=encoder_weights)
    decoder = PSPDecoder(enc.out_channels, widths=None if decoder_channels in (None, "skips") else decoder_channels)
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=1, upsample=enc.reductions[-1])
    aux_channels = enc.out_channels[-2]
    aux_head = nn.Sequential(
        ConvBNReLU(aux_channels, aux_channels // 4, 3),
        nn.Dropout2d(0.1),
        SegmentationHead(aux_channels // 4, num_classes, kernel_size=1, upsample=enc.reductions[-2]),
    )
    return Segmenter(
        enc,
        decoder,
        head,
        num_classes=num_classes,
        in_channels=in_channels,
        stride=enc.reductions[-1],
        aux_head=aux_head,
        aux_index=-2,
        encoder_name=encoder,
    )
