"""segforge: semantic segmentation with the architectures of the papers (FCN, DeconvNet, SegNet, U-Net, PSPNet).

The Python API, in the order of the work::

    folder = segforge.fit(segforge.load_config(overrides={"data.root": "my_data", "train.time_budget": "30m"}))
    model, info = segforge.load_model(folder / "best.safetensors")
    result = segforge.predict(model, "new.png")                 # .mask (H, W), .probabilities (K, H, W)
    probs = segforge.predict_tiled(model, image_tensor, tile=512)  # (C, H, W) normalised → (K, H, W)
    segforge.export_onnx(model, "model.onnx", info=info)

``fit``, ``load_config``, ``predict``, ``predict_tiled`` and ``export_onnx`` are imported on first use,
so that ``import segforge`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from segforge.checkpoint import load_model, save_checkpoint
from segforge.encoders import create_encoder, list_encoders
from segforge.losses import create_loss
from segforge.metrics import ConfusionMatrix, confusion_matrix, scores
from segforge.models import SegmentationOutput, Segmenter, count_parameters, create_model, list_models

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first read (PEP 562)
_LAZY = {
    "fit": "segforge.training",
    "load_config": "segforge.config",
    "predict": "segforge.inference",
    "Prediction": "segforge.inference",
    "predict_tiled": "segforge.inference",
    "export_onnx": "segforge.export",
    "load_onnx": "segforge.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segforge' has no attribute {name!r}")


__all__ = [
    "ConfusionMatrix",
    "Prediction",
    "SegmentationOutput",
    "Segmenter",
    "__version__",
    "confusion_matrix",
    "count_parameters",
    "create_encoder",
    "create_loss",
    "create_model",
    "export_onnx",
    "fit",
    "list_encoders",
    "list_models",
    "load_config",
    "load_model",
    "load_onnx",
    "predict",
    "predict_tiled",
    "save_checkpoint",
    "scores",
]
