"""The adversary of adversarial training (Luc, Couprie, Chintala & Verbeek, "Semantic Segmentation using
Adversarial Networks", 2016): a network that tells ground-truth label maps from a segmenter's predicted ones.

It sees a label map ``(N, K, H, W)`` (a one-hot ground truth, or the segmenter's softmax) in one of the
paper's encodings, and answers at every location the logit that the map is the ground truth:

* ``basic``: the label map itself (``K`` channels);
* ``product``: each class map multiplied with each image channel (``K x C`` channels), so that the adversary
  sees what each class covers;
* ``scaling``: the label map as in basic, the ground truth softened towards the prediction (the true class
  keeps at least ``tau`` = 0.9, the rest shared as the segmenter shares it), so that a map cannot be told
  real by its one-hot sharpness alone.

Architectures: ``image_label`` (the paper's network for Stanford Background: a label branch and an image
branch merged, then convolutions), ``large_fov`` and ``small_fov`` (its networks for PASCAL VOC, 3x3
convolutions seeing 34x34 pixels, or 3x3 and 1x1 convolutions seeing 18x18).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segforge.registry import Registry

Encoding = Literal["basic", "product", "scaling"]
ENCODINGS: tuple[str, ...] = ("basic", "product", "scaling")
ADVERSARIES: Registry = Registry("adversary")
TAU = 0.9  # the scaling encoding's least share of the true class


def encoding_channels(encoding: str, num_classes: int, in_channels: int) -> int:
    """How many channels a label map has in ``encoding``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown adversarial encoding {encoding!r}; choose from {list(ENCODINGS)}")
    return num_classes * in_channels if encoding == "product" else num_classes


def soften(onehot: torch.Tensor, probabilities: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The scaling encoding's ground truth: at each pixel the true class ``l`` gets ``max(tau, s_l)`` and every
    other class ``c`` gets ``s_c (1 - that) / (1 - s_l)``, ``s`` the segmenter's probabilities. Rows still sum
    to 1. ``onehot``, ``probabilities``: ``(N, K, H, W)``."""
    true = (onehot * probabilities).sum(1, keepdim=True)  # s_l
    kept = torch.clamp(true, min=tau)
    others = probabilities * (1 - kept) / (1 - true).clamp(min=1e-6)
    return torch.where(onehot.bool(), kept.expand_as(onehot), others)


def encode(label_map: torch.Tensor, image: torch.Tensor, encoding: str) -> torch.Tensor:
    """A label map ``(N, K, H, W)`` as the adversary takes it: itself, or (``product``) each class map times each
    image channel ``(N, K x C, H, W)``."""
    if encoding == "product":
        return (label_map[:, :, None] * image[:, None]).flatten(1, 2)
    return label_map


def _conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]


def _stack(in_channels: int, layers: Sequence[int | tuple[int, int] | str], logit_kernel: int = 1) -> nn.Sequential:
    """Convolutions (``width`` for 3x3, ``(width, kernel)``), ``"pool"`` for 2x2 max pooling, then the logit's
    ``logit_kernel`` convolution."""
    modules: list[nn.Module] = []
    channels = in_channels
    for layer in layers:
        if layer == "pool":
            modules.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        width, kernel = layer if isinstance(layer, tuple) else (layer, 3)
        modules += _conv(channels, width, kernel)
        channels = width
    modules.append(nn.Conv2d(channels, 1, logit_kernel, padding=logit_kernel // 2))
    return nn.Sequential(*modules)


class Adversary(nn.Module):
    """``forward(label_map (N, K', H, W), image (N, C, H, W)) -> logits (N, 1, h, w)``: at each location the
    logit that the (encoded) label map is a ground truth. ``image_branch``: a separate branch for the image,
    merged with the label branch (the Stanford Background network); otherwise the label map alone."""

    def __init__(
        self, body: nn.Module, *, label_branch: nn.Module | None = None, image_branch: nn.Module | None = None
    ):
        super().__init__()
        self.label_branch, self.image_branch, self.body = label_branch, image_branch, body

    def forward(self, label_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.image_branch is None:
            return self.body(label_map)
        return self.body(torch.cat([self.label_branch(label_map), self.image_branch(image)], 1))


@ADVERSARIES.register("image_label")
def image_label(label_channels: int, in_channels: int) -> Adversary:
    """Stanford Background's adversary: label map 5x5 → 64; image 5x5 → 16, 5x5 → 64; merged (128), then
    3x3 convolutions 128, pool, 256, pool, 512 and the logit."""
    return Adversary(
        _stack(128, [128, "pool", 256, "pool", 512]),
        label_branch=nn.Sequential(*_conv(label_channels, 64, 5)),
        image_branch=nn.Sequential(*_conv(in_channels, 16, 5), *_conv(16, 64, 5)),
    )


@ADVERSARIES.register("large_fov")
def large_fov(label_channels: int, in_channels: int) -> Adversary:
    """PASCAL VOC's large field of view (34x34 pixels): 3x3 convolutions 96, 128, 128, pool, 256, 256, pool, 512,
    and the logit's."""
    return Adversary(_stack(label_channels, [96, 128, 128, "pool", 256, 256, "pool", 512], logit_kernel=3))


@ADVERSARIES.register("small_fov")
def small_fov(label_channels: int, in_channels: int) -> Adversary:
    """PASCAL VOC's small field of view (18x18 pixels): 3x3 and 1x1 convolutions alternating (96, 128, pool,
    256, 256, pool, 512), and a 1x1 logit."""
    layers = [96, (128, 1), "pool", 256, (256, 1), "pool", 512]
    return Adversary(_stack(label_channels, layers))


def create_adversary(name: str, *, num_classes: int, in_channels: int, encoding: str) -> Adversary:
    """A registered adversary for label maps of ``num_classes`` classes in ``encoding`` over images of
    ``in_channels`` channels."""
    return ADVERSARIES.get(name)(encoding_channels(encoding, num_classes, in_channels), in_channels)


def adversary_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross entropy of the adversary's per-location logits against "ground truth" (``real``) or not."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
