"""One image in, its mask and class probabilities out (``segforge.predict`` for image models).

The image is scaled and normalised as the training images were (``info``: the checkpoint's mean and
std, which ``load_model`` also attaches to the model), and goes through the network whole or in tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segforge.data.base import scale_image, to_tensor
from segforge.data.io import pixel_dtype, read_image
from segforge.inference.memory import check_fits, out_of_memory_hint
from segforge.inference.probabilities import predict_probabilities
from segforge.inference.tiling import predict_tiled
from segforge.metrics import logits_to_labels


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray  # (H, W) int64: the most likely class of each pixel
    probabilities: np.ndarray  # (K, H, W) float32; K = 2 for a one-logit binary model


def image_tensor(image: np.ndarray | str | Path, info: dict, in_channels: int) -> torch.Tensor:
    """A path, or an array as an image file holds it, → the normalised ``(C, H, W)`` tensor the network takes."""
    if isinstance(image, (str, Path)):
        return prepare_image(Path(image), info, in_channels)[1][0]
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    name = f"array {tuple(np.shape(image))}"
    if array.ndim != 3 or array.shape[-1] != in_channels:
        raise ValueError(
            f"image {name} does not fit the model's {in_channels} channel(s): give (H, W) for one "
            f"channel or (H, W, C) with C = {in_channels}, channels last, as an image file stores them"
        )
    return to_tensor(scale_image(pixel_dtype(array, name, "image")), info.get("mean"), info.get("std"), name=name)


def prepare_image(path: Path, info: dict, in_channels: int) -> tuple[np.ndarray, torch.Tensor]:
    """Reads ``path`` → (display image (H, W, C) in [0, 1], normalised tensor (1, C, H, W))."""
    image = scale_image(read_image(path))
    if image.shape[-1] != in_channels:
        raise ValueError(
            f"image {path} has {image.shape[-1]} channel(s) but the model expects {in_channels}; "
            "convert the image, or use a model trained on such images"
        )
    return image, to_tensor(image, info.get("mean"), info.get("std"), name=str(path))[None]


def image_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    what: str,
    *,
    device: torch.device | str,
    tile: int | None = None,
    overlap: float = 0.25,
    tile_batch: int = 4,
    blend: str = "gaussian",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Class probabilities ``(K, H, W)`` (on the CPU) of one normalised image ``x: (C, H, W)``: tile by tile
    with ``tile``, else in one piece once ``check_fits`` found the memory for it (``what`` names the image in
    the error that advises tiles)."""
    if tile is not None:
        return predict_tiled(
            model,
            x,
            tile=tile,
            overlap=overlap,
            batch=tile_batch,
            blend=blend,
            flip=flip,
            scales=scales,
            device=device,
            progress=False,
        )
    check_fits(model, (1, *x.shape), device, what, scale=max(scales))
    with out_of_memory_hint(what):
        x = x[None].to(device).contiguous(memory_format=torch.channels_last)  # ~1.3x faster convolutions on CPU
        return predict_probabilities(model, x, flip=flip, scales=scales)[0].cpu().contiguous()  # (K, H, W) in order


def predict_image(
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
) -> Prediction:
    """The mask and class probabilities of one image (``segforge.predict`` for an image model).

    Args:
        model: a segforge model (``load_model``, ``create_model``) or an exported one (``load_onnx``).
        image: a file path, or an array ``(H, W)`` or ``(H, W, C)`` in the pixel values a file holds
            (uint8, uint16 or float; scaled by the dtype's maximum like the training images).
        info: the checkpoint's ``info`` (mean and std); default the one ``load_model`` attached to the model.
        device: where the network runs (default: where its weights are).
        tile, overlap, tile_batch, blend: predict tile by tile (``segforge.predict_tiled``); without
            ``tile``, an image the device has not the memory for in one piece is refused with that advice.
        flip, scales: test-time augmentation.

    Raises:
        ValueError: an unreadable file, a channel count or pixel type the model cannot take, non-finite
            pixels, or an image too large for one pass.
    """
    tiling = {"tile": tile, "overlap": overlap, "tile_batch": tile_batch, "blend": blend, "flip": flip}
    tiling["scales"] = scales
    info = getattr(model, "info", {}) if info is None else info
    if device is None:  # an ONNX Runtime model has no parameters: the CPU
        device = next(model.parameters(), torch.empty(0)).device
    x = image_tensor(image, info, model.in_channels)
    model.eval()
    what = f"image {image}" if isinstance(image, (str, Path)) else "the image"
    probs = image_probabilities(model, x, what, device=device, **tiling)
    return Prediction(mask=logits_to_labels(probs[None])[0].numpy(), probabilities=probs.numpy())
