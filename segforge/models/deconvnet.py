"""DeconvNet (Noh, Hong & Han, ICCV 2015).

VGG16's 13 convolutions and fc6/fc7 as convolutions (fc6 a valid 7x7: pool5 of 7x7 becomes 1x1),
then a mirrored deconvolution network: a 7x7 transposed convolution back to pool5's size, and per
stage max-unpooling with the pooling switches followed by 3x3 transposed convolutions. Batch norm
follows every convolution and deconvolution, as in the paper. Inputs of at least 224x224.
"""

from __future__ import annotations

from torch import nn

from segforge.decoders.unpooling import UnpoolingDecoder
from segforge.encoders.vgg import FullyConvolutional, VGGEncoder
from segforge.encoders.weights import load_encoder_weights
from segforge.models.registry import MODELS, check_encoder
from segforge.models.segmenter import SegmentationHead, Segmenter


@MODELS.register("deconvnet")
def deconvnet(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """DeconvNet: VGG16-BN, fc6/fc7, mirrored unpooling + deconvolution network."""
    encoder = encoder or "vgg16_bn"
    check_encoder("deconvnet", encoder, ("vgg16_bn",))
    fc = FullyConvolutional(padding=0, batch_norm=True, dropout=0.0)
    enc = VGGEncoder(in_channels=in_channels, batch_norm=True, return_indices=True, fc=fc)
    if encoder_weights is not None:
        load_encoder_weights(enc, encoder_weights)
    # deconv-fc6: the 7x7 transposed convolution that undoes fc6's 7x7 valid convolution.
    bottleneck = nn.Sequential(
        nn.ConvTranspose2d(fc.channels, 512, 7, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True)
    )
    decoder = UnpoolingDecoder(enc.out_channels[:5], (2, 2, 3, 3, 3), kind="deconv", bottleneck=bottleneck)
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=1)
    return Segmenter(
        enc,
        decoder,
        head,
        num_classes=num_classes,
        in_channels=in_channels,
        stride=32,
        min_size=224,
        encoder_name=encoder,
    )
