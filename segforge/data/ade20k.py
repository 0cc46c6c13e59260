"""ADE20K scene parsing (the 150-class MIT benchmark, ``ADEChallengeData2016``).

::

    ADEChallengeData2016/images/training/ADE_train_00000001.jpg
    ADEChallengeData2016/annotations/training/ADE_train_00000001.png   (grey: 0 = other, 1..150 = classes)

Raw value 0 ("other objects") is ignored and 1..150 become classes 0..149 (mmsegmentation's
``reduce_zero_label``). Splits are ``training`` and ``validation`` (``train``/``val`` also accepted).
Class names and colours are those of the benchmark's ``objectInfo150`` and mmsegmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segforge.data.base import SegmentationDataset, Transform
from segforge.data.folder import pair_folders
from segforge.data.registry import DATASETS

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")
_PALETTE_FLAT = (
    120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50, 4, 200, 3, 120, 120, 80, 140, 140, 140, 204, 5, 255,
    230, 230, 230, 4, 250, 7, 224, 5, 255, 235, 255, 7, 150, 5, 61, 120, 120, 70, 8, 255, 51, 255, 6, 82,
    143, 255, 140, 204, 255, 4, 255, 51, 7, 204, 70, 3, 0, 102, 200, 61, 230, 250, 255, 6, 51, 11, 102, 255,
    255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220, 255, 9, 92, 112, 9, 255, 8, 255, 214, 7, 255, 224,
    255, 184, 6, 10, 255, 71, 255, 41, 10, 7, 255, 255, 224, 255, 8, 102, 8, 255, 255, 61, 6, 255, 194, 7,
    255, 122, 8, 0, 255, 20, 255, 8, 41, 255, 5, 153, 6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255,
    140, 140, 140, 250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0, 153, 255, 0, 0, 0, 255,
    255, 71, 0, 0, 235, 255, 0, 173, 255, 31, 0, 255, 11, 200, 200, 255, 82, 0, 0, 255, 245, 0, 61, 255,
    0, 255, 112, 0, 255, 133, 255, 0, 0, 255, 163, 0, 255, 102, 0, 194, 255, 0, 0, 143, 255, 51, 255, 0,
    0, 82, 255, 0, 255, 41, 0, 255, 173, 10, 0, 255, 173, 255, 0, 0, 255, 153, 255, 92, 0, 255, 0, 255,
    255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20, 255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255,
    255, 0, 204, 0, 255, 194, 0, 255, 82, 0, 10, 255, 0, 112, 255, 51, 0, 255, 0, 194, 255, 0, 122, 255,
    0, 255, 163, 255, 153, 0, 0, 255, 10, 255, 112, 0, 143, 255, 0, 82, 0, 255, 163, 255, 0, 255, 235, 0,
    8, 184, 170, 133, 0, 255, 0, 255, 92, 184, 0, 255, 255, 0, 31, 0, 184, 255, 0, 214, 255, 255, 0, 112,
    92, 255, 0, 0, 224, 255, 112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0, 255, 0, 163,
    255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0, 255, 0, 235, 245, 0, 255, 255, 0, 122, 255, 245, 0,
    10, 190, 212, 214, 255, 0, 0, 204, 255, 20, 0, 255, 255, 255, 0, 0, 153, 255, 0, 41, 255, 0, 255, 204,
    41, 0, 255, 41, 255, 0, 173, 0, 255, 0, 245, 255, 71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255,
    184, 255, 0, 0, 133, 255, 255, 214, 0, 25, 194, 194, 102, 255, 0, 92, 0, 255)
ADE20K_PALETTE = tuple(tuple(_PALETTE_FLAT[i:i + 3]) for i in range(0, len(_PALETTE_FLAT), 3))
IGNORE = 255
_SPLITS = {"train": "training", "val": "validation"}


def ade20k_label_map() -> np.ndarray:
    """``(151,)`` int64 lookup: 0 → 255 (ignored), k → k - 1. Values above 150 are errors."""
    return np.concatenate([[IGNORE], np.arange(150)]).astype(np.int64)


def _ade_root(root: Path) -> Path | None:
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir() and \
                any((candidate / "images" / s).is_dir() for s in ("training", "validation")):
            return candidate
    return None


@DATASETS.register("ade20k")
class ADE20KDataset(SegmentationDataset):
    """ADE20K scene parsing: 150 classes, ignore index 255 (raw 0, "other").

    Args:
        root: ``ADEChallengeData2016`` or the folder holding it.
        split: ``training`` / ``validation`` (or ``train`` / ``val``).
        mean, std, transform, strict: see ``SegmentationDataset`` / ``FolderDataset``.

    Raises:
        DatasetError: missing folders, no pairs, images without annotation (strict).
    """

    layout = "ade20k"
    expects = "images/training/*.jpg and annotations/training/*.png (maybe under ADEChallengeData2016/)"

    def __init__(self, root: str | Path, split: str = "training", *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, transform: Transform | None = None, strict: bool = True) -> None:
        root = Path(root)
        base = _ade_root(root) or root
        split = _SPLITS.get(split, split)
        images_dir, masks_dir = base / "images" / split, base / "annotations" / split
        pairs, lonely_images, lonely_masks = pair_folders(images_dir, masks_dir, layout="ADE20K", expects=self.expects,
                                                          strict=strict, masks_name="annotation")
        super().__init__(pairs, classes=ADE20K_CLASSES, palette=ADE20K_PALETTE, ignore_index=IGNORE,
                         label_map=ade20k_label_map(), mean=mean, std=std, transform=transform,
                         unpaired_images=lonely_images, unpaired_masks=lonely_masks)

    @staticmethod
    def detect(root: Path) -> bool:
        return _ade_root(root) is not None

    @staticmethod
    def splits(root: Path) -> list[str]:
        base = _ade_root(Path(root))
        return [] if base is None else [s for s in ("training", "validation") if (base / "images" / s).is_dir()]
