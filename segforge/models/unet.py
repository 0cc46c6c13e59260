"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): the original, and a padded variant.

The original: unpadded 3x3 convolutions (64→1024 channels), 2x2 max pooling, 2x2
up-convolutions, crop-and-concatenate, a 1x1 classifier: 23 convolutional layers. Every
convolution trims a pixel per border, so the output is smaller than the input (572 → 388) and
only inputs of 16k + 124 pixels per side (k ≥ 4) tile cleanly through the four poolings;
``unet_output_size`` and ``unet_input_size`` convert between the two.

The padded variant keeps the input size, adds batch norm, and accepts any registered encoder.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from segforge.decoders.unet import LIGHT_WIDTHS, UNetDecoder, decoder_levels, skip_widths
from segforge.encoders import Encoder, create_encoder
from segforge.encoders.unet import UNetEncoder
from segforge.models.geometry import ValidGeometry
from segforge.models.registry import MODELS
from segforge.models.segmenter import SegmentationHead, Segmenter

DEPTH = 4  # poolings in the original U-Net


def _sizes_from_bottom(bottom: int, depth: int = DEPTH) -> tuple[int, int]:
    """(input, output) sizes of the original U-Net whose lowest level's output is ``bottom``."""
    size_in, size_out = bottom + 4, bottom  # two valid 3x3 convolutions trim 4 pixels
    for _ in range(depth):
        size_in = 2 * size_in + 4  # contracting: ×2 (pooling), +4 (two convolutions)
        size_out = 2 * size_out - 4  # expansive: ×2 (up-convolution), −4 (two convolutions)
        if size_out <= 0:
            return size_in, 0
    return size_in, size_out


def _output_size_or_none(input_size: int, depth: int) -> int | None:
    size = input_size
    for _ in range(depth):
        size -= 4  # two valid 3x3 convolutions
        if size <= 0 or size % 2:
            return None  # the 2x2 pooling needs an even size
        size //= 2
    if size - 4 <= 0:
        return None
    output = _sizes_from_bottom(size - 4, depth)[1]
    return output if output > 0 else None


def unet_output_size(input_size: int, depth: int = DEPTH) -> int:
    """Output side length of the original U-Net for an input side length (572 → 388).

    Raises:
        ValueError: if the input does not pass the poolings evenly or is too small; the message
            names the nearest valid sizes.
    """
    output = _output_size_or_none(input_size, depth)
    if output is not None:
        return output
    # Valid sizes are 2**depth apart, so both searches stop within a few steps.
    smaller = next((s for s in range(input_size - 1, 0, -1) if _output_size_or_none(s, depth)), None)
    larger = next(s for s in itertools.count(input_size + 1) if _output_size_or_none(s, depth))
    choices = " or ".join(str(s) for s in (smaller, larger) if s is not None)
    raise ValueError(
        f"the original U-Net cannot take {input_size} pixels: its valid input sizes are 16k + 124 "
        f"(k ≥ 4, e.g. 572 → 388 out); use {choices}, model 'unet_padded', or tiled prediction"
    )


def unet_input_size(output_size: int, depth: int = DEPTH) -> int:
    """Smallest valid input side length whose output covers ``output_size`` pixels (388 → 572)."""
    if output_size < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")
    bottom = 1
    while True:
        size_in, size_out = _sizes_from_bottom(bottom, depth)
        if size_out >= output_size:
            return size_in
        bottom += 1


class UNetGeometry(ValidGeometry):
    """The original U-Net's sizes: ``unet_output_size`` / ``unet_input_size``, inputs of 16k + 124 pixels
    (at least 188), overlap-tiles shifted by multiples of 2**depth (the pooling grid)."""

    sides = "16k + 124 (the original U-Net's valid sizes)"

    def __init__(self, depth: int = DEPTH) -> None:
        # each level adds two 3x3 convolutions (4 pixels) at its scale: 4 (1 + 2 + ... + 2**depth) in all
        super().__init__(min_size=unet_input_size(1, depth), tile_period=2**depth, offset=4 * (2 ** (depth + 1) - 1))
        self.depth = depth

    def output_size(self, input_size: int) -> int:
        return unet_output_size(input_size, self.depth)

    def input_size(self, output_size: int) -> int:
        return unet_input_size(output_size, self.depth)


@MODELS.register("unet")
def unet(
    num_classes: int, *, in_channels: int = 1, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    """The original U-Net (valid convolutions, output smaller than input)."""
    if encoder not in (None, "unet") or encoder_weights is not None:
        raise ValueError(
            "the original U-Net has its own unpadded encoder and no pretrained weights; "
            "use model 'unet_padded' for a U-Net on another encoder"
        )
    enc = UNetEncoder(in_channels=in_channels, padding=False, batch_norm=False, dropout=0.5)
    decoder = UNetDecoder(enc.out_channels, enc.reductions, padding=False, batch_norm=False)
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=1)
    # stride 1: the input is never padded; check_input enforces the geometry's valid sizes instead.
    return Segmenter(
        enc,
        decoder,
        head,
        num_classes=num_classes,
        in_channels=in_channels,
        stride=1,
        encoder_name="unet (unpadded)",
        geometry=UNetGeometry(),
    )


#: U-Net's own encoders: their decoder is the paper's, each level as wide as its skip
OWN_ENCODERS = ("unet", "unet16", "unet32")


def padded_decoder_widths(
    encoder: str, enc: Encoder, decoder_channels: Sequence[int] | str | None
) -> tuple[int, ...] | None:
    """The up-blocks' widths of a padded U-Net decoder (None: as wide as the skips). By default the paper's
    (as wide as each skip) on U-Net's own encoders, and on the others each level as wide as its skip but no
    wider than smp's light decoder (256, 128, 64, 32, 16)."""
    if decoder_channels is None and encoder not in OWN_ENCODERS:
        levels = decoder_levels(enc.reductions)
        light = LIGHT_WIDTHS[:levels] + (LIGHT_WIDTHS[-1],) * (levels - len(LIGHT_WIDTHS))
        decoder_channels = [min(a, b) for a, b in zip(skip_widths(enc.out_channels, enc.reductions), light)]
    return None if decoder_channels in (None, "skips") else tuple(decoder_channels)


@MODELS.register("unet_padded")
def unet_padded(
    num_classes: int,
    *,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    decoder_channels: Sequence[int] | str | None = None,
) -> Segmenter:
    """U-Net with padded convolutions and batch norm on any encoder (default: U-Net's own).

    ``decoder_channels``: the up-blocks' widths, deepest first; by default the paper's (as wide as each
    skip) on U-Net's own encoders, and on the others each level as wide as its skip but no wider than
    smp's light decoder (256, 128, 64, 32, 16): ResNet-50's skips would make it 2048→1024→512→256 wide,
    EfficientNet-Lite's and MobileNetV2's are narrower already; ``"skips"``: as wide as the skips."""
    encoder = encoder or "unet"
    enc = create_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
    widths = padded_decoder_widths(encoder, enc, decoder_channels)
    decoder = UNetDecoder(enc.out_channels, enc.reductions, padding=True, batch_norm=True, widths=widths)
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=1)
    return Segmenter(
        enc,
        decoder,
        head,
        num_classes=num_classes,
        in_channels=in_channels,
        stride=enc.stride,
        encoder_name=encoder,
    )
