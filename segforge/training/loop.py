"""``segforge.fit``: the training loop, read top to bottom.

A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` (one row per epoch), ``curves.png``,
``last.safetensors`` and ``best.safetensors`` (weights + model config + classes/palette),
``state.pt`` (optimizer, schedule, epoch, RNG: what ``--resume`` needs), and at the end the
validation report (``report.json``, ``confusion.png``, ``overlays/``).

Every file is written atomically (temp file + rename). The resume state is saved at the end of every
epoch, every ``train.checkpoint_minutes`` within an epoch, and when Ctrl-C or SIGTERM asks the run
to stop; so a run killed at any moment (even by SIGKILL) loses at most the work since the last
save, and ``--resume`` continues it exactly: batch order and augmentation are drawn from seeds
of (seed, epoch) and (seed, epoch, sample), so they do not depend on where a run was resumed.
"""

from __future__ import annotations

import csv
import functools
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from segforge.checkpoint import load_state, save_checkpoint, save_state
from segforge.config import Config, config_from_dict
from segforge.data import SegmentationDataset, build_transforms, class_weights, create_dataset
from segforge.files import atomic_write
from segforge.losses import create_loss
from segforge.metrics import ConfusionMatrix
from segforge.models import create_model
from segforge.models.segmenter import full_size_forward
from segforge.training import distributed
from segforge.training.distributed import EpochBatchSampler
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # torch gives each worker 1 thread; OpenCV would otherwise oversubscribe the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it saves, then stops the workers


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


