"""Metrics: a hand-computed confusion matrix, the absent-class rule, streaming, torchmetrics, reports."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segforge.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_table,
    load_json,
    plot_confusion,
    save_json,
    scores,
)

IGNORE = 255

# Rows: ground truth, columns: prediction.
#            pred 0  1  2
HAND = [
    [3, 1, 0],  # t_0 = 4
    [1, 4, 1],  # t_1 = 6
    [0, 2, 5],
]  # t_2 = 7
#   predicted:  4  7  6        (column sums Σ_j n_ji)


def pixels_for(matrix: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) 1-D label lists whose confusion matrix is ``matrix``, shuffled."""
    target, pred = [], []
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            target += [i] * count
            pred += [j] * count
    order = torch.randperm(len(target))
    return torch.tensor(pred)[order], torch.tensor(target)[order]


# --------------------------------------------------------------------------- known answers


def test_hand_computed_three_class_matrix() -> None:
    pred, target = pixels_for(HAND)
    n = confusion_matrix(pred.reshape(1, 1, -1), target.reshape(1, 1, -1), 3)
    assert n.dtype == torch.int64 and n.tolist() == HAND

    s = scores(n)
    # pixel accuracy = Σ n_ii / Σ t_i = (3 + 4 + 5) / (4 + 6 + 7) = 12 / 17
    assert s["pixel_accuracy"] == pytest.approx(12 / 17)
    # mean accuracy = (1/3)(3/4 + 4/6 + 5/7)
    assert s["mean_accuracy"] == pytest.approx((3 / 4 + 4 / 6 + 5 / 7) / 3)
    # IU_i = n_ii / (t_i + Σ_j n_ji − n_ii): 3/(4+4−3) = 3/5, 4/(6+7−4) = 4/9, 5/(7+6−5) = 5/8
    assert s["iou"] == pytest.approx([3 / 5, 4 / 9, 5 / 8])
    assert s["mean_iou"] == pytest.approx((3 / 5 + 4 / 9 + 5 / 8) / 3)
    # f.w. IU = (1/17)(4·3/5 + 6·4/9 + 7·5/8)
    assert s["fw_iou"] == pytest.approx((4 * 3 / 5 + 6 * 4 / 9 + 7 * 5 / 8) / 17)
    # Dice_i = 2 n_ii / (t_i + Σ_j n_ji): 6/8, 8/13, 10/13
    assert s["dice"] == pytest.approx([6 / 8, 8 / 13, 10 / 13])
    assert s["mean_dice"] == pytest.approx((6 / 8 + 8 / 13 + 10 / 13) / 3)
    # precision_i = n_ii / Σ_j n_ji: 3/4, 4/7, 5/6;  recall_i = n_ii / t_i: 3/4, 4/6, 5/7
    assert s["precision"] == pytest.approx([3 / 4, 4 / 7, 5 / 6])
    assert s["recall"] == pytest.approx([3 / 4, 4 / 6, 5 / 7])
    assert s["support"] == [4, 6, 7]
    assert "foreground_iou" not in s
    assert all(isinstance(s[k], float) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"))
    # the FCN paper's four metrics by name, on the matrix as a tensor, an array or lists alike
    from segforge.metrics import frequency_weighted_iou, mean_accuracy, mean_iou, pixel_accuracy

    for matrix in (n, n.numpy(), HAND):
        assert pixel_accuracy(matrix) == pytest.approx(12 / 17)
        assert mean_accuracy(matrix) == pytest.approx((3 / 4 + 4 / 6 + 5 / 7) / 3)
        assert mean_iou(matrix) == pytest.approx((3 / 5 + 4 / 9 + 5 / 8) / 3)
        assert frequency_weighted_iou(matrix) == pytest.approx((4 * 3 / 5 + 6 * 4 / 9 + 7 * 5 / 8) / 17)


def test_binary_reports_the_foreground_class() -> None:
    # t = [5, 3], predicted = [4, 4], n_11 = 2: IoU_1 = 2/(3+4−2) = 2/5, Dice_1 = 4/7
    s = scores(torch.tensor([[3, 2], [1, 2]]))
    assert s["foreground_iou"] == pytest.approx(2 / 5) and s["foreground_dice"] == pytest.approx(4 / 7)
    # a one-channel model's logits are thresholded at 0
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[[[-1.0, 2.0, 0.5, -3.0]]]]), torch.tensor([[[0, 1, 0, 1]]]))
    assert cm.matrix.tolist() == [[1, 1], [1, 1]]


