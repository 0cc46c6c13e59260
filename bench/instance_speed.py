"""Mask R-CNN on this CPU: a training step and inference per image, where their time goes, FLOPs and GFLOP/s.

    PYTHONPATH=. .venv/bin/python bench/instance_speed.py                          # 512², batch 1, resnet18
    PYTHONPATH=. .venv/bin/python bench/instance_speed.py --size 128 --repeats 1   # a quick check that it runs

The model is ``segforge.instances.mask_rcnn(--classes, encoder=--encoder)`` with its defaults (FPN 128 wide,
1000 / 300 proposals per image in training / inference, 512 RoIs sampled per image in training). The data:
``--batch`` images, each a grid of ``--tile``-pixel ``synthetic_instance_sample`` images (3 touching clusters
and up to 4 more objects in each tile: about 40 touching, overlapping objects in a 512x512 image), and their
targets built as ``segforge.instances.data.instance_target`` builds them (boxes around the visible masks).

**Totals.** A training step is ``zero_grad``, ``model(images, targets)`` (the five losses), the backward of
their sum and an SGD step (segforge's SGD: lr 0.01, momentum 0.9, weight decay 1e-4). Inference is
``model.eval()(images)`` under ``torch.inference_mode()``, per image, in three settings: the model's defaults
(``score_threshold`` 0.05, ``detections_per_image`` 100); ``score_threshold`` 0, so that every candidate goes
on to NMS and 100 masks are drawn and pasted whatever the scores; and the defaults with
``detections_per_image`` set to the image's number of objects, about what a trained model keeps. (This model
has had only the few SGD steps of the training measurement: its class scores are still near uniform, about
1 / classes each, so it may keep 100 detections even at the default threshold; the tables say how many.)
Each is the median of ``--repeats`` after ``--warmup``.

**Stages.** The same passes again, the stages called one by one as ``MaskRCNN.forward`` calls them (checked
first to give the model's own losses and detections exactly), a clock around each: encoder, feature
pyramid, RPN (head, anchors, proposal selection with its NMS, loss), RoI box head (sampling, RoIAlign, fully
connected layers, loss or post-processing with NMS), mask head (RoIAlign, convolutions, targets and loss or
pasting back). The backward is split where its gradient reaches the mask head's RoIAlign crops, the box
losses, the box head's crops, the RPN losses, the pyramid's outputs and the encoder's outputs (tensor hooks;
a loss's backward counts with the layers before it): autograd runs the operations created later first, so
the mask head's backward ends before the box head's starts, and so on down to the encoder; the hooks' order
is checked. Each stage's median over the repeats; shares are of the sum of the medians.

**FLOPs** are ``torch.utils.flop_counter.FlopCounterMode``'s: convolutions and matrix products. The paste
of the masks is two batched matrix products per detection, over the whole image, and is counted; RoIAlign
(an ``embedding_bag``), NMS and the element-wise work are not. GFLOP/s is the counted FLOPs over the median
time of the same pass.

Prints markdown tables (progress on stderr); writes the numbers to ``bench/results/instance_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from segforge.config import OptimizerConfig
from segforge.data.base import scale_image
from segforge.instances import MaskRCNN, mask_rcnn, synthetic_instance_sample
from segforge.instances.boxes import clip_boxes, decode_boxes, remove_small_boxes
from segforge.instances.data import instance_target
from segforge.instances.heads import (
    BOX_WEIGHTS,
    box_losses,
    mask_targets,
    multilevel_roi_align,
    paste_masks,
    sample_rois,
)
from segforge.instances.nms import batched_nms
from segforge.instances.rpn import RPN_WEIGHTS, rpn_loss
from segforge.models.segmenter import pad_to_multiple
from segforge.runtime import keep_freed_memory
from segforge.training.optim import create_optimizer

ROOT = Path(__file__).resolve().parents[1]
Target = dict[str, Tensor]
MASK_CONVS, MASK_ALIGN = "mask head/convolutions, 2x transposed convolution", "mask head/RoIAlign 14x14"
BOX_FC, BOX_ALIGN, RPN_HEAD = (
    "RoI box head/fully connected layers",
    "RoI box head/RoIAlign 7x7",
    "RPN/head: 3x3, 1x1 convs",
)
#: the tensors whose gradient ends a stage's backward (tensor hooks), in the order autograd reaches them, and the
#: stage each interval between them is the backward of (a loss's backward is counted with the layers before it)
BACKWARD_MARKS = ("mask crops", "box losses", "box crops", "rpn losses", "pyramid", "encoder")
BACKWARD_STAGES = (MASK_CONVS, MASK_ALIGN, BOX_FC, BOX_ALIGN, RPN_HEAD, "feature pyramid", "encoder")
TRAIN_GROUPS = ("input checks", "encoder", "feature pyramid", "RPN", "RoI box head", "mask head", "optimizer")
INFER_GROUPS = ("encoder", "feature pyramid", "RPN", "RoI box head", "mask head")


def machine() -> dict[str, object]:
    """The CPU model (from ``/proc/cpuinfo``), cores, torch version and threads."""
    cpu = "unknown CPU"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def synthetic_batch(batch: int, size: int, classes: int, tile: int, seed: int) -> tuple[Tensor, list[Target]]:
    """``batch`` images ``(N, 3, size, size)`` float32 in [0, 1], each a grid of synthetic tiles, and their targets."""
    grid = max(1, round(size / tile))
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    images, targets = [], []
    for n in range(batch):
        image = np.zeros((size, size, 3), np.uint8)
        instances = np.zeros((size, size), np.int64)
        labels: list[int] = []
        for row in range(grid):
            for col in range(grid):
                y0, y1, x0, x1 = edges[row], edges[row + 1], edges[col], edges[col + 1]
                sample = synthetic_instance_sample(
                    (n * grid + row) * grid + col,
                    size=(y1 - y0, x1 - x0),
                    num_classes=classes,
                    seed=seed,
                    touching_pairs=3,
                    max_extra=4,
                )
                image[y0:y1, x0:x1] = sample.image
                instances[y0:y1, x0:x1] = np.where(sample.instances > 0, sample.instances + len(labels), 0)
                labels += sample.classes.tolist()
        masks = instances[None] == np.arange(1, len(labels) + 1)[:, None, None]
        targets.append(instance_target(masks, np.asarray(labels), np.zeros(len(labels), bool)))
        images.append(torch.from_numpy(scale_image(image)).permute(2, 0, 1))
    return torch.stack(images).contiguous(), targets


class Stages:
    """``with stages("group/part"):`` adds the block's milliseconds (and, when counting, its FLOPs) to that stage."""

    def __init__(self, count_flops: bool = False) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.count_flops = count_flops

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        counter = FlopCounterMode(display=False) if self.count_flops else nullcontext()
        started = time.perf_counter()
        with counter:
            yield
        self.ms[name] += (time.perf_counter() - started) * 1e3
        if self.count_flops:
            self.flops[name] += counter.get_total_flops()


