"""Training losses: pixel-wise cross entropy, soft Dice, their weighted sum and PSPNet's auxiliary loss.

Every loss takes ``logits: (N, C, H, W) float`` and ``target: (N, H, W) int64``, honours
``ignore_index`` (ignored pixels get no loss and exactly zero gradient) and treats a one-channel
model as binary (sigmoid). Each comes as a pure function and a module that stores its arguments::

    cross_entropy_loss(logits, target, weight=..., ignore_index=255)   CrossEntropyLoss(...)
    dice_loss(logits, target, ignore_index=255, smooth=1.0)            DiceLoss(...)
    create_loss("ce+dice", ignore_index=255, aux_weight=0.4)           # from a config
"""

from __future__ import annotations

from segforge.losses.combined import LOSSES, AuxiliaryLoss, WeightedSum, auxiliary_loss, create_loss
from segforge.losses.cross_entropy import CrossEntropyLoss, as_class_weight, check_loss_inputs, cross_entropy_loss
from segforge.losses.dice import DiceLoss, DiceMode, dice_loss, soft_dice_per_class

__all__ = [
    "LOSSES",
    "AuxiliaryLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DiceMode",
    "WeightedSum",
    "as_class_weight",
    "auxiliary_loss",
    "check_loss_inputs",
    "create_loss",
    "cross_entropy_loss",
    "dice_loss",
    "soft_dice_per_class",
]
