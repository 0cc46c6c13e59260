"""The architectures of the papers, built by name: ``create_model("segnet", num_classes=12)``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn

from segforge.encoders import ENCODERS
from segforge.models.geometry import Geometry, ValidGeometry, geometry_of
from segforge.models.registry import MODELS
from segforge.models.segmenter import SegmentationHead, SegmentationOutput, Segmenter

# Importing the modules registers their builders.
from segforge.models import deconvnet, fcn, pspnet, segnet, unet  # noqa: E402,F401  isort: skip
from segforge.models import temporal as _series_models  # noqa: E402,F401  isort: skip
from segforge.models import mask_rcnn as _instance_models  # noqa: E402,F401  isort: skip


def create_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int | None = None,
    encoder: str | None = None,
    encoder_weights: str | dict | None = None,
    decoder_channels: Sequence[int] | str | None = None,
    temporal: str | None = None,
) -> Segmenter:
    """Builds a registered architecture.

    Args:
        name: one of ``list_models()``.
        num_classes: output channels (1 for a single-logit binary model).
        in_channels: input channels; default 3 (1 for the original U-Net, as in the paper).
        encoder: one of ``segforge.list_encoders()`` that the architecture supports; default the
            paper's.
        encoder_weights: ``"imagenet"`` (the encoder's published weights, downloaded once and verified),
            or the path or URL of a torchvision-format ImageNet state dict for the encoder. A dict is a
            checkpoint config's record of them: recorded again, nothing loaded (the checkpoint has the weights).
        decoder_channels: the decoder's widths, for an architecture whose decoder has a width choice
            (``unet_padded``: one per up-block, deepest first, ``"skips"``: as wide as the encoder's skips;
            ``pspnet``: each pyramid branch's and the fusing convolution's);
            default the architecture's. The built widths are recorded in ``model.config``.
        temporal: how a model of image time series reads the dates (``temporal_unet``: ``"gru"``, ``"lstm"`` or
            ``"attention"``); default the architecture's. Image models take none.

    Returns:
        A ``Segmenter``: ``model(x: (N, in_channels, H, W))`` gives logits ``(N, num_classes, H, W)``.

    Raises:
        ValueError: unknown name, encoder not supported by the architecture, bad counts, weights
            that do not fit.
    """
    builder = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    kwargs = {} if in_channels is None else {"in_channels": in_channels}
    record = encoder_weights if isinstance(encoder_weights, dict) else None
    takes_widths = "decoder_channels" in inspect.signature(builder).parameters
    if takes_widths:
        kwargs["decoder_channels"] = decoder_channels
    elif decoder_channels not in (None, "skips"):  # ("skips": a checkpoint from before the option; fixed decoders)
        raise ValueError(
            f"model {name!r} has the paper's decoder, without a width choice: drop decoder_channels (it applies "
            f"to {[n for n in MODELS.names() if 'decoder_channels' in inspect.signature(MODELS.get(n)).parameters]})"
        )
    takes_temporal = "temporal" in inspect.signature(builder).parameters
    if takes_temporal:
        kwargs["temporal"] = temporal or "attention"
    elif temporal is not None:
        raise ValueError(f"model {name!r} is an image model: drop temporal (it applies to models of time series)")
    model = builder(num_classes, encoder=encoder, encoder_weights=None if record else encoder_weights, **kwargs)
    # Record the resolved encoder when it is a registered one, so a checkpoint rebuilds the same network
    # even if a default changes; architectures with their own encoder (segnet_basic, unet) record None.
    resolved = model.encoder_name if model.encoder_name in ENCODERS else None
    model.config = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": model.in_channels,
        "encoder": resolved,
        # what the encoder started from: {"weights", "file", "sha256"}, or None (from scratch)
        "encoder_weights": record or getattr(getattr(model, "encoder", None), "pretrained", None),
        "decoder_channels": list(model.decoder.widths) if takes_widths else None,
    }
    if takes_temporal:  # (image models' configs, and the checkpoints holding them, stay as they were)
        model.config["temporal"] = kwargs["temporal"]
    return model


def list_models() -> list[str]:
    return MODELS.names()


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODELS",
    "Geometry",
    "SegmentationHead",
    "SegmentationOutput",
    "Segmenter",
    "ValidGeometry",
    "count_parameters",
    "create_model",
    "geometry_of",
    "list_models",
]