def _mark(marks: dict[str, float] | None, key: str, tensors: Sequence[Tensor]) -> None:
    """Records in ``marks[key]`` when the backward first reaches any of ``tensors``."""
    if marks is None:
        return

    def hook(grad: Tensor) -> None:
        marks.setdefault(key, time.perf_counter())

    for tensor in tensors:
        if tensor.requires_grad:
            tensor.register_hook(hook)


def _rpn(model: MaskRCNN, stage: Stages, features: list[Tensor], size: tuple[int, int]) -> tuple:
    """``RegionProposalNetwork.forward`` up to the proposals (``select_proposals`` written out, in two stages)."""
    rpn = model.rpn
    with stage(RPN_HEAD):
        objectness, deltas = rpn.head(features)
    with stage("RPN/anchors"):
        anchors = rpn.anchor_generator([f.shape[-2:] for f in features], model.pyramid.strides, features[0].device)
    mode = 0 if rpn.training else 1
    with stage("RPN/proposals: top-k per level, decode"):
        batch = objectness[0].shape[0]
        scores, boxes, levels = [], [], []
        for level, (logits, level_deltas, level_anchors) in enumerate(zip(objectness, deltas, anchors)):
            top, index = logits.detach().topk(min(rpn.pre_nms_top_n[mode], logits.shape[1]), dim=1)
            picked = level_deltas.detach().gather(1, index[..., None].expand(-1, -1, 4))
            decoded = decode_boxes(picked.reshape(-1, 4), level_anchors[index].reshape(-1, 4), RPN_WEIGHTS)
            scores.append(top)
            boxes.append(decoded.view(batch, -1, 4))
            levels.append(torch.full_like(index, level))
        scores, boxes, levels = torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(levels, 1)
    with stage("RPN/proposals: clip, NMS per level"):
        proposals = []
        for i in range(batch):
            image_boxes = clip_boxes(boxes[i], size)
            keep = remove_small_boxes(image_boxes, rpn.min_size)
            keep = keep[torch.isfinite(scores[i, keep])]
            kept = batched_nms(image_boxes[keep], scores[i, keep], levels[i, keep], rpn.nms_threshold)
            proposals.append(image_boxes[keep[kept[: rpn.post_nms_top_n[mode]]]])
    return objectness, deltas, anchors, proposals


