"""``segforge`` with one more, tiny architecture registered: run as ``python train_tiny.py train ...`` or
under ``torchrun``. The tests of killing, interrupting and data-parallel training use it so that each
run takes seconds; it has neither batch norm nor dropout, so a 2-process run must equal a 1-process
one exactly up to float summation order."""

from __future__ import annotations

from segforge.decoders.unet import UNetDecoder
from segforge.encoders.unet import UNetEncoder
from segforge.models import MODELS, SegmentationHead, Segmenter


@MODELS.register("tiny_unet")
def tiny_unet(
    num_classes: int, *, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None
) -> Segmenter:
    enc = UNetEncoder(in_channels=in_channels, widths=(8, 16, 32), padding=True, batch_norm=False)
    decoder = UNetDecoder(enc.out_channels, enc.reductions, padding=True, batch_norm=False)
    head = SegmentationHead(decoder.out_channels, num_classes)
    return Segmenter(
        enc, decoder, head, num_classes=num_classes, in_channels=in_channels, stride=4, encoder_name="tiny"
    )


if __name__ == "__main__":
    from segforge.cli import main

    raise SystemExit(main())
