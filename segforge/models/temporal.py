"""A U-Net for image time series: one mask from a stack of dates.

A single image cannot always tell the classes apart (a winter field from a burned one, one crop from
another); how a place changes over the dates can. The network, after the recurrent U-Net of the source
notes and U-TAE (Garnot & Landrieu, ICCV 2021):

1. a **2D encoder shared by all dates** (any registered encoder) encodes each valid date on its own;
2. a **temporal module** at the bottleneck, the coarsest map, reads the dates: a ConvGRU or ConvLSTM
   stepping through them in order (``temporal="gru"`` / ``"lstm"``), or U-TAE's lightweight temporal
   attention (``temporal="attention"``); either way with each date's acquisition day encoded;
3. the **skip connections are collapsed over time**: each by a recurrence of its own, per pixel (a 1x1
   ConvGRU/ConvLSTM: the order of the dates kept at every resolution, for a ninth of a 3x3 cell's cost),
   or weighted by the attention maps upsampled to each skip's resolution, each head weighting its own
   group of channels (attention), as U-TAE does;
4. U-Net's **2D decoder and head**, as ``unet_padded`` has them.

``forward(x: (N, T, C, H, W), valid: (N, T) bool = all, days: (N, T) = 0..T-1) -> logits (N, K, H, W)``.
Invalid dates (padding, clouds, missing acquisitions) are never encoded and change nothing: the output
is the one the series without them gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segforge.decoders.unet import UNetDecoder
from segforge.encoders import create_encoder
from segforge.layers.temporal import Recurrence, TemporalAttention
from segforge.models.geometry import Geometry
from segforge.models.registry import MODELS
from segforge.models.segmenter import SegmentationHead, pad_to_multiple
from segforge.models.unet import padded_decoder_widths

TEMPORAL_MODULES = ("gru", "lstm", "attention")


class TemporalUNet(nn.Module):
    """A shared 2D encoder, a temporal module at the bottleneck, time-collapsed skips, a 2D decoder and head.

    ``inputs = "series"`` declares what it takes (``segforge.models.Segmenter``: ``"images"``).

    Args:
        encoder: a registered encoder (``segforge.encoders``), built for one date's channels.
        temporal: ``"gru"``, ``"lstm"`` (recurrent, the dates in order) or ``"attention"`` (U-TAE's L-TAE).
        num_classes, in_channels: the logits' channels and one date's channels.
        decoder_channels: the up-blocks' widths, deepest first (``UNetDecoder``).
        heads: attention heads (``temporal="attention"``); the bottleneck's channels split among them.
    """

    inputs = "series"
    task = "semantic"

    def __init__(
        self,
        encoder: nn.Module,
        *,
        temporal: Literal["gru", "lstm", "attention"],
        num_classes: int,
        in_channels: int,
        decoder_channels: Sequence[int] | None = None,
        heads: int = 4,
        encoder_name: str = "",
    ) -> None:
        super().__init__()
        if temporal not in TEMPORAL_MODULES:
            raise ValueError(f"unknown temporal module {temporal!r}; choose from {list(TEMPORAL_MODULES)}")
        self.encoder = encoder
        bottleneck = encoder.out_channels[-1]
        if temporal == "attention":
            self.temporal: nn.Module = TemporalAttention(bottleneck, bottleneck, heads=heads)
        else:
            self.temporal = Recurrence(temporal, bottleneck, bottleneck)
            # each skip collapsed by a recurrence of its own, per pixel (1x1: a ninth of a 3x3 cell's cost at
            # the finest maps): the mean would throw away the order of the dates at every resolution but the
            # coarsest
            self.skip_temporal = nn.ModuleList(
                Recurrence(temporal, width, width, kernel_size=1) for width in encoder.out_channels[:-1]
            )
        self.decoder = UNetDecoder(encoder.out_channels, encoder.reductions, widths=decoder_channels)
        self.head = SegmentationHead(self.decoder.out_channels, num_classes, kernel_size=1)
        self.aux_head = None
        self.kind = temporal
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stride = encoder.stride
        self.geometry = Geometry(tile_period=self.stride)
        self.encoder_name = encoder_name
        self.config: dict = {}  # how create_model built it (stored in checkpoints)
        self.info: dict = {}  # what its training run recorded (load_model)
        self.cpu_training_channels_last = True

    @property
    def channels_last(self) -> bool:
        """Whether the network was converted to channels-last (``model.to(memory_format=...)``): the dates are
        then too, as a 5-D series cannot be."""
        return next(self.encoder.parameters()).is_contiguous(memory_format=torch.channels_last)

    def check_input(self, x: torch.Tensor, valid: torch.Tensor | None, days: torch.Tensor | None) -> None:
        """Raises ValueError with a fix for inputs this model cannot take."""
        if x.ndim != 5:
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 4 else ""
            raise ValueError(f"a temporal model expects a batch of series (N, T, C, H, W), got {tuple(x.shape)}{hint}")
        if x.shape[2] != self.in_channels:
            raise ValueError(
                f"the model was built for {self.in_channels} channel(s) per date but the series have {x.shape[2]}; "
                f"convert the images, or build the model with in_channels={x.shape[2]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"a temporal model expects a floating-point input, got {x.dtype}; convert with x.float()")
        for name, value in (("valid", valid), ("days", days)):
            if value is not None and tuple(value.shape) != tuple(x.shape[:2]):
                shape = tuple(value.shape)
                raise ValueError(f"{name} must be (N, T) = {tuple(x.shape[:2])}, one value per date; got {shape}")
        if valid is not None and valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor (True for a date with data), got {valid.dtype}")

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, days: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.check_input(x, valid, days)
        n, t, c, height, width = x.shape
        features = self._encode(x, valid)
        if valid is None:
            valid = torch.ones(n, t, dtype=torch.bool, device=x.device)
        if days is None:
            days = torch.arange(t, device=x.device).expand(n, t)
        if self.kind == "attention":
            bottom, attention = self.temporal(features[-1], valid, days)
            skips = [_attention_collapse(skip, attention) for skip in features[:-1]]
        else:
            bottom = self.temporal(features[-1], valid, days)
            skips = [recurrence(skip, valid, days) for recurrence, skip in zip(self.skip_temporal, features[:-1])]
        return self.head(self.decoder([*skips, bottom]))[..., :height, :width]

    def _encode(self, x: torch.Tensor, valid: torch.Tensor | None) -> list[torch.Tensor]:
        """The encoder's maps of every valid date (``valid`` None: every date), ``(N, T, C_i, H_i, W_i)`` each,
        zero at invalid dates: those are never encoded, so they reach no batch-norm statistics either."""
        n, t = x.shape[:2]
        dates = pad_to_multiple(x.flatten(0, 1), self.stride)
        if self.channels_last:
            dates = dates.contiguous(memory_format=torch.channels_last)
        if valid is None:
            return [feature.unflatten(0, (n, t)) for feature in self.encoder(dates)]
        taken = valid.flatten().nonzero().squeeze(1)
        encoded = self.encoder(dates.index_select(0, taken))
        maps = []
        for feature in encoded:
            full = feature.new_zeros(n * t, *feature.shape[1:])
            maps.append(full.index_copy(0, taken, feature).unflatten(0, (n, t)))
        return maps


def _attention_collapse(skip: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """A skip ``(N, T, C, H, W)`` summed over the dates with the attention maps ``(N, heads, T, h, w)``
    upsampled to its size: each head weights its own group of channels (all heads' mean when the channels
    do not split among them)."""
    n, heads, t = attention.shape[:3]
    size = skip.shape[-2:]
    weights = F.interpolate(attention.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
    weights = weights.unflatten(1, (heads, t))
    channels = skip.shape[2]
    if channels % heads:
        return (skip * weights.mean(1)[:, :, None]).sum(1)
    grouped = skip.unflatten(2, (heads, channels // heads))  # (N, T, heads, C/heads, H, W)
    return torch.einsum("nkthw,ntkchw->nkchw", weights, grouped).reshape(n, channels, *size)


@MODELS.register("temporal_unet")
def temporal_unet(
    num_classes: int,
    *,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    decoder_channels: Sequence[int] | str | None = None,
    temporal: Literal["gru", "lstm", "attention"] = "attention",
) -> TemporalUNet:
    """U-Net for image time series: shared encoder, ConvGRU/ConvLSTM or temporal attention, time-collapsed skips.

    Any encoder (default ``unet16``, U-Net's own at a quarter of its widths); decoder widths as ``unet_padded``
    chooses them; ``temporal``: ``"gru"``, ``"lstm"`` or ``"attention"`` (the default: it learned the
    built-in series fastest, ``bench/temporal.py``)."""
    encoder = encoder or "unet16"
    enc = create_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
    return TemporalUNet(
        enc,
        temporal=temporal,
        num_classes=num_classes,
        in_channels=in_channels,
        decoder_channels=padded_decoder_widths(encoder, enc, decoder_channels),
        encoder_name=encoder,
    )
