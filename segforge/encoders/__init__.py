"""Encoders: VGG16(±BN), ResNet-18/34/50/101 and EfficientNet-Lite0/1/2 (optionally dilated), MobileNetV2,
U-Net's own.

Every builder takes the same keyword arguments, so ``create_encoder`` needs no ``**kwargs``::

    builder(in_channels=3, output_stride=32, return_indices=False) -> Encoder
"""

from __future__ import annotations

from segforge.encoders.base import Encoder, PooledFeatures
from segforge.encoders.registry import ENCODERS
from segforge.encoders.weights import load_encoder_weights

# Importing the modules registers their builders.
from segforge.encoders import efficientnet, mobilenet, resnet, unet, vgg  # noqa: E402,F401  isort: skip


def create_encoder(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    return_indices: bool = False,
    weights: str | None = None,
) -> Encoder:
    """Builds a registered encoder, optionally loading torchvision-format ImageNet weights.

    Args:
        name: one of ``list_encoders()``.
        in_channels: channels of the input images (1 grayscale, 3 RGB, more for multispectral).
        output_stride: 32, or 16/8 for encoders that support dilation (ResNets, EfficientNet-Lite).
        return_indices: return max-pooling switches too (VGG encoders, for unpooling decoders).
        weights: ``"imagenet"`` (the encoder's published weights, ``segforge.encoders.pretrained``), or
            the path or URL of a torchvision-format state dict (``.pth`` or ``.safetensors``).

    Raises:
        ValueError: unknown name, unsupported option, or weights that do not fit.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    encoder = ENCODERS.get(name)(in_channels=in_channels, output_stride=output_stride, return_indices=return_indices)
    encoder.name = name  # the registered name: which ImageNet weights, and error messages
    if weights is not None:
        load_encoder_weights(encoder, weights)
    return encoder


def list_encoders() -> list[str]:
    return ENCODERS.names()


__all__ = ["ENCODERS", "Encoder", "PooledFeatures", "create_encoder", "list_encoders", "load_encoder_weights"]