class _StopRequest:
    """While training: the first SIGINT (Ctrl-C) or SIGTERM asks the loop to save and stop after the current
    step; a second one stops at once (the last saved checkpoint stays valid)."""

    def __init__(self, show: bool) -> None:
        self.requested, self.show, self._previous = False, show, {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.show:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _drop_rows_after(path: Path, epoch: int) -> None:
    """Removes metrics rows of epochs after the resume state (a kill can fall between the row and the state)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [row for row in rows if int(row["epoch"]) <= epoch]
    if len(kept) < len(rows):
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(path, write)


def fit(config: Config | None, *, resume: str | Path | None = None, progress: bool | None = None) -> Path:
    """Trains ``config.model`` on ``config.data``; returns the run folder.

    Under ``torchrun`` every process calls it; they train one model with DistributedDataParallel and
    rank 0 writes the run folder (see ``segforge.training.distributed``).

    Args:
        config: the validated configuration (``segforge.config.load_config``); None with ``resume``.
        resume: a run folder to continue exactly where its last saved state left it (an epoch's
            end, or mid-epoch after Ctrl-C or a ``train.checkpoint_minutes`` save).
        progress: show progress bars (default: when stderr is a terminal).

    Raises:
        ValueError: bad data, config or checkpoint (the message names the file or key).
        TrainingError: the loss became NaN or infinite.
        KeyboardInterrupt: stopped by Ctrl-C or SIGTERM, after saving the resume state.
    """
    state = None
    if resume is not None:
        # state.pt alone (one atomic file) holds everything resuming needs, weights included, so a kill
        # between two writes can never pair the weights of one epoch with the optimizer of another.
        state = load_state(Path(resume) / "state.pt")
        config = config_from_dict(state["config"])
    elif config is None:
        raise ValueError("fit needs a config, or resume= a run folder")
    if config.train.checkpoint_minutes < 0:
        raise ValueError(f"train.checkpoint_minutes must be >= 0 (0: save at epoch ends only), "
                         f"got {config.train.checkpoint_minutes}")
    process, device = distributed.start(config.train.device)
    try:
        folder = Path(resume) if resume is not None else _shared_run_folder(config, process)
        with _StopRequest(show=process.is_main) as stop:
            return _train(config, state, folder, process, device, stop, progress)
    finally:
        distributed.stop(process)


def _shared_run_folder(config: Config, process: distributed.Process) -> Path:
    """Rank 0 creates the run folder and every process learns its name (or rank 0's error)."""
    folder, error = None, None
    if process.is_main:
        try:
            folder = str(_run_folder(config))
        except ValueError as err:
            error = str(err)
    folder, error = distributed.broadcast((folder, error), process)
    if error:
        raise ValueError(error)
    return Path(folder)


def _train(config: Config, state: dict | None, folder: Path, process: distributed.Process, device: torch.device,
           stop: _StopRequest, progress: bool | None) -> Path:
    seed_everything(config.train.seed)
    data = build_datasets(config)
    main = process.is_main
    batch_size = config.data.batch_size
    sampler = EpochBatchSampler(len(data.train), batch_size, shuffle=True, seed=config.train.seed,
                                drop_last=len(data.train) > batch_size, rank=process.rank,
                                world_size=process.world_size)
    loader_options = {"num_workers": config.data.workers, "collate_fn": PadCollate(data.ignore_index),
                      "worker_init_fn": _worker_init, "pin_memory": device.type == "cuda",
                      # worker seeds come from here, not from the global RNG, which stays the model's (dropout)
                      "generator": torch.Generator().manual_seed(config.train.seed)}
    train_loader = DataLoader(data.train, batch_sampler=sampler, **loader_options)
    val_loader = (DataLoader(data.val, batch_size=1, sampler=distributed.shard(len(data.val), process),
                             **loader_options) if data.val is not None else None)

    net = create_model(config.model.name, data.num_classes, in_channels=data.in_channels,
                       encoder=config.model.encoder, encoder_weights=config.model.encoder_weights)
    if state is not None:
        net.load_state_dict(state["model"])
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    net = net.to(device).to(memory_format=memory_format)
    model: nn.Module = net  # what the training steps call: net, or its DistributedDataParallel wrapper
    if process.distributed:
        if config.train.sync_bn:
            if device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only. Turn it "
                                 "off on the CPU (each process then normalises with its own batch statistics)")
            net = model = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
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
                          aux_weight=config.loss.aux_weight if net.aux_head is not None else None,
                          # every mask was range-checked by the dataset (naming its file); re-checking
                          # each batch in every loss term would cost device syncs for nothing
                          validate=False).to(device)

    num_batches = len(sampler)
    steps_per_epoch = math.ceil(num_batches / config.train.accumulate)
    epochs = (math.ceil(config.train.iterations / steps_per_epoch) if config.train.iterations
              else config.train.epochs)
    total_steps = config.train.iterations or epochs * steps_per_epoch
    optimizer = create_optimizer(net, config.optimizer)
    scheduler = create_scheduler(optimizer, config.schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if config.train.amp == "on" and device.type != "cuda":
        raise ValueError(f"train.amp is 'on' but training runs on {device}: mixed precision needs CUDA; "
                         "use amp: auto (on when CUDA is used) or off")
    amp = device.type == "cuda" and config.train.amp != "off"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, start_batch, best_iou, stale, partial = 0, 0, -1.0, 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_iou, stale = state["epoch"], state["best_iou"], state["stale"]
        start_batch, partial = state.get("batch", 0), state.get("partial")
        torch.set_rng_state(state["torch_rng"])
        if main:
            _drop_rows_after(folder / "metrics.csv", start_epoch)
    elif main:
        atomic_write(folder / "config.yaml",
                     lambda tmp: Path(tmp).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))

    info = {"config": config.to_dict(), "classes": data.train.classes, "palette": data.train.palette,
            "ignore_index": data.ignore_index, "mean": data.train.mean, "std": data.train.std}
    save = functools.partial(_save, folder, net, optimizer, scheduler, scaler, config, info)
    quiet = True if not main else None if progress is None else not progress  # None: bar only on a terminal
    every = 60 * config.train.checkpoint_minutes
    last_save = time.monotonic()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            skip = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, skip)
            # Epoch-seeded augmentation, drawn per sample: a resumed or data-parallel run augments alike.
            seed = int(np.random.SeedSequence([config.train.seed, epoch]).generate_state(1)[0])
            data.train.transform = build_transforms(config.data.augmentation, ignore_index=data.ignore_index,
                                                    crop_size=config.data.crop_size, seed=seed)
            data.train.augment_seed = seed
            model.train()
            confusion = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index)
            total_loss, batches, elapsed = 0.0, 0, 0.0
            if skip and partial is not None:  # the counts of the batches before the mid-epoch save
                total_loss, batches, elapsed = partial["loss"], partial["batches"], partial["seconds"]
                if main:  # summed once over the processes at the epoch's end
                    confusion.matrix += partial["confusion"].to(confusion.matrix.device)
            started = time.perf_counter() - elapsed
            clock, seen = time.perf_counter(), 0  # throughput of this process's session
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=quiet,
                       leave=False, dynamic_ncols=True, initial=skip, total=num_batches)
            optimizer.zero_grad(set_to_none=True)
            for batch_index, (images, masks) in enumerate(bar, start=skip):
                images = images.to(device, non_blocking=True).to(memory_format=memory_format)
                masks = masks.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=amp):
                    output = full_size_forward(model, images)
                    loss = loss_fn(output, masks)
                save_due = every > 0 and time.monotonic() - last_save >= every
                loss_value, stop_now, save_now = _agree(loss.detach(), stop.requested, save_due, process)
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the loss became {loss_value} at epoch {epoch + 1}, batch {batch_index + 1}: lower the "
                        f"learning rate (optimizer.lr = {config.optimizer.lr}), add warm-up (schedule.warmup_iters), "
                        "or turn off mixed precision (train.amp: off); the last good checkpoint is in " + str(folder)
                    )
                scaler.scale(loss / config.train.accumulate).backward()
                step_end = (batch_index + 1) % config.train.accumulate == 0 or batch_index + 1 == num_batches
                if step_end:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                logits = output[0] if isinstance(output, tuple) else output
                confusion.update(logits.detach(), masks)
                total_loss += loss_value
                batches += 1
                seen += batch_size
                bar.set_postfix(loss=f"{total_loss / batches:.4f}", img_s=f"{seen / (time.perf_counter() - clock):.1f}")
                finished = scheduler.last_epoch >= total_steps  # train.iterations reached mid-epoch
                if step_end and not finished and batch_index + 1 < num_batches and (stop_now or save_now):
                    counts = distributed.all_reduce_sum(confusion.matrix.clone(), process)
                    if main:
                        save(epoch=epoch, best_iou=best_iou, stale=stale, batch=batch_index + 1,
                             partial={"confusion": counts.cpu(), "loss": total_loss, "batches": batches,
                                      "seconds": time.perf_counter() - started})
                    last_save = time.monotonic()
                    if stop_now:
                        raise _Stopped(f"epoch {epoch + 1}, batch {batch_index + 1}")
                if finished:
                    break
            bar.close()
            confusion.all_reduce()
            train_scores = confusion.compute()
            row = {"epoch": epoch + 1, "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                   "train_loss": f"{total_loss / max(batches, 1):.6f}",
                   "train_mean_iou": f"{train_scores['mean_iou']:.6f}",
                   "train_pixel_accuracy": f"{train_scores['pixel_accuracy']:.6f}"}
            improved = False
            if val_loader is not None and ((epoch + 1) % config.train.eval_every == 0 or epoch + 1 == epochs):
                _share_buffers(net, process)  # every process evaluates with rank 0's batch-norm statistics
                val = evaluate(net, val_loader, num_classes=data.num_classes, ignore_index=data.ignore_index,
                               loss_fn=loss_fn, device=device, memory_format=memory_format,
                               progress=False if quiet is True else progress, distributed=process.distributed)
                row |= {"val_loss": f"{val.loss:.6f}", "val_mean_iou": f"{val.scores['mean_iou']:.6f}",
                        "val_pixel_accuracy": f"{val.scores['pixel_accuracy']:.6f}"}
                improved = val.scores["mean_iou"] > best_iou
                if improved:
                    best_iou, stale = val.scores["mean_iou"], 0
                else:
                    stale += 1
            row["seconds"] = f"{time.perf_counter() - started:.1f}"
            if main:
                _append_csv(folder / "metrics.csv", row)
                plot_curves(folder / "metrics.csv", folder / "curves.png")
                save(epoch=epoch + 1, best_iou=best_iou, stale=stale, best=improved or val_loader is None)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            last_save = time.monotonic()
            if _agree(torch.zeros((), device=device), stop.requested, False, process)[1]:
                raise _Stopped(f"the end of epoch {epoch + 1}")
            if config.train.early_stop and stale >= config.train.early_stop:
                if main:
                    print(f"early stop: no better val mean IoU for {stale} evaluations", flush=True)
                break
    except _Stopped as where:
        if main:
            print(f"\nstopped at {where}: saved the state there in {folder}; "
                  f"continue with: segforge train --resume {folder}", flush=True)
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        if main:
            print(f"\ninterrupted in epoch {epoch + 1}: the last saved state is in {folder}; "
                  f"continue with: segforge train --resume {folder}", flush=True)
        raise
    if data.val is not None and main:
        model, _ = _best_model(folder, device, memory_format)
        write_report(model, data.val, folder, num_classes=data.num_classes, ignore_index=data.ignore_index,
                     device=device, memory_format=memory_format, progress=progress)
    return folder


