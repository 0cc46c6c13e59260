"""The plain folder layout: ``images/`` and ``masks/`` matched by file stem.

::

    root/
      images/   a.jpg  b.png  c.tif ...      (png, jpg, tif, bmp, gif, ppm/pgm, webp; grey, RGB or multi-band)
      masks/    a.png  b.gif  c.png ...      (class index per pixel; or RGB with a colour map)
      train.txt val.txt                     (optional: one stem or file name per line)
      classes.txt                           (optional: one class name per line, in index order)

Images and masks pair by file stem (``a.jpg`` ↔ ``a.png``); when that leaves files unpaired, by
the part of the names that differs (``21_training.tif`` ↔ ``21_manual1.gif``). Without split
lists, the split ``all`` (or None) names every pair, and training holds out a validation share.

``image/``, ``imgs/`` and ``labels/``, ``label/``, ``annotations/``, ``gt/`` are accepted as folder
names too, and splits may be sub-folders instead of lists (``images/train``, ``masks/train``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segforge.data.base import SegmentationDataset, Transform
from segforge.data.colour import ColourMap, load_colour_map
from segforge.data.io import DatasetError, count_extensions, list_images
from segforge.data.pairing import pair_files, pairing_note
from segforge.data.registry import DATASETS

IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt")


def first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def pair_folders(
    images_dir: Path, masks_dir: Path, *, layout: str, expects: str, strict: bool, masks_name: str = "mask"
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pairs the images of one folder with the masks of another, for layouts with fixed folders.

    Returns:
        ``(pairs, images without a mask, masks without an image)``.

    Raises:
        DatasetError: a folder is missing, nothing pairs up, or (``strict``) an image has no mask.
    """
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetError(
                f"{layout} folder {folder} does not exist; expected {expects}", path=folder, kind="missing"
            )
    pairs, lonely_images, lonely_masks = pair_files(list_images(images_dir), list_images(masks_dir))
    if not pairs:
        raise DatasetError(
            f"no image/{masks_name} pairs in {images_dir} and {masks_dir}: file stems must match",
            path=images_dir,
            kind="no_pairs",
        )
    if lonely_images and strict:
        raise DatasetError(
            f"{len(lonely_images)} images in {images_dir} have no {masks_name} in {masks_dir}, e.g. "
            f"{lonely_images[0].name}; restore the {masks_name}s or remove the images",
            path=lonely_images[0],
            kind="unpaired",
        )
    return pairs, lonely_images, lonely_masks


def _examples(paths: Sequence[Path], count: int = 3) -> str:
    return ", ".join(p.name for p in paths[:count]) if paths else "none"


