"""Losses: known answers, agreement with torch.nn.functional, ignore_index invariants, every error message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segforge.losses import (
    AuxiliaryLoss,
    CrossEntropyLoss,
    DiceLoss,
    WeightedSum,
    auxiliary_loss,
    create_loss,
    cross_entropy_loss,
    dice_loss,
)
from segforge.models.segmenter import SegmentationOutput

IGNORE = 255


def batch(num_classes: int = 4, n: int = 2, h: int = 6, w: int = 7, ignore_fraction: float = 0.2):
    """Random logits (requiring grad), targets with every class present, and some ignored pixels."""
    channels = num_classes if num_classes > 1 else 1
    logits = torch.randn(n, channels, h, w, requires_grad=True)
    target = torch.randint(0, max(num_classes, 2), (n, h, w))
    target.view(-1)[: max(num_classes, 2)] = torch.arange(max(num_classes, 2))
    ignored = torch.rand(n, h, w) < ignore_fraction
    ignored.view(-1)[: max(num_classes, 2)] = False
    target[ignored] = IGNORE
    return logits, target


def confident(target: torch.Tensor, num_classes: int, scale: float = 50.0) -> torch.Tensor:
    """Logits that put (almost) all probability on the true class; ignored pixels get class 0."""
    labels = target.masked_fill(target == IGNORE, 0)
    if num_classes == 1:
        return (scale * (2 * labels.float() - 1))[:, None]
    return scale * F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def reference_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float, valid: torch.Tensor) -> torch.Tensor:
    """The notes' formula written out with a one-hot target: (2 Σ p·g + s) / (Σ p + Σ g + s) per class."""
    onehot = F.one_hot(target.masked_fill(~valid, 0), probs.shape[1]).permute(0, 3, 1, 2).float()
    mask = valid[:, None].float()
    p, g = probs * mask, onehot * mask
    return (2 * (p * g).sum((0, 2, 3)) + smooth) / (p.sum((0, 2, 3)) + g.sum((0, 2, 3)) + smooth)


# --------------------------------------------------------------------------- cross entropy


@pytest.mark.parametrize("ignore_index", [None, IGNORE, 0])
def test_ce_equals_torch_cross_entropy(ignore_index: int | None) -> None:
    logits, target = batch()
    if ignore_index != IGNORE:
        target = target.masked_fill(target == IGNORE, 1)
    expected = F.cross_entropy(logits, target, ignore_index=-100 if ignore_index is None else ignore_index)
    torch.testing.assert_close(cross_entropy_loss(logits, target, ignore_index=ignore_index), expected)


def test_ce_with_class_weights_equals_torch_weighted_mean() -> None:
    logits, target = batch()
    weight = [0.1, 1.0, 2.5, 0.7]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weight), ignore_index=IGNORE)
    torch.testing.assert_close(cross_entropy_loss(logits, target, weight=weight, ignore_index=IGNORE), expected)
    module = CrossEntropyLoss(weight=torch.tensor(weight), ignore_index=IGNORE)
    torch.testing.assert_close(module(logits, target), expected)


def test_ce_binary_is_bce_with_logits_over_non_ignored_pixels() -> None:
    logits, target = batch(num_classes=1)
    keep = target != IGNORE
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][keep], target[keep].float())
    torch.testing.assert_close(cross_entropy_loss(logits, target, ignore_index=IGNORE), expected)
    # weights (background, foreground): the weighted mean over pixels, as in the multi-class case
    w = torch.tensor([0.5, 3.0])[target[keep]]
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0][keep], target[keep].float(), reduction="none")
    torch.testing.assert_close(
        cross_entropy_loss(logits, target, weight=[0.5, 3.0], ignore_index=IGNORE), (w * per_pixel).sum() / w.sum()
    )


@pytest.mark.parametrize("num_classes", [1, 4])
def test_ce_of_a_perfect_prediction_is_near_zero(num_classes: int) -> None:
    _, target = batch(num_classes)
    assert cross_entropy_loss(confident(target, num_classes), target, ignore_index=IGNORE) < 1e-6


