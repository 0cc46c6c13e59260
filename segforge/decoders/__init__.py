"""Decoders: they read an encoder's ``out_channels`` and ``reductions``, never its name."""

from segforge.decoders.fcn import FCNDecoder
from segforge.decoders.pspnet import PSPDecoder, PyramidPooling
from segforge.decoders.unet import UNetDecoder
from segforge.decoders.unpooling import UnpoolingDecoder

__all__ = ["FCNDecoder", "PSPDecoder", "PyramidPooling", "UNetDecoder", "UnpoolingDecoder"]
