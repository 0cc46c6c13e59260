"""segforge: semantic segmentation with the architectures of the papers (FCN, DeconvNet, SegNet, U-Net, PSPNet)."""

from __future__ import annotations

from segforge.encoders import create_encoder, list_encoders
from segforge.losses import create_loss
from segforge.metrics import ConfusionMatrix, confusion_matrix, scores
from segforge.models import Segmenter, SegmentationOutput, count_parameters, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "ConfusionMatrix",
    "confusion_matrix",
    "create_loss",
    "scores",
    "Segmenter",
    "SegmentationOutput",
    "__version__",
    "count_parameters",
    "create_encoder",
    "create_model",
    "list_encoders",
    "list_models",
]
