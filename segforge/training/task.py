"""The seam between the training loop and what it trains.

The loop (``segforge.training.loop``) owns what every kind of training shares: optimizer steps and
gradient accumulation, mixed precision, rounds and the time budget, saving and exact resuming,
signals, NaN stops and the processes of torchrun. A *task* owns what one kind of model means:

* what a batch is (``collate``) and how it reaches the device (``to_device``);
* the forward pass and the loss (``forward``: a scalar loss and what the round's metrics read);
* what a round's training steps count (``round_metrics``: their columns of ``metrics.csv``);
* how validation scores the model (``validate``; ``score`` names the value a better model has more
  of) and the report of the best checkpoint (``report``).

``SegmentationTask`` is semantic segmentation: (images, masks) batches, the loss of the logits, a
confusion matrix per round, validation by the FCN metrics. A model with a second network
(adversarial training), another target (instances: ``segforge.training.instance_task``) or another input shape
(image time series) is another task passed to ``fit(config, task=...)``, not another loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from segforge.config import Config
from segforge.data import SegmentationDataset, class_weights
from segforge.losses import create_loss
from segforge.metrics import ConfusionMatrix
from segforge.models import create_model
from segforge.models.segmenter import full_size_forward
from segforge.training import distributed
from segforge.training.evaluate import evaluate, write_report


class RoundMetrics(Protocol):
    """What one round's training steps count for its row of ``metrics.csv``."""

    def update(self, batch: Any, outputs: Any) -> None: ...

    def snapshot(self, process: distributed.Process) -> dict:
        """The counts of every process so far, for a mid-round save (a collective call; CPU tensors)."""

    def restore(self, saved: dict, main: bool) -> None:
        """Adds the counts a mid-round save held (on rank 0 only: they are summed over processes once)."""

    def row(self) -> dict[str, float]:
        """The round's values, summed over the processes (a collective call), by ``Task.fields``."""


class Task(Protocol):
    fields: tuple[str, ...]  # metrics.csv columns after train_ and val_ (besides the loss), e.g. "mean_iou"
    train_fields: tuple[str, ...]  # columns of the training rounds only (e.g. an adversary's loss)
    val_fields: tuple[str, ...]  # columns of validation only (e.g. an instance model's AP)
    score: str  # the validation field a better model has more of (picks best.safetensors, early stopping)
    net: nn.Module  # the network the checkpoints hold
    memory_format: torch.memory_format

    def collate(self) -> Callable: ...

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any]: ...

    def round_metrics(self) -> RoundMetrics: ...

    def state(self) -> dict:
        """What a resume needs besides the network and its optimizer (``build`` gets it back in ``state["task"]``);
        empty for most tasks."""

    def validate(self, loader: DataLoader, *, progress: bool | None, process: distributed.Process) -> dict: ...

    def report(self, folder: Path, *, progress: bool | None) -> None: ...


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


