"""The core of segforge's instance-segmentation datasets: one sample format, whatever the layout on disk.

Every layout (``segforge.instances.folder.InstanceFolderDataset``: instance-id maps in folders;
``segforge.instances.coco_dataset.CocoInstanceDataset``: COCO JSON) subclasses ``InstanceDataset``,
which only asks it to read files, and gives the same sample: the image as a float32 ``(C, H, W)`` tensor
(scaled to [0, 1], then normalised by mean/std when given) and a target dict ``boxes (K, 4) float32``
(x1, y1, x2, y2 around the masks, ``segforge.instances.boxes.masks_to_boxes``), ``labels (K,) int64`` in
1..C, ``masks (K, H, W) bool`` and ``iscrowd (K,) bool``. ``collate_instances`` batches such samples.

Why the masks go through the transform as one integer map: segforge's transforms move ``(image, mask)``
pairs and copy mask values by nearest neighbour, never blend them, so any integer code survives. Each
distinct set of instances covering a pixel (one instance, or several where COCO masks overlap) gets a
code; the codes travel through the transform and a table turns them back into masks, so overlapping
masks move exactly like the image. Codes start at ``CODE_BASE`` so that a value the transform brings in
other than 0 (the ignore index 255, say) is caught, not read as an instance: build the transform with
``build_transforms(config, ignore_index=0, ...)`` so that the area it brings in is background.
Afterwards boxes come from the moved masks; instances smaller than ``min_area`` pixels (those cropped
away: 0) are dropped, and instances cut by a crop keep their visible part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from segforge.data.base import default_palette, named_indices, scale_image, to_tensor
from segforge.data.io import DatasetError
from segforge.data.transforms import Transform as SeededTransform
from segforge.instances.boxes import masks_to_boxes

Target = dict[str, Tensor]
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
#: the code of the first region that holds an instance; below it only 0 (background) is valid
CODE_BASE = 1 << 16


class InstanceRecord(NamedTuple):
    """One sample as read, before the transform.

    ``image (H, W, C)`` in the file's dtype; ``regions (H, W)`` int64, 0 = background; ``members (R, K)``
    bool, region r covered by the instances ``members[r]`` (row 0 empty); ``labels (K,)`` int64;
    ``iscrowd (K,)`` bool.
    """

    image: np.ndarray
    regions: np.ndarray
    members: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


def masks_to_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, H, W)`` bool masks, which may overlap → ``(regions (H, W) int64, members (R, K) bool)``.

    Region 0 is covered by no instance; ``regions_to_masks`` inverts this exactly.
    """
    count = masks.shape[0]
    if count == 0:
        return np.zeros(masks.shape[1:], dtype=np.int64), np.zeros((1, 0), dtype=bool)
    if masks.sum(axis=0, dtype=np.int64).max() <= 1:  # no overlap: the region is the instance
        regions = np.where(masks.any(axis=0), masks.argmax(axis=0) + 1, 0)
        return regions.astype(np.int64), np.eye(count + 1, count, k=-1, dtype=bool)
    packed = np.packbits(masks, axis=0).reshape(-1, masks.shape[1] * masks.shape[2]).T  # (H * W, bytes)
    empty = np.zeros((1, packed.shape[1]), dtype=np.uint8)  # so that code 0 is always the empty set
    keys, codes = np.unique(np.concatenate([empty, packed]), axis=0, return_inverse=True)
    members = np.unpackbits(keys, axis=1, count=count).astype(bool)
    return codes.reshape(-1)[1:].reshape(masks.shape[1:]).astype(np.int64), members


