"""Semantic segmentation of image time series: the task the training loop runs for ``temporal_unet``.

What differs from images is only what a batch is: ``SeriesSample(images (N, T, C, H, W), mask (N, H, W),
valid (N, T), days (N, T))``, series of different lengths padded with invalid dates
(``segforge.data.series.SeriesCollate``), and that the network takes the dates' validity and days. The
loss, the round's confusion matrix, validation by the FCN metrics and the report are the image task's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from segforge.data.series import SeriesCollate, SeriesSample
from segforge.training.task import SegmentationTask


class SeriesSegmentationTask(SegmentationTask):
    """``SegmentationTask`` for batches of time series (``segforge.data.series``)."""

    def collate(self) -> Callable:
        return SeriesCollate(self.data.ignore_index)

    def to_device(self, batch: SeriesSample, device: torch.device) -> SeriesSample:
        # (the dates are not put in channels-last here: a 5-D series cannot be; the model converts what it encodes)
        return SeriesSample(*(t.to(device, non_blocking=True) for t in batch))

    def forward(self, batch: SeriesSample) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch.images, batch.valid, batch.days)
        return self.loss_fn(logits, batch.mask), logits.detach()
