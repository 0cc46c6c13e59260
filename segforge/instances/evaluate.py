"""Evaluation of an instance segmenter on a dataset: COCO's box and mask AP, a semantic view, counts and the loss.

>>> result = evaluate_instances(model, loader, num_classes=4, device="cpu")   # loader: collate_fn=collate_instances
>>> result.summary()["mask_ap"]
>>> write_instance_report(model, dataset, folder, num_classes=4, classes=dataset.classes, device="cpu")

Four views of the same detections (``MaskRCNN`` in eval mode, one dict per image):

* **mask and box AP** (:func:`segforge.instances.metrics.average_precision`, equal to pycocotools'
  ``COCOeval``), over every detection the model keeps;
* **semantic**: the detections scoring at least ``score_threshold`` painted into one class map per image
  (:func:`semantic_map`), scored against the ground truth's by a :class:`~segforge.metrics.ConfusionMatrix`, so
  that an instance model reads on the same mean IoU scale as a semantic one; crowd pixels are not counted;
* **counts**: instances found (``score >= score_threshold``) against instances there (crowds excepted);
* **loss**: the training losses on the validation images (:func:`losses_mode`).

A batch from ``collate_instances`` is padded at the bottom and right; each image's detections are cut back to
its own size (its target's masks say which) before they are scored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segforge.files import atomic_write
from segforge.instances.boxes import clip_boxes
from segforge.instances.data import InstanceDataset, collate_instances
from segforge.instances.metrics import average_precision
from segforge.instances.visualise import draw_instances, side_by_side
from segforge.metrics import ConfusionMatrix
from segforge.plots import save_png

__all__ = ["InstanceEvaluation", "evaluate_instances", "losses_mode", "semantic_map", "write_instance_report"]

Target = dict[str, Tensor]
#: the semantic target's value for crowd pixels, which the confusion matrix leaves out
IGNORE_INDEX = 255
#: the validation loss samples anchors and RoIs from this seed (see evaluate_instances)
LOSS_SEED = 0
# modules whose training mode changes what they compute on the same weights: kept in eval mode for the loss
_FIXED_IN_LOSSES = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)


def semantic_map(
    instances: Mapping[str, Tensor],
    size: tuple[int, int],
    *,
    score_threshold: float | None = 0.5,
    ignore_crowd: int | None = None,
) -> Tensor:
    """One image's instances painted into a class map.

    With ``scores`` (detections) each pixel takes the class of the highest-scoring instance covering it (ties:
    the earlier one), as the ranks of ``segforge.instances.visualise`` have it; without them (ground truth)
    the first instance covering it wins. Pixels no kept instance covers are 0, the background.

    Args:
        instances: ``labels (K,)`` int, ``masks (K, h, w)`` bool with ``h >= H``, ``w >= W`` (cut to ``size``
            at the top left: a padded batch's masks), optionally ``scores (K,)`` and ``iscrowd (K,)`` bool.
        size: ``(H, W)`` of the image.
        score_threshold: instances scoring less are left out; None keeps all (no effect without scores).
        ignore_crowd: the value of crowd pixels that no regular instance covers, or None to paint crowds as
            regular instances.

    Returns:
        ``(H, W)`` int64 on the masks' device.

    Raises:
        ValueError: masks that are not ``(K, h, w)`` bool, one per label, or smaller than ``size``.
    """
    height, width = (int(s) for s in size)
    masks, labels = instances["masks"], instances["labels"]
    if masks.dim() != 3 or masks.shape[0] != labels.shape[0] or masks.is_floating_point():
        raise ValueError(
            f"masks must be (K, H, W) bool with one per label ({tuple(labels.shape)}), got "
            f"{tuple(masks.shape)} {masks.dtype}; threshold float masks (masks > 0.5) and drop the channel axis"
        )
    if masks.shape[1] < height or masks.shape[2] < width:
        raise ValueError(f"masks are {tuple(masks.shape[1:])}, smaller than the image ({height}, {width})")
    masks, labels = masks[:, :height, :width] != 0, labels.to(masks.device).long()
    order = torch.arange(len(labels), device=masks.device)
    scores = instances.get("scores")
    if scores is not None:
        scores = scores.to(masks.device)
        order = torch.sort(scores, descending=True, stable=True).indices
        if score_threshold is not None:
            order = order[scores[order] >= score_threshold]
    crowd = instances.get("iscrowd")
    if ignore_crowd is None or crowd is None:
        return _first_cover(masks[order], labels[order], (height, width))
    crowd = crowd.to(masks.device).bool()
    regular = order[~crowd[order]]
    result = _first_cover(masks[regular], labels[regular], (height, width))
    crowded = masks[order[crowd[order]]].any(0) & (result == 0)
    return result.masked_fill(crowded, ignore_crowd)


def _first_cover(masks: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
    """``(H, W)``: the label of the first of ``masks (K, H, W)`` that covers each pixel, 0 where none does."""
    if not len(labels):
        return torch.zeros(size, dtype=torch.int64, device=masks.device)
    first = masks.to(torch.uint8).argmax(0)  # argmax returns the first maximum
    return torch.where(masks.any(0), labels[first], 0)


@dataclass
class InstanceEvaluation:
    """What ``evaluate_instances`` measured.

    Attributes:
        box, mask: ``average_precision``'s dicts (``AP``, ``AP50``, ``AP75``, ``APs``/``APm``/``APl``,
            ``AR100``, ``per_class``) for boxes and masks; -1 where there is no ground truth.
        semantic: ``ConfusionMatrix.compute()`` of the painted class maps (``semantic_map``), background counted.
        counts: ``true`` (regular ground-truth instances), ``predicted`` (detections scoring at least the
            threshold), both summed over the images, and ``mean_absolute_error``, per image.
        loss: the mean over images of the summed training losses, or None when not computed.
        images: the number of images evaluated (over all processes).
    """

    box: dict[str, Any]
    mask: dict[str, Any]
    semantic: dict[str, Any]
    counts: dict[str, float]
    loss: float | None
    images: int

    def summary(self) -> dict[str, float]:
        """The headline numbers: mask/box AP (also at IoU 0.5 and 0.75), mean IoU, pixel accuracy, count error
        (mean absolute, per image) and the loss when there is one."""
        result = {
            "mask_ap": self.mask["AP"],
            "mask_ap50": self.mask["AP50"],
            "mask_ap75": self.mask["AP75"],
            "box_ap": self.box["AP"],
            "box_ap50": self.box["AP50"],
            "box_ap75": self.box["AP75"],
            "mean_iou": self.semantic["mean_iou"],
            "pixel_accuracy": self.semantic["pixel_accuracy"],
            "count_error": self.counts["mean_absolute_error"],
        }
        if self.loss is not None:
            result["loss"] = self.loss
        return {key: float(value) for key, value in result.items()}


@contextmanager
def _kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every module's training flag back as it was on leaving (``model.train(mode)`` would set them all)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def losses_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Training mode, so that ``model(images, targets)`` returns its losses, but with every normalisation layer
    that keeps running statistics (batch norm and its kin) and every dropout in eval mode: the loss of the
    weights as they are, which neither updates the statistics nor depends on dropout's draws. Every module's
    mode is restored on leaving, also after an exception. Use it under ``torch.no_grad()``.
    """
    with _kept_modes(model):
        model.train()
        for module in model.modules():
            if isinstance(module, _FIXED_IN_LOSSES):
                module.eval()
        yield model


