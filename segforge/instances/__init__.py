"""The building blocks of instance segmentation (Mask R-CNN style), in plain PyTorch, without torchvision's ops.

>>> keep = batched_nms(boxes, scores, labels, iou_threshold=0.5)          # (K, 4) boxes, by decreasing score
>>> crops = roi_align(features, rois, (14, 14), spatial_scale=1 / 16, sampling_ratio=2)   # (K, C, 14, 14)
>>> mask = annotation_to_mask(coco_annotation, height, width)            # polygons or RLE -> (H, W) bool
>>> average_precision(predictions, ground_truths, iou_type="segm")["AP"] # COCOeval's numbers
>>> image, target = InstanceFolderDataset(root, "train")[0]   # (C, H, W) float32; boxes, labels, masks, iscrowd
>>> model = mask_rcnn(num_classes=4)                      # train: model(images, targets) -> dict of losses
>>> evaluate_instances(model, loader, num_classes=4, device="cpu").summary()   # mask/box AP, union mIoU, counts
>>> predict_instance_files(model, ["a.png"], "out", info=info)  # a_instances.png, a_ids.png, a.json

Boxes are ``(K, 4)`` ``x1, y1, x2, y2`` in continuous pixel coordinates (:mod:`.boxes`); NMS
(:mod:`.nms`) and RoIAlign (:mod:`.roi_align`) follow torchvision's semantics, the mask formats
(:mod:`.coco`) and average precision (:mod:`.metrics`) pycocotools'. Datasets read instance data as
distributed (:mod:`.data`, with the folder layout in :mod:`.folder` and COCO JSON in :mod:`.coco_dataset`);
:mod:`.synthetic` makes images of touching, overlapping objects to test on. :mod:`.model` is Mask R-CNN, built
from :mod:`.fpn`, :mod:`.anchors`, :mod:`.rpn` and :mod:`.heads`; ``create_model("mask_rcnn", ...)`` builds it
too, and ``segforge train`` trains it on instance data (``segforge.training.instance_task``). :mod:`.evaluate`
scores it, :mod:`.predict` and :mod:`.visualise` write what it finds.
"""

from __future__ import annotations

import importlib
from typing import Any

from segforge.instances.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    masks_to_boxes,
    remove_small_boxes,
)
from segforge.instances.coco import annotation_to_mask, polygons_to_mask, rle_decode, rle_encode
from segforge.instances.coco_dataset import CocoInstanceDataset
from segforge.instances.data import InstanceDataset, collate_instances
from segforge.instances.evaluate import InstanceEvaluation, evaluate_instances, write_instance_report
from segforge.instances.folder import InstanceFolderDataset
from segforge.instances.metrics import average_precision
from segforge.instances.model import MaskRCNN, mask_rcnn
from segforge.instances.nms import batched_nms, nms
from segforge.instances.roi_align import roi_align
from segforge.instances.synthetic import (
    InstanceSample,
    synthetic_instance_classes,
    synthetic_instance_sample,
    touching_pairs_of,
    write_synthetic_instance_dataset,
)
from segforge.instances.visualise import draw_instances

__all__ = [
    "CocoInstanceDataset",
    "InstanceDataset",
    "InstanceEvaluation",
    "InstanceFolderDataset",
    "InstanceSample",
    "MaskRCNN",
    "annotation_to_mask",
    "average_precision",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "collate_instances",
    "decode_boxes",
    "detect",
    "draw_instances",
    "encode_boxes",
    "evaluate_instances",
    "mask_rcnn",
    "masks_to_boxes",
    "nms",
    "polygons_to_mask",
    "predict_instance_files",
    "remove_small_boxes",
    "rle_decode",
    "rle_encode",
    "roi_align",
    "synthetic_instance_classes",
    "synthetic_instance_sample",
    "touching_pairs_of",
    "write_instance_report",
    "write_synthetic_instance_dataset",
]

# name -> its module, imported when the name is first read (PEP 562): segforge.instances.predict builds on
# segforge.inference, which imports segforge.data, which registers this package's layouts (a cycle if eager)
_LAZY = {"detect": "segforge.instances.predict", "predict_instance_files": "segforge.instances.predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segforge.instances' has no attribute {name!r}")
