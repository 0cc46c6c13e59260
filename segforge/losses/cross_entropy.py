"""Pixel-wise cross entropy: the loss of FCN, SegNet, U-Net and PSPNet, with class weights and ignore_index.

The loss is averaged over the pixels that are not ``ignore_index`` only. With class weights ``w`` it
is the weighted mean ``Σ w_y·l / Σ w_y`` over those pixels, exactly what
``torch.nn.functional.cross_entropy(weight=w, ignore_index=...)`` computes, so weights from
median-frequency balancing (SegNet: ``w_c = median_freq / freq_c``) change the balance between
classes, not the scale of the loss. A batch whose pixels are all ignored gives 0 (with a gradient),
not NaN.

A model with one output channel is binary: the logit is passed through a sigmoid and the loss is
binary cross entropy, ``target`` in {0, 1}.

This file also holds :func:`check_loss_inputs`, the validation every loss here shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segforge.labels import NO_LABEL
from segforge.metrics.confusion import check_labels

__all__ = ["CrossEntropyLoss", "as_class_weight", "check_loss_inputs", "cross_entropy_loss"]


def check_loss_inputs(logits: Tensor, target: Tensor, ignore_index: int | None) -> None:
    """Raises a ValueError that says how to fix logits/target a loss cannot take.

    Costs one ``aminmax`` reduction over ``target`` (and one device sync) when the inputs are fine.

    Args:
        logits: ``(N, C, H, W)`` float (any number of spatial dimensions).
        target: ``(N, H, W)`` integer (or bool) classes in ``[0, C)`` (``{0, 1}`` when ``C == 1``)
            or ``ignore_index``.
        ignore_index: target value to leave out, or None.

    Raises:
        TypeError: not tensors.
        ValueError: wrong shapes, dtypes or label values, each with the fix.
    """
    if isinstance(logits, tuple):
        raise TypeError(
            "got a tuple of logits (a SegmentationOutput from a model with an auxiliary head in training mode); "
            "wrap the loss as AuxiliaryLoss(loss, aux_weight=0.4), or pass output.logits"
        )
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"logits and target must be tensors, got {type(logits).__name__} and {type(target).__name__}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if not logits.is_floating_point():
        raise ValueError(
            f"logits must be floating point, got {logits.dtype}; pass the model's raw scores (N, C, H, W), "
            "not predicted classes"
        )
    if logits.dim() < 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, C, H, W) with C >= 1, got {tuple(logits.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must hold integer class indices, got dtype {target.dtype}; convert it with target.long()"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if target.shape != expected:
        if target.dim() == logits.dim() and target.shape[1] == 1 and target.shape[2:] == logits.shape[2:]:
            hint = "; drop the channel dimension with target.squeeze(1)"
        elif target.dim() == len(expected) and target.shape[0] == logits.shape[0]:
            hint = "; resize the logits to the target's size (F.interpolate) or the target to the logits'"
        else:
            hint = ""
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected target shape {tuple(expected)} (N, H, W){hint}"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}; move both to one device")
    channels = logits.shape[1]
    if channels == 1:
        binary = " (a model with one output channel is binary: targets are 0 or 1)"
        check_labels(target, 2, ignore_index, context=binary)
    else:
        check_labels(target, channels, ignore_index, context=f" (the logits have C={channels} channels)")


def as_class_weight(
    weight: Tensor | Sequence[float] | None,
    num_classes: int | None,
    like: Tensor | None = None,
    *,
    binary: bool = False,
    check_values: bool = True,
) -> Tensor | None:
    """Validates per-class weights and returns them as a float tensor (on ``like``'s device and dtype).

    Args:
        weight: per-class weights, or None.
        num_classes: the number of target classes (C, or 2 for a one-channel binary model), or None
            not to check the length.
        like: a tensor whose device (and floating dtype) the weights take.
        binary: the model has one output channel (only changes the error message).
        check_values: also check that they are finite, >= 0 and not all 0 (costs a device sync).

    Raises:
        ValueError: wrong length, negative or non-finite entries, or all zero.
    """
    if weight is None:
        return None
    device = like.device if like is not None else None
    w = torch.as_tensor(weight, dtype=torch.float32, device=device).flatten()
    if num_classes is not None and w.numel() != num_classes:
        hint = " (a one-channel model is binary: give 2 weights, background then foreground)" if binary else ""
        raise ValueError(
            f"weight has {w.numel()} entries but there are {num_classes} classes{hint}; give one per class"
        )
    if check_values:
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"class weights must be finite and >= 0, got {w.tolist()}")
        if not bool(w.sum() > 0):
            raise ValueError("class weights are all zero; at least one class must have a positive weight")
    return w.to(like.dtype) if like is not None and like.is_floating_point() else w


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | Sequence[float] | None = None,
    ignore_index: int | None = None,
    validate: bool = True,
) -> Tensor:
    """Pixel-wise cross entropy averaged over the non-ignored pixels (weighted mean with class weights).

    Args:
        logits: ``(N, C, H, W)`` float scores; ``C == 1`` means binary (sigmoid + binary cross entropy).
        target: ``(N, H, W)`` integer classes in ``[0, C)`` (``{0, 1}`` when ``C == 1``) or ``ignore_index``.
        weight: per-class weights, C of them (2 for a one-channel model: background, foreground),
            e.g. from median-frequency balancing; None for uniform.
        ignore_index: target value whose pixels contribute neither loss nor gradient.
        validate: check shapes, dtypes and label values first (one reduction over ``target``).

    Returns:
        Scalar tensor: ``Σ w_y·l / Σ w_y`` over non-ignored pixels; 0 (with a zero gradient) when
        every pixel is ignored or has weight 0.

    Raises:
        ValueError / TypeError: see :func:`check_loss_inputs` and :func:`as_class_weight`.
    """
    if validate:
        check_loss_inputs(logits, target, ignore_index)
    binary = logits.shape[1] == 1
    w = as_class_weight(weight, 2 if binary else logits.shape[1], logits, binary=binary, check_values=validate)
    target = target.long()
    valid = target != ignore_index if ignore_index is not None else None
    safe_target = target.masked_fill(~valid, 0) if valid is not None else target

    if binary:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], safe_target.to(logits.dtype), reduction="none")
        pixel_weight = w[safe_target] if w is not None else None
        if valid is not None:
            pixel_weight = valid.to(per_pixel.dtype) if pixel_weight is None else pixel_weight * valid
        total = per_pixel.sum() if pixel_weight is None else (per_pixel * pixel_weight).sum()
    else:
        # F.cross_entropy already zeroes ignored pixels and multiplies by w_y; only the mean is ours.
        total = F.cross_entropy(
            logits,
            target,
            weight=w,
            reduction="sum",
            ignore_index=ignore_index if ignore_index is not None else NO_LABEL,
        )
        pixel_weight = w[safe_target] if w is not None else None
        if valid is not None:
            pixel_weight = valid if pixel_weight is None else pixel_weight * valid
    if pixel_weight is None:
        return total / target.numel() if target.numel() else total * 0.0
    denominator = pixel_weight.sum().to(total.dtype)
    # All pixels ignored (or weighted 0): total is exactly 0 then, so dividing by 1 returns 0 with a
    # zero gradient instead of the 0/0 = NaN that F.cross_entropy gives.
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss`; stores the arguments, ``forward(logits, target)``.

    The class weights are a (non-persistent) buffer, so ``.to(device)`` moves them with the model.
    """

    def __init__(
        self,
        *,
        weight: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        # checked now, so that a bad config fails when the loss is built, not at the first batch
        self.register_buffer("weight", as_class_weight(weight, None), persistent=False)
        self.ignore_index = ignore_index
        self.validate = validate

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy_loss(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, validate=self.validate
        )

    def extra_repr(self) -> str:
        weight = None if self.weight is None else [round(x, 4) for x in self.weight.tolist()]
        return f"weight={weight}, ignore_index={self.ignore_index}"
