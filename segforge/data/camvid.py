"""CamVid as SegNet distributes it: 11 classes, 11 = void (ignored), 480x360 images.

::

    root/train/0001TP_006690.png       root/trainannot/0001TP_006690.png   (grey: class index 0..11)
    root/val/...   root/valannot/...   root/test/...   root/testannot/...

Images and masks are paired by file name. The split lists of the SegNet tutorial (``train.txt``)
hold absolute paths of its Docker image, so they are not read; the folders are the splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segforge.data.base import SegmentationDataset, Transform
from segforge.data.folder import pair_folders
from segforge.data.registry import DATASETS

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
#: colours of SegNet-Tutorial's Scripts/test_segmentation_camvid.py (void, 11, is black)
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
VOID = 11


@DATASETS.register("camvid")
class CamVidDataset(SegmentationDataset):
    """CamVid (SegNet layout): 11 classes, ignore index 11 (void).

    Args:
        root: the folder holding ``train/``, ``trainannot/``, ``val/``, ...
        split: ``train``, ``val`` or ``test``.
        mean, std, transform, strict: see ``SegmentationDataset`` / ``FolderDataset``.

    Raises:
        DatasetError: missing split folders, no pairs, images without a mask (strict).
    """

    layout = "camvid"
    expects = "train/ and trainannot/ (and val/, valannot/, test/, testannot/) with matching file names"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        images_dir, masks_dir = root / split, root / f"{split}annot"
        expects = f"{self.expects} (splits found: {self.splits(root) or 'none'})"
        pairs, lonely_images, lonely_masks = pair_folders(
            images_dir, masks_dir, layout="CamVid", expects=expects, strict=strict
        )
        super().__init__(
            pairs,
            classes=CAMVID_CLASSES,
            palette=CAMVID_PALETTE,
            ignore_index=VOID,
            mean=mean,
            std=std,
            transform=transform,
            unpaired_images=lonely_images,
            unpaired_masks=lonely_masks,
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in ("train", "val", "test"))

    @staticmethod
    def splits(root: Path) -> list[str]:
        root = Path(root)
        return (
            [p.name for p in sorted(root.iterdir()) if p.is_dir() and (root / f"{p.name}annot").is_dir()]
            if root.is_dir()
            else []
        )