@pytest.mark.parametrize("loss_fn", [cross_entropy_loss, dice_loss], ids=["ce", "dice"])
@pytest.mark.parametrize("num_classes", [1, 4])
def test_ignored_pixels_get_exactly_zero_gradient_and_change_nothing(loss_fn, num_classes: int) -> None:
    logits, target = batch(num_classes)
    loss = loss_fn(logits, target, ignore_index=IGNORE)
    loss.backward()
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    assert ignored.any() and (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()
    # whatever the model says at ignored pixels, the loss is the same
    changed = logits.detach().clone()
    changed[ignored] = 1e3 * torch.randn(int(ignored.sum()))
    torch.testing.assert_close(loss_fn(changed, target, ignore_index=IGNORE), loss.detach())


@pytest.mark.parametrize("loss_fn", [cross_entropy_loss, dice_loss], ids=["ce", "dice"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_all_pixels_ignored_gives_zero_with_a_gradient(loss_fn, num_classes: int) -> None:
    logits = torch.randn(2, num_classes, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    loss = loss_fn(logits, target, ignore_index=IGNORE)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_accepts_other_integer_and_bool_targets() -> None:
    logits = torch.randn(2, 1, 4, 4)
    target = torch.rand(2, 4, 4) > 0.5
    expected = cross_entropy_loss(logits, target.long())
    torch.testing.assert_close(cross_entropy_loss(logits, target), expected)
    torch.testing.assert_close(cross_entropy_loss(logits, target.to(torch.uint8)), expected)


def test_validate_false_gives_the_same_numbers() -> None:
    logits, target = batch()
    for fn in (cross_entropy_loss, dice_loss):
        torch.testing.assert_close(
            fn(logits, target, ignore_index=IGNORE, validate=False), fn(logits, target, ignore_index=IGNORE)
        )


# --------------------------------------------------------------------------- Dice


def test_dice_known_answer_binary() -> None:
    # logits 0 → p = 0.5 at both pixels; target [1, 0]: |A∩B| = 0.5, |A| = 1, |B| = 1
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # smooth 1: 1 − (2·0.5 + 1) / (1 + 1 + 1) = 1/3;   smooth 0: 1 − 1/2 = 1/2
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor(1 / 3))
    torch.testing.assert_close(dice_loss(logits, target, smooth=0.0), torch.tensor(0.5))
    # with the background too: it has the same numbers here, so the average is unchanged
    torch.testing.assert_close(dice_loss(logits, target, weight=[1, 1]), torch.tensor(1 / 3))


@pytest.mark.parametrize("smooth", [0.0, 1.0, 5.0])
def test_dice_matches_the_one_hot_formula(smooth: float) -> None:
    logits, target = batch(num_classes=5)
    valid = target != IGNORE
    per_class = reference_dice(logits.softmax(1), target, smooth, valid)
    weight = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5])
    expected = ((1 - per_class) * weight).sum() / weight.sum()
    torch.testing.assert_close(dice_loss(logits, target, weight=weight, smooth=smooth, ignore_index=IGNORE), expected)
    torch.testing.assert_close(dice_loss(logits, target, smooth=smooth, ignore_index=IGNORE), (1 - per_class).mean())


def test_dice_image_mode_is_the_mean_of_single_image_losses() -> None:
    logits, target = batch(num_classes=3, n=3)
    singles = [dice_loss(logits[i : i + 1], target[i : i + 1], ignore_index=IGNORE) for i in range(3)]
    mean_of_singles = torch.stack(singles).mean()
    torch.testing.assert_close(dice_loss(logits, target, ignore_index=IGNORE, mode="image"), mean_of_singles)
    assert not torch.allclose(dice_loss(logits, target, ignore_index=IGNORE), mean_of_singles)


@pytest.mark.parametrize("num_classes", [1, 2, 4])
@pytest.mark.parametrize("mode", ["batch", "image"])
def test_dice_of_a_perfect_prediction_is_zero(num_classes: int, mode: str) -> None:
    _, target = batch(num_classes)
    loss = dice_loss(confident(target, num_classes), target, ignore_index=IGNORE, mode=mode)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dice_absent_class_costs_nothing_when_predicted_absent_and_is_penalised_when_predicted() -> None:
    target = torch.randint(0, 2, (2, 8, 8))  # class 2 of 3 is absent from the target
    right = confident(target, 3)
    assert dice_loss(right, target).item() == pytest.approx(0.0, abs=1e-6)
    # predict class 2 everywhere in the second image: its Dice is s / (|A| + s) = 1/65, nearly 1 loss
    wrong = right.clone()
    wrong[1] = confident(torch.full((1, 8, 8), 2), 3)[0]
    per_class_loss_of_2 = 1 - 1 / (64 + 1)
    assert dice_loss(wrong, target, weight=[0, 0, 1]).item() == pytest.approx(per_class_loss_of_2, rel=1e-5)


def test_dice_gradient_is_finite_with_smooth_zero_and_an_empty_class() -> None:
    logits = torch.full((1, 1, 2, 2), -200.0, requires_grad=True)  # σ underflows: empty prediction
    target = torch.zeros(1, 2, 2, dtype=torch.long)  # and an empty target
    loss = dice_loss(logits, target, smooth=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_dice_gradcheck() -> None:
    logits = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 3))
    target[0, 0, 0] = IGNORE
    # soft_dice computes in float32 at most; gradcheck only needs a consistent derivative
    assert torch.autograd.gradcheck(
        lambda x: dice_loss(x.float(), target, ignore_index=IGNORE).double(), (logits,), eps=1e-3, atol=1e-3, rtol=1e-2
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1), st.floats(0.0, 10.0))
def test_dice_loss_lies_in_zero_one(num_classes: int, seed: int, smooth: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = 5 * torch.randn(2, num_classes, 4, 5, generator=generator)
    target = torch.randint(0, max(num_classes, 2), (2, 4, 5), generator=generator)
    loss = dice_loss(logits, target, smooth=smooth).item()
    assert -1e-6 <= loss <= 1 + 1e-6


# --------------------------------------------------------------------------- combinations


def test_weighted_sum_is_the_weighted_sum() -> None:
    logits, target = batch()
    ce, dice = CrossEntropyLoss(ignore_index=IGNORE), DiceLoss(ignore_index=IGNORE)
    combined = WeightedSum([(1.0, ce), (0.5, dice)])
    torch.testing.assert_close(combined(logits, target), ce(logits, target) + 0.5 * dice(logits, target))
    assert [p.item() for p in combined.components(logits, target)] == [
        ce(logits, target).item(),
        dice(logits, target).item(),
    ]


def test_auxiliary_loss_is_main_plus_0_4_aux() -> None:
    logits, target = batch()
    aux_logits = torch.randn_like(logits)
    ce = CrossEntropyLoss(ignore_index=IGNORE)
    wrapped = AuxiliaryLoss(ce)
    expected = ce(logits, target) + 0.4 * ce(aux_logits, target)
    torch.testing.assert_close(wrapped(SegmentationOutput(logits, aux_logits), target), expected)
    torch.testing.assert_close(wrapped(logits, target), ce(logits, target))  # eval mode: a plain tensor
    torch.testing.assert_close(
        auxiliary_loss(ce, (logits, aux_logits), target, aux_weight=1.0), ce(logits, target) + ce(aux_logits, target)
    )
    dice = DiceLoss(ignore_index=IGNORE)
    torch.testing.assert_close(
        AuxiliaryLoss(ce, aux_weight=0.25, aux=dice)((logits, aux_logits), target),
        ce(logits, target) + 0.25 * dice(aux_logits, target),
    )


def test_create_loss_builds_each_name() -> None:
    logits, target = batch()
    ce = cross_entropy_loss(logits, target, weight=[1, 2, 3, 4], ignore_index=IGNORE)
    dice = dice_loss(logits, target, ignore_index=IGNORE, mode="image")
    options = dict(ignore_index=IGNORE, dice_mode="image")
    torch.testing.assert_close(create_loss("ce", ignore_index=IGNORE, class_weight=[1, 2, 3, 4])(logits, target), ce)
    torch.testing.assert_close(create_loss("dice", **options)(logits, target), dice)
    both = create_loss("ce+dice", class_weight=[1, 2, 3, 4], dice_weight=2.0, aux_weight=0.4, **options)
    aux = torch.randn_like(logits)
    expected = (
        ce
        + 2 * dice
        + 0.4
        * (
            cross_entropy_loss(aux, target, weight=[1, 2, 3, 4], ignore_index=IGNORE)
            + 2 * dice_loss(aux, target, ignore_index=IGNORE, mode="image")
        )
    )
    torch.testing.assert_close(both(SegmentationOutput(logits, aux), target), expected)


def test_loss_weights_move_with_the_module() -> None:
    module = CrossEntropyLoss(weight=[1.0, 2.0])
    assert module.weight.dtype == torch.float32 and "weight" not in module.state_dict()
    assert module.to(torch.float64).weight.dtype == torch.float64


# --------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("logits_shape", "target", "message"),
    [
        (
            (2, 3, 4, 4),
            torch.zeros(2, 4, 5, dtype=torch.long),
            r"target shape \(2, 4, 5\) does not match logits shape \(2, 3, 4, 4\).*F.interpolate",
        ),
        ((2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long), r"\(2, 1, 4, 4\).*target.squeeze\(1\)"),
        ((2, 3, 4, 4), torch.zeros(2, 4, 4), r"got dtype torch.float32; convert it with target.long\(\)"),
        ((2, 3, 4, 4), torch.full((2, 4, 4), 7), r"label 7 outside \[0, 3\).*set ignore_index=7.*check num_classes"),
        ((2, 3, 4, 4), torch.tensor([-1, 5, 9, 0]).repeat(2, 4, 1), r"labels -1, 5, 9 outside \[0, 3\).*remap"),
        (
            (2, 1, 4, 4),
            torch.full((2, 4, 4), 255),
            r"label 255 .*one output channel is binary.*0/255\? map 255→1.*or set ignore_index=255",
        ),
    ],
)
@pytest.mark.parametrize("loss_fn", [cross_entropy_loss, dice_loss], ids=["ce", "dice"])
def test_bad_inputs_say_how_to_fix_them(loss_fn, logits_shape, target, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loss_fn(torch.randn(logits_shape), target)


def test_more_bad_inputs() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits must be floating point.*not predicted classes"):
        cross_entropy_loss(torch.zeros(2, 3, 4, 4, dtype=torch.long), target)
    with pytest.raises(ValueError, match=r"weight has 2 entries but there are 3 classes; give one per class"):
        cross_entropy_loss(torch.randn(2, 3, 4, 4), target, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"weight has 1 entries but there are 2 classes \(a one-channel model"):
        dice_loss(torch.randn(2, 1, 4, 4), target, weight=[1.0])
    with pytest.raises(ValueError, match=r"finite and >= 0"):
        CrossEntropyLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"all zero"):
        DiceLoss(weight=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"smooth must be a number >= 0"):
        DiceLoss(smooth=-1)
    with pytest.raises(ValueError, match=r"unknown Dice mode 'pixel'; choose from \['batch', 'image'\]"):
        dice_loss(torch.randn(2, 3, 4, 4), target, mode="pixel")
    with pytest.raises(ValueError, match=r"ignore_index must be an int or None"):
        cross_entropy_loss(torch.randn(2, 3, 4, 4), target, ignore_index=255.0)
    with pytest.raises(TypeError, match=r"SegmentationOutput.*AuxiliaryLoss\(loss, aux_weight=0.4\)"):
        CrossEntropyLoss()(SegmentationOutput(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)), target)


