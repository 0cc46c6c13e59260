"""Class probabilities from a network: softmax (sigmoid for a one-logit binary model), averaged over
test-time augmentation views (horizontal flips and scales), at every pixel of images of any size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segforge.models.segmenter import full_size_forward


class NonFiniteOutput(ValueError):
    """The network's output holds NaN or infinity: its weights diverged in training, or are damaged."""


def check_finite(output: torch.Tensor, what: str) -> torch.Tensor:
    """``output``, or ``NonFiniteOutput`` naming ``what`` when it holds NaN or infinity (argmax would silently
    make them class 0)."""
    if not torch.isfinite(output).all():
        raise NonFiniteOutput(
            f"the network's output on {what} is not finite (NaN or infinity): its weights diverged in training "
            "or are damaged; use a checkpoint from before, or train again with a lower learning rate"
        )
    return output


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K, H, W)`` class probabilities of logits; a one-logit binary model's as (background, foreground)."""
    if logits.shape[1] == 1:  # one-logit binary model: (background, foreground)
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)
    return logits.softmax(dim=1)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, *, flip: bool = False, scales: Sequence[float] = (1.0,)
) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` for ``images: (N, C, H, W)``, averaged over the TTA views.

    Args:
        flip: also run the horizontally flipped images (flipped back before averaging).
        scales: resize factors; each view is resized bilinearly, run, and its probabilities resized
            back to ``H x W``.
    """
    height, width = images.shape[-2:]
    for scale in scales:
        if min(round(height * scale), round(width * scale)) < 1:
            raise ValueError(
                f"test-time scale {scale} makes {height}x{width} pixels smaller than one pixel; use scales "
                f"of at least {1 / min(height, width):.3g} here (or predict without --scales)"
            )
    total, views = None, 0
    for scale in scales:
        scaled = (
            images
            if scale == 1.0
            else F.interpolate(
                images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
            )
        )
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            probs = probabilities(full_size_forward(model, x).float())
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            views += 1
    return check_finite(total / views, f"{'images' if len(images) > 1 else 'an image'} of {height}x{width}")