def test_absent_class_is_nan_and_left_out_of_the_means() -> None:
    # class 3 appears in neither ground truth nor prediction; class 2 is predicted but never true
    n = torch.tensor([[3, 1, 0, 0], [1, 4, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = scores(n)
    for key in ("iou", "dice", "precision", "recall"):
        assert math.isnan(s[key][3]), key
    assert s["iou"][2] == 0.0 and s["dice"][2] == 0.0  # false positives only: a real 0, counted
    assert math.isnan(s["recall"][2]) and s["precision"][2] == 0.0
    # mean IU over classes 0, 1, 2 (not 3): IU = 3/5, 4/(6+5−4) = 4/7, 0
    assert s["mean_iou"] == pytest.approx((3 / 5 + 4 / 7 + 0) / 3)
    # mean accuracy over classes with ground truth (0, 1): (3/4 + 4/6) / 2
    assert s["mean_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # the same as dropping the absent class from the matrix
    reduced = scores(n[:3, :3])
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice"):
        assert s[key] == pytest.approx(reduced[key]), key


def test_empty_matrix_gives_nan_not_an_error() -> None:
    s = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(s[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"))


def test_ignore_index_pixels_are_not_counted() -> None:
    target = torch.tensor([[[0, 1, IGNORE], [2, IGNORE, 1]]])
    pred = torch.tensor([[[0, 2, 1], [2, 0, 1]]])
    n = confusion_matrix(pred, target, 3, ignore_index=IGNORE)
    assert n.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert n.sum() == 4
    # a label that is a valid class can be ignored too: class 0's row stays empty
    n = confusion_matrix(pred, target.masked_fill(target == IGNORE, 0), 3, ignore_index=0)
    assert n.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 1]]


# --------------------------------------------------------------------------- streaming


def test_update_accepts_logits_and_predictions_alike() -> None:
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    batch = a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix) and torch.equal(batch, a.matrix)
    assert a.compute() == scores(a.matrix)


def test_merged_accumulators_equal_one_over_all_the_data() -> None:
    preds = torch.randint(0, 5, (6, 8, 8))
    targets = torch.randint(0, 5, (6, 8, 8))
    targets[targets == 4] = IGNORE
    whole, first, second = (ConfusionMatrix(5, ignore_index=IGNORE) for _ in range(3))
    whole.update(preds, targets)
    for i in range(3):
        first.update(preds[i : i + 1], targets[i : i + 1])
    second.update(preds[3:], targets[3:])
    total = first + second
    assert torch.equal(total.matrix, whole.matrix)
    assert not torch.equal(first.matrix, whole.matrix)  # __add__ left its operands alone
    assert torch.equal(first.merge(second).matrix, whole.matrix)
    first.reset()
    assert first.matrix.sum() == 0


def test_all_reduce_without_a_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm and torch.equal(cm.matrix, before)


def _all_reduce_worker(rank: int, world_size: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([rank, 0]), torch.tensor([rank, rank]))  # rank 0: [0,0]/[0,0]; rank 1: [1,0]/[1,1]
        cm.all_reduce()
        torch.save(cm.matrix, f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.start_processes(
        _all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    expected = [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert [torch.load(tmp_path / f"{r}.pt").tolist() for r in range(2)] == [expected, expected]


# --------------------------------------------------------------------------- torchmetrics cross-check


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_agrees_with_torchmetrics_when_every_class_is_present(ignore_index: int | None) -> None:
    classification = pytest.importorskip("torchmetrics.classification")
    num_classes = 6
    target = torch.randint(0, num_classes, (4, 16, 16))
    pred = torch.where(torch.rand(4, 16, 16) < 0.6, target, torch.randint(0, num_classes, (4, 16, 16)))
    # every class in both ground truth and prediction: torchmetrics' absent-class handling differs
    target.view(-1)[:num_classes] = torch.arange(num_classes)
    pred.view(-1)[:num_classes] = torch.arange(num_classes)
    if ignore_index is not None:
        target[:, :3] = ignore_index
    s = scores(confusion_matrix(pred, target, num_classes, ignore_index))
    options = dict(num_classes=num_classes, ignore_index=ignore_index)

    def tm(metric_class, **kw):
        return metric_class(**options, **kw)(pred, target)

    assert torch.equal(
        tm(classification.MulticlassConfusionMatrix), confusion_matrix(pred, target, num_classes, ignore_index)
    )
    assert s["mean_iou"] == pytest.approx(tm(classification.MulticlassJaccardIndex, average="macro").item(), abs=1e-6)
    assert s["iou"] == pytest.approx(tm(classification.MulticlassJaccardIndex, average="none").tolist(), abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(tm(classification.MulticlassAccuracy, average="micro").item(), abs=1e-6)
    assert s["mean_accuracy"] == pytest.approx(tm(classification.MulticlassAccuracy, average="macro").item(), abs=1e-6)
    assert s["dice"] == pytest.approx(tm(classification.MulticlassF1Score, average="none").tolist(), abs=1e-6)
    assert s["precision"] == pytest.approx(tm(classification.MulticlassPrecision, average="none").tolist(), abs=1e-6)
    assert s["recall"] == pytest.approx(tm(classification.MulticlassRecall, average="none").tolist(), abs=1e-6)


# --------------------------------------------------------------------------- properties

matrices = st.integers(2, 6).flatmap(lambda c: arrays(np.int64, (c, c), elements=st.integers(0, 50)))


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_pixel_accuracy_is_trace_over_sum_and_metrics_are_bounded(n: np.ndarray) -> None:
    s = scores(n)
    if n.sum() == 0:
        assert math.isnan(s["pixel_accuracy"])
        return
    assert s["pixel_accuracy"] == pytest.approx(np.trace(n) / n.sum())
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice"):
        assert math.isnan(s[key]) or 0.0 <= s[key] <= 1.0 + 1e-12, key
    # IoU ≤ Dice for every defined class (D = 2J / (1 + J))
    for iou, dice in zip(s["iou"], s["dice"], strict=True):
        assert math.isnan(iou) == math.isnan(dice)
        assert math.isnan(iou) or dice == pytest.approx(2 * iou / (1 + iou))


@settings(max_examples=60, deadline=None)
@given(matrices, st.randoms(use_true_random=False))
def test_metrics_are_invariant_to_relabelling_classes(n: np.ndarray, random) -> None:
    perm = list(range(len(n)))
    random.shuffle(perm)
    relabelled = n[np.ix_(perm, perm)]  # class perm[k] becomes class k, in truth and prediction alike
    a, b = scores(n), scores(relabelled)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice"):
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
    for key in ("iou", "dice", "precision", "recall"):
        assert [a[key][p] for p in perm] == pytest.approx(b[key], nan_ok=True), key


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_confusion_rows_count_the_ground_truth(num_classes: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes + 1, (2, 5, 7), generator=generator)
    target[target == num_classes] = IGNORE
    pred = torch.randint(0, num_classes, (2, 5, 7), generator=generator)
    n = confusion_matrix(pred, target, num_classes, ignore_index=IGNORE)
    kept = target[target != IGNORE]
    assert n.sum(1).tolist() == torch.bincount(kept, minlength=num_classes).tolist()
    assert n.sum(0).tolist() == torch.bincount(pred[target != IGNORE], minlength=num_classes).tolist()


# --------------------------------------------------------------------------- errors


def test_bad_inputs_say_how_to_fix_them() -> None:
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target contains label 7 outside \[0, 3\).*set ignore_index=7"):
        confusion_matrix(pred, torch.full((2, 4, 4), 7), 3)
    with pytest.raises(ValueError, match=r"label 255 .*0/255\? map 255→1.*or set ignore_index=255"):
        confusion_matrix(pred, torch.full((2, 4, 4), 255), 2)
    with pytest.raises(ValueError, match=r"pred contains label 3 outside \[0, 3\)"):
        confusion_matrix(torch.full((2, 4, 4), 3), pred, 3)
    with pytest.raises(ValueError, match=r"pred shape \(2, 3, 4, 4\) does not match target shape \(2, 4, 4\).*argmax"):
        confusion_matrix(torch.zeros(2, 3, 4, 4, dtype=torch.long), pred, 3)
    with pytest.raises(ValueError, match=r"pred must hold integer class indices.*logits.argmax\(1\)"):
        confusion_matrix(torch.zeros(2, 4, 4), pred, 3)
    with pytest.raises(ValueError, match=r"target must hold integer.*target.long\(\)"):
        confusion_matrix(pred, torch.zeros(2, 4, 4), 3)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2.*binary task has 2 classes"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match=r"logits have 5 channels .* but num_classes=3"):
        ConfusionMatrix(3).update(torch.randn(2, 5, 4, 4), pred)
    with pytest.raises(ValueError, match=r"cannot merge .*num_classes=4.* into one with num_classes=3"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(ValueError, match=r"square \(num_classes, num_classes\) matrix, got shape \(2, 3\)"):
        scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"non-negative, finite"):
        scores([[1, -1], [0, 2]])


# --------------------------------------------------------------------------- reports

NAMES = ["road", "sky", "tree"]


def test_table_has_class_names_and_numbers() -> None:
    table = format_table(scores(torch.tensor(HAND)), NAMES)
    for name in NAMES:
        assert name in table
    assert f"{100 * 12 / 17:.2f}" in table  # pixel accuracy, 70.59
    assert "60.00" in table and "44.44" in table  # IoU of road and sky
    last_row = format_table(scores([[1, 0], [0, 0]])).splitlines()[-1].split()
    assert last_row[1:5] == ["-"] * 4  # class 1 is absent from truth and prediction: IoU, Dice, P, R shown as "-"
    with pytest.raises(ValueError, match=r"got 2 class names for 3 classes"):
        format_table(scores(torch.tensor(HAND)), NAMES[:2])


def test_json_round_trips_with_nan_as_null(tmp_path: Path) -> None:
    s = scores(torch.tensor([[3, 1, 0], [1, 4, 0], [0, 0, 0]]))  # class 2 absent
    path = save_json(s, tmp_path / "sub" / "metrics.json", NAMES)
    raw = path.read_text()
    assert "NaN" not in raw and json.loads(raw)["iou"][2] is None
    loaded = load_json(path)
    assert loaded["class_names"] == NAMES
    for key, value in s.items():
        assert loaded[key] == pytest.approx(value, nan_ok=True), key
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_confusion_png_is_a_readable_image(tmp_path: Path) -> None:
    image_module = pytest.importorskip("matplotlib.image")
    import matplotlib

    backend = matplotlib.get_backend()
    path = plot_confusion(torch.tensor([[3, 1, 0], [1, 4, 0], [0, 0, 0]]), NAMES, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image_module.imread(path)
    assert pixels.ndim == 3 and 300 <= pixels.shape[0] <= 2000 and 300 <= pixels.shape[1] <= 2000
    assert matplotlib.get_backend() == backend  # the caller's backend is left alone
    many = plot_confusion(np.eye(40, dtype=np.int64), None, tmp_path / "many.png")  # no annotations
    assert image_module.imread(many).shape[0] > pixels.shape[0]
    assert sorted(os.listdir(tmp_path)) == ["cm.png", "many.png"]
