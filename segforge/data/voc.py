"""PASCAL VOC 2012 segmentation: JPEG images, palette-PNG class masks, split lists, 255 = ignore.

::

    VOCdevkit/VOC2012/                 (root may be VOCdevkit/, VOC2012/ or this folder)
      JPEGImages/2007_000032.jpg
      SegmentationClass/2007_000032.png    mode P: pixel = class index 0..20, 255 = object borders
      ImageSets/Segmentation/train.txt val.txt trainval.txt

The masks are palette PNGs whose colours are only for viewing: the stored index is the class,
which ``read_mask`` returns. ``mask_dir="SegmentationClassAug"`` reads the SBD-augmented masks
(grey PNGs with the same indices).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segforge.data.base import SegmentationDataset, Transform, default_palette
from segforge.data.io import DatasetError
from segforge.data.registry import DATASETS

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return None


@DATASETS.register("voc")
class VOCDataset(SegmentationDataset):
    """PASCAL VOC 2012: 21 classes (0 = background), ignore index 255.

    Args:
        root: ``VOCdevkit``, ``VOCdevkit/VOC2012`` or a folder with the same structure.
        split: a list in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).
        mask_dir: ``SegmentationClass`` (default) or ``SegmentationClassAug``.
        mean, std, transform, strict: see ``SegmentationDataset`` / ``FolderDataset``.

    Raises:
        DatasetError: no VOC structure under root, a missing split list, listed files missing (strict).
    """

    layout = "voc"
    expects = "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ (maybe under VOCdevkit/VOC2012)"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        mask_dir: str = "SegmentationClass",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        base = _voc_root(root)
        if base is None:
            raise DatasetError(
                f"no PASCAL VOC folders under {root}: expected {root}/JPEGImages and "
                f"{root}/ImageSets/Segmentation (or under VOC2012/ or VOCdevkit/VOC2012/)",
                path=root,
                kind="missing",
            )
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(
                f"split list {listing} does not exist; choose from {self.splits(root)}", path=listing, kind="missing"
            )
        samples, unpaired = [], []
        for name in listing.read_text().split():
            image, mask = base / "JPEGImages" / f"{name}.jpg", base / mask_dir / f"{name}.png"
            if image.is_file() and mask.is_file():
                samples.append((image, mask))
            else:
                unpaired.append(mask if image.is_file() else image)
        if unpaired and strict:
            raise DatasetError(
                f"{len(unpaired)} files listed in {listing} are missing, e.g. {unpaired[0]}; restore "
                "them or remove their names from the list",
                path=unpaired[0],
                kind="unpaired",
            )
        if not samples:
            raise DatasetError(f"no image/mask pairs for the names in {listing}", path=listing, kind="no_pairs")
        super().__init__(
            samples,
            classes=VOC_CLASSES,
            palette=default_palette(21),
            ignore_index=255,
            mean=mean,
            std=std,
            transform=transform,
            unpaired_images=unpaired,
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return _voc_root(root) is not None

    @staticmethod
    def splits(root: Path) -> list[str]:
        base = _voc_root(Path(root))
        return [] if base is None else sorted(p.stem for p in (base / "ImageSets" / "Segmentation").glob("*.txt"))
