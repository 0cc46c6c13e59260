"""Soft Dice loss: 1 − 2|A∩B| / (|A| + |B|), per class, with the softmax prediction as a soft set.

As in the notes, for each class ``c``, ``A`` is the predicted probability map ``p_c`` (softmax over
the C channels; sigmoid for a one-channel binary model), ``B`` the one-hot target ``g_c``, and
``|A∩B| ≈ Σ p_c·g_c`` (the element-wise product, summed). With the smooth term ``s``::

    dice_c = (2 Σ p_c·g_c + s) / (Σ p_c + Σ g_c + s)        loss = Σ_c w_c (1 − dice_c) / Σ_c w_c

Details a user needs to know:

- **Where the sums run** (``mode``): ``"batch"`` (default) sums over the whole batch and all pixels
  ("batch Dice"), so a class is scored once per batch however it is spread over the images;
  ``"image"`` computes ``dice_c`` per image and averages the losses over the images (an image whose
  pixels are all ignored counts with loss 0).
- **ignore_index**: ignored pixels are left out of both A and B (and get exactly zero gradient).
- **smooth** ``s`` (default 1.0) is added to numerator *and* denominator. It keeps the loss defined
  and its gradient bounded when a class is (nearly) empty.
- **Absent classes** are not skipped: every class counts with its weight. A class absent from the
  target (``Σ g_c = 0``) has ``dice_c = s / (Σ p_c + s)``: about 1 (no loss) when the prediction
  agrees that it is absent, falling towards 0 as the model predicts it anyway, so false positives
  on images without the class are penalised. With ``smooth=0`` a class empty in both is scored as
  a perfect match (``dice_c = 1``). To leave a class out of the loss (e.g. the background), give it
  weight 0.
- **Binary** (one output channel): the two classes are ``1 − σ(x)`` and ``σ(x)``; the default
  weight ``(0, 1)`` scores the foreground only, the usual binary Dice loss; ``weight=(1, 1)``
  averages background and foreground Dice.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from segforge.losses.cross_entropy import as_class_weight, check_loss_inputs

__all__ = ["DiceLoss", "DiceMode", "dice_loss", "soft_dice_per_class"]

DiceMode = Literal["batch", "image"]


def _check_options(smooth: float, mode: str) -> None:
    if mode not in typing.get_args(DiceMode):
        raise ValueError(f"unknown Dice mode {mode!r}; choose from {list(typing.get_args(DiceMode))}")
    if isinstance(smooth, bool) or not isinstance(smooth, int | float) or not smooth >= 0:
        raise ValueError(f"smooth must be a number >= 0, got {smooth!r}; the default is 1.0")


def soft_dice_per_class(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    mode: DiceMode = "batch",
) -> Tensor:
    """The soft Dice coefficient of every class (no validation; see :func:`dice_loss`).

    Returns:
        ``(1, K)`` for ``mode="batch"`` or ``(N, K)`` for ``mode="image"``, where ``K = C`` (2 for a
        one-channel binary model: background, foreground).
    """
    n = logits.shape[0]
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits[:, 0].float())
        probs = torch.stack([1 - foreground, foreground], dim=1)
    else:
        probs = logits.float().softmax(dim=1)
    probs = probs.reshape(n, probs.shape[1], -1)  # (N, K, P)
    target = target.reshape(n, -1).long()  # (N, P)
    if ignore_index is not None:
        valid = target != ignore_index
        target = target.masked_fill(~valid, 0)
        probs = probs * valid[:, None]  # ignored pixels leave |A| (and, below, |A∩B|)
        in_target = valid.to(probs.dtype)
    else:
        in_target = torch.ones_like(target, dtype=probs.dtype)
    # Σ p_c·g_c without building the one-hot g: at each pixel only the true class's probability
    # survives the product, so gather it and add it to that class's bin. Same numbers, one (N, K, P)
    # tensor less.
    true_prob = probs.gather(1, target[:, None]).squeeze(1)
    intersection = probs.new_zeros(n, probs.shape[1]).scatter_add_(1, target, true_prob)  # Σ p_c·g_c
    target_size = probs.new_zeros(n, probs.shape[1]).scatter_add_(1, target, in_target)  # |B| = Σ g_c
    pred_size = probs.sum(dim=2)  # |A| = Σ p_c
    if mode == "batch":
        intersection, target_size, pred_size = (x.sum(0, keepdim=True) for x in (intersection, target_size, pred_size))
    denominator = pred_size + target_size + smooth
    # only with smooth=0 can it be 0 (class empty in both): a perfect match. Dividing by 1 there keeps
    # the gradient finite (where() alone would still back-propagate 0/0).
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (2 * intersection + smooth) / safe, torch.ones_like(denominator))


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | Sequence[float] | None = None,
    ignore_index: int | None = None,
    smooth: float = 1.0,
    mode: DiceMode = "batch",
    validate: bool = True,
) -> Tensor:
    """Soft Dice loss ``Σ_c w_c (1 − dice_c) / Σ_c w_c`` (see the module docstring for the rules).

    Args:
        logits: ``(N, C, H, W)`` float scores; ``C == 1`` means binary (sigmoid).
        target: ``(N, H, W)`` integer classes in ``[0, C)`` (``{0, 1}`` when ``C == 1``) or ``ignore_index``.
        weight: per-class weights, C of them (2 for a one-channel model: background, foreground);
            default uniform, or ``(0, 1)`` (foreground only) for a one-channel model.
        ignore_index: target value whose pixels are left out of both prediction and target.
        smooth: ``s >= 0`` added to numerator and denominator of every ``dice_c``.
        mode: ``"batch"``: sums over the batch and pixels; ``"image"``: per image, then averaged.
        validate: check shapes, dtypes and label values first (one reduction over ``target``).

    Returns:
        Scalar tensor in ``[0, 1]``; 0 for a perfect prediction.

    Raises:
        ValueError / TypeError: bad inputs (see :func:`check_loss_inputs`), weights, smooth or mode.
    """
    if validate:
        check_loss_inputs(logits, target, ignore_index)
    _check_options(smooth, mode)
    binary = logits.shape[1] == 1
    num_classes = 2 if binary else logits.shape[1]
    w = as_class_weight(weight, num_classes, logits, binary=binary, check_values=validate)
    if w is None:
        w = logits.new_tensor([0.0, 1.0] if binary else [1.0] * num_classes, dtype=torch.float32)
    w = w.float()
    dice = soft_dice_per_class(logits, target, ignore_index=ignore_index, smooth=float(smooth), mode=mode)
    return ((1 - dice) * w).sum(dim=1).mean() / w.sum()


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss`; stores the arguments, ``forward(logits, target)``.

    The class weights are a (non-persistent) buffer, so ``.to(device)`` moves them with the model.
    """

    def __init__(
        self,
        *,
        weight: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        mode: DiceMode = "batch",
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_options(smooth, mode)  # now, so that a bad config fails when the loss is built
        self.register_buffer("weight", as_class_weight(weight, None), persistent=False)
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.mode = mode
        self.validate = validate

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            smooth=self.smooth,
            mode=self.mode,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        weight = None if self.weight is None else [round(x, 4) for x in self.weight.tolist()]
        return f"weight={weight}, ignore_index={self.ignore_index}, smooth={self.smooth}, mode={self.mode!r}"
