"""Instance evaluation: semantic maps by hand, known answers from a model that returns set detections (perfect,
one missing, a padded batch), the loss mode and its restoration, processes that agree, and the written report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segforge.instances.boxes import masks_to_boxes
from segforge.instances.data import collate_instances
from segforge.instances.evaluate import (
    InstanceEvaluation,
    evaluate_instances,
    losses_mode,
    semantic_map,
    write_instance_report,
)
from segforge.instances.folder import InstanceFolderDataset
from segforge.instances.model import mask_rcnn
from segforge.instances.synthetic import write_synthetic_instance_dataset

Target = dict[str, Tensor]


def rectangles(size: tuple[int, int], *boxes: tuple[int, int, int, int]) -> Tensor:
    """``(K, H, W)`` bool masks, mask k the rows ``y1:y2`` and columns ``x1:x2`` of ``boxes[k] = (y1, y2, x1, x2)``."""
    masks = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for k, (y1, y2, x1, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    return masks


def target(masks: Tensor, labels: list[int], crowd: list[bool] | None = None) -> Target:
    return {
        "boxes": masks_to_boxes(masks),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "iscrowd": torch.tensor(crowd or [False] * len(labels), dtype=torch.bool),
    }


def detected(masks: Tensor, labels: list[int], scores: list[float], boxes: Tensor | None = None) -> Target:
    return {
        "boxes": masks_to_boxes(masks) if boxes is None else boxes,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores),
        "masks": masks,
    }


def samples() -> list[tuple[Tensor, Target]]:
    """A 20x24 image with a class-1 and a class-2 object, a 16x16 one with a class-1 object at its bottom right
    corner and a crowd of class 2, and a 12x12 one with one class-1 object."""
    a = target(rectangles((20, 24), (2, 8, 2, 10), (10, 18, 12, 22)), [1, 2])
    b = target(rectangles((16, 16), (10, 16, 10, 16), (0, 6, 0, 8)), [1, 2], [False, True])
    c = target(rectangles((12, 12), (3, 9, 3, 9)), [1])
    return [(torch.rand(3, *t["masks"].shape[1:]), t) for t in (a, b, c)]


def perfect_detections() -> list[Target]:
    """What a perfect model gives for ``samples()`` batched in twos (padded to 20x24, then 12x12): image 0's
    objects and a false positive scoring 0.1; image 1's object drawn on into the padding (mask and box), which
    only cropping and clipping undo; nothing for image 2."""
    a = rectangles((20, 24), (2, 8, 2, 10), (10, 18, 12, 22), (12, 18, 2, 8))
    b = rectangles((20, 24), (10, 20, 10, 24))
    nothing = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
        "masks": torch.zeros(0, 12, 12, dtype=torch.bool),
    }
    return [
        detected(a, [1, 2, 1], [0.9, 0.8, 0.1]),
        detected(b, [1], [0.95], boxes=torch.tensor([[10.0, 10.0, 24.0, 20.0]])),
        nothing,
    ]


class SetDetector(nn.Module):
    """Eval mode: the next images' detections from a list, in loader order. Training mode: losses whose mean
    over a batch is 1.5 x the images' instance counts, after a random draw (as Mask R-CNN samples anchors and
    RoIs); ``seen`` records the modes the loss was computed in, ``draws`` the draws."""

    def __init__(self, detections: list[Target]) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.dropout = nn.Dropout(0.5)
        self.detections, self.next = detections, 0
        self.seen: list[tuple[bool, bool, bool]] = []
        self.draws: list[float] = []

    def forward(
        self, images: Tensor, targets: list[Target] | None = None, *, image_sizes=None
    ) -> list[Target] | dict[str, Tensor]:
        self.dropout(self.norm(images))  # running statistics move only in training mode
        if not self.training:
            found = self.detections[self.next : self.next + len(images)]
            self.next += len(images)
            return found
        self.seen.append((self.training, self.norm.training, self.dropout.training))
        self.draws.append(float(torch.rand(())))
        counts = torch.tensor([float(len(t["labels"])) for t in targets])
        return {"rpn": counts.mean(), "mask": 0.5 * counts.mean()}


def evaluate(
    detections: list[Target], data: list[tuple[Tensor, Target]], model: SetDetector | None = None, **options
) -> InstanceEvaluation:
    loader = DataLoader(data, batch_size=2, shuffle=False, collate_fn=collate_instances)
    model = SetDetector(detections) if model is None else model
    return evaluate_instances(model, loader, num_classes=3, device="cpu", progress=False, **options)


# --------------------------------------------------------------------------- semantic maps


def test_semantic_map_takes_the_best_score_above_the_threshold() -> None:
    # columns 2:4 of rows 0:3 are under both 1 (0.6) and 2 (0.9); 3 (0.3) lies under both too, and alone in row 3;
    # masks reach 2 columns past the image, as in a padded batch
    masks = rectangles((4, 8), (0, 3, 0, 4), (0, 3, 2, 8), (2, 4, 0, 8))
    found = detected(masks, [1, 2, 3], [0.6, 0.9, 0.3])
    expected = torch.tensor([[1, 1, 2, 2, 2, 2]] * 3 + [[0] * 6])
    assert torch.equal(semantic_map(found, (4, 6)), expected)
    expected[3] = 3  # with every detection kept, 3 shows where no better one lies
    assert torch.equal(semantic_map(found, (4, 6), score_threshold=None), expected)
    assert semantic_map(found, (4, 6)).dtype == torch.int64


def test_semantic_map_of_ground_truth_first_instance_wins_and_crowds_can_be_ignored() -> None:
    masks = rectangles((4, 6), (0, 2, 0, 3), (1, 4, 1, 5))  # overlapping at rows 1:2, columns 1:3
    truth = target(masks, [1, 2])
    assert semantic_map(truth, (4, 6)).tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 2, 2, 0],
        [0, 2, 2, 2, 2, 0],
        [0, 2, 2, 2, 2, 0],
    ]
    crowd = target(masks, [1, 2], [False, True])
    # a crowd is painted like any instance unless asked; ignored, it gives way to the regular instance over it
    assert torch.equal(semantic_map(crowd, (4, 6)), semantic_map(truth, (4, 6)))
    assert semantic_map(crowd, (4, 6), ignore_crowd=255).tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 255, 255, 0],
        [0, 255, 255, 255, 255, 0],
        [0, 255, 255, 255, 255, 0],
    ]
    empty = target(torch.zeros(0, 4, 6, dtype=torch.bool), [])
    assert torch.equal(semantic_map(empty, (4, 6)), torch.zeros(4, 6, dtype=torch.int64))


def test_semantic_map_errors() -> None:
    masks = rectangles((4, 6), (0, 2, 0, 3))
    with pytest.raises(ValueError, match=r"threshold float masks \(masks > 0.5\)"):
        semantic_map({"labels": torch.tensor([1]), "masks": masks.float()}, (4, 6))
    with pytest.raises(ValueError, match=r"one per label"):
        semantic_map({"labels": torch.tensor([1, 2]), "masks": masks}, (4, 6))
    with pytest.raises(ValueError, match=r"masks are \(4, 6\), smaller than the image \(5, 6\)"):
        semantic_map({"labels": torch.tensor([1]), "masks": masks}, (5, 6))


# --------------------------------------------------------------------------- evaluate_instances


def test_perfect_detections_in_a_padded_batch_score_one() -> None:
    result = evaluate(perfect_detections(), samples()[:2], losses=False)
    summary = result.summary()
    # the false positive ranks below every true one, so COCO's AP stays 1; image 1's detection counts only
    # once cut to its 16x16 image (mask and box)
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"):
        assert summary[key] == 1.0, key
    assert summary["mean_iou"] == 1.0 and summary["pixel_accuracy"] == 1.0  # the crowd's pixels are not counted
    assert result.counts == {"true": 3, "predicted": 3, "mean_absolute_error": 0.0}  # not the crowd, nor 0.1
    assert result.images == 2 and result.loss is None and "loss" not in summary
    assert sum(result.semantic["support"]) == 20 * 24 + 16 * 16 - 6 * 8  # every pixel but the crowd's


def test_a_missed_object_lowers_ap_mean_iou_and_counts_exactly() -> None:
    detections = perfect_detections()
    a = detections[0]
    detections[0] = {key: value[[0, 2]] for key, value in a.items()}  # image 0's class-2 object is missed
    result = evaluate(detections, samples()[:2], losses=False)
    assert result.mask["per_class"] == {1: 1.0, 2: 0.0} and result.mask["AP"] == 0.5
    assert result.box["AP"] == 0.5
    # class 2's 80 pixels become background: IoU 1 for class 1, 0 for class 2, 524 / (524 + 80) for background
    background = (20 * 24 - 48 - 80) + (16 * 16 - 36 - 48)
    assert result.semantic["mean_iou"] == pytest.approx((1 + background / (background + 80)) / 3)
    assert result.counts == {"true": 3, "predicted": 2, "mean_absolute_error": 0.5}


def test_loss_is_the_mean_over_images_in_loss_mode_and_every_mode_is_restored() -> None:
    model = SetDetector(perfect_detections())
    model.train()
    model.norm.eval()  # a frozen batch norm in a training model must stay so
    before = model.norm.running_mean.clone()
    loader = DataLoader(samples(), batch_size=2, shuffle=False, collate_fn=collate_instances)
    result = evaluate_instances(model, loader, num_classes=3, device="cpu", progress=False)
    # images with 2, 2 and 1 instances in batches of 2 and 1: 1.5 x 5/3, not the mean of the batches' 3 and 1.5
    assert result.loss == pytest.approx(2.5) and result.summary()["loss"] == pytest.approx(2.5)
    assert model.seen == [(True, False, False)] * 2
    assert (model.training, model.norm.training, model.dropout.training) == (True, False, True)
    assert torch.equal(model.norm.running_mean, before)  # batch norm never ran in training mode
    assert result.counts == {"true": 4, "predicted": 3, "mean_absolute_error": pytest.approx(1 / 3)}


def test_the_loss_draws_from_its_own_seed_and_leaves_the_random_stream_alone() -> None:
    data, first, second = samples(), SetDetector(perfect_detections()), SetDetector(perfect_detections())
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    evaluate([], data, model=first)
    assert torch.equal(torch.rand(3), expected)
    evaluate([], data, model=second)
    assert len(first.draws) == 2 and first.draws == second.draws  # the same draws: a repeatable loss


def test_losses_mode_restores_modes_also_after_an_exception() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Dropout(0.1), nn.Linear(2, 2)))
    model.eval()
    with losses_mode(model) as inside:
        assert inside is model
        assert [m.training for m in model.modules()] == [True, True, False, True, False, True]
    assert not any(m.training for m in model.modules())
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="inside"), losses_mode(model):
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == modes


def _distributed_worker(rank: int, world_size: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # rank 0 evaluates image 0, rank 1 image 1, each alone in its batch
        result = evaluate(perfect_detections()[rank : rank + 1], [samples()[rank]], distributed=True)
        (Path(results) / f"{rank}.json").write_text(json.dumps(result.summary()))
    finally:
        dist.destroy_process_group()


def test_a_process_group_of_one_gives_the_single_process_answer(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    single = evaluate(perfect_detections(), samples())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gathered = evaluate(perfect_detections(), samples(), distributed=True)
    finally:
        dist.destroy_process_group()
    assert gathered.summary() == single.summary() and gathered.counts == single.counts
    assert gathered.images == 3 and gathered.semantic == single.semantic


@pytest.mark.slow  # two spawned processes: ~15 s, mostly importing torch
def test_processes_gather_detections_and_agree(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.start_processes(
        _distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    single = evaluate(perfect_detections()[:2], samples()[:2]).summary()
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)] == [single, single]


# --------------------------------------------------------------------------- the report


def test_write_instance_report(tmp_path: Path) -> None:
    root = write_synthetic_instance_dataset(tmp_path / "data", num_train=0, num_val=3, size=48, num_classes=3)
    dataset = InstanceFolderDataset(root, "val", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = mask_rcnn(3, encoder="resnet18", fpn_channels=32, representation_size=64)
    with pytest.raises(ValueError, match=r"classes names 2 classes but num_classes is 3"):
        write_instance_report(model, dataset, tmp_path / "out", num_classes=3, classes=["a", "b"], device="cpu")
    summary = write_instance_report(
        model, dataset, tmp_path / "out", num_classes=3, classes=dataset.classes, device="cpu", overlays=2
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report) == {"summary", "images", "counts", "per_class", "mask", "box", "semantic"}
    assert set(summary) == {
        "mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75",
        "mean_iou", "pixel_accuracy", "count_error",
    }  # fmt: skip
    assert report["summary"] == {k: (None if math.isnan(v) else v) for k, v in summary.items()}
    assert report["images"] == 3 and set(report["counts"]) == {"true", "predicted", "mean_absolute_error"}
    assert [(c["label"], c["name"]) for c in report["per_class"]] == [(1, dataset.classes[1]), (2, dataset.classes[2])]
    assert report["semantic"]["class_names"] == dataset.classes and len(report["semantic"]["iou"]) == 3
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["000.png", "001.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "overlays" / "000.png"))
    assert picture.shape[1] == 2 * 48 + 4 and picture.shape[0] > 48 and picture.shape[2] == 3
    assert model.training  # the model's modes are as they were
