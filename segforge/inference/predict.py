"""``segforge.predict``: one image, or one time series for a model of time series, → its mask and probabilities.

model, info = segforge.load_model("runs/x/best.safetensors")
result = segforge.predict(model, "slide.png")          # or an array (H, W) / (H, W, C)
result.mask             # (H, W) int64: the class of each pixel
result.probabilities    # (K, H, W) float32
segforge.predict(model, big_array, tile=512)          # tile by tile: memory bounded by the tile
segforge.predict(series_model, "field.npy", days=[3, 40, 95])   # a time series (T x C x H x W)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segforge.inference.image import Prediction, predict_image
from segforge.inference.series import predict_series


def predict(
    model: nn.Module,
    image: np.ndarray | str | Path,
    *,
    info: dict | None = None,
    device: torch.device | str | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    tile_batch: int = 4,
    blend: str = "gaussian",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    days: Sequence[int] | None = None,
    valid: Sequence[bool] | None = None,
) -> Prediction:
    """The mask and class probabilities of one image, or of one time series for a model of time series
    (``model.inputs == "series"``).

    Args:
        model: a segforge model (``load_model``, ``create_model``) or an exported one (``load_onnx``).
        image: a file path, or an array ``(H, W)`` or ``(H, W, C)`` in the pixel values a file holds
            (uint8, uint16 or float; scaled by the dtype's maximum like the training images). A time
            series: a ``.npy``/TIFF file or folder of dates, or an array ``(T, H, W[, C])``.
        info: the checkpoint's ``info`` (mean and std); default the one ``load_model`` attached to the model.
        device: where the network runs (default: where its weights are).
        tile, overlap, tile_batch, blend: predict tile by tile (``segforge.predict_tiled``; a series' tile is
            taken through every date); without ``tile``, an image the device has not the memory for in one
            piece is refused with that advice.
        flip, scales: test-time augmentation.
        days, valid: a time series' acquisition days and clear dates (default: 0, 1, ... and every date
            holding data).

    Raises:
        ValueError: an unreadable file, a channel count or pixel type the model cannot take, non-finite
            pixels, or an image too large for one pass.
    """
    tiling = {"tile": tile, "overlap": overlap, "tile_batch": tile_batch, "blend": blend, "flip": flip}
    tiling["scales"] = scales
    if getattr(model, "inputs", "images") == "series":
        return predict_series(model, image, days=days, valid=valid, info=info, device=device, **tiling)
    if days is not None or valid is not None:
        raise ValueError("days and valid describe the dates of a time series; this is an image model: drop them")
    return predict_image(model, image, info=info, device=device, **tiling)
