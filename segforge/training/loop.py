"""``segforge.fit``: the training loop, read top to bottom.

A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` (one row per epoch), ``curves.png``,
``last.safetensors`` and ``best.safetensors`` (weights + model config + classes/palette),
``state.pt`` (optimizer, schedule, epoch, RNG: what ``--resume`` needs), and at the end the
validation report (``report.json``, ``confusion.png``, ``overlays/``). Checkpoints are written
atomically at the end of every epoch, so killing a run loses at most the epoch in progress.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from segforge.checkpoint import load_state, save_checkpoint, save_state
from segforge.config import Config, config_from_dict
from segforge.data import SegmentationDataset, build_transforms, class_weights, create_dataset
from segforge.files import atomic_write
from segforge.losses import create_loss
from segforge.metrics import ConfusionMatrix
from segforge.models import create_model
from segforge.training.evaluate import evaluate, write_report
from segforge.training.optim import create_optimizer, create_scheduler
from segforge.plots import plot_curves

NO_IGNORE = -100  # the ignore label used when a dataset has none (never a real class)
CSV_FIELDS = ["epoch", "lr", "train_loss", "train_mean_iou", "train_pixel_accuracy", "val_loss", "val_mean_iou",
              "val_pixel_accuracy", "seconds"]


class TrainingError(RuntimeError):
    """A run that cannot go on (a NaN loss); the message says where and what to try."""


@dataclass
class Datasets:
    train: SegmentationDataset
    val: SegmentationDataset | None
    num_classes: int
    ignore_index: int
    in_channels: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # torch gives each worker 1 thread; OpenCV would otherwise oversubscribe the cores


def build_datasets(config: Config) -> Datasets:
    """The train and val datasets (the train augmentation is set per epoch by ``fit``)."""
    data = config.data
    if not data.root:
        raise ValueError("data.root is not set: pass --data PATH (a dataset folder) or set data.root in the config")
    options = {"num_classes": data.num_classes, "ignore_index": data.ignore_index, "colour_map": data.palette}
    if data.format != "folder" and data.format != "auto":
        options = {k: v for k, v in options.items() if v is not None}
    train = create_dataset(data.format, data.root, data.train_split, **options)
    val = create_dataset(data.format, data.root, data.val_split, **options) if data.val_split else None
    num_classes = train.num_classes or data.num_classes
    if not num_classes or num_classes < 2:
        raise ValueError(f"the dataset at {data.root} does not say how many classes it has: pass --num-classes N "
                         "(2 or more; a binary task has 2)")
    ignore_index = train.ignore_index if train.ignore_index is not None else NO_IGNORE
    in_channels = train[0][0].shape[0]
    return Datasets(train, val, num_classes, ignore_index, in_channels)


def _epoch_transform(config: Config, ignore_index: int, epoch: int):
    """The augmentation of one epoch, seeded from (seed, epoch) so that a resumed run draws the same."""
    seed = int(np.random.SeedSequence([config.train.seed, epoch]).generate_state(1)[0])
    return build_transforms(config.data.augmentation, ignore_index=ignore_index, crop_size=config.data.crop_size,
                            seed=seed)


class PadCollate:
    """Batches images of different sizes: pads each to the batch's largest (bottom/right), the image
    with 0 and the mask with the ignore index, so the padding never reaches the loss or the metrics."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        height = max(image.shape[-2] for image, _ in batch)
        width = max(image.shape[-1] for image, _ in batch)
        images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
        masks = torch.full((len(batch), height, width), self.ignore_index, dtype=torch.int64)
        for i, (image, mask) in enumerate(batch):
            images[i, :, : image.shape[-2], : image.shape[-1]] = image
            masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
        return images, masks


def _loader(dataset: SegmentationDataset, *, batch_size: int, shuffle: bool, workers: int, seed: int,
            device: torch.device, ignore_index: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
                      collate_fn=PadCollate(ignore_index),
                      drop_last=shuffle and len(dataset) > batch_size, worker_init_fn=_worker_init,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def _run_folder(config: Config) -> Path:
    name = config.train.name or f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(config.train.out) / name
    if (folder / "state.pt").exists():
        raise ValueError(f"run folder {folder} already holds a run; continue it with --resume {folder}, "
                         "or pick another --name")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})


