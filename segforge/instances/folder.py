"""Instance-segmentation data in folders: images, instance-id maps and the class of each instance.

::

    root/
      images/      a.jpg b.png ...
      instances/   a.png b.tif ...          (instance id per pixel, 0 = background; 16-bit PNG or TIFF)
      classes/     a.png b.png ...          (either: class id per pixel; an instance's class is the majority under it)
      instances.json                        (or: {"a": {"1": 2, "2": 1}, ...}, the class of each instance id)
      classes.txt                           (optional: class names in index order, background first)
      train.txt val.txt                     (optional: one stem per line)

Instances never overlap in this layout (one id per pixel), and none is a crowd. The sample, and how it
goes through a transform, are those of every layout: see ``segforge.instances.data``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segforge.data.folder import class_names, pair_folders, read_split_list
from segforge.data.io import DatasetError, list_images, read_image, read_mask
from segforge.data.registry import DATASETS
from segforge.instances.data import InstanceDataset, InstanceRecord, Transform, read_json


def _check_same_size(path: Path, shape: tuple[int, ...], image: str, image_shape: tuple[int, ...], what: str) -> None:
    if tuple(shape[:2]) != tuple(image_shape[:2]):
        raise DatasetError(
            f"{what} {path} is {shape[1]}x{shape[0]} but image {image} is {image_shape[1]}x{image_shape[0]} (WxH); "
            f"the {what} must have its image's size: re-export it (nearest-neighbour), or check that it belongs "
            "to this image",
            path=path,
            kind="size_mismatch",
        )


def read_instance_classes(path: Path) -> dict[str, dict[int, int]]:
    """``instances.json`` → ``{stem: {instance id: class}}``.

    Raises:
        DatasetError: not JSON, or not ``{"<stem>": {"<id>": class, ...}}`` with integer ids and classes.
    """
    data = read_json(path, "instance classes")
    example = '{"0001": {"1": 2, "2": 1}}'
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path} holds a {type(data).__name__}; it must map image stems to {{instance id: class}}, e.g. {example}",
            path=path,
            kind="unsupported",
        )
    table: dict[str, dict[int, int]] = {}
    for stem, entry in data.items():
        ok = isinstance(entry, dict)
        parsed: dict[int, int] = {}
        for key, value in entry.items() if ok else ():
            ok = str(key).isdigit() and isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                break
            parsed[int(key)] = value
        if not ok:
            raise DatasetError(
                f"{path}: the entry of {stem!r} is not {{instance id: class}} with integer ids and classes "
                f"(got {json.dumps(entry)[:80]}); write it like {example}",
                path=path,
                kind="unsupported",
            )
        table[str(stem)] = parsed
    return table


def majority_classes(
    regions: np.ndarray, class_map: np.ndarray, ids: Sequence[int], where: str, *, min_share: float
) -> np.ndarray:
    """The class of each instance region 1..K: the most common nonzero class under it.

    Raises:
        DatasetError: an instance with class 0 under all its pixels, or whose majority class covers less
            than ``min_share`` of it (it spans classes inconsistently).
    """
    width = int(class_map.max(initial=0)) + 1
    counts = np.bincount((regions * width + class_map).ravel(), minlength=(len(ids) + 1) * width)
    counts = counts.reshape(len(ids) + 1, width)[1:]
    labels = np.zeros(len(ids), dtype=np.int64)
    for i, row in enumerate(counts):
        if row[1:].sum() == 0:
            raise DatasetError(
                f"instance {ids[i]} of {where} has no class: the class map is 0 (background) under all its "
                "pixels; give it its class in the class map, or remove it from the instance map",
                path=where,
                kind="label_range",
            )
        best = int(row[1:].argmax()) + 1
        if row[best] < min_share * row.sum():
            shares = ", ".join(f"{c}: {row[c] / row.sum():.0%}" for c in np.flatnonzero(row))
            raise DatasetError(
                f"instance {ids[i]} of {where} spans classes inconsistently ({shares}; the majority, {best}, "
                f"covers less than {min_share:.0%}); every pixel of an instance should hold its one class in the "
                "class map: fix the class map or split the instance",
                path=where,
                kind="label_range",
            )
        labels[i] = best
    return labels


@DATASETS.register("instance_folder")
class InstanceFolderDataset(InstanceDataset):
    """Images, instance-id maps and instance classes in folders (see the module docstring).

    The class of each instance comes from ``root/instances.json`` when it exists, else from the class
    maps in ``root/classes/`` (same stem as the image).

    Args:
        root: the dataset folder.
        split: None or ``"all"`` for every image; else the stems listed in ``root/<split>.txt``.
        classes: class names, background first; or ``num_classes`` (names ``class_0``...); else from
            ``root/classes.txt``; else unknown (labels are only checked to be >= 1).
        min_class_share: with class maps, the share of an instance's pixels its majority class must cover.
        mean, std, transform, min_area: see ``InstanceDataset``.

    Raises:
        DatasetError: missing folders or split list; no pairs; an image without an instance map, class
            map or (JSON) entry; ``instances.json`` that is not JSON of the right form.
    """

    layout = "instance_folder"
    expects = "images/ and instances/ folders (file stems match), with classes/ or instances.json"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "instances").is_dir()

    @staticmethod
    def splits(root: Path) -> list[str]:
        """The ``<split>.txt`` lists found."""
        return sorted(p.stem for p in root.glob("*.txt") if p.stem not in ("classes", "README", "readme"))

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        min_class_share: float = 0.9,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        min_area: int = 1,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(
                f"data folder {root} does not exist; pass the folder that holds images/ and instances/",
                path=root,
                kind="missing",
            )
        super().__init__(
            classes=class_names(root, classes, num_classes) or [],
            mean=mean,
            std=std,
            transform=transform,
            min_area=min_area,
        )
        self.root, self.min_class_share = root, min_class_share
        self.samples = self._pairs(root, split)
        self.class_table: dict[str, dict[int, int]] | None = None
        self.class_maps: dict[str, Path] | None = None
        if (root / "instances.json").is_file():
            self.class_table = read_instance_classes(root / "instances.json")
        elif (root / "classes").is_dir():
            by_stem = {p.stem: p for p in list_images(root / "classes")}
            missing = [image for image, _ in self.samples if image.stem not in by_stem]
            if missing:
                raise DatasetError(
                    f"{len(missing)} image(s) have no class map in {root / 'classes'}, e.g. {missing[0].name}; add "
                    "one per image (same stem: class id per pixel), or give the classes in instances.json",
                    path=missing[0],
                    kind="unpaired",
                )
            self.class_maps = {image.stem: by_stem[image.stem] for image, _ in self.samples}
        else:
            raise DatasetError(
                f"{root} has neither instances.json nor a classes/ folder, so the instances have no class: write "
                '{"<stem>": {"<id>": class}} to instances.json, or a class map per image to classes/',
                path=root,
                kind="missing",
            )

    @staticmethod
    def _pairs(root: Path, split: str | None) -> list[tuple[Path, Path]]:
        pairs, lonely, _ = pair_folders(
            root / "images",
            root / "instances",
            layout="instance folder",
            expects="images/ and instances/ folders (file stems match)",
            strict=False,
            masks_name="instance map",
        )
        if split is not None and split != "all":
            if not (root / f"{split}.txt").is_file():
                found = sorted(p.stem for p in root.glob("*.txt") if p.stem != "classes")
                raise DatasetError(
                    f"split list {root / f'{split}.txt'} does not exist (splits found: {', '.join(found) or 'none'}); "
                    "write one image stem per line, or pass split=None for every image",
                    path=root / f"{split}.txt",
                    kind="missing",
                )
            wanted = read_split_list(root / f"{split}.txt")
            by_stem = {image.stem: (image, ids) for image, ids in pairs}
            lonely_by_stem = {image.stem: image for image in lonely}
            absent = [n for n in wanted if n not in by_stem and n not in lonely_by_stem]
            if absent:
                raise DatasetError(
                    f"{len(absent)} name(s) of split list {root / f'{split}.txt'} have no image in {root / 'images'}, "
                    f"e.g. {', '.join(absent[:3])}; were images renamed or removed since it was written?",
                    path=root / f"{split}.txt",
                    kind="missing",
                )
            lonely = [lonely_by_stem[n] for n in wanted if n in lonely_by_stem]
            pairs = [by_stem[n] for n in wanted if n in by_stem]
        if lonely:
            raise DatasetError(
                f"{len(lonely)} image(s) in {root / 'images'} have no instance map in {root / 'instances'}, e.g. "
                f"{lonely[0].name}; add their instance maps (same stem), or leave them out of the split list",
                path=lonely[0],
                kind="unpaired",
            )
        return pairs

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def load(self, index: int) -> InstanceRecord:
        image_path, ids_path = self.samples[index]
        image = read_image(image_path)
        ids = read_mask(ids_path)
        _check_same_size(ids_path, ids.shape, str(image_path), image.shape, "instance map")
        if ids.size and ids.min() < 0:
            raise DatasetError(
                f"instance map {ids_path} holds negative ids ({int(ids.min())}); ids are 0 (background) or positive",
                path=ids_path,
                kind="label_range",
            )
        present = np.unique(ids)
        present = present[present > 0]
        regions = np.searchsorted(np.concatenate([[0], present]), ids)  # ids 1, 5, 7 → regions 1, 2, 3
        stem = image_path.stem
        if self.class_maps is not None:
            class_path = self.class_maps[stem]
            class_map = read_mask(class_path)
            _check_same_size(class_path, class_map.shape, str(image_path), image.shape, "class map")
            labels = majority_classes(
                regions, class_map, present.tolist(), str(ids_path), min_share=self.min_class_share
            )
            self.check_labels(labels, present.tolist(), str(class_path))
        else:
            entry = (self.class_table or {}).get(stem, {})
            unknown = [int(i) for i in present if int(i) not in entry]
            if unknown:
                raise DatasetError(
                    f"instance id(s) {unknown[:8]} of {ids_path} have no class in {self.root / 'instances.json'} "
                    f'(its entry "{stem}" lists ids {sorted(entry)[:8]}); add "<id>": class under "{stem}"',
                    path=ids_path,
                    kind="label_range",
                )
            labels = np.asarray([entry[int(i)] for i in present], dtype=np.int64)
            self.check_labels(labels, present.tolist(), f"{ids_path} (instances.json)")
        members = np.eye(len(present) + 1, len(present), k=-1, dtype=bool)
        return InstanceRecord(image, regions, members, labels, np.zeros(len(present), dtype=bool))
