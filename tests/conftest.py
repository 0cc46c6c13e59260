from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def image_models() -> list[str]:
    """The registered semantic models that take images (not time series: tests/test_temporal.py; not Mask R-CNN:
    tests/test_mask_rcnn.py), by their declarations."""
    from segforge.models import create_model, list_models

    with torch.device("meta"):
        models = {name: create_model(name, 2) for name in list_models()}
    return [name for name, model in models.items() if model.inputs == "images" and model.task == "semantic"]


def input_size_for(name: str) -> tuple[int, int]:
    """A small, odd input size each architecture accepts (the original U-Net: a valid one)."""
    if name == "unet":
        return (188, 204)  # 16k + 124: output 4 x 20
    if name == "deconvnet":
        return (225, 231)  # fc6 is a valid 7x7 convolution on pool5: at least 224
    return (97, 131)


def tiny_config(data_root, out, name, **overrides):
    """A config for a few seconds of training: SegNet-Basic on 32x32 crops of a synthetic dataset, Adam."""
    from segforge.config import load_config

    values = {
        "data.root": str(data_root),
        "data.format": "folder",
        "data.batch_size": 4,
        "data.workers": 0,
        "data.crop_size": 32,
        "model.name": "segnet_basic",
        "train.epochs": 2,
        "train.out": str(out),
        "train.name": name,
        "optimizer.name": "adam",
        "optimizer.lr": 0.01,
    }
    return load_config(None, values | overrides)
