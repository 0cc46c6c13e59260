"""Instance segmentation: the task the training loop runs for ``mask_rcnn`` (``segforge.instances``).

What differs from semantic segmentation is what a batch is and how a model is scored:

* a batch is ``(images (N, C, H, W) padded, [target, ...])`` (``segforge.instances.collate_instances``), each
  target holding the boxes, labels and masks of one image's objects;
* the loss is the sum of Mask R-CNN's five (``model(images, targets)`` in training mode); a round's training
  columns are its three parts: the proposals' (``rpn_loss``: objectness and box), the box head's
  (``box_loss``: class and box) and the mask head's (``mask_loss``);
* validation gives COCO's mask and box AP (``segforge.instances.evaluate``), the semantic scores of the union
  of the instances (to compare with semantic models) and how far the object count is off per image; the best
  checkpoint is the one with the highest mask AP.

Saving, resuming, time budgets and torchrun are the loop's, as for every task. The network is not compiled
(``train.compile``): its proposals change shape at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segforge.config import Config
from segforge.instances.data import collate_instances
from segforge.training import distributed
from segforge.training.task import for_processes

#: how a round's training columns group Mask R-CNN's five losses
LOSS_PARTS = {
    "rpn_loss": ("rpn_objectness", "rpn_box"),
    "box_loss": ("classifier", "box"),
    "mask_loss": ("mask",),
}

Batch = tuple[Tensor, list[dict[str, Tensor]]]


class LossParts:
    """A round's training counts: the sum of each part of the loss (``LOSS_PARTS``) and the batches."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(LOSS_PARTS) + 1, dtype=torch.float64)  # each part, then the batch count

    def update(self, batch: Batch, outputs: dict[str, Tensor]) -> None:
        parts = [sum(float(outputs[name]) for name in names) for names in LOSS_PARTS.values()]
        self.sums += torch.tensor([*parts, 1.0], dtype=torch.float64)

    def snapshot(self, process: distributed.Process) -> dict:
        return {"loss_parts": distributed.all_reduce_sum(self.sums.clone(), process)}

    def restore(self, saved: dict, main: bool) -> None:
        if main:
            self.sums += saved["loss_parts"]

    def row(self) -> dict[str, float]:
        *parts, batches = distributed.sum_over_processes(self.sums.clone()).tolist()
        return {name: value / max(batches, 1.0) for name, value in zip(LOSS_PARTS, parts, strict=True)}


class InstanceTask:
    """Mask R-CNN on instance data (see the module docstring)."""

    fields: tuple[str, ...] = ()
    train_fields = tuple(LOSS_PARTS)
    val_fields = ("mask_ap", "mask_ap50", "box_ap", "mean_iou", "count_error")
    score = "mask_ap"

    def __init__(self, net: nn.Module, detector: nn.Module, *, data, device: torch.device) -> None:
        # (the network the steps call is `detector`, not `model`: StepCompilation compiles a task's `model`)
        self.net, self.detector, self.data, self.device = net, detector, data, device
        self.memory_format = torch.contiguous_format

    @classmethod
    def build(
        cls, config: Config, data, state: dict | None, process: distributed.Process, device: torch.device
    ) -> InstanceTask:
        """The configured Mask R-CNN (restored from ``state``; wrapped for DistributedDataParallel)."""
        from segforge.models import create_model

        if getattr(data.train, "task", "semantic") != "instance":
            raise ValueError(
                f"model {config.model.name!r} finds objects, but the data at {config.data.root} are "
                f"{data.train.layout}-layout masks of classes, without instances: train a semantic model "
                "(drop --model), or give instance data (segforge.instances.folder describes the layout)"
            )
        net = create_model(
            config.model.name,
            data.num_classes,
            in_channels=data.in_channels,
            encoder=config.model.encoder,
            encoder_weights=config.model.encoder_weights if state is None else None,
        )
        if state is not None:
            net.load_state_dict(state["model"])
            net.config = state.get("model_config", net.config)
        # (not every head gets a gradient in every step: a batch without objects trains no mask)
        net, detector = for_processes(net.to(device), config, process, device, unused=True)
        return cls(net, detector, data=data, device=device)

    def collate(self) -> Callable:
        return partial(collate_instances, size_divisor=self.net.size_divisor)

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, targets = batch
        moved = [{key: value.to(device, non_blocking=True) for key, value in t.items()} for t in targets]
        return images.to(device, non_blocking=True), moved

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = batch
        losses = self.detector(images, targets)
        return sum(losses.values()), {name: value.detach() for name, value in losses.items()}

    def round_metrics(self) -> LossParts:
        return LossParts()

    def state(self) -> dict:
        return {}

    def validate(self, loader: DataLoader, *, progress: bool | None, process: distributed.Process) -> dict:
        from segforge.instances.evaluate import evaluate_instances

        result = evaluate_instances(
            self.net,
            loader,
            num_classes=self.data.num_classes,
            device=self.device,
            progress=progress,
            distributed=process.distributed,
        )
        summary = result.summary()
        return {"loss": summary["loss"], **{name: summary[name] for name in self.val_fields}}

    def report(self, folder: Path, *, progress: bool | None) -> None:
        """The validation report of ``best.safetensors``: ``report.json`` and ``overlays/``."""
        from segforge.checkpoint import load_model
        from segforge.instances.evaluate import write_instance_report

        model, _ = load_model(folder / "best.safetensors", map_location=self.device)
        write_instance_report(
            model.eval(),
            self.data.val,
            folder,
            num_classes=self.data.num_classes,
            classes=self.data.train.classes,
            device=self.device,
            progress=progress,
        )
