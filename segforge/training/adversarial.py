"""Adversarial training of a segmenter (Luc, Couprie, Chintala & Verbeek 2016), as a task of the training loop.

Each step, on the batch the loop hands over:

1. the segmenter predicts (``logits``; ``s`` = their softmax); the adversary sees the label maps and the image
   average-pooled by ``adversarial.stride`` (8: the paper's segmenters predicted at 1/8 of the image);
2. the adversary (``segforge.models.adversary``) takes ``adversarial.steps`` Adam steps of its own on binary
   cross entropy: the image's ground truth (one-hot; at pixels without a label the prediction, so that
   they tell nothing) is "real", the prediction ``s`` (detached: these steps never reach the segmenter) is
   "predicted";
3. the segmenter's loss, which the loop back-propagates and steps, is its usual loss plus ``weight`` x the
   non-saturating adversarial term: the adversary's cross entropy of ``s`` against "real", so that the
   segmenter is rewarded for label maps the adversary takes for ground truth.

The adversary and its optimizer are resumed with the run (``state()``), never in the deployable weights.
Built with its own random generator, it leaves the run's draws as they were: with ``weight`` 0 the segmenter
trains exactly as without an adversary (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from segforge.config import Config
from segforge.inference.probabilities import probabilities as class_probabilities
from segforge.models.adversary import adversary_loss, create_adversary, encode, soften
from segforge.models.segmenter import full_size_forward
from segforge.training import distributed
from segforge.training.task import ConfusionCounts, SegmentationTask

ADVERSARY_SEED = 1_000_003  # the adversary's initial weights: drawn apart from the run's random stream


class AdversarialCounts(ConfusionCounts):
    """A round's confusion matrix, plus the adversary's mean loss and how often it tells a ground truth from a
    prediction (its accuracy over locations, both kinds of map counted)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        super().__init__(num_classes, ignore_index)
        self.adversary = torch.zeros(4, dtype=torch.float64)  # loss sum, batches, correct locations, locations

    def update(self, batch, outputs) -> None:
        logits, adversary = outputs
        super().update(batch, logits)
        self.adversary += adversary.to(torch.float64).cpu()

    def snapshot(self, process: distributed.Process) -> dict:
        counts = distributed.all_reduce_sum(self.adversary.clone(), process)
        return {**super().snapshot(process), "adversary": counts}

    def restore(self, saved: dict, main: bool) -> None:
        super().restore(saved, main)
        if main:
            self.adversary += saved["adversary"]

    def row(self) -> dict[str, float]:
        loss, batches, correct, locations = distributed.sum_over_processes(self.adversary.clone()).tolist()
        return {
            **super().row(),
            "adversary_loss": loss / max(batches, 1),
            "adversary_accuracy": correct / max(locations, 1),
        }


class AdversarialTask(SegmentationTask):
    """``SegmentationTask`` with an adversary (module docstring); its rounds also log the adversary's loss and
    accuracy."""

    train_fields = ("adversary_loss", "adversary_accuracy")

    @classmethod
    def build(cls, config: Config, data, state: dict | None, process: distributed.Process, device: torch.device):
        task = super().build(config, data, state, process, device)
        settings = config.adversarial
        with torch.random.fork_rng(devices=[]):  # (the run's own random stream stays as it was)
            torch.default_generator.manual_seed(ADVERSARY_SEED)  # (CPU only: manual_seed reseeds CUDA)
            adversary = create_adversary(
                settings.network, num_classes=data.num_classes, in_channels=data.in_channels, encoding=settings.encoding
            ).to(device)
        optimizer = torch.optim.Adam(adversary.parameters(), lr=settings.lr)
        saved = (state or {}).get("task")
        if saved is not None:
            adversary.load_state_dict(saved["adversary"])
            optimizer.load_state_dict(saved["adversary_optimizer"])
        task.adversary, task.adversary_optimizer, task.settings = adversary, optimizer, settings
        # under torchrun the adversary's gradients are averaged over the processes like the segmenter's
        task.adversary_step = (
            DistributedDataParallel(adversary, device_ids=[device.index] if device.type == "cuda" else None)
            if process.distributed
            else adversary
        )
        return task

    def state(self) -> dict:
        return {"adversary": self.adversary.state_dict(), "adversary_optimizer": self.adversary_optimizer.state_dict()}

    def round_metrics(self) -> AdversarialCounts:
        return AdversarialCounts(self.data.num_classes, self.data.ignore_index)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        images, masks = batch
        output = full_size_forward(self.model, images)
        logits = output[0] if isinstance(output, tuple) else output
        probabilities = class_probabilities(logits)
        real = self._pool(self._ground_truth(masks, probabilities.detach()))
        small_images, small_probabilities = self._pool(images), self._pool(probabilities)
        counts = self._train_adversary(small_images, real, small_probabilities.detach())
        loss = self.loss_fn(output, masks)
        if self.settings.weight > 0:  # the non-saturating term: the prediction judged as a ground truth
            maps = encode(small_probabilities, small_images, self.settings.encoding)
            loss = loss + self.settings.weight * adversary_loss(self._judge(self.adversary, maps, small_images), True)
        return loss, (logits.detach(), counts)

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps`` averaged over ``adversarial.stride`` x ``stride`` blocks: a one-hot ground truth turns into
        each block's class shares, as a prediction's probabilities do."""
        stride = self.settings.stride
        return F.avg_pool2d(maps, stride, ceil_mode=True) if stride > 1 else maps

    def _ground_truth(self, masks: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """The one-hot ground truth ``(N, K, H, W)`` (the prediction where there is no label), softened by the
        scaling encoding."""
        classes = probabilities.shape[1]
        labelled = (masks >= 0) & (masks < classes)
        onehot = F.one_hot(masks.clamp(0, classes - 1), classes).permute(0, 3, 1, 2).to(probabilities.dtype)
        onehot = torch.where(labelled[:, None], onehot, probabilities)
        if self.settings.encoding == "scaling":
            return torch.where(labelled[:, None], soften(onehot, probabilities), probabilities)
        return onehot

    def _judge(self, adversary, maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The adversary's logits: one per location ``(N, 1, h, w)``, or (``judges: image``) their mean per image."""
        logits = adversary(maps, images)
        return logits.mean((2, 3), keepdim=True) if self.settings.judges == "image" else logits

    def _train_adversary(self, images: torch.Tensor, real: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """The adversary's own steps on ground truth against prediction, in one batch of both; returns
        ``(loss sum, 1 batch, correct locations, locations)`` of its last step's judgement."""
        encoding = self.settings.encoding
        maps = torch.cat([encode(real, images, encoding), encode(predicted, images, encoding)])
        both = torch.cat([images, images])
        for _ in range(self.settings.steps):
            self.adversary_optimizer.zero_grad(set_to_none=True)  # (the segmenter's term left gradients here)
            logits = self._judge(self.adversary_step, maps, both)
            truth = torch.zeros_like(logits)
            truth[: len(images)] = 1.0
            loss = F.binary_cross_entropy_with_logits(logits, truth)
            loss.backward()
            self.adversary_optimizer.step()
        self.adversary_optimizer.zero_grad(set_to_none=True)
        correct = ((logits.detach() > 0) == truth.bool()).sum().double()
        return torch.stack(
            [loss.detach().double(), correct.new_tensor(1.0), correct, correct.new_tensor(truth.numel())]
        )