class _Stopped(Exception):
    """Raised inside the loop after the state was saved on request (Ctrl-C, SIGTERM)."""


def _agree(loss: torch.Tensor, stop: bool, save: bool, process: distributed.Process) -> tuple[float, bool, bool]:
    """The mean loss over the processes and whether any of them wants to stop or save: one small
    all-reduce per batch, so every process takes the same decision at the same step."""
    if not process.distributed:
        return loss.item(), stop, save
    values = torch.stack([loss.float(), loss.new_tensor(float(stop)), loss.new_tensor(float(save))])
    distributed.all_reduce_sum(values, process)
    total, stops, saves = values.tolist()
    return total / process.world_size, stops > 0, saves > 0


def _share_buffers(net: nn.Module, process: distributed.Process) -> None:
    """Copies rank 0's buffers (batch-norm running statistics, which each process updated from its own
    images since the last forward) to every process, so all evaluate the checkpoint rank 0 saves."""
    if process.distributed:
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _save(folder: Path, model, optimizer, scheduler, scaler, config: Config, info: dict, *, epoch: int,
          best_iou: float, stale: int, best: bool = False, batch: int = 0, partial: dict | None = None) -> None:
    """Writes the resume state, then last (and best) weights; each file atomically.

    ``epoch`` counts the finished epochs. A mid-epoch save (``batch`` > 0) writes the resume state
    only: ``batch`` global batches of epoch ``epoch + 1`` are done and ``partial`` holds their
    summed confusion matrix, loss and time.
    """
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "config": config.to_dict(), "epoch": epoch, "best_iou": best_iou,
             "stale": stale, "torch_rng": torch.get_rng_state(), "batch": batch}
    if partial is not None:
        state["partial"] = partial
    save_state(folder / "state.pt", state)
    if batch:
        return
    info = info | {"epoch": epoch, "best_mean_iou": best_iou}
    save_checkpoint(folder / "last.safetensors", model, **info)
    if best:
        save_checkpoint(folder / "best.safetensors", model, **info)


def _best_model(folder: Path, device: torch.device, memory_format: torch.memory_format):
    from segforge.checkpoint import load_model

    model, info = load_model(folder / "best.safetensors", map_location=device)
    return model.to(memory_format=memory_format).eval(), info
