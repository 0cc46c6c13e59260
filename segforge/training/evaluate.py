"""Evaluation of a model on a dataset: the FCN metrics, a report, a confusion picture and overlays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segforge.data import SegmentationDataset
from segforge.inference.memory import check_fits, out_of_memory_hint
from segforge.inference.probabilities import check_finite, predict_probabilities
from segforge.metrics import ConfusionMatrix, format_table, logits_to_labels, plot_confusion, save_json
from segforge.models.segmenter import full_size_forward
from segforge.plots import overlay_panel, save_png

EVALUATION_ADVICE = (
    "cut the images and their masks into tiles of a few thousand pixels, or evaluate on a device with more memory"
)


@dataclass
class Evaluation:
    scores: dict
    confusion: torch.Tensor  # (C, C) int64, rows = ground truth
    loss: float


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    ignore_index: int | None,
    loss_fn: nn.Module | None = None,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: bool | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    distributed: bool = False,
) -> Evaluation:
    """Runs ``model`` over ``loader`` at each image's own resolution and accumulates the confusion matrix.

    ``flip`` and ``scales`` average the class probabilities over test-time augmentation views
    (``segforge.inference.predict_probabilities``); the loss is then not computed. With ``distributed``,
    each process has evaluated its share of the data and the counts and losses are summed over all
    processes (a collective call: every process makes it).
    """
    tta = flip or tuple(scales) != (1.0,)
    if tta and getattr(model, "inputs", "images") == "series":
        raise ValueError("test-time augmentation (flip, scales) is for images; evaluate time series without it")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    total, batches = 0.0, 0
    quiet = None if progress is None else not progress  # tqdm's None: no bar when stderr is not a terminal
    checked = set()
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=quiet, leave=False):
        images, masks, dates = batch[0], batch[1].to(device), tuple(t.to(device) for t in batch[2:])
        if images.shape not in checked:  # the estimate is of shapes only: once per image size
            check_fits(
                model, tuple(images.shape), device, "an evaluation image", scale=max(scales), advice=EVALUATION_ADVICE
            )
            checked.add(images.shape)
        images = _to_device(images, device, memory_format)
        if tta:
            with out_of_memory_hint("an evaluation image", EVALUATION_ADVICE):
                confusion.update(predict_probabilities(model, images, flip=flip, scales=scales), masks)
            continue
        with out_of_memory_hint("an evaluation image", EVALUATION_ADVICE):
            logits = check_finite(full_size_forward(model, images, *dates), "the evaluation images")
        if loss_fn is not None:
            total += float(loss_fn(logits, masks))
            batches += 1
        confusion.update(logits, masks)
    model.train(was_training)
    if distributed:
        confusion.all_reduce()
        sums = torch.tensor([total, batches], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, batches = sums.tolist()
    return Evaluation(confusion.compute(), confusion.matrix.cpu(), total / max(batches, 1))


def _to_device(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in ``memory_format``; a series ``(N, T, C, H, W)`` as it is (the model converts
    the dates it encodes)."""
    images = images.to(device)
    return images.to(memory_format=memory_format) if images.ndim == 4 else images


def _display_image(image: torch.Tensor, dataset: SegmentationDataset) -> np.ndarray:
    """Undoes the dataset's normalisation: ``(C, H, W)`` → ``(H, W, C)`` float in [0, 1]; more than 3 bands
    (a multispectral image) are shown by their first 3."""
    array = image.permute(1, 2, 0).numpy()
    if dataset.mean is not None and dataset.std is not None:
        array = array * np.asarray(dataset.std, np.float32) + np.asarray(dataset.mean, np.float32)
    return np.clip(array[..., :3] if array.shape[-1] > 3 else array, 0, 1)


def _shown(sample: tuple) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(the image shown (C, H, W), the mask, the model's inputs)`` of one sample; a series is shown by its
    last valid date."""
    if len(sample) == 2:
        return sample[0], sample[1], (sample[0][None],)
    images, mask, valid, days = sample
    last = int(valid.nonzero().max()) if valid.any() else len(valid) - 1
    return images[last], mask, (images[None], valid[None], days[None])


@torch.inference_mode()
def write_report(
    model: nn.Module,
    dataset: SegmentationDataset,
    folder: Path,
    *,
    num_classes: int,
    ignore_index: int | None,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    overlays: int = 4,
    progress: bool | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> Evaluation:
    """Evaluates, prints the per-class table, writes report.json, confusion.png and a few overlays."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    result = evaluate(
        model,
        loader,
        num_classes=num_classes,
        ignore_index=ignore_index,
        device=device,
        memory_format=memory_format,
        progress=progress,
        flip=flip,
        scales=scales,
    )
    names = dataset.classes or [str(i) for i in range(num_classes)]
    print(format_table(result.scores, names), flush=True)
    save_json(result.scores, folder / "report.json", names)
    plot_confusion(result.confusion, names, folder / "confusion.png")
    model.eval()
    for index in range(min(overlays, len(dataset))):
        image, mask, inputs = _shown(dataset[index])
        images, *dates = inputs
        logits = full_size_forward(model, _to_device(images, device, memory_format), *(t.to(device) for t in dates))
        pred = logits_to_labels(logits)[0]
        panel = overlay_panel(
            _display_image(image, dataset), mask.numpy(), pred.cpu().numpy(), dataset.palette, ignore_index
        )
        save_png(panel, folder / "overlays" / f"{index:03d}.png")
    return result
