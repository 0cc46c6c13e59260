"""The encoder registry (its own module so that encoder files can import it without cycles)."""

from __future__ import annotations

from segforge.registry import Registry

ENCODERS: Registry = Registry("encoder")


def check_options(
    name: str, *, output_stride: int, return_indices: bool, dilatable: bool = False, poolable: bool = False
) -> None:
    """Rejects builder options an encoder does not support, saying which encoders do."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if output_stride != 32 and not dilatable:
        raise ValueError(
            f"encoder {name!r} does not support output_stride={output_stride}; "
            "dilated encoders are resnet18, resnet34, resnet50, resnet101, efficientnet_lite0/1/2"
        )
    if return_indices and not poolable:
        raise ValueError(
            f"encoder {name!r} cannot return max-pooling indices; "
            "unpooling decoders (segnet, deconvnet) need vgg16 or vgg16_bn"
        )