def train_forward(
    model: MaskRCNN, images: Tensor, targets: Sequence[Target], stage: Stages, marks: dict[str, float] | None = None
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """``MaskRCNN.forward`` in training mode (``RoIHeads.losses`` written out), stage by stage.

    Returns:
        The five losses, and per image the mean counts of proposals, sampled RoIs and positive RoIs.
    """
    with stage("input checks"):
        targets = [model._check_target(t, i, images) for i, t in enumerate(targets)]
    size = tuple(images.shape[-2:])
    with stage("encoder"):
        encoded = model.encoder(pad_to_multiple(images, model.size_divisor))
    with stage("feature pyramid"):
        pyramid = model.pyramid(encoded)
    objectness, deltas, anchors, proposals = _rpn(model, stage, pyramid, size)
    rpn = model.rpn
    with stage("RPN/loss: match anchors, sample, BCE + smooth L1"):
        rpn_losses = rpn_loss(
            torch.cat(objectness, 1),
            torch.cat(deltas, 1),
            torch.cat(anchors),
            [t["boxes"] for t in targets],
            high=rpn.high,
            low=rpn.low,
            batch_size_per_image=rpn.batch_size_per_image,
            positive_fraction=rpn.positive_fraction,
        )
    heads, strides = model.roi_heads, model.pyramid.roi_strides
    features = pyramid[: len(strides)]
    with stage("RoI box head/sample RoIs: match proposals + ground truth"):
        samples = [
            sample_rois(
                p,
                t["boxes"],
                t["labels"],
                iou_threshold=heads.iou_threshold,
                batch_size_per_image=heads.batch_size_per_image,
                positive_fraction=heads.positive_fraction,
            )
            for p, t in zip(proposals, targets)
        ]
    with stage(BOX_ALIGN):
        boxes = [s.boxes for s in samples]
        box_crops = multilevel_roi_align(features, strides, boxes, heads.box_resolution, heads.sampling_ratio)
    with stage(BOX_FC):
        class_logits, box_deltas = heads.box_head(box_crops)
    with stage("RoI box head/loss"):
        labels = torch.cat([s.labels for s in samples])
        classifier, box = box_losses(class_logits, box_deltas, labels, torch.cat([s.box_targets for s in samples]))
    positives = [s.boxes[: s.gt_index.numel()] for s in samples]
    with stage(MASK_ALIGN):
        crops = multilevel_roi_align(features, strides, positives, heads.mask_resolution, heads.sampling_ratio)
    with stage(MASK_CONVS):
        mask_logits = heads.mask_head(crops)
    with stage("mask head/targets: RoIAlign of the true masks"):
        side = mask_logits.shape[-1]
        target = torch.cat(
            [mask_targets(t["masks"], s.gt_index, b, side) for t, s, b in zip(targets, samples, positives)]
        )
    with stage("mask head/loss"):
        if mask_logits.shape[0] == 0:  # as RoIHeads.losses: no positive anywhere
            mask = mask_logits.sum() * 0
        else:
            chosen = mask_logits[torch.arange(len(target)), labels[labels > 0]]
            mask = F.binary_cross_entropy_with_logits(chosen, target)
    _mark(marks, "mask crops", [crops])
    _mark(marks, "box losses", [classifier, box])
    _mark(marks, "box crops", [box_crops])
    _mark(marks, "rpn losses", list(rpn_losses))
    _mark(marks, "pyramid", pyramid)
    _mark(marks, "encoder", encoded)
    losses = {"rpn_objectness": rpn_losses[0], "rpn_box": rpn_losses[1], "classifier": classifier, "box": box}
    counts = {
        "proposals": statistics.mean(len(p) for p in proposals),
        "sampled_rois": statistics.mean(len(s.boxes) for s in samples),
        "positive_rois": statistics.mean(s.gt_index.numel() for s in samples),
    }
    return {**losses, "mask": mask}, counts


def detect(model: MaskRCNN, images: Tensor, stage: Stages) -> tuple[list[Target], float]:
    """``MaskRCNN.forward`` in eval mode (``RoIHeads.detect`` written out), stage by stage.

    Returns:
        The detections, and the mean number of proposals per image.
    """
    size = tuple(images.shape[-2:])
    with stage("encoder"):
        encoded = model.encoder(pad_to_multiple(images, model.size_divisor))
    with stage("feature pyramid"):
        pyramid = model.pyramid(encoded)
    *_, proposals = _rpn(model, stage, pyramid, size)
    heads, strides = model.roi_heads, model.pyramid.roi_strides
    features = pyramid[: len(strides)]
    with stage(BOX_ALIGN):
        crops = multilevel_roi_align(features, strides, proposals, heads.box_resolution, heads.sampling_ratio)
    with stage(BOX_FC):
        class_logits, deltas = heads.box_head(crops)
    with stage("RoI box head/softmax, per-class decode, clip"):
        num_classes = class_logits.shape[1]
        scores = F.softmax(class_logits, dim=1)
        boxes = decode_boxes(deltas, torch.cat(list(proposals)), BOX_WEIGHTS)
        boxes = clip_boxes(boxes.view(-1, 4), size).view(-1, num_classes, 4)
    with stage("RoI box head/score threshold, NMS per class, top k"):
        counts = [len(p) for p in proposals]
        detections = []
        for image_scores, image_boxes in zip(scores.split(counts), boxes.split(counts)):
            labels = torch.arange(num_classes, device=scores.device).expand_as(image_scores)
            image_scores, labels = image_scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            image_boxes = image_boxes[:, 1:].reshape(-1, 4)
            keep = torch.nonzero(image_scores > heads.score_threshold).flatten()
            keep = keep[remove_small_boxes(image_boxes[keep], 1e-2)]
            kept = batched_nms(image_boxes[keep], image_scores[keep], labels[keep], heads.nms_threshold)
            keep = keep[kept[: heads.detections_per_image]]
            detections.append({"boxes": image_boxes[keep], "labels": labels[keep], "scores": image_scores[keep]})
    with stage(MASK_ALIGN):
        boxes = [d["boxes"] for d in detections]
        crops = multilevel_roi_align(features, strides, boxes, heads.mask_resolution, heads.sampling_ratio)
    with stage(MASK_CONVS):
        mask_logits = heads.mask_head(crops)
    with stage("mask head/paste back: sigmoid, resize into the image, threshold"):
        all_labels = torch.cat([d["labels"] for d in detections])
        probabilities = torch.sigmoid(mask_logits[torch.arange(len(all_labels)), all_labels])
        for d, p in zip(detections, probabilities.split([len(d["labels"]) for d in detections])):
            d["masks"] = paste_masks(p, d["boxes"], size, heads.mask_threshold)
    return detections, statistics.mean(counts)


def check_staged(model: MaskRCNN, images: Tensor, targets: Sequence[Target]) -> None:
    """Raises RuntimeError unless the staged passes give the model's own losses and detections."""
    stale = "the staged pass no longer matches MaskRCNN.forward ({}); update bench/instance_speed.py to the model"
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)  # the same anchor and RoI samples
        expected = model(images, targets)
        torch.manual_seed(1)
        got, _ = train_forward(model, images, targets, Stages())
    for key, value in expected.items():
        if not torch.allclose(value, got[key], rtol=1e-5, atol=1e-7):
            raise RuntimeError(stale.format(f"loss {key}: {value.item()} != {got[key].item()}"))
    model.eval()
    with torch.inference_mode():
        expected, (got, _) = model(images), detect(model, images, Stages())
    for i, (e, g) in enumerate(zip(expected, got)):
        for key in ("boxes", "labels", "scores", "masks"):
            if e[key].shape != g[key].shape or not torch.equal(e[key], g[key]):
                raise RuntimeError(stale.format(f"detections[{i}][{key!r}]"))
    model.train()


