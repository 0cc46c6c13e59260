"""Dataset layouts by name: ``create_dataset("camvid", root, split="train")``, and detecting a layout."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from segforge.registry import Registry

if TYPE_CHECKING:
    from segforge.data.base import SegmentationDataset, Transform
    from segforge.data.colour import ColourMap

#: layout name → dataset class; each class has ``detect(root) -> bool`` and ``splits(root) -> list[str]``
DATASETS: Registry = Registry("dataset layout")
#: the order in which ``detect_layout`` tries the layouts: specific structures before the generic folder
DETECTION_ORDER = (
    "pastis",
    "series",
    "instance_folder",
    "coco",
    "voc",
    "cityscapes",
    "ade20k",
    "camvid",
    "isbi",
    "folder",
)
Layout = Literal[
    "folder", "voc", "cityscapes", "camvid", "ade20k", "isbi", "series", "pastis", "instance_folder", "coco", "auto"
]


def list_dataset_layouts() -> list[str]:
    return DATASETS.names()


def detect_layout(root: str | Path, *, named_folders: bool = False) -> str:
    """Names the layout of the dataset folder ``root`` from its structure; ``"folder"`` when the image or
    mask folder is named (``image_dir``/``mask_dir``: only the plain folder layout takes them).

    Raises:
        ValueError: ``root`` does not exist, or matches no layout (the message lists what each expects).
    """
    from segforge.data.io import DatasetError

    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(
            f"data folder {root} {what}; pass the folder that holds the dataset", path=root, kind="missing"
        )
    if named_folders:
        return "folder"
    for name in DETECTION_ORDER:
        if DATASETS.get(name).detect(root):
            return name
    expected = "; ".join(f"{name}: {DATASETS.get(name).expects}" for name in DETECTION_ORDER)
    raise DatasetError(
        f"cannot tell the layout of {root}. Expected one of — {expected}. Rearrange the folder, or "
        "pass the layout explicitly (--format)",
        path=root,
        kind="layout",
    )


def create_dataset(
    kind: Layout,
    root: str | Path,
    split: str | None = None,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    ignore_index: int | None = None,
    colour_map: ColourMap | str | Path | None = None,
    label_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    transform: Transform | None = None,
    strict: bool = True,
    region_masks: str | Path | None = None,
    image_dir: str | None = None,
    mask_dir: str | None = None,
) -> SegmentationDataset:
    """Builds the dataset stored at ``root`` in layout ``kind``.

    Args:
        kind: one of ``list_dataset_layouts()``, or ``"auto"`` to detect it from the folders.
        root: the dataset folder.
        split: ``"train"``, ``"val"``, ...; None: the layout's default (the folder layout: every pair).
            A slice selects part of a split: ``"train[:25]"``, ``"train[25:]"``. ``"all"`` names every
            pair of the folder layout; the path of a split list file (``segforge.data.splits``) selects
            the samples it names.
        num_classes, classes, ignore_index, colour_map, label_map: what the mask values mean; only the
            folder layout takes them freely. The other layouts fix their classes: a value given for them
            must agree (``num_classes=11`` for CamVid), and colour/label maps are refused.
        mean, std: per-channel normalisation of the [0, 1]-scaled images.
        transform: joint augmentation ``(image (H, W, C) float32, mask (H, W) int64) -> (image, mask)``.
        strict: raise on images without masks; False records them in ``dataset.unpaired_images``.
        region_masks: a folder of valid-region masks, one per image (``SegmentationDataset.set_region_masks``).
        image_dir, mask_dir: the folder layout's image and mask folders, when not found by name.

    Returns:
        A ``SegmentationDataset``.

    Raises:
        ValueError: unknown kind (the message lists the choices), options that contradict the layout,
            and every ``DatasetError`` of the layout (missing folders, no pairs, ...).
    """
    # (Long for its documented options; the body dispatches by layout: the phases are the functions it calls.)
    options = {
        "num_classes": num_classes,
        "classes": classes,
        "ignore_index": ignore_index,
        "colour_map": colour_map,
        "label_map": label_map,
        "mean": mean,
        "std": std,
        "transform": transform,
        "strict": strict,
        "region_masks": region_masks,
        "image_dir": image_dir,
        "mask_dir": mask_dir,
    }
    selected = _selected_part(kind, root, split, options)
    if selected is not None:
        return selected
    root = Path(root)
    if kind == "auto":
        kind = detect_layout(root, named_folders=bool(image_dir or mask_dir))
    cls = DATASETS.get(kind)
    common = {"mean": mean, "std": std, "transform": transform, "strict": strict}
    if split is not None:
        common["split"] = split
    if getattr(cls, "task", "semantic") == "instance":
        return _instance_dataset(kind, cls, root, options, common)
    if kind == "series":  # image time series in the plain layout: classes as the folder layout takes them
        for option, value in (("colour_map", colour_map), ("label_map", label_map), ("region_masks", region_masks)):
            if value is not None:
                raise ValueError(f"{option} does not apply to the series layout yet; store class indices in the masks")
        return cls(root, num_classes=num_classes, classes=classes, ignore_index=ignore_index, **common)
    if kind == "folder":
        dataset = cls(
            root,
            num_classes=num_classes,
            classes=classes,
            ignore_index=ignore_index,
            colour_map=colour_map,
            label_map=label_map,
            image_dir=image_dir,
            mask_dir=mask_dir,
            **common,
        )
        if region_masks is not None:
            dataset.set_region_masks(region_masks)
        return dataset
    return _fixed_layout_dataset(kind, cls, root, split, options, common)


def _fixed_layout_dataset(kind: str, cls: type, root: Path, split: str | None, options: dict, common: dict):
    """A layout that defines its labels (VOC, Cityscapes, CamVid, ...): class options only to be checked."""
    if split == "all":
        raise ValueError(
            f"the split 'all' names every pair of a plain folder; the {kind} layout has the splits {cls.splits(root)}"
        )
    for option in ("colour_map", "label_map", "image_dir", "mask_dir"):
        if options[option] is not None:
            raise ValueError(
                f"{option} applies to the folder layout only; the {kind} layout defines its labels "
                "(use --format folder to give your own)"
            )
    dataset = cls(root, **common)
    _check_fixed_labels(kind, dataset, options["num_classes"], options["classes"], options["ignore_index"])
    if options["region_masks"] is not None:
        dataset.set_region_masks(options["region_masks"])
    return dataset


def _selected_part(kind: Layout, root: str | Path, split: str | None, options: dict):
    """A split list file (``runs/x/splits/val.txt``) or a slice of a split (``"train[:25]"``): the dataset of the
    samples it selects; None for a plain split name."""
    if split is not None and split.endswith(".txt") and Path(split).is_file():
        from segforge.data.splits import read_split_file

        base, names = read_split_file(Path(split))
        return create_dataset(kind, root, base, **options).select(names, what=f"split list {split}")
    part = re.fullmatch(r"(.+)\[(-?\d*):(-?\d*)\]", split) if split else None
    if part is None:
        return None
    whole = create_dataset(kind, root, part.group(1), **options)  # e.g. to hold slices out
    start, stop = (int(g) if g else None for g in part.group(2, 3))
    chosen = range(len(whole))[start:stop]
    if not chosen:
        raise ValueError(f"split {split!r} selects no samples of the {len(whole)} in {part.group(1)!r}")
    return whole.subset(chosen)


def _instance_dataset(kind: str, cls: type, root: Path, options: dict, common: dict):
    """An instance layout (``segforge.instances``): instance maps or COCO JSON, no colour/label maps."""
    for option in ("colour_map", "label_map", "region_masks", "image_dir", "mask_dir", "ignore_index"):
        if options.get(option) is not None:
            raise ValueError(f"{option} does not apply to the {kind} layout (instance masks): drop it")
    common.pop("strict")
    if kind == "coco":
        dataset = cls(root, **common)
        _check_fixed_labels(kind, dataset, options.get("num_classes"), options.get("classes"), None)
        return dataset
    return cls(root, num_classes=options.get("num_classes"), classes=options.get("classes"), **common)


def _check_fixed_labels(
    kind: str,
    dataset: SegmentationDataset,
    num_classes: int | None,
    classes: Sequence[str] | None,
    ignore_index: int | None,
) -> None:
    """A layout that defines its classes accepts class options only when they agree with it."""
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ValueError(
            f"the {kind} layout has {dataset.num_classes} classes, not {num_classes}; drop "
            "--num-classes or use --format folder"
        )
    if classes is not None and list(classes) != dataset.classes:
        raise ValueError(f"the {kind} layout has its own class names {dataset.classes}; drop classes=")
    if ignore_index is not None and ignore_index != dataset.ignore_index:
        raise ValueError(
            f"the {kind} layout's ignore index is {dataset.ignore_index}, not {ignore_index}; "
            "drop --ignore-index or use --format folder"
        )
