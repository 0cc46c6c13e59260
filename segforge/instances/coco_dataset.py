"""COCO instance-segmentation data as distributed: ``annotations/instances_<split>.json`` and its images.

::

    root/
      annotations/instances_<split>.json    (polygons, RLE and crowd annotations)
      <split>/ or images/                   (the images its "file_name"s name)

COCO category ids become labels 1..C in increasing id order. Masks of one image may overlap; the sample,
and how overlapping masks go through a transform, are those of every layout: see ``segforge.instances.data``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segforge.data.io import DatasetError, read_image
from segforge.data.registry import DATASETS
from segforge.instances.coco import annotation_to_mask
from segforge.instances.data import InstanceDataset, InstanceRecord, Transform, masks_to_regions, read_json


@DATASETS.register("coco")
class CocoInstanceDataset(InstanceDataset):
    """A COCO instance-segmentation split as distributed (see the module docstring).

    Args:
        root: the folder that holds ``annotations/``.
        split: the name in ``annotations/instances_<split>.json`` (``"train2017"``, ``"val2017"``...).
        annotation_file, image_dir: other places for the JSON file and the images.
        mean, std, transform, min_area: see ``InstanceDataset``.

    Attributes:
        category_ids: the COCO category id of each label 1..C (``category_ids[label - 1]``).
        image_infos: the JSON's image entries, one per sample.

    Raises:
        DatasetError: missing JSON or image folder, invalid JSON, missing keys, an annotation whose
            category or image the file does not list.
    """

    layout = "coco"
    expects = "annotations/instances_<split>.json (COCO instance annotations) and the split's images"

    @staticmethod
    def detect(root: Path) -> bool:
        return any((root / "annotations").glob("instances_*.json"))

    @staticmethod
    def splits(root: Path) -> list[str]:
        """The ``<split>`` of each ``annotations/instances_<split>.json``."""
        return sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json"))

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        *,
        annotation_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        min_area: int = 1,
    ) -> None:
        root = Path(root)
        path = Path(annotation_file) if annotation_file else root / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            raise DatasetError(
                f"COCO annotation file {path} does not exist; expected annotations/instances_{split}.json in "
                f"{root}, or pass annotation_file=",
                path=path,
                kind="missing",
            )
        data = read_json(path, "COCO annotation file")
        missing = [
            key for key in ("images", "annotations", "categories") if not isinstance(data, dict) or key not in data
        ]
        if missing:
            raise DatasetError(
                f"COCO annotation file {path} lacks {missing}; an instance-segmentation file has 'images', "
                "'annotations' and 'categories' (is it a captions or keypoints file?)",
                path=path,
                kind="unsupported",
            )
        categories = _checked_entries(data["categories"], ("id",), "categories", path)
        categories = sorted(categories, key=lambda c: c["id"])
        super().__init__(
            classes=["background"] + [str(c.get("name", c["id"])) for c in categories],
            mean=mean,
            std=std,
            transform=transform,
            min_area=min_area,
        )
        self.annotation_file = path
        self.category_ids = [int(c["id"]) for c in categories]
        self.image_dir = self._image_dir(root, split, image_dir)
        self.image_infos: list[dict] = _checked_entries(data["images"], ("id", "file_name"), "images", path)
        self.labels_of = {category: label for label, category in enumerate(self.category_ids, start=1)}
        annotations = _checked_entries(data["annotations"], ("image_id", "category_id"), "annotations", path)
        self.annotations = self._group(annotations, {int(i["id"]) for i in self.image_infos})

    @staticmethod
    def _image_dir(root: Path, split: str, image_dir: str | Path | None) -> Path:
        tried = [Path(image_dir)] if image_dir else [root / split, root / "images" / split, root / "images"]
        found = next((d for d in tried if d.is_dir()), None)
        if found is None:
            raise DatasetError(
                f"no image folder for COCO split {split!r}: tried {', '.join(str(d) for d in tried)}; put the "
                "images in one of them, or pass image_dir=",
                path=tried[0],
                kind="missing",
            )
        return found

    def _group(self, annotations: Sequence[Mapping], image_ids: set[int]) -> dict[int, list[Mapping]]:
        grouped: dict[int, list[Mapping]] = {}
        for i, annotation in enumerate(annotations):
            name = f"annotation {annotation.get('id', f'#{i}')} of {self.annotation_file}"
            if annotation["category_id"] not in self.labels_of:
                raise DatasetError(
                    f"{name} has category_id {annotation['category_id']}, which 'categories' does not list "
                    f"(ids {self.category_ids[:10]}); add the category or fix the annotation",
                    path=self.annotation_file,
                    kind="label_range",
                )
            if annotation["image_id"] not in image_ids:
                raise DatasetError(
                    f"{name} belongs to image_id {annotation['image_id']}, which 'images' does not list; "
                    "the file is incomplete or merged from two splits",
                    path=self.annotation_file,
                    kind="missing",
                )
            grouped.setdefault(int(annotation["image_id"]), []).append(annotation)
        return grouped

    def __len__(self) -> int:
        return len(self.image_infos)

    def describe(self, index: int) -> str:
        return str(self.image_dir / self.image_infos[index]["file_name"])

    def load(self, index: int) -> InstanceRecord:
        info = self.image_infos[index]
        image_path = self.image_dir / info["file_name"]
        image = read_image(image_path)
        height, width = image.shape[:2]
        if (int(info.get("height", height)), int(info.get("width", width))) != (height, width):
            raise DatasetError(
                f"image {image_path} is {width}x{height} but {self.annotation_file} says {info['width']}x"
                f"{info['height']} (WxH); the annotations were drawn on another version of the image",
                path=image_path,
                kind="size_mismatch",
            )
        annotations = self.annotations.get(int(info["id"]), [])
        masks = np.zeros((len(annotations), height, width), dtype=bool)
        for k, annotation in enumerate(annotations):
            try:
                masks[k] = annotation_to_mask(annotation, height, width).numpy()
            except ValueError as err:
                raise DatasetError(
                    f"annotation {annotation.get('id', k)} of {image_path.name} in {self.annotation_file}: {err}",
                    path=self.annotation_file,
                    kind="unreadable",
                ) from None
        regions, members = masks_to_regions(masks)
        labels = np.asarray([self.labels_of[a["category_id"]] for a in annotations], dtype=np.int64)
        iscrowd = np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
        return InstanceRecord(image, regions, members, labels, iscrowd)


def _checked_entries(entries: Any, keys: Sequence[str], what: str, path: Path) -> list[dict]:
    """``entries`` (a COCO list such as ``images``) as a list of dicts that each hold ``keys``; else a DatasetError."""
    if not isinstance(entries, list):
        raise DatasetError(
            f"{what!r} in {path} must be a list, got {type(entries).__name__}", path=path, kind="unsupported"
        )
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not set(keys) <= set(entry):
            lacking = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            raise DatasetError(
                f"entry {i} of {what!r} in {path} lacks {lacking} "
                f"(got {json.dumps(entry)[:80]}); every entry needs {list(keys)}: fix or re-export the file",
                path=path,
                kind="unsupported",
            )
    return entries
