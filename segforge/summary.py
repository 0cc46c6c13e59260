"""Parameter counts and FLOPs of every architecture, without allocating any weights (but an instance model's)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from segforge.encoders import list_encoders
from segforge.models import MODELS, count_parameters, create_model, list_models

#: a model of image time series is counted on a series of this many dates
SUMMARY_DATES = 10


@dataclass(frozen=True)
class ModelSummary:
    name: str
    encoder: str
    parameters: int
    flops: int  # of one forward pass of one image (of a series of SUMMARY_DATES dates); a multiply-add counts as 2
    input_size: int
    output_size: int
    description: str
    decoder_channels: tuple[int, ...] | None = None  # the decoder's widths, where they are a choice


def summarize(
    name: str,
    size: int = 512,
    *,
    num_classes: int = 21,
    in_channels: int | None = None,
    encoder: str | None = None,
    decoder_channels: list[int] | str | None = None,
) -> ModelSummary:
    """Builds ``name`` on the meta device (no memory, no init) and counts one forward pass at size×size.

    The original U-Net takes the smallest valid input whose output covers ``size`` pixels, and a
    model with a minimum input size (DeconvNet: 224) takes at least that.
    FLOPs are those of convolutions, transposed convolutions and matrix products, as counted by
    ``torch.utils.flop_counter`` (pooling, normalisation and activations are not counted).
    """
    build = functools.partial(
        create_model, name, num_classes, in_channels=in_channels, encoder=encoder, decoder_channels=decoder_channels
    )
    with torch.device("meta"):
        model = build().eval()
    if model.task == "instance":  # its work depends on the values (proposals kept): built and run for real
        return _summarize_instances(name, build, size)
    with torch.device("meta"):
        input_size = model.geometry.input_size(size)
        x = torch.empty(1, model.in_channels, input_size, input_size)
        if model.inputs == "series":
            x = torch.empty(1, SUMMARY_DATES, model.in_channels, input_size, input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        logits = model(x)
    doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
    if doc and model.inputs == "series":
        doc[0] += f" ({SUMMARY_DATES} dates)"
    return _summary(name, model, counter, input_size, logits.shape[-1], doc[0] if doc else "")


def _summarize_instances(name: str, build, size: int) -> ModelSummary:
    """An instance model's row: one forward pass of the untrained network (seeded) on a random image; its RoI
    heads' FLOPs are those of the proposals it keeps (up to ``rpn_post_nms_top_n``), the same trained or not."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build().eval()
        x = torch.rand(1, model.in_channels, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return _summary(name, model, counter, size, size, (MODELS.get(name).__doc__ or "").strip().splitlines()[0])


def _summary(name: str, model, counter: FlopCounterMode, input_size: int, output_size: int, doc: str) -> ModelSummary:
    return ModelSummary(
        name=name,
        encoder=model.encoder_name,
        parameters=count_parameters(model),
        flops=counter.get_total_flops(),
        input_size=input_size,
        output_size=output_size,
        description=doc,
        decoder_channels=tuple(widths) if (widths := model.config.get("decoder_channels")) else None,
    )


def summary_table(size: int = 512, *, num_classes: int = 21) -> str:
    """A plain-text table of every registered model (what ``segforge models`` prints)."""
    rows = [summarize(name, size, num_classes=num_classes) for name in list_models()]
    header = ("model", "encoder", "params (M)", "GFLOPs", "input → output", "description")
    lines = [
        (
            r.name,
            r.encoder,
            f"{r.parameters / 1e6:.2f}",
            f"{r.flops / 1e9:.1f}",
            f"{r.input_size} → {r.output_size}",
            r.description,
        )
        for r in rows
    ]
    return _table(header, lines, right={2, 3})


def decoder_table(size: int = 512, *, num_classes: int = 21, name: str = "unet_padded") -> str:
    """``name``'s parameters and GFLOPs on each encoder, with its default decoder widths and as wide as the
    skips (``decoder_channels="skips"``): what the width choice costs."""
    from segforge.models.unet import OWN_ENCODERS

    header = ("encoder", "decoder_channels", "params (M)", "GFLOPs")
    lines = []
    for encoder in list_encoders():
        default = summarize(name, size, num_classes=num_classes, encoder=encoder)
        choices = [(default, "default")]
        if encoder not in OWN_ENCODERS:  # (theirs is as wide as the skips)
            skips = summarize(name, size, num_classes=num_classes, encoder=encoder, decoder_channels="skips")
            if skips.decoder_channels != default.decoder_channels:
                choices.append((skips, "skips"))
        for r, label in choices:
            widths = f"{', '.join(map(str, r.decoder_channels))} ({label})"
            lines.append((encoder, widths, f"{r.parameters / 1e6:.2f}", f"{r.flops / 1e9:.1f}"))
    return _table(header, lines, right={2, 3})


def _table(header: tuple, lines: list[tuple], *, right: set[int]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, lines)])