def regions_to_masks(regions: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``(H, W)`` region codes and the ``(R, K)`` table → ``(K, H, W)`` bool masks."""
    return np.ascontiguousarray(np.moveaxis(members[regions], -1, 0))


def transform_regions(
    transform: Transform,
    image: np.ndarray,
    regions: np.ndarray,
    members: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs a segforge transform on an image and its instance regions.

    Args:
        transform: ``t(image, mask) -> (image, mask)``, e.g. ``build_transforms(..., ignore_index=0)``.
        image: ``(H, W, C)`` float32 in [0, 1].
        regions, members: see ``masks_to_regions``.
        rng: the generator a segforge transform draws from (its own when None).

    Returns:
        ``(image (H', W', C) float32, regions (H', W') int64)`` with codes into the same ``members``.

    Raises:
        ValueError: the transform brought in a value that is not background (it was built with an
            ignore index other than 0) or changed region codes (it is not nearest-neighbour).
    """
    codes = np.where(regions > 0, regions + (CODE_BASE - 1), 0)
    if isinstance(transform, SeededTransform) and rng is not None:
        image, codes = transform(image, codes, rng=rng)
    else:
        image, codes = transform(image, codes)
    codes = np.asarray(codes, dtype=np.int64)
    valid = (codes == 0) | ((codes >= CODE_BASE) & (codes < CODE_BASE + len(members) - 1))
    if not valid.all():
        raise ValueError(
            f"the transform put value {int(codes[~valid][0])} in the instance map, which is neither background (0) "
            "nor an instance: build it with build_transforms(config, ignore_index=0, ...) so that the pixels it "
            "brings in are background, and resample masks by nearest neighbour"
        )
    return image, np.where(codes > 0, codes - (CODE_BASE - 1), 0)


def instance_target(masks: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray, *, min_area: int = 1) -> Target:
    """The target dict of ``(K, H, W)`` bool masks: instances under ``min_area`` pixels dropped, boxes around masks."""
    keep = masks.sum(axis=(1, 2)) >= min_area
    masks_t = torch.from_numpy(np.ascontiguousarray(masks[keep]))
    return {
        "boxes": masks_to_boxes(masks_t),
        "labels": torch.as_tensor(labels[keep], dtype=torch.int64),
        "masks": masks_t,
        "iscrowd": torch.as_tensor(iscrowd[keep], dtype=torch.bool),
    }


class InstanceDataset(Dataset):
    """``dataset[i]`` → ``(image: float32 (C, H, W), target)``; subclasses (one per layout) only read files.

    Reading goes: ``load(i)`` (image, instance regions, labels) → scale the image to [0, 1] →
    ``transform(image (H, W, C) float32, regions (H, W))`` → masks → drop instances under ``min_area`` →
    boxes from the masks → ``(image - mean) / std`` → tensors.

    Args:
        classes: class names in index order, background first (``classes[label]`` names a label); empty
            when unknown, and then labels are only checked to be >= 1.
        mean, std: per-channel normalisation of the [0, 1]-scaled image, or None.
        transform: a joint transform of (image, mask), e.g. ``build_transforms(config, ignore_index=0)``.
        min_area: instances with fewer pixels (after the transform) are dropped; at least 1.

    Attributes:
        augment_seed: when set, sample ``i`` draws its augmentation from ``numpy.random.default_rng([augment_seed,
            i])`` (a segforge transform), as ``SegmentationDataset`` does.
    """

    layout = "instances"
    task = "instance"  # (segforge.data's semantic datasets: "semantic")
    inputs = "images"
    #: the value transforms fill in where they bring in pixels (padding, rotation corners): background
    ignore_index = 0

    def __init__(
        self,
        *,
        classes: Sequence[str] = (),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        min_area: int = 1,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (compute them with compute_stats(dataset))")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std must be positive in every channel, got {list(std)}")
        if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
            raise ValueError(f"min_area must be an int >= 1 (pixels), got {min_area!r}")
        self.classes = list(classes)
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.transform = transform
        self.min_area = min_area
        self.augment_seed: int | None = None

    @property
    def num_classes(self) -> int | None:
        """Classes including the background (labels are 1..num_classes-1), as torchvision's detectors count them."""
        return len(self.classes) or None

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """The image file of sample ``index``, as messages name it."""
        raise NotImplementedError

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """A colour per class (for the semantic maps of the union of instances)."""
        return default_palette(max(len(self.classes), 2))

    def sample_name(self, index: int) -> str:
        """The name split lists use for sample ``index``: its image's file stem."""
        return Path(self.describe(index)).stem

    def subset(self, indices: Sequence[int]) -> InstanceDataset:
        """A dataset of the chosen samples, sharing this one's classes, normalisation and transform."""
        return InstanceSubset(self, indices)

    def select(self, names: Sequence[str], *, what: str = "split list") -> InstanceDataset:
        """The samples named ``names`` (``sample_name``, or a file name with its extension), in that order.

        Raises:
            DatasetError: a name is not a sample of this dataset (the message lists a few).
        """
        return self.subset(named_indices(self, names, what))

    def load(self, index: int) -> InstanceRecord:
        raise NotImplementedError

    def check_labels(self, labels: np.ndarray, ids: Sequence[int], where: str) -> None:
        """Raises DatasetError (``label_range``) for a label outside 1..num_classes-1, naming the instance id."""
        top = len(self.classes) - 1 if self.classes else None
        bad = (labels < 1) | ((labels > top) if top is not None else False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            valid = f"1..{top} ({len(self.classes)} classes are named, background first)" if top is not None else ">= 1"
            raise DatasetError(
                f"instance {ids[i]} of {where} has class {int(labels[i])}, outside {valid}; 0 is the background, "
                "so classes are numbered from 1: fix the class, or name every class (classes.txt, or classes=)",
                path=where,
                kind="label_range",
            )

    def sample(
        self, index: int, *, transform: Transform | None = None, augment_seed: int | None = None
    ) -> tuple[Tensor, Target]:
        """Sample ``index``, augmented by ``transform`` with the draws of ``(augment_seed, index)`` when both given."""
        record = self.load(index)
        image, regions = scale_image(record.image), record.regions
        if transform is not None:
            rng = None if augment_seed is None else np.random.default_rng([augment_seed, index])
            image, regions = transform_regions(transform, image, regions, record.members, rng=rng)
        masks = regions_to_masks(regions, record.members)
        target = instance_target(masks, record.labels, record.iscrowd, min_area=self.min_area)
        return to_tensor(image, self.mean, self.std, name=self.describe(index)), target

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return self.sample(index % len(self), transform=self.transform, augment_seed=self.augment_seed)


class InstanceSubset(InstanceDataset):
    """Samples ``indices`` of ``parent`` (reading is the parent's); normalisation and transform are this one's."""

    def __init__(self, parent: InstanceDataset, indices: Sequence[int]) -> None:
        super().__init__(
            classes=parent.classes,
            mean=parent.mean,
            std=parent.std,
            transform=parent.transform,
            min_area=parent.min_area,
        )
        self.parent, self.indices = parent, [range(len(parent))[i] for i in indices]  # (raises IndexError)
        self.layout = parent.layout

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, index: int) -> str:
        return self.parent.describe(self.indices[index])

    def sample_name(self, index: int) -> str:
        return self.parent.sample_name(self.indices[index])

    def load(self, index: int) -> InstanceRecord:
        return self.parent.load(self.indices[index])


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON file ``path``; a DatasetError naming the file, line and column when it is not JSON."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; check the path", path=path, kind="missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"cannot read {what} {path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "the file is truncated or hand-edited: re-export it, or fix it at that place",
            path=path,
            kind="unreadable",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(
            f"cannot read {what} {path}: {err}; re-export it as UTF-8 JSON", path=path, kind="unreadable"
        ) from None


def collate_instances(
    batch: Sequence[tuple[Tensor, Target]], *, size_divisor: int = 1, pad_value: float = 0.0
) -> tuple[Tensor, list[Target]]:
    """Batches instance samples for a DataLoader (``collate_fn=collate_instances``).

    Images are padded at the bottom and right to the largest height and width in the batch (rounded up
    to a multiple of ``size_divisor``) with ``pad_value`` (0: the mean, after normalisation); padding there
    moves no pixel, so boxes and masks stay valid. Targets are kept as they are: each mask keeps its
    image's own size, which says where the padding starts.

    Args:
        batch: ``(image (C, H, W), target)`` pairs.

    Returns:
        ``(images (N, C, H_max, W_max), [target, ...])``.

    Raises:
        ValueError: an empty batch, or images with different channel counts.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    channels = {image.shape[0] for image in images}
    if len(channels) != 1:
        raise ValueError(f"images in a batch must have one channel count, got {sorted(channels)}")
    step = max(1, int(size_divisor))
    height = -(-max(image.shape[1] for image in images) // step) * step
    width = -(-max(image.shape[2] for image in images) // step) * step
    padded = [
        F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]), value=pad_value) for image in images
    ]
    return torch.stack(padded), [target for _, target in batch]