def _to(target: Mapping[str, Tensor], device: torch.device) -> Target:
    return {key: value.to(device) for key, value in target.items()}


def _cut(detections: Mapping[str, Tensor], size: tuple[int, int]) -> Target:
    """A padded batch's detections of one image cut to its ``size``: masks cropped, boxes clipped."""
    height, width = size
    return {
        **detections,
        "masks": detections["masks"][..., :height, :width],
        "boxes": clip_boxes(detections["boxes"], size),
    }


def _batch(
    model: nn.Module, images: Tensor, targets: list[Target], confusion: ConfusionMatrix, threshold: float, losses: bool
) -> tuple[list[tuple[Target, Target]], float]:
    """One batch: ``(prediction, target)`` per image on the CPU (the confusion matrix updated) and the sum over
    its images of the summed losses (0 when ``losses`` is False)."""
    with torch.inference_mode():
        model.eval()
        pairs = []
        sizes = [tuple(target["masks"].shape[-2:]) for target in targets]
        for output, target in zip(model(images, image_sizes=sizes), targets):
            size = tuple(target["masks"].shape[-2:])
            detections = _cut(output, size)
            predicted = semantic_map(detections, size, score_threshold=threshold)
            truth = semantic_map(target, size, score_threshold=None, ignore_crowd=IGNORE_INDEX)
            confusion.update(predicted[None], truth[None])
            pairs.append((_to(detections, torch.device("cpu")), _to(target, torch.device("cpu"))))
    if not losses:
        return pairs, 0.0
    with torch.no_grad(), losses_mode(model):
        values = model(images, targets)
    return pairs, float(sum(values.values())) * len(targets)