def fit(config: Config | None, *, resume: str | Path | None = None, progress: bool | None = None) -> Path:
    """Trains ``config.model`` on ``config.data``; returns the run folder.

    Args:
        config: the validated configuration (``segforge.config.load_config``); None with ``resume``.
        resume: a run folder to continue exactly where its last checkpoint left it.
        progress: show progress bars (default: when stderr is a terminal).

    Raises:
        ValueError: bad data, config or checkpoint (the message names the file or key).
        TrainingError: the loss became NaN or infinite.
    """
    state = None
    if resume is not None:
        folder = Path(resume)
        # state.pt alone (one atomic file) holds everything resuming needs, weights included, so a kill
        # between two writes can never pair the weights of one epoch with the optimizer of another.
        state = load_state(folder / "state.pt")
        config = config_from_dict(state["config"])
    elif config is None:
        raise ValueError("fit needs a config, or resume= a run folder")
    else:
        folder = _run_folder(config)
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    data = build_datasets(config)
    train_loader = _loader(data.train, batch_size=config.data.batch_size, shuffle=True, workers=config.data.workers,
                           seed=config.train.seed, device=device, ignore_index=data.ignore_index)
    val_loader = (_loader(data.val, batch_size=1, shuffle=False, workers=config.data.workers, seed=0, device=device,
                          ignore_index=data.ignore_index)
                  if data.val is not None else None)

    model = create_model(config.model.name, data.num_classes, in_channels=data.in_channels,
                         encoder=config.model.encoder, encoder_weights=config.model.encoder_weights).to(device)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    weights = None
    if isinstance(config.data.class_weights, list):
        weights = config.data.class_weights
    elif config.data.class_weights == "median_frequency":
        weights = class_weights(data.train).tolist()
    loss_fn = create_loss(config.loss.name, ignore_index=data.ignore_index,
                          class_weight=weights if config.loss.name != "dice" else None,
                          dice_class_weight=weights if config.loss.name == "dice" else None,
                          dice_weight=config.loss.dice_weight if config.loss.name == "ce+dice" else None,
                          smooth=config.loss.smooth,
                          aux_weight=config.loss.aux_weight if model.aux_head is not None else None,
                          # every mask was range-checked by the dataset (naming its file); re-checking
                          # each batch in every loss term would cost device syncs for nothing
                          validate=False).to(device)

    steps_per_epoch = math.ceil(len(train_loader) / config.train.accumulate)
    epochs = (math.ceil(config.train.iterations / steps_per_epoch) if config.train.iterations
              else config.train.epochs)
    total_steps = config.train.iterations or epochs * steps_per_epoch
    optimizer = create_optimizer(model, config.optimizer)
    scheduler = create_scheduler(optimizer, config.schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if config.train.amp == "on" and device.type != "cuda":
        raise ValueError(f"train.amp is 'on' but training runs on {device}: mixed precision needs CUDA; "
                         "use amp: auto (on when CUDA is used) or off")
    amp = device.type == "cuda" and config.train.amp != "off"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, best_iou, stale = 0, -1.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_iou, stale = state["epoch"], state["best_iou"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
    else:
        atomic_write(folder / "config.yaml",
                     lambda tmp: Path(tmp).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))

    info = {"config": config.to_dict(), "classes": data.train.classes, "palette": data.train.palette,
            "ignore_index": data.ignore_index, "mean": data.train.mean, "std": data.train.std}
    quiet = None if progress is None else not progress  # tqdm's None: no bar when stderr is not a terminal
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            # A fresh, epoch-seeded order: resuming at an epoch boundary replays the same batches.
            train_loader.generator.manual_seed(config.train.seed + epoch)
            data.train.transform = _epoch_transform(config, data.ignore_index, epoch)
            started = time.perf_counter()
            model.train()
            confusion = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index)
            total_loss, batches = 0.0, 0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=quiet,
                       leave=False, dynamic_ncols=True)
            optimizer.zero_grad(set_to_none=True)
            for i, (images, masks) in enumerate(bar):
                images = images.to(device, non_blocking=True).to(memory_format=memory_format)
                masks = masks.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=amp):
                    output = model(images)
                    loss = loss_fn(output, masks)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}: lower the learning rate "
                        f"(optimizer.lr = {config.optimizer.lr}), add warm-up (schedule.warmup_iters), or turn off "
                        "mixed precision (train.amp: off); the last good checkpoint is in " + str(folder)
                    )
                scaler.scale(loss / config.train.accumulate).backward()
                if (i + 1) % config.train.accumulate == 0 or i + 1 == len(train_loader):
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                logits = output[0] if isinstance(output, tuple) else output
                confusion.update(logits.detach(), masks)
                total_loss += loss.item()
                batches += 1
                bar.set_postfix(loss=f"{total_loss / batches:.4f}",
                                img_s=f"{batches * images.shape[0] / (time.perf_counter() - started):.1f}")
                if scheduler.last_epoch >= total_steps:  # train.iterations reached mid-epoch
                    break
            bar.close()
            train_scores = confusion.compute()
            row = {"epoch": epoch + 1, "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                   "train_loss": f"{total_loss / max(batches, 1):.6f}",
                   "train_mean_iou": f"{train_scores['mean_iou']:.6f}",
                   "train_pixel_accuracy": f"{train_scores['pixel_accuracy']:.6f}"}
            improved = False
            if val_loader is not None and ((epoch + 1) % config.train.eval_every == 0 or epoch + 1 == epochs):
                val = evaluate(model, val_loader, num_classes=data.num_classes, ignore_index=data.ignore_index,
                               loss_fn=loss_fn, device=device, memory_format=memory_format, progress=progress)
                row |= {"val_loss": f"{val.loss:.6f}", "val_mean_iou": f"{val.scores['mean_iou']:.6f}",
                        "val_pixel_accuracy": f"{val.scores['pixel_accuracy']:.6f}"}
                improved = val.scores["mean_iou"] > best_iou
                if improved:
                    best_iou, stale = val.scores["mean_iou"], 0
                else:
                    stale += 1
            row["seconds"] = f"{time.perf_counter() - started:.1f}"
            _append_csv(folder / "metrics.csv", row)
            plot_curves(folder / "metrics.csv", folder / "curves.png")
            _save(folder, model, optimizer, scheduler, scaler, config, info, epoch=epoch + 1, best_iou=best_iou,
                  stale=stale, best=improved or val_loader is None)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if config.train.early_stop and stale >= config.train.early_stop:
                print(f"early stop: no better val mean IoU for {stale} evaluations", flush=True)
                break
    except KeyboardInterrupt:
        print(f"\ninterrupted in epoch {epoch + 1}: the last checkpoint (end of epoch {epoch}) is in {folder}; "
              f"continue with: segforge train --resume {folder}", flush=True)
        raise
    if data.val is not None:
        model, _ = _best_model(folder, device, memory_format)
        write_report(model, data.val, folder, num_classes=data.num_classes, ignore_index=data.ignore_index,
                     device=device, memory_format=memory_format, progress=progress)
    return folder


def _save(folder: Path, model, optimizer, scheduler, scaler, config: Config, info: dict, *, epoch: int,
          best_iou: float, stale: int, best: bool) -> None:
    """Writes the resume state, then last (and best) weights; each file atomically."""
    save_state(folder / "state.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                     "config": config.to_dict(), "epoch": epoch, "best_iou": best_iou,
                                     "stale": stale, "torch_rng": torch.get_rng_state()})
    info = info | {"epoch": epoch, "best_mean_iou": best_iou}
    save_checkpoint(folder / "last.safetensors", model, **info)
    if best:
        save_checkpoint(folder / "best.safetensors", model, **info)


def _best_model(folder: Path, device: torch.device, memory_format: torch.memory_format):
    from segforge.checkpoint import load_model

    model, info = load_model(folder / "best.safetensors", map_location=device)
    return model.to(memory_format=memory_format).eval(), info
