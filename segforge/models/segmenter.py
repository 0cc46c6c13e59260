"""encoder → decoder → head, with the input checks and stride padding that every model shares."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segforge.models.geometry import Geometry, geometry_of, mirror_pad


class SegmentationOutput(NamedTuple):
    """What a model with an auxiliary head returns in training mode (PSPNet)."""

    logits: torch.Tensor  # (N, num_classes, H, W)
    aux_logits: torch.Tensor  # (N, num_classes, H, W)


class SegmentationHead(nn.Sequential):
    """A ``k x k`` convolution to class scores, then (optionally) bilinear upsampling."""

    def __init__(self, in_channels: int, num_classes: int, *, kernel_size: int = 1, upsample: int = 1) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2)]
        if upsample > 1:
            layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
        super().__init__(*layers)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads ``x: (N, C, H, W)`` at the bottom and right so that H and W are multiples."""
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if not torch.compiler.is_exporting() and pad_h == 0 and pad_w == 0:  # an export keeps the padding symbolic
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def full_size_forward(model: nn.Module, x: torch.Tensor, *dates: torch.Tensor) -> torch.Tensor | SegmentationOutput:
    """``model(x)`` with logits for every pixel of ``x``, for every architecture.

    Padded networks take ``x`` as it is. Valid-convolution networks (the original U-Net), whose
    output is smaller than their input, see ``x`` extended by mirroring as in the U-Net paper's
    overlap-tile strategy, and their logits are cut to ``x``'s size: so training crops, evaluation
    images and predictions of any size work with them too. ``dates``: a time series' valid dates and
    days, passed on (``segforge.models.temporal``).
    """
    top, bottom, left, right = geometry_of(model).border(*x.shape[-2:])
    if top == bottom == left == right == 0:
        return model(x, *dates)
    height, width = x.shape[-2:]
    output = model(mirror_pad(x, top, bottom, left, right))
    if isinstance(output, SegmentationOutput):
        return SegmentationOutput(*(t[..., :height, :width] for t in output))
    return output[..., :height, :width]


class Segmenter(nn.Module):
    """A segmentation network: ``forward(x: (N, in_channels, H, W)) -> logits (N, num_classes, H, W)``.

    Any H and W work: the input is zero-padded (bottom/right) to a multiple of ``stride`` and the
    logits are cropped back, so predictions align with the input pixel for pixel.

    Args:
        encoder, decoder, head: the three parts; the decoder receives what the encoder returns.
        num_classes, in_channels: recorded for checks and for rebuilding from a checkpoint.
        stride: padding multiple (the encoder's largest reduction).
        min_size: smallest input side the architecture accepts.
        geometry: how the logits cover the input (``segforge.models.geometry``); by default they have
            the input's size, for inputs of at least ``min_size``, tiles aligned to ``stride``.
        aux_head: optional head on ``encoder features[aux_index]``; its logits are returned, in
            training mode only, as ``SegmentationOutput(logits, aux_logits)``.
        encoder_name: the registered encoder, for summaries and checkpoints.
    """

    #: what the model takes: a batch of images ``(N, C, H, W)`` (a model of time series: ``"series"``)
    inputs = "images"
    task = "semantic"  # (segforge.instances' Mask R-CNN: "instance")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        head: nn.Module,
        *,
        num_classes: int,
        in_channels: int,
        stride: int,
        min_size: int = 1,
        aux_head: nn.Module | None = None,
        aux_index: int = -2,
        encoder_name: str = "",
        geometry: Geometry | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stride = stride
        self.geometry = geometry or Geometry(min_size=min_size, tile_period=stride)
        self.encoder_name = encoder_name
        #: how ``segforge.create_model`` built this model; set by it, stored in checkpoints
        self.config: dict = {}
        #: what its training run recorded (classes, mean and std, ...); set by ``segforge.load_model``
        self.info: dict = {}
        #: whether its training steps on the CPU run faster on channels-last tensors (``train.channels_last:
        #: auto``); measured per architecture by ``bench/train_speed.py`` and set by its builder
        self.cpu_training_channels_last = True

    def check_input(self, x: torch.Tensor) -> None:
        """Raises ValueError with a fix for inputs this model cannot take."""
        name = self.config.get("name", type(self).__name__)
        if x.ndim != 4:
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""
            raise ValueError(f"{name} expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} was built for {self.in_channels} input channel(s) but the input has {x.shape[1]}; "
                f"convert the images, or build the model with in_channels={x.shape[1]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point input, got {x.dtype}; convert with x.float()")
        smallest = self.geometry.min_size
        if min(x.shape[-2:]) < smallest:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {name} can take "
                f"(at least {smallest}x{smallest}); resize or pad the image"
            )
        if not torch.compiler.is_exporting():  # (an export declares its valid sizes: segforge.export)
            for side in x.shape[-2:]:
                self.geometry.output_size(int(side))  # a valid-convolution network: raises naming valid sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegmentationOutput:
        self.check_input(x)
        height, width = x.shape[-2:]
        try:
            features = self.encoder(pad_to_multiple(x, self.stride))
            logits = self.head(self.decoder(features))[..., :height, :width]
            if self.aux_head is None or not self.training:
                return logits
            aux = self.aux_head(features[self.aux_index])[..., :height, :width]
        except ValueError as err:
            if "Expected more than 1 value per channel" not in str(err):
                raise
            # Batch norm over a 1x1 map (PSPNet's 1x1 bin, DeconvNet's fc6 at 224 px) has one
            # value per channel when the batch holds one image: its variance is undefined.
            raise ValueError(
                f"{self.config.get('name', type(self).__name__)} has batch norm on a 1x1 feature map, which needs "
                f"at least 2 images per batch in training mode (got {x.shape[0]} of {height}x{width}); "
                "use a batch of 2 or more, or call model.eval() for inference"
            ) from err
        return SegmentationOutput(logits, aux)