@contextmanager
def _loss_seed(device: torch.device) -> Iterator[None]:
    """Draws from ``LOSS_SEED`` inside, and leaves the caller's random streams (CPU and ``device``'s) untouched.

    Why: in training mode the RPN and RoI heads sample anchors and RoIs at random, so the validation loss would
    otherwise vary from one evaluation to the next and shift the training run's own random stream.
    """
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(LOSS_SEED)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(LOSS_SEED)  # this device's generator only: the others are not forked
        yield


def evaluate_instances(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device | str,
    progress: bool | None = None,
    distributed: bool = False,
    score_threshold: float = 0.5,
    losses: bool = True,
) -> InstanceEvaluation:
    """Runs an instance segmenter over ``loader`` and scores its detections (see the module docstring).

    Detections come from eval mode under ``torch.inference_mode``; with ``losses`` the same batch goes through
    ``model(images, targets)`` under :func:`losses_mode` too, its anchors and RoIs drawn from ``LOSS_SEED``.
    Every module's mode is as it was afterwards.

    Args:
        model: ``model(images, image_sizes=...)`` in eval mode → per image ``{"boxes", "labels", "scores",
            "masks" (K, H, W)}`` (at most each image's size); in training mode ``model(images, targets)`` → a
            dict of scalar losses.
        loader: batches ``(images (N, C, H, W), [target, ...])`` from ``collate_instances``; each target's
            ``masks (K, h, w)`` give its image's size.
        num_classes: classes including the background.
        device: where the model runs.
        progress: a progress bar: True, False, or None for one only when stderr is a terminal.
        distributed: each process has evaluated its share of the data; the detections are gathered so that every
            process computes the same AP (a collective call: every process makes it). A no-op unless
            ``torch.distributed`` is initialised.
        score_threshold: the detections counted and painted into the semantic maps score at least this (AP
            reads every detection).
        losses: also compute the mean over images of the summed training losses.

    Raises:
        ValueError: what ``average_precision``, ``semantic_map`` and ``ConfusionMatrix`` raise (labels outside
            ``1..num_classes-1``, misshapen detections).
    """
    device = torch.device(device)
    confusion = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    pairs: list[tuple[Target, Target]] = []
    loss_sum = 0.0
    quiet = None if progress is None else not progress  # tqdm's None: no bar when stderr is not a terminal
    with _kept_modes(model), _loss_seed(device):
        for images, targets in tqdm(loader, desc="evaluate", unit="batch", disable=quiet, leave=False):
            targets = [_to(target, device) for target in targets]
            batch, batch_loss = _batch(model, images.to(device), targets, confusion, score_threshold, losses)
            pairs += batch
            loss_sum += batch_loss
    if distributed and dist.is_available() and dist.is_initialized():
        with torch.inference_mode():  # in-place reductions of tensors made in inference mode stay in it
            confusion.all_reduce()
            pairs = _gathered(pairs)
            loss_sum = _summed(loss_sum, device)
    loss = (loss_sum / len(pairs) if pairs else math.nan) if losses else None
    return _scored(pairs, confusion, score_threshold, loss)