def _backward_split(marks: dict[str, float], started: float, ended: float) -> dict[str, float]:
    """The backward's milliseconds in all, and per stage when the hooks fired in the expected order."""
    times = [started, *(marks.get(key, float("nan")) for key in BACKWARD_MARKS), ended]
    split = {"total": (ended - started) * 1e3}
    if all(a <= b for a, b in zip(times, times[1:])):  # False for a hook that never fired (nan)
        split.update({name: (b - a) * 1e3 for name, a, b in zip(BACKWARD_STAGES, times, times[1:])})
    return split


def measure_training(
    model: MaskRCNN, images: Tensor, targets: Sequence[Target], *, warmup: int, repeats: int, log: Callable
) -> dict:
    """Training steps: ``warmup``, then ``repeats`` pairs of a plain step and a staged one."""
    optimizer = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(model(images, targets).values()).backward()
        optimizer.step()

    for i in range(warmup):
        started = time.perf_counter()
        step()
        log(f"training warm-up {i + 1}: {(time.perf_counter() - started) * 1e3:.0f} ms")
    totals, stages, backwards, counts = [], [], [], []
    for i in range(repeats):
        started = time.perf_counter()
        step()
        totals.append((time.perf_counter() - started) * 1e3)
        stage, marks = Stages(), {}
        with stage("optimizer/zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        losses, count = train_forward(model, images, targets, stage, marks)
        counts.append(count)
        loss = sum(losses.values())
        started = time.perf_counter()
        loss.backward()
        backwards.append(_backward_split(marks, started, time.perf_counter()))
        with stage("optimizer/SGD step"):
            optimizer.step()
        stages.append(dict(stage.ms))
        staged = sum(stage.ms.values()) + backwards[-1]["total"]
        log(f"training step {i + 1}: {totals[-1]:.0f} ms; staged {staged:.0f} ms")
    # FLOPs: the forward per stage, then the whole step (forward and backward) as the model runs it, both on the
    # same sampled anchors and RoIs (the mask head's FLOPs grow with the positive RoIs)
    flops = Stages(count_flops=True)
    torch.manual_seed(0)
    _, flop_counts = train_forward(model, images, targets, flops)
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        sum(model(images, targets).values()).backward()
    optimizer.zero_grad(set_to_none=True)
    return {
        "step_ms": statistics.median(totals),
        "step_ms_each": totals,
        "forward_ms": _medians(stages),
        "backward_ms": _medians(backwards),
        "forward_gflop": {name: f / 1e9 for name, f in flops.flops.items()},
        "step_gflop": counter.get_total_flops() / 1e9,
        "losses": {key: value.item() for key, value in losses.items()},
        "per_image": _medians(counts),
        "per_image_in_the_flop_count": flop_counts,
    }


def measure_inference(model: MaskRCNN, images: Tensor, *, warmup: int, repeats: int, log: Callable) -> dict:
    """Inference as the model is set: ``warmup`` passes, then ``repeats`` pairs of a plain and a staged pass."""
    model.eval()
    batch = images.shape[0]
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        totals, stages = [], []
        for i in range(repeats):
            started = time.perf_counter()
            detections = model(images)
            totals.append((time.perf_counter() - started) * 1e3 / batch)
            stage = Stages()
            _, proposals = detect(model, images, stage)
            stages.append({name: ms / batch for name, ms in stage.ms.items()})
            log(f"inference {i + 1}: {totals[-1]:.0f} ms per image")
        flops = Stages(count_flops=True)
        detect(model, images, flops)
        with FlopCounterMode(display=False) as counter:
            model(images)
    model.train()
    return {
        "ms_per_image": statistics.median(totals),
        "ms_per_image_each": totals,
        "stages_ms_per_image": _medians(stages),
        "stages_gflop_per_image": {name: f / 1e9 / batch for name, f in flops.flops.items()},
        "gflop_per_image": counter.get_total_flops() / 1e9 / batch,
        "proposals_per_image": proposals,
        "detections_per_image": statistics.mean(len(d["boxes"]) for d in detections),
    }


def _medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: statistics.median(run[key] for run in runs if key in run) for key in keys}


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _parts(stages: dict[str, float], group: str) -> list[str]:
    return [name for name in stages if name.split("/", 1)[0] == group]


