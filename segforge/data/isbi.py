"""ISBI 2012 EM membrane segmentation: a folder of slices, or multi-page TIFF volumes.

::

    root/train/image/0.png ... 29.png     root/train/label/0.png ...     (slices; test/ has no labels)
    root/train-volume.tif  root/train-labels.tif  root/test-volume.tif  (the challenge's volumes)

The labels are grey 0/255: 255 = cell interior, 0 = membrane. Class order: **membrane is class 1**
(the foreground), cell interior class 0 — the U-Net paper's evaluation scores the membrane, the
thin minority class (about 22% of pixels). ``foreground="cell"`` gives the other order (255 → 1,
as zhixuhao/unet trains it). Values are thresholded at 128, so a label saved with interpolation
or JPEG noise still maps to two classes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from segforge.data.base import SegmentationDataset, Transform
from segforge.data.folder import first_dir
from segforge.data.io import DatasetError, list_images, read_volume
from segforge.data.pairing import pair_files
from segforge.data.registry import DATASETS

_IMAGE_DIRS, _LABEL_DIRS = ("image", "images"), ("label", "labels")


def isbi_label_map(foreground: Literal["membrane", "cell"] = "membrane") -> np.ndarray:
    """``(256,)`` lookup of the 0/255 labels: below 128 is membrane, 128 and above is cell interior."""
    membrane = np.arange(256) < 128
    return (
        np.where(membrane, 1, 0).astype(np.int64)
        if foreground == "membrane"
        else np.where(membrane, 0, 1).astype(np.int64)
    )


@DATASETS.register("isbi")
class ISBIDataset(SegmentationDataset):
    """ISBI 2012: grey EM slices, 2 classes (cell, membrane), no ignore index.

    Args:
        root: a folder with ``<split>/image`` (+ ``<split>/label``) slices, or ``<split>-volume.tif``
            (+ ``<split>-labels.tif``) volumes.
        split: ``train`` or ``test`` (test has no labels: its masks are all ``NO_LABEL``, -100).
        foreground: which class is 1: ``"membrane"`` (default, the U-Net paper) or ``"cell"``.
        mean, std, transform, strict: see ``SegmentationDataset`` / ``FolderDataset``.

    Raises:
        DatasetError: neither layout found for the split, slices without a label (strict).
    """

    layout = "isbi"
    expects = "train/image/ + train/label/ slices, or train-volume.tif (+ train-labels.tif)"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        foreground: Literal["membrane", "cell"] = "membrane",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        if foreground not in ("membrane", "cell"):
            raise ValueError(f"foreground must be 'membrane' or 'cell', got {foreground!r}")
        root = Path(root)
        volume, labels = root / f"{split}-volume.tif", root / f"{split}-labels.tif"
        images_dir = first_dir(root / split, _IMAGE_DIRS)
        self._volumes: dict[Path, np.ndarray] = {}
        self._lock = threading.Lock()
        self.slices: list[int] | None = None
        unpaired: list[Path] = []
        lonely: list[Path] = []
        if images_dir is not None:
            labels_dir = first_dir(root / split, _LABEL_DIRS)
            images = list_images(images_dir)
            if labels_dir is None:
                samples = [(image, None) for image in images]
            else:
                pairs, unpaired, lonely = pair_files(images, list_images(labels_dir))
                samples = list(pairs)
        elif volume.is_file():
            depth = len(self._volume(volume))
            samples = [(volume, labels if labels.is_file() else None)] * depth
            self.slices = list(range(depth))
        else:
            raise DatasetError(
                f"no ISBI 2012 data for split {split!r} in {root}: expected {root / split / 'image'}/ or {volume}",
                path=root / split,
                kind="missing",
            )
        if not samples:
            raise DatasetError(f"no ISBI slices in {images_dir}", path=images_dir, kind="no_pairs")
        if unpaired and strict:
            raise DatasetError(
                f"{len(unpaired)} ISBI slices have no label, e.g. {unpaired[0]}; restore the label file "
                "or remove the slice",
                path=unpaired[0],
                kind="unpaired",
            )
        white, black = (255, 255, 255), (0, 0, 0)  # drawn as the data shows them: cells white, membranes black
        classes, palette = (
            (("cell", "membrane"), (white, black))
            if foreground == "membrane"
            else (("membrane", "cell"), (black, white))
        )
        super().__init__(
            samples,
            classes=classes,
            palette=palette,
            label_map=isbi_label_map(foreground),
            mean=mean,
            std=std,
            transform=transform,
            unpaired_images=unpaired,
            unpaired_masks=lonely,
        )

    def __getstate__(self) -> dict:
        # DataLoader workers started with "spawn" pickle the dataset: a lock cannot be pickled, and
        # each worker may as well read the volume itself
        state = self.__dict__.copy()
        state["_lock"], state["_volumes"] = None, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def _volume(self, path: Path) -> np.ndarray:
        with self._lock:  # the doctor reads slices on a thread pool; load each volume once
            if path not in self._volumes:
                self._volumes[path] = read_volume(path)
            return self._volumes[path]

    def describe(self, index: int) -> str:
        return super().describe(index) if self.slices is None else f"{self.samples[index][0]} (page {index})"

    def sample_name(self, index: int) -> str:
        return super().sample_name(index) if self.slices is None else f"{Path(self.samples[index][0]).stem}-{index}"

    def mask_name(self, index: int) -> str:
        return super().mask_name(index) if self.slices is None else f"{self.samples[index][1]} (page {index})"

    def load_image(self, index: int) -> np.ndarray:
        if self.slices is None:
            return super().load_image(index)
        page = self._volume(self.samples[index][0])[index]
        return page[:, :, None] if page.ndim == 2 else page

    def load_raw_mask(self, index: int) -> np.ndarray | None:
        if self.slices is None or self.samples[index][1] is None:
            return super().load_raw_mask(index)
        page = self._volume(self.samples[index][1])[index]
        if page.ndim != 2:
            raise DatasetError(
                f"label volume {self.samples[index][1]} has {page.shape[-1]}-channel pages; ISBI labels are grey 0/255",
                path=self.samples[index][1],
                kind="unsupported",
            )
        return page.astype(np.int64)

    @staticmethod
    def detect(root: Path) -> bool:
        return any(root.glob("*-volume.tif")) or any(
            first_dir(root / s, _IMAGE_DIRS) is not None and first_dir(root / s, _LABEL_DIRS) is not None
            for s in ("train",)
        )

    @staticmethod
    def splits(root: Path) -> list[str]:
        root = Path(root)
        found = {p.name[: -len("-volume.tif")] for p in root.glob("*-volume.tif")}
        found |= (
            {p.name for p in root.iterdir() if p.is_dir() and first_dir(p, _IMAGE_DIRS)} if root.is_dir() else set()
        )
        return sorted(found)