def _gathered(pairs: list[tuple[Target, Target]]) -> list[tuple[Target, Target]]:
    """Every process's pairs, in rank order, on every process (so that all compute the same AP)."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pairs)
    return [pair for part in parts for pair in part]


def _summed(value: float, device: torch.device) -> float:
    if dist.get_backend() == "nccl" and device.type != "cuda":  # NCCL reduces GPU tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total[0])


def _scored(
    pairs: list[tuple[Target, Target]], confusion: ConfusionMatrix, threshold: float, loss: float | None
) -> InstanceEvaluation:
    predictions, truths = [p for p, _ in pairs], [t for _, t in pairs]
    true = [int((~t["iscrowd"].bool()).sum()) if "iscrowd" in t else len(t["labels"]) for t in truths]
    predicted = [int((p["scores"] >= threshold).sum()) for p in predictions]
    errors = [abs(p - t) for p, t in zip(predicted, true)]
    counts = {
        "true": sum(true),
        "predicted": sum(predicted),
        "mean_absolute_error": sum(errors) / len(errors) if errors else math.nan,
    }
    return InstanceEvaluation(
        box=average_precision(predictions, truths, iou_type="bbox"),
        mask=average_precision(predictions, truths, iou_type="segm"),
        semantic=confusion.compute(),
        counts=counts,
        loss=loss,
        images=len(pairs),
    )


def write_instance_report(
    model: nn.Module,
    dataset: InstanceDataset,
    folder: Path,
    *,
    num_classes: int,
    classes: Sequence[str],
    device: torch.device | str,
    progress: bool | None = None,
    overlays: int = 8,
    batch_size: int = 2,
) -> dict[str, float]:
    """Evaluates on ``dataset`` and writes ``folder/report.json`` and ``folder/overlays/000.png``, ...

    ``report.json`` holds the summary, the image count, the counts, the mask and box AP in full (COCO's twelve
    numbers but the per-class ones) and per class (``null``: no ground truth of the class), and the semantic
    scores. Each overlay shows one of the first ``overlays`` samples: the ground truth beside the detections
    scoring at least 0.5, over the image as it looks before normalisation. No loss is computed.

    Args:
        model: as for ``evaluate_instances``; it is not moved to ``device``.
        dataset: an instance dataset (``(image (C, H, W), target)`` samples, ``mean``/``std`` attributes).
        folder: where to write (created).
        num_classes: classes including the background.
        classes: a name per class, background first.
        device, progress: as for ``evaluate_instances``.
        overlays: how many samples to draw.
        batch_size: images per evaluation batch.

    Returns:
        ``InstanceEvaluation.summary()``.

    Raises:
        ValueError: a number of class names other than ``num_classes``, or what ``evaluate_instances`` raises.
    """
    if len(classes) != num_classes:
        raise ValueError(
            f"classes names {len(classes)} classes but num_classes is {num_classes}; name every class, background first"
        )
    folder, names = Path(folder), [str(name) for name in classes]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_instances)
    result = evaluate_instances(model, loader, num_classes=num_classes, device=device, progress=progress, losses=False)
    summary = result.summary()
    report = {
        "summary": summary,
        "images": result.images,
        "counts": result.counts,
        "per_class": [
            {"label": label, "name": names[label], "mask_ap": _ap(result.mask, label), "box_ap": _ap(result.box, label)}
            for label in range(1, num_classes)
        ],
        "mask": {key: value for key, value in result.mask.items() if key != "per_class"},
        "box": {key: value for key, value in result.box.items() if key != "per_class"},
        "semantic": {**result.semantic, "class_names": names},
    }
    text = json.dumps(_plain(report), indent=2, allow_nan=False) + "\n"
    atomic_write(folder / "report.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    _write_overlays(model, dataset, folder / "overlays", names, torch.device(device), overlays)
    return summary


def _ap(result: dict[str, Any], label: int) -> float | None:
    """The AP of class ``label``; None where it has no ground truth (COCO's -1) or is absent altogether."""
    value = result["per_class"].get(label, -1.0)
    return None if value == -1.0 else value


def _plain(value: Any) -> Any:
    """JSON values, with a NaN (an undefined metric) as null."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _display_image(image: Tensor, dataset: InstanceDataset) -> np.ndarray:
    """Undoes the dataset's normalisation: ``(C, H, W)`` → ``(H, W, 3 or fewer)`` float in [0, 1], first 3 bands."""
    array = image.permute(1, 2, 0).numpy()
    if dataset.mean is not None and dataset.std is not None:
        array = array * np.asarray(dataset.std, np.float32) + np.asarray(dataset.mean, np.float32)
    return np.clip(array[..., :3], 0, 1)


def _write_overlays(
    model: nn.Module, dataset: InstanceDataset, folder: Path, classes: list[str], device: torch.device, count: int
) -> None:
    """``folder/000.png``, ...: truth | prediction for the first ``count`` samples, each at its own size."""
    with _kept_modes(model), torch.inference_mode():
        model.eval()
        for index in range(min(count, len(dataset))):
            image, target = dataset[index]
            detections = _to(model(image[None].to(device))[0], torch.device("cpu"))
            shown = _display_image(image, dataset)
            truth = draw_instances(shown, target, classes, score_threshold=0.5)
            predicted = draw_instances(shown, detections, classes, score_threshold=0.5)
            save_png(side_by_side(truth, predicted, titles=("truth", "prediction")), folder / f"{index:03d}.png")