def read_split_list(path: Path) -> list[str]:
    """Stems listed in a split file: the first word of each non-empty, non-comment line, extension dropped."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            names.append(Path(words[0]).stem)
    return names


def class_names(root: Path, classes: Sequence[str] | None, num_classes: int | None) -> list[str] | None:
    """The class names given, else ``root/classes.txt``'s (one per line), else ``class_0, class_1, ...`` for
    ``num_classes``; None when nothing says.

    Raises:
        ValueError: ``num_classes`` and the names disagree.
    """
    if classes is None and (root / "classes.txt").is_file():
        lines = (root / "classes.txt").read_text(encoding="utf-8").splitlines()
        classes = [line.strip() for line in lines if line.strip()]
    if classes is None and num_classes is not None:
        classes = [f"class_{i}" for i in range(num_classes)]
    if num_classes is not None and classes is not None and len(classes) != num_classes:
        raise ValueError(f"num_classes={num_classes} but {len(classes)} class names are given; make them agree")
    return None if classes is None else list(classes)


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """Images and masks in two folders, paired by file stem.

    Args:
        root: the dataset folder (see the module docstring for the layout).
        split: None or ``"all"`` for every pair; else a split list ``root/<split>.txt`` or sub-folders
            ``images/<split>`` and ``masks/<split>``.
        classes: class names; or ``num_classes`` (names ``class_0``...); or taken from the colour map or
            ``root/classes.txt``. With none of these the classes are unknown and labels are not checked.
        ignore_index: label value the loss skips (e.g. 255); default the colour map's, else None.
        colour_map: RGB → class mapping (a ``ColourMap``, a YAML/JSON file, or ``"name=r,g,b;..."``).
        label_map: raw value → label, e.g. ``{255: 1}`` for masks stored as 0/255.
        image_dir, mask_dir: folder names (inside ``root``) when they are not among the accepted ones,
            or to choose between two (a retina dataset's ``1st_manual/`` labels beside its ``mask/``
            field-of-view masks).
        mean, std, transform: see ``SegmentationDataset``.
        strict: raise on images without a mask (default); False records them in ``unpaired_images``.

    Raises:
        DatasetError: missing folders or split list, no pairs, unpaired images (strict), duplicate stems.
    """

    layout = "folder"
    expects = "images/ and masks/ folders (file stems match)"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        colour_map: ColourMap | str | Path | None = None,
        label_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
        image_dir: str | None = None,
        mask_dir: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(
                f"data folder {root} does not exist; pass the folder that holds images/ and masks/",
                path=root,
                kind="missing",
            )
        images_dir = root / image_dir if image_dir else first_dir(root, IMAGE_DIRS)
        masks_dir = root / mask_dir if mask_dir else first_dir(root, MASK_DIRS)
        if images_dir is not None and images_dir == masks_dir:
            raise DatasetError(
                f"the images and the masks would both be read from {images_dir}: keep them in two folders, "
                "and name them with --image-dir and --mask-dir",
                path=images_dir,
                kind="layout",
            )
        for found, names, what in ((images_dir, IMAGE_DIRS, "image"), (masks_dir, MASK_DIRS, "mask")):
            if found is None or not found.is_dir():
                where = found if found is not None else root / names[0]
                raise DatasetError(
                    f"{what} folder {where} does not exist; put the {what}s in {root / names[0]} "
                    f"(or one of {list(names[1:])}), or name the folder with --{what}-dir "
                    f"({what}_dir= in Python)",
                    path=where,
                    kind="missing",
                )
        wanted = None
        if split is not None and split != "all":
            if (images_dir / split).is_dir():
                images_dir, masks_dir = images_dir / split, masks_dir / split
                if not masks_dir.is_dir():
                    raise DatasetError(
                        f"mask folder {masks_dir} does not exist, though {images_dir} does; create "
                        "it with the masks of that split",
                        path=masks_dir,
                        kind="missing",
                    )
            elif (root / f"{split}.txt").is_file():
                wanted = read_split_list(root / f"{split}.txt")
            else:
                raise DatasetError(
                    f"split {split!r} is neither a list {root / f'{split}.txt'} nor a folder "
                    f"{images_dir / split}/ (splits found: {', '.join(self.splits(root)) or 'none'}); "
                    "write one image stem per line in a list, or name every pair with the split "
                    "'all' (slices work: 'all[:16]')",
                    path=root / f"{split}.txt",
                    kind="missing",
                )
        images, masks = list_images(images_dir), list_images(masks_dir)
        pairs, lonely_images, lonely_masks = pair_files(images, masks)
        if not pairs:
            raise DatasetError(
                f"no image/mask pairs in {root}: {images_dir} holds {count_extensions(images_dir)}, "
                f"{masks_dir} holds {count_extensions(masks_dir)}, and no mask is named like an image "
                f"(images e.g. {_examples(images)}; masks e.g. {_examples(masks)}); name each mask "
                "like its image (a.jpg <-> a.png)",
                path=root,
                kind="no_pairs",
            )
        if wanted is not None:
            by_stem = {image.stem: (image, mask) for image, mask in pairs}
            lonely = {image.stem: image for image in lonely_images}
            missing = [lonely.get(name, images_dir / f"{name}.*") for name in wanted if name not in by_stem]
            pairs = [by_stem[name] for name in wanted if name in by_stem]
            lonely_images, lonely_masks = missing, []  # masks of other splits are not lonely
            if not pairs:
                raise DatasetError(
                    f"no image of split {split!r} has a mask: its list names {len(wanted)} stem(s), "
                    f"e.g. {', '.join(wanted[:3])}, and {images_dir} holds "
                    f"{count_extensions(images_dir)}",
                    path=root,
                    kind="no_pairs",
                )
        if lonely_images and strict:
            shown = ", ".join(p.name for p in lonely_images[:5])
            raise DatasetError(
                f"{len(lonely_images)} images in {images_dir} have no mask in {masks_dir} ({shown}"
                f"{', ...' if len(lonely_images) > 5 else ''}); add their masks, remove them, or list "
                "only paired stems in a split file (`segforge doctor` lists them all)",
                path=lonely_images[0],
                kind="unpaired",
            )
        self.pairing = pairing_note(pairs)
        if isinstance(colour_map, (str, Path)):
            colour_map = load_colour_map(colour_map)
        palette = None
        if classes is None and colour_map is not None:
            classes, palette = list(colour_map.classes), colour_map.palette
        classes = class_names(root, classes, num_classes)
        if ignore_index is None and colour_map is not None:
            ignore_index = colour_map.ignore_index
        super().__init__(
            pairs,
            classes=classes or [],
            palette=palette,
            ignore_index=ignore_index,
            label_map=label_map,
            colour_map=colour_map,
            mean=mean,
            std=std,
            transform=transform,
            unpaired_images=lonely_images,
            unpaired_masks=lonely_masks,
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return first_dir(root, IMAGE_DIRS) is not None and first_dir(root, MASK_DIRS) is not None

    @staticmethod
    def splits(root: Path) -> list[str]:
        """Split names found: ``<split>.txt`` lists, or sub-folders of the image folder."""
        images_dir = first_dir(root, IMAGE_DIRS)
        found = sorted(p.stem for p in root.glob("*.txt") if p.stem not in ("classes", "README", "readme"))
        if images_dir is not None:
            found += sorted(p.name for p in images_dir.iterdir() if p.is_dir() and p.name not in found)
        return found