def training_table(result: dict) -> list[str]:
    """Per stage: forward, backward and total milliseconds, share of the staged step, forward GFLOP."""
    forward, backward, gflop = result["forward_ms"], result["backward_ms"], result["forward_gflop"]
    split = len(backward) > 1
    total = sum(forward.values()) + backward["total"]
    lines = [
        "| training stage | forward ms | backward ms | ms | share | forward GFLOP |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, names: list[str]) -> str:
        ms = sum(forward.get(n, 0.0) for n in names)
        back = [backward[n] for n in names if split and n in backward]
        ms_all = ms + sum(back)
        return (
            f"| {name} | {_ms(ms)} | {_ms(sum(back)) if back else '-'} | {_ms(ms_all)} | {ms_all / total:.0%} | "
            f"{sum(gflop.get(n, 0.0) for n in names):.2f} |"
        )

    for group in TRAIN_GROUPS:
        parts = _parts(forward, group)
        lines.append(row(f"**{group}**", parts))
        if len(parts) > 1:
            lines += [row(f"· {p.split('/', 1)[1]}", [p]) for p in parts]
    if not split:
        lines.append(f"| **backward** (not split: the hooks fired out of order) | | {_ms(backward['total'])} | | | |")
    lines.append(
        f"| **staged step** | {_ms(sum(forward.values()))} | {_ms(backward['total'])} | {_ms(total)} | 100% | "
        f"{sum(gflop.values()):.2f} |"
    )
    return lines


def inference_table(results: dict[str, dict]) -> list[str]:
    """Per stage and score threshold: milliseconds per image, share of the staged pass, GFLOP per image."""
    labels = list(results)
    stages = [results[label]["stages_ms_per_image"] for label in labels]
    gflops = [results[label]["stages_gflop_per_image"] for label in labels]
    totals = [sum(s.values()) for s in stages]
    header = " | ".join(f"ms, {label} | share" for label in labels) + " | " + " | ".join(f"GFLOP, {x}" for x in labels)
    lines = [f"| inference stage, per image | {header} |", "|---|" + "---:|" * (3 * len(labels))]

    def row(name: str, names: list[str]) -> str:
        ms = [sum(s.get(n, 0.0) for n in names) for s in stages]
        cells = [f"{_ms(m)} | {m / t:.0%}" for m, t in zip(ms, totals)]
        cells += [f"{sum(g.get(n, 0.0) for n in names):.2f}" for g in gflops]
        return f"| {name} | " + " | ".join(cells) + " |"

    for group in INFER_GROUPS:
        parts = _parts(stages[0], group)
        lines.append(row(f"**{group}**", parts))
        if len(parts) > 1:
            lines += [row(f"· {p.split('/', 1)[1]}", [p]) for p in parts]
    lines.append(row("**staged pass**", list(stages[0])))
    return lines


def summary_table(training: dict, inference: dict[str, dict], batch: int, size: int) -> list[str]:
    """The totals: milliseconds, counted GFLOP and achieved GFLOP/s."""
    forward_ms = sum(ms for name, ms in training["forward_ms"].items() if not name.startswith("optimizer/"))
    forward_gflop = sum(training["forward_gflop"].values())
    backward_ms, step_gflop = training["backward_ms"]["total"], training["step_gflop"]
    rows = [
        (
            f"training step, batch {batch} of {size}x{size}: forward + 5 losses + backward + SGD",
            training["step_ms"],
            step_gflop,
        ),
        ("· its forward (staged)", forward_ms, forward_gflop),
        ("· its backward (staged)", backward_ms, step_gflop - forward_gflop),
    ]
    for label, result in inference.items():
        what = f"inference per image, {label}: {result['detections_per_image']:.0f} detections"
        rows.append((what, result["ms_per_image"], result["gflop_per_image"]))
    lines = ["| measurement | ms | GFLOP | GFLOP/s |", "|---|---:|---:|---:|"]
    lines += [f"| {what} | {_ms(ms)} | {gflop:.2f} | {gflop / ms * 1e3:.1f} |" for what, ms, gflop in rows]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--classes", type=int, default=4, help="classes including the background (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=256, help="side of the synthetic images tiled into each image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rois", type=int, default=None, help="RoIs per image in training (default: mask_rcnn's)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "instance_speed.json")
    args = parser.parse_args()
    if args.size < 32 or args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.tile < 24:
        parser.error("need --size >= 32, --batch >= 1, --repeats >= 1, --warmup >= 0 and --tile >= 24")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    torch.manual_seed(args.seed)
    images, targets = synthetic_batch(args.batch, args.size, args.classes, args.tile, args.seed)
    objects = statistics.mean(len(t["boxes"]) for t in targets)
    log(f"{objects:.0f} objects per image")
    rois = {} if args.rois is None else {"box_batch_size_per_image": args.rois}
    model = mask_rcnn(args.classes, encoder=args.encoder, **rois)
    check_staged(model, images, targets)
    training = measure_training(model, images, targets, warmup=args.warmup, repeats=args.repeats, log=log)
    heads, inference = model.roi_heads, {}
    default = (heads.score_threshold, heads.detections_per_image)
    settings = {  # label: (score_threshold, detections_per_image)
        f"score > {default[0]:g}, top {default[1]}": default,  # the model's defaults
        f"score > 0, top {default[1]}": (0.0, default[1]),  # every candidate goes on to NMS
        f"score > {default[0]:g}, top {round(objects)} (= objects)": (default[0], round(objects)),  # as if trained
    }
    for label, (heads.score_threshold, heads.detections_per_image) in settings.items():
        log(label)
        result = measure_inference(model, images, warmup=args.warmup, repeats=args.repeats, log=log)
        inference[label] = {"score_threshold": heads.score_threshold, "max_detections": heads.detections_per_image}
        inference[label].update(result)
    heads.score_threshold, heads.detections_per_image = default

    info = machine()
    counts = training["per_image"]
    first = next(iter(inference.values()))
    print(
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, freed memory "
        f"kept: {kept}. Mask R-CNN on `{args.encoder}` (FPN {model.pyramid.channels} wide), {args.classes} classes, "
        f"batch {args.batch} of 3x{args.size}x{args.size} with {objects:.0f} objects per image; median of "
        f"{args.repeats} after {args.warmup} warm-up. Per image: training {counts['proposals']:.0f} proposals, "
        f"{counts['sampled_rois']:.0f} RoIs sampled ({counts['positive_rois']:.0f} positive; "
        f"{training['per_image_in_the_flop_count']['positive_rois']:.0f} in the pass whose FLOPs are counted); "
        f"inference {first['proposals_per_image']:.0f} proposals.\n"
    )
    print("\n".join(summary_table(training, inference, args.batch, args.size)) + "\n")
    print("\n".join(training_table(training)) + "\n")
    print("\n".join(inference_table(inference)))
    report = {
        "machine": info,
        "freed_memory_kept": kept,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "objects_per_image": objects,
        "training": training,
        "inference": inference,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