def test_combination_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'focal'; choose from \['ce', 'ce\+dice', 'dice'\]"):
        create_loss("focal")
    with pytest.raises(ValueError, match=r"class_weight weights the cross entropy.*use dice_class_weight"):
        create_loss("dice", class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"dice_class_weight weights the Dice loss.*use class_weight"):
        create_loss("ce", dice_class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"weigh the terms of 'ce\+dice', not of 'ce'"):
        create_loss("ce", dice_weight=2.0)
    with pytest.raises(ValueError, match=r"at least one"):
        WeightedSum([])
    with pytest.raises(ValueError, match=r"must be an nn.Module.*DiceLoss\(\) rather than dice_loss"):
        WeightedSum([(1.0, dice_loss)])
    with pytest.raises(ValueError, match=r"weight of term 0 must be a finite number >= 0"):
        WeightedSum([(-1.0, DiceLoss())])
    with pytest.raises(ValueError, match=r"aux_weight must be a finite number >= 0"):
        AuxiliaryLoss(DiceLoss(), aux_weight=float("nan"))
    with pytest.raises(TypeError, match=r"expected logits \(a Tensor\) or SegmentationOutput"):
        AuxiliaryLoss(DiceLoss())([torch.randn(1, 2, 2, 2)], torch.zeros(1, 2, 2, dtype=torch.long))