class ConfusionCounts:
    """A segmentation round's training counts: the confusion matrix of the batches' logits."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)

    def update(self, batch: tuple[torch.Tensor, torch.Tensor], outputs: torch.Tensor) -> None:
        self.confusion.update(outputs, batch[1])

    def snapshot(self, process: distributed.Process) -> dict:
        return {"confusion": distributed.all_reduce_sum(self.confusion.matrix.clone(), process).cpu()}

    def restore(self, saved: dict, main: bool) -> None:
        if main:
            self.confusion.matrix += saved["confusion"].to(self.confusion.matrix.device)

    def row(self) -> dict[str, float]:
        scores = self.confusion.all_reduce().compute()
        return {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"]}


class SegmentationTask:
    """Semantic segmentation: ``(images, masks)`` batches, the configured loss of the logits (with PSPNet's
    auxiliary head), a confusion matrix per round, validation by mean IoU and pixel accuracy."""

    fields = ("mean_iou", "pixel_accuracy")
    train_fields: tuple[str, ...] = ()
    val_fields: tuple[str, ...] = ()
    score = "mean_iou"

    def __init__(
        self,
        net: nn.Module,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        data,
        device: torch.device,
        memory_format: torch.memory_format,
    ) -> None:
        self.net, self.model, self.loss_fn = net, model, loss_fn
        self.data, self.device, self.memory_format = data, device, memory_format

    @classmethod
    def build(
        cls, config: Config, data, state: dict | None, process: distributed.Process, device: torch.device
    ) -> SegmentationTask:
        """The configured network (restored from ``state``; wrapped for DistributedDataParallel) and its loss."""
        net, model, memory_format = _build_model(config, data, state, process, device)
        if net.inputs != data.train.inputs:
            other = "temporal_unet" if data.train.inputs == "series" else "an image model (segforge models lists them)"
            raise ValueError(
                f"model {config.model.name!r} takes {net.inputs} but the data at {config.data.root} are "
                f"{'image time series' if data.train.inputs == 'series' else 'images'}: use --model {other}"
            )
        return cls(
            net,
            model,
            _build_loss(config, data.train, data.ignore_index, net, device),
            data=data,
            device=device,
            memory_format=memory_format,
        )

    def collate(self) -> Callable:
        return PadCollate(self.data.ignore_index)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple:
        images, masks = batch
        return (
            images.to(device, non_blocking=True).to(memory_format=self.memory_format),
            masks.to(device, non_blocking=True),
        )

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = batch
        output = full_size_forward(self.model, images)
        logits = output[0] if isinstance(output, tuple) else output  # SegmentationOutput: (logits, aux logits)
        return self.loss_fn(output, masks), logits.detach()

    def round_metrics(self) -> ConfusionCounts:
        return ConfusionCounts(self.data.num_classes, self.data.ignore_index)

    def state(self) -> dict:
        return {}

    def validate(self, loader: DataLoader, *, progress: bool | None, process: distributed.Process) -> dict:
        val = evaluate(
            self.net,
            loader,
            num_classes=self.data.num_classes,
            ignore_index=self.data.ignore_index,
            loss_fn=self.loss_fn,
            device=self.device,
            memory_format=self.memory_format,
            progress=progress,
            distributed=process.distributed,
        )
        return {"loss": val.loss, "mean_iou": val.scores["mean_iou"], "pixel_accuracy": val.scores["pixel_accuracy"]}

    def report(self, folder: Path, *, progress: bool | None) -> None:
        """The validation report of ``best.safetensors``: ``report.json``, ``confusion.png``, ``overlays/``."""
        from segforge.checkpoint import load_model

        model, _ = load_model(folder / "best.safetensors", map_location=self.device)
        write_report(
            model.to(memory_format=self.memory_format).eval(),
            self.data.val,
            folder,
            num_classes=self.data.num_classes,
            ignore_index=self.data.ignore_index,
            device=self.device,
            memory_format=self.memory_format,
            progress=progress,
        )


def _build_model(
    config: Config, data, state: dict | None, process: distributed.Process, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.memory_format]:
    """``(net, what the steps call: net or its DistributedDataParallel wrapper, memory format)``."""
    # A resumed run has its weights: the encoder's ImageNet weights are neither fetched nor loaded again.
    net = create_model(
        config.model.name,
        data.num_classes,
        in_channels=data.in_channels,
        encoder=config.model.encoder,
        encoder_weights=config.model.encoder_weights if state is None else None,
        # a resumed run rebuilds the decoder it has weights for (one saved before the option: as wide as the skips)
        decoder_channels=config.model.decoder_channels
        if state is None
        else (state.get("model_config") or {}).get("decoder_channels", "skips"),
        temporal=config.model.temporal,
    )
    if state is not None:
        net.load_state_dict(state["model"])
        net.config = state.get("model_config", net.config)  # what the encoder started from
    memory_format = torch.channels_last if _trains_channels_last(config, net, device) else torch.contiguous_format
    net, model = for_processes(net.to(device).to(memory_format=memory_format), config, process, device)
    return net, model, memory_format


def for_processes(
    net: nn.Module, config: Config, process: distributed.Process, device: torch.device, *, unused: bool = False
) -> tuple[nn.Module, nn.Module]:
    """``(net, what the steps call)``: under torchrun, the net with SyncBatchNorm when ``train.sync_bn`` asks, and
    its DistributedDataParallel wrapper (``unused``: some parameters may get no gradient in a step); else the net
    twice."""
    if not process.distributed:
        return net, net
    if config.train.sync_bn:
        if device.type != "cuda":
            raise ValueError(
                "train.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only. Turn it "
                "off on the CPU (each process then normalises with its own batch statistics)"
            )
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    return net, DistributedDataParallel(net, device_ids=ids, find_unused_parameters=unused)


def _trains_channels_last(config: Config, net: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``; ``auto``: on CUDA (tensor cores want it), on the CPU as the architecture says
    (``Segmenter.cpu_training_channels_last``, from ``bench/train_speed.py``'s measurements)."""
    if config.train.channels_last != "auto":
        return config.train.channels_last
    return device.type == "cuda" or getattr(net, "cpu_training_channels_last", True)


def _build_loss(
    config: Config, train: SegmentationDataset, ignore_index: int, net: nn.Module, device: torch.device
) -> nn.Module:
    weights = None
    if isinstance(config.data.class_weights, list):
        weights = config.data.class_weights
    elif config.data.class_weights == "median_frequency":
        weights = class_weights(train).tolist()
    name = config.loss.name or "ce"
    return create_loss(
        name,
        ignore_index=ignore_index,
        class_weight=weights if name != "dice" else None,
        dice_class_weight=weights if name == "dice" else None,
        dice_weight=config.loss.dice_weight if name == "ce+dice" else None,
        smooth=config.loss.smooth if name != "ce" else None,
        aux_weight=config.loss.aux_weight if net.aux_head is not None else None,
        # every mask was range-checked by the dataset (naming its file); re-checking
        # each batch in every loss term would cost device syncs for nothing
        validate=False,
    ).to(device)
