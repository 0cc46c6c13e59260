"""Cityscapes: ``leftImg8bit`` images and ``gtFine`` labelIds, mapped to the 19 training classes.

::

    root/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png
    root/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png   (grey, labelIds 0..33)

The 34 labelIds become the 19 trainIds of the benchmark through ``LABEL_TO_TRAIN`` (from the
dataset's ``cityscapesscripts/helpers/labels.py``); every other id (unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail,
bridge, tunnel, polegroup, caravan, trailer) becomes 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segforge.data.base import SegmentationDataset, Transform
from segforge.data.io import DatasetError
from segforge.data.registry import DATASETS

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
#: labelId → trainId for the 19 evaluated classes; all other labelIds are ignored
LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
IGNORE = 255


def cityscapes_label_map() -> np.ndarray:
    """``(256,)`` int64 lookup: labelId → trainId, 255 for every id outside the 19 classes."""
    table = np.full(256, IGNORE, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        table[label_id] = train_id
    return table


@DATASETS.register("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations: 19 classes, ignore index 255.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (test masks are all "unlabeled", so all ignored).
        annotation: ``gtFine`` (default) or ``gtCoarse``.
        mean, std, transform, strict: see ``SegmentationDataset`` / ``FolderDataset``.

    Raises:
        DatasetError: missing folders, no images, images without a labelIds file (strict).
    """

    layout = "cityscapes"
    expects = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        annotation: str = "gtFine",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        images_dir, masks_dir = root / "leftImg8bit" / split, root / annotation / split
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DatasetError(
                    f"Cityscapes folder {folder} does not exist; expected {self.expects} "
                    f"(splits found: {self.splits(root) or 'none'})",
                    path=folder,
                    kind="missing",
                )
        samples, unpaired = [], []
        for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            mask = masks_dir / image.parent.name / f"{stem}_{annotation}_labelIds.png"
            if mask.is_file():
                samples.append((image, mask))
            else:
                unpaired.append(image)
        if not samples:
            raise DatasetError(
                f"no image/labelIds pairs in {images_dir} and {masks_dir}; expected {self.expects}",
                path=images_dir,
                kind="no_pairs",
            )
        if unpaired and strict:
            raise DatasetError(
                f"{len(unpaired)} images have no {annotation}_labelIds.png, e.g. {unpaired[0]}; "
                "restore the annotation files",
                path=unpaired[0],
                kind="unpaired",
            )
        super().__init__(
            samples,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            ignore_index=IGNORE,
            label_map=cityscapes_label_map(),
            mean=mean,
            std=std,
            transform=transform,
            unpaired_images=unpaired,
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()

    @staticmethod
    def splits(root: Path) -> list[str]:
        folder = Path(root) / "leftImg8bit"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
