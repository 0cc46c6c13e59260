"""``create_model("mask_rcnn", ...)``: segforge.instances' Mask R-CNN, built by name like every architecture,
so that checkpoints, ``segforge models``, ``evaluate`` and ``predict`` find it."""

from __future__ import annotations

from torch import nn

from segforge.models.registry import MODELS

DEFAULT_ENCODER = "resnet18"


@MODELS.register("mask_rcnn")
def mask_rcnn_model(
    num_classes: int, *, encoder: str | None = None, encoder_weights: str | None = None, in_channels: int = 3
) -> nn.Module:
    """Mask R-CNN (He et al. 2017): a box, a class, a score and a mask per object (instance segmentation)."""
    from segforge.instances.model import mask_rcnn  # (segforge.instances imports the data package)

    return mask_rcnn(
        num_classes, in_channels=in_channels, encoder=encoder or DEFAULT_ENCODER, encoder_weights=encoder_weights
    )
