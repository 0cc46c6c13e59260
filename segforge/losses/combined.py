"""Losses built from losses: a weighted sum (CE + Dice), PSPNet's auxiliary loss, and ``create_loss``.

>>> loss_fn = AuxiliaryLoss(WeightedSum([(1.0, CrossEntropyLoss(ignore_index=255)),
...                                      (1.0, DiceLoss(ignore_index=255))]), aux_weight=0.4)
>>> loss = loss_fn(model(images), masks)   # logits, or SegmentationOutput(logits, aux_logits)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from segforge.losses.cross_entropy import CrossEntropyLoss
from segforge.losses.dice import DiceLoss, DiceMode
from segforge.models.segmenter import SegmentationOutput
from segforge.registry import Registry

__all__ = ["LOSSES", "AuxiliaryLoss", "WeightedSum", "auxiliary_loss", "create_loss"]


def _check_coefficient(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class WeightedSum(nn.Module):
    """``forward(logits, target) = Σ_k weight_k · loss_k(logits, target)``.

    Args:
        terms: ``(weight, loss module)`` pairs, e.g.
            ``[(1.0, CrossEntropyLoss(...)), (1.0, DiceLoss(...))]``.

    Raises:
        ValueError: no terms, a malformed pair, a negative weight, or a plain function as a loss.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one (weight, loss) pair")
        weights, losses = [], []
        for i, term in enumerate(terms):
            if not isinstance(term, tuple | list) or len(term) != 2:
                raise ValueError(f"term {i} must be a (weight, loss) pair, got {term!r}")
            weight, loss = term
            if not isinstance(loss, nn.Module):
                raise ValueError(
                    f"term {i}: the loss must be an nn.Module, got {type(loss).__name__}; "
                    "use the module form, e.g. DiceLoss() rather than dice_loss"
                )
            weights.append(_check_coefficient(weight, f"the weight of term {i}"))
            losses.append(loss)
        self.weights = weights
        self.losses = nn.ModuleList(losses)

    def components(self, logits: Tensor, target: Tensor) -> list[Tensor]:
        """Each term's unweighted loss, in order (for logging them separately)."""
        return [loss(logits, target) for loss in self.losses]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        parts = self.components(logits, target)
        return sum((w * part for w, part in zip(self.weights, parts, strict=True)), start=parts[0].new_zeros(()))

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def auxiliary_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    output: Tensor | SegmentationOutput,
    target: Tensor,
    *,
    aux_weight: float = 0.4,
    aux_loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """``loss(logits) + aux_weight · aux_loss(aux_logits)``, or just ``loss(logits)`` for a plain tensor.

    PSPNet (Zhao et al., 2017) trains with an auxiliary head on ResNet's stage 4 weighted 0.4; the
    model returns ``SegmentationOutput(logits, aux_logits)`` in training mode and plain logits in
    eval mode, so the same criterion serves both.

    Args:
        loss_fn: ``(logits, target) -> scalar`` for the main output.
        output: ``(N, C, H, W)`` logits, or ``SegmentationOutput(logits, aux_logits)`` (any pair).
        target: ``(N, H, W)`` integer classes.
        aux_weight: weight of the auxiliary term.
        aux_loss_fn: loss of the auxiliary output; default ``loss_fn``.

    Returns:
        Scalar tensor.

    Raises:
        TypeError: ``output`` is neither a tensor nor a ``(logits, aux_logits)`` pair.
    """
    if isinstance(output, Tensor):
        return loss_fn(output, target)
    if not isinstance(output, tuple) or len(output) != 2:
        raise TypeError(
            f"expected logits (a Tensor) or SegmentationOutput(logits, aux_logits), got {type(output).__name__}"
        )
    logits, aux_logits = output
    return loss_fn(logits, target) + aux_weight * (aux_loss_fn or loss_fn)(aux_logits, target)


