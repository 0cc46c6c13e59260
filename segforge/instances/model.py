"""Mask R-CNN (He, Gkioxari, Dollár & Girshick, ICCV 2017) over any segforge encoder, in plain PyTorch.

The pipeline, each stage its own module:

1. **encoder** (:mod:`segforge.encoders`): feature maps at several strides; the image is padded at the
   bottom and right to a multiple of the encoder's stride first, so any input size works;
2. **feature pyramid** (:mod:`.fpn`): one ``fpn_channels``-wide map per stride (4/8/16/32 for a ResNet) and a
   max-pooled extra level;
3. **region proposal network** (:mod:`.rpn`, anchors from :mod:`.anchors`): objectness and box deltas for
   every anchor of every level, then the best boxes after NMS: the proposals, clipped to the *unpadded*
   image;
4. **RoI heads** (:mod:`.heads`): RoIAlign from the level that suits each box's size, a box head that
   classifies and refines, a mask head that draws a 28x28 mask per box, pasted back at the input size.

In training mode ``forward(images, targets)`` returns the five losses (sum them to train); in eval mode
``forward(images)`` returns one dict of detections per image. (A dict and a list of dicts, not the
tensor segforge's semantic models return: a detector's output has no fixed shape.) Batch norm in the
encoder behaves as the encoder has it (batch statistics in training); freeze it yourself for batches of
one or two large images.

Departures from torchvision's ``maskrcnn_resnet50_fpn``: no resizing or normalisation inside the model
(the dataset does that); anchors centred on feature pixels' centres, RoIAlign ``aligned=True``; crowd
instances (``iscrowd``) are left out of training targets; the defaults below are narrower and keep fewer
proposals, for CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segforge.encoders import Encoder, create_encoder
from segforge.instances.anchors import AnchorGenerator
from segforge.instances.fpn import FeaturePyramid
from segforge.instances.heads import BoxHead, MaskHead, RoIHeads
from segforge.instances.rpn import RegionProposalNetwork
from segforge.models.geometry import Geometry
from segforge.models.segmenter import pad_to_multiple

__all__ = ["MaskRCNN", "mask_rcnn"]

Target = dict[str, Tensor]


class MaskRCNN(nn.Module):
    """Encoder → feature pyramid → RPN → RoI heads (see the module docstring).

    ``forward(images (N, C, H, W) float, targets=None)``:

    * training mode: ``targets`` (one dict per image: ``boxes (K, 4)`` float x1 y1 x2 y2, ``labels (K,)``
      int64 in ``1..num_classes-1``, ``masks (K, h, w)`` bool with ``h <= H``, ``w <= W`` (the image's own
      size inside a padded batch), optionally ``iscrowd (K,)`` bool) → ``{"rpn_objectness", "rpn_box",
      "classifier", "box", "mask"}`` scalar losses;
    * eval mode → per image ``{"boxes" (K, 4), "labels" (K,) int64, "scores" (K,) by decreasing score,
      "masks" (K, H, W) bool}``, ``K <= detections_per_image``; ``targets`` are ignored.

    In a batch padded at the bottom and right (``collate_instances``), proposals and detections stay inside each
    image's own size: in training its target masks' size, in eval ``image_sizes`` (one ``(H, W)`` per image; the
    masks then have that size), else the batch's.

    Attributes:
        size_divisor: inputs are padded internally to a multiple of it (the encoder's stride).
        geometry: how the masks cover the input (``segforge.models.geometry``): at its size, any size.
        task: ``"instance"`` (segforge's semantic models: ``"semantic"``): what the training loop, ``evaluate`` and
            ``predict`` do with it.
        inputs, in_channels, encoder_name: as a ``Segmenter`` declares them.
    """

    task = "instance"
    inputs = "images"

    def __init__(
        self,
        encoder: Encoder,
        pyramid: FeaturePyramid,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.encoder, self.pyramid, self.rpn, self.roi_heads = encoder, pyramid, rpn, roi_heads
        self.num_classes, self.in_channels = num_classes, encoder.in_channels
        self.encoder_name = ""  # (mask_rcnn names the registered encoder)
        self.size_divisor = max(encoder.stride, *pyramid.roi_strides)
        # masks at the input's size, any size (padded inside to size_divisor, whose multiples keep the grid)
        self.geometry = Geometry(tile_period=self.size_divisor)

    def forward(
        self,
        images: Tensor,
        targets: Sequence[Target] | None = None,
        *,
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, Tensor] | list[Target]:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be an (N, C, H, W) float tensor, got {shape}; one image is image[None]")
        if images.shape[1] != self.encoder.in_channels:
            raise ValueError(
                f"images have {images.shape[1]} channels but the model was built for {self.encoder.in_channels}; "
                "build it with mask_rcnn(..., in_channels=...)"
            )
        if self.training:
            if targets is None:
                raise ValueError(
                    "in training mode forward needs targets (one dict per image); call model.eval() to detect"
                )
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images; give one dict per image")
            targets = [self._check_target(t, i, images) for i, t in enumerate(targets)]
        sizes = self._image_sizes(images, targets if self.training else None, image_sizes)
        features = self.pyramid(self.encoder(pad_to_multiple(images, self.size_divisor)))
        gt_boxes = [t["boxes"] for t in targets] if self.training else None
        proposals, rpn_losses = self.rpn(features, self.pyramid.strides, sizes, gt_boxes)
        levels = len(self.pyramid.roi_strides)  # the RoI heads read P2-P5, not the extra level
        detections, roi_losses = self.roi_heads(
            features[:levels], self.pyramid.roi_strides, proposals, sizes, targets if self.training else None
        )
        return {**rpn_losses, **roi_losses} if self.training else detections

    @staticmethod
    def _image_sizes(
        images: Tensor, targets: Sequence[Target] | None, image_sizes: Sequence[Sequence[int]] | None
    ) -> list[tuple[int, int]]:
        """Each image's own ``(H, W)`` in a padded batch: its target masks' size in training, ``image_sizes`` when
        given, else the batch's."""
        if targets is not None:
            return [tuple(t["masks"].shape[-2:]) for t in targets]
        if image_sizes is None:
            return [tuple(images.shape[-2:])] * images.shape[0]
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        too_large = [s for s in sizes if s[0] > images.shape[-2] or s[1] > images.shape[-1]]
        if len(sizes) != images.shape[0] or too_large:
            raise ValueError(
                f"image_sizes must give each of the {images.shape[0]} images its (H, W) inside the batch's "
                f"{tuple(images.shape[-2:])}, got {sizes[:4]}"
            )
        return sizes

    def _check_target(self, target: Target, index: int, images: Tensor) -> Target:
        """The target moved to the images' device, crowd instances left out; ValueError naming what is wrong."""
        where = f"targets[{index}]"
        missing = [key for key in ("boxes", "labels", "masks") if key not in target]
        if missing:
            raise ValueError(f"{where} lacks {missing}; a target needs boxes (K, 4), labels (K,) and masks (K, H, W)")
        boxes, labels, masks = (target[k].to(images.device) for k in ("boxes", "labels", "masks"))
        count = boxes.shape[0] if boxes.dim() == 2 else -1
        if (
            boxes.dim() != 2
            or boxes.shape[1] != 4
            or labels.shape != (count,)
            or masks.dim() != 3
            or len(masks) != count
        ):
            raise ValueError(
                f"{where} must hold boxes (K, 4), labels (K,) and masks (K, H, W) for one K, got "
                f"{tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(masks.shape)}"
            )
        if masks.shape[1] > images.shape[2] or masks.shape[2] > images.shape[3]:
            raise ValueError(
                f"{where}'s masks are {tuple(masks.shape[1:])}, larger than the images {tuple(images.shape[2:])}"
            )
        if labels.is_floating_point() or bool(((labels < 1) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"{where}'s labels must be integers in 1..{self.num_classes - 1} (0 is the background), "
                f"got {labels.tolist()[:10]}; build the model with num_classes = classes + 1"
            )
        boxes = boxes.to(images.dtype)
        if bool(((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any()):
            raise ValueError(f"{where} has boxes without positive width and height; drop empty instances first")
        keep = ~target["iscrowd"].to(device=images.device, dtype=torch.bool) if "iscrowd" in target else slice(None)
        return {"boxes": boxes[keep], "labels": labels[keep].long(), "masks": masks[keep]}


def mask_rcnn(
    num_classes: int,
    *,
    in_channels: int = 3,
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    fpn_channels: int = 128,
    representation_size: int = 512,
    mask_channels: int | None = None,
    anchor_sizes: Sequence[float] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500),
    rpn_post_nms_top_n: tuple[int, int] = (1000, 300),
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 128,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
) -> MaskRCNN:
    """Builds a Mask R-CNN; every stage is visible here.

    Args:
        num_classes: classes including the background (labels are ``1..num_classes-1``), as torchvision counts.
        in_channels: image channels.
        encoder, encoder_weights: as ``segforge.encoders.create_encoder``.
        fpn_channels: width of the pyramid and the RPN (the paper: 256; 128 here, for CPUs).
        representation_size: the box head's fully connected width (the paper: 1024).
        mask_channels: the mask head's width (default ``fpn_channels``; the paper: 256).
        anchor_sizes: one anchor size (pixels) per pyramid level, extra level included; default 8x each
            level's stride (32, 64, 128, 256, 512 for a ResNet: FPN's). Use smaller ones for small objects.
        aspect_ratios: the anchors' ``h / w``.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: ``(training, eval)`` proposal counts, per level before NMS
            and per image after (torchvision: 2000/1000 and 2000/1000; 300 proposals in eval suffice for
            tens of objects per image and make CPU inference several times faster).
        rpn_batch_size_per_image, box_batch_size_per_image: anchors and RoIs sampled per image in training,
            a quarter of the RoIs positive at most (the mask head trains on those). 128 RoIs (the paper: 512;
            Fast R-CNN: 64): the heads cost per RoI, and on a CPU 512 made a step of 4 images of 128² 1.9x
            slower (``bench/instance_speed.py --rois``); the README has what it did to a 10-minute run.
        score_threshold, detections_per_image: what inference keeps.

    Raises:
        ValueError: ``num_classes < 2``, an unknown encoder, or a number of anchor sizes other than the levels.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too: it must be >= 2, got {num_classes}")
    enc = create_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
    pyramid = FeaturePyramid(enc.out_channels, enc.reductions, channels=fpn_channels)
    if anchor_sizes is None:
        anchor_sizes = [8.0 * s for s in pyramid.strides]
    if len(anchor_sizes) != len(pyramid.strides):
        raise ValueError(
            f"anchor_sizes needs one size per pyramid level (strides {pyramid.strides}), got {list(anchor_sizes)}"
        )
    anchors = AnchorGenerator([(s,) for s in anchor_sizes], aspect_ratios)
    rpn = RegionProposalNetwork(
        fpn_channels,
        anchors,
        pre_nms_top_n=rpn_pre_nms_top_n,
        post_nms_top_n=rpn_post_nms_top_n,
        batch_size_per_image=rpn_batch_size_per_image,
    )
    box_head = BoxHead(fpn_channels, 7, representation_size, num_classes)
    mask_head = MaskHead(fpn_channels, num_classes, channels=mask_channels or fpn_channels)
    roi_heads = RoIHeads(
        box_head,
        mask_head,
        batch_size_per_image=box_batch_size_per_image,
        score_threshold=score_threshold,
        detections_per_image=detections_per_image,
    )
    model = MaskRCNN(enc, pyramid, rpn, roi_heads, num_classes)
    model.encoder_name = encoder
    return model
