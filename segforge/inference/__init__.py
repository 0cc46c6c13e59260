"""Inference: class probabilities (with test-time augmentation), tiles, streaming TIFFs and files of masks.

    probabilities.py   softmax of logits; ``predict_probabilities`` over flips and scales
    tiling.py          ``predict_tiled``: overlap-tile (valid convolutions) or blended sliding windows
    streaming.py       ``predict_tiff``: a TIFF larger than memory, read by rows, labels written by tiles
    memory.py          whether an image fits through a network in one piece (``check_fits``)
    image.py           one image (a path or an array) → its mask and class probabilities;
                       ``image_probabilities``: whole once the memory is there, or tiled
    series.py          the same for a time series (a series is one image of T x C channels to the tiler)
    predict.py         ``predict``: an image, or a series for a model of time series
    files.py           ``predict_files``: images, folders or globs in, palette masks and overlays out

Nothing here imports the commands or training; ``segforge.training.evaluate`` imports from here.
"""

from __future__ import annotations

from segforge.inference.files import predict_files, raw_values
from segforge.inference.image import Prediction, image_probabilities, prepare_image
from segforge.inference.inputs import expand_inputs
from segforge.inference.memory import check_fits, forward_peak_bytes
from segforge.inference.predict import predict
from segforge.inference.probabilities import predict_probabilities, probabilities
from segforge.inference.streaming import TiffRows, predict_tiff
from segforge.inference.tiling import TilePlan, plan_tiles, predict_tiled, tiled_map

__all__ = [
    "Prediction",
    "TiffRows",
    "TilePlan",
    "check_fits",
    "image_probabilities",
    "expand_inputs",
    "forward_peak_bytes",
    "plan_tiles",
    "predict",
    "predict_files",
    "predict_probabilities",
    "predict_tiff",
    "predict_tiled",
    "prepare_image",
    "probabilities",
    "raw_values",
    "tiled_map",
]