class AuxiliaryLoss(nn.Module):
    """Module form of :func:`auxiliary_loss`: ``forward(output, target)``, output a tensor or SegmentationOutput.

    Args:
        main: loss of the main logits (any ``(logits, target)`` module, e.g. a :class:`WeightedSum`).
        aux_weight: weight of the auxiliary term; 0.4 as in PSPNet.
        aux: loss of the auxiliary logits; default ``main``.
    """

    def __init__(self, main: nn.Module, *, aux_weight: float = 0.4, aux: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(main, nn.Module) or (aux is not None and not isinstance(aux, nn.Module)):
            raise ValueError(
                "AuxiliaryLoss wraps loss modules; use e.g. CrossEntropyLoss() rather than cross_entropy_loss"
            )
        self.main = main
        self.aux = aux
        self.aux_weight = _check_coefficient(aux_weight, "aux_weight")

    def forward(self, output: Tensor | SegmentationOutput, target: Tensor) -> Tensor:
        return auxiliary_loss(self.main, output, target, aux_weight=self.aux_weight, aux_loss_fn=self.aux)

    def extra_repr(self) -> str:
        return f"aux_weight={self.aux_weight}"


LOSSES: Registry = Registry("loss")  # name -> builder(**its options) -> nn.Module


@LOSSES.register("ce")
def _cross_entropy(
    *, ignore_index: int | None = None, class_weight: Sequence[float] | Tensor | None = None, validate: bool = True
) -> nn.Module:
    return CrossEntropyLoss(weight=class_weight, ignore_index=ignore_index, validate=validate)


@LOSSES.register("dice")
def _dice(
    *,
    ignore_index: int | None = None,
    dice_class_weight: Sequence[float] | Tensor | None = None,
    smooth: float = 1.0,
    dice_mode: DiceMode = "batch",
    validate: bool = True,
) -> nn.Module:
    return DiceLoss(
        weight=dice_class_weight, ignore_index=ignore_index, smooth=smooth, mode=dice_mode, validate=validate
    )


@LOSSES.register("ce+dice")
def _cross_entropy_and_dice(
    *,
    ignore_index: int | None = None,
    class_weight: Sequence[float] | Tensor | None = None,
    dice_class_weight: Sequence[float] | Tensor | None = None,
    smooth: float = 1.0,
    dice_mode: DiceMode = "batch",
    ce_weight: float | None = None,
    dice_weight: float | None = None,
    validate: bool = True,
) -> nn.Module:
    ce = _cross_entropy(ignore_index=ignore_index, class_weight=class_weight, validate=validate)
    # the cross entropy has already checked the very same (logits, target)
    dice = _dice(
        ignore_index=ignore_index,
        dice_class_weight=dice_class_weight,
        smooth=smooth,
        dice_mode=dice_mode,
        validate=False,
    )
    return WeightedSum(
        [(1.0 if ce_weight is None else ce_weight, ce), (1.0 if dice_weight is None else dice_weight, dice)]
    )


# What to use instead of an option the named loss has no use for.
_INSTEAD = {
    "class_weight": "class_weight weights the cross entropy, which loss {name!r} has none of; use "
    "dice_class_weight for the Dice loss",
    "dice_class_weight": "dice_class_weight weights the Dice loss, which loss {name!r} has none of; use "
    "class_weight for the cross entropy",
    "ce_weight": "ce_weight and dice_weight weigh the terms of 'ce+dice', not of {name!r}; drop them",
    "dice_weight": "ce_weight and dice_weight weigh the terms of 'ce+dice', not of {name!r}; drop them",
}


def create_loss(name: str, *, aux_weight: float | None = None, **options: object) -> nn.Module:
    """Builds a training criterion by name (``LOSSES``), e.g. from a YAML config: ``create_loss(**config["loss"])``.

    Args:
        name: ``"ce"`` (cross entropy), ``"dice"`` (soft Dice) or ``"ce+dice"`` (their weighted sum).
        aux_weight: if given, wrap in :class:`AuxiliaryLoss` with this weight (0.4 for PSPNet).
        options: the named loss's, None for its default: ``ignore_index`` (every term), ``class_weight``
            (the cross entropy's per-class weights, e.g. median-frequency balancing), ``dice_class_weight``,
            ``smooth`` and ``dice_mode`` (``"batch"``/``"image"``) of the Dice loss, ``ce_weight`` and
            ``dice_weight`` (the terms of ``"ce+dice"``, default 1.0 each), ``validate`` (check the
            inputs on every call).

    Returns:
        An ``nn.Module`` called as ``loss(logits_or_output, target)``.

    Raises:
        ValueError: unknown name (lists the choices), or an option that the named loss does not use.
    """
    builder = LOSSES.get(name)
    accepted = inspect.signature(builder).parameters
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in accepted:
            raise ValueError(
                _INSTEAD[key].format(name=name)
                if key in _INSTEAD
                else f"loss {name!r} takes no option {key!r}; it takes {sorted(accepted)}"
            )
    loss = builder(**given)
    return loss if aux_weight is None else AuxiliaryLoss(loss, aux_weight=aux_weight)
