from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def input_size_for(name: str) -> tuple[int, int]:
    """A small, odd input size each architecture accepts (the original U-Net: a valid one)."""
    if name == "unet":
        return (188, 204)  # 16k + 124: output 4 x 20
    if name == "deconvnet":
        return (225, 231)  # fc6 is a valid 7x7 convolution on pool5: at least 224
    return (97, 131)
