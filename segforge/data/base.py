"""The dataset every layout builds: a list of (image, mask) files and what their values mean."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segforge.data.colour import ColourMap, load_colour_map
from segforge.data.io import DatasetError, count_extensions, list_images, read_image, read_mask
from segforge.data.pairing import pair_files
from segforge.data.transforms import Transform as SeededTransform
from segforge.labels import NO_LABEL

Sample = tuple[Path, "Path | None"]
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def default_palette(count: int) -> list[tuple[int, int, int]]:
    """PASCAL VOC's colour map (bits of the index spread over R, G, B): distinct colours for any count."""
    palette = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette


def label_lookup(label_map: Mapping[int, int] | Sequence[int] | np.ndarray) -> np.ndarray:
    """A lookup table from raw mask values to labels.

    A mapping changes only the values it lists (``{255: 1}`` turns a 0/255 mask into 0/1) and keeps
    every other 16-bit value; a sequence or array is the full table, and a raw value beyond it is an
    error when a mask is read.
    """
    if isinstance(label_map, Mapping):
        size = max(65536, max(label_map, default=0) + 1)
        table = np.arange(size, dtype=np.int64)
        for raw, label in label_map.items():
            if raw < 0:
                raise ValueError(f"label_map key {raw} is negative; mask values are >= 0")
            table[raw] = label
        return table
    return np.asarray(label_map, dtype=np.int64)


def named_indices(dataset, names: Sequence[str], what: str) -> list[int]:
    """The indices of ``dataset``'s samples named ``names`` (its ``sample_name``s, or file names with their
    extension), in that order.

    Raises:
        DatasetError: a name is not a sample of ``dataset`` (the message lists a few).
    """
    index = {dataset.sample_name(i): i for i in range(len(dataset))}
    found = [index.get(name, index.get(Path(name).stem, index.get(name.strip()))) for name in names]
    missing = [name for name, i in zip(names, found, strict=True) if i is None]
    if missing:
        raise DatasetError(
            f"{len(missing)} name(s) of the {what} are not samples of this dataset, e.g. "
            f"{', '.join(missing[:5])}; were images renamed or removed since it was written?",
            kind="missing",
        )
    return found


def scale_image(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` → float32 in [0, 1] by the dtype's maximum (uint8 / 255, uint16 / 65535).

    Float images are used as stored: their range is the user's, and mean/std normalise it.
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32, copy=False)


def to_tensor(
    image: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None, *, name: str
) -> torch.Tensor:
    """``(H, W, C)`` float in [0, 1] → ``(C, H, W)`` float32 tensor, normalised by ``mean``/``std`` when given.

    Raises:
        ValueError: mean/std do not have one value per channel (the message names ``name``).
    """
    # Transpose into a fresh (C, H, W) array first, then normalise it in place per channel plane:
    # broadcasting over a 3-wide innermost axis with two temporaries was 10x slower (720x960x3).
    # Never normalise ``image`` itself: it may be a view of cached data (ISBI volume pages).
    out = np.array(image.transpose(2, 0, 1), dtype=np.float32, order="C")
    if mean is not None and std is not None:
        if len(mean) != out.shape[0]:
            raise ValueError(
                f"image {name} has {out.shape[0]} channels but mean/std have {len(mean)} values; "
                "give one mean and std per channel"
            )
        out -= np.asarray(mean, np.float32)[:, None, None]
        out *= (1 / np.asarray(std, np.float32))[:, None, None]
    return torch.from_numpy(out)


class SegmentationDataset(Dataset):
    """``dataset[i]`` → ``(image: float32 (C, H, W), mask: int64 (H, W))``.

    Subclasses (one per storage layout) only list the files and say what the classes are. Reading,
    the label map, the transform and normalisation happen here, in this order:
    read image ``(H, W, C)`` and raw mask ``(H, W)`` → label map → size and label checks → scale the
    image to [0, 1] → ``transform(image float32 (H, W, C), mask int64 (H, W))`` → ``(image - mean) / std``
    → tensors.

    Attributes:
        samples: ``(image_path, mask_path or None)`` per sample; None = no labels (test split).
        classes: class names; empty when not known (a folder dataset given neither classes nor
            num_classes), in which case labels are not range-checked.
        palette: one RGB colour per class, for drawing.
        ignore_index: the label of pixels the loss and metrics skip, or None.
        label_map: lookup array applied to raw mask values (Cityscapes labelIds → trainIds), or None.
        colour_map: RGB → class mapping for colour-coded masks, or None.
        mean, std: per-channel normalisation of the [0, 1]-scaled image, or None (no normalisation);
            ``segforge.data.compute_stats(dataset)`` measures them.
        transform: joint augmentation of image and mask, or None.
        augment_seed: when set (training does, per epoch), sample ``i`` is augmented with a generator
            seeded by ``(augment_seed, i)``: the same draws whatever the worker, the process (data
            parallel) or the position in the epoch (a run resumed mid-epoch), so runs repeat exactly.
        unpaired_images: samples without their mask (recorded instead of raised when built with
            strict=False); they are not in ``samples``.
        unpaired_masks: masks without their image.
        region_masks: image path → valid-region mask (``set_region_masks``): pixels where it is 0 are
            labelled ``ignore_index`` (or ``NO_LABEL`` without one), so neither the loss nor the metrics see them.
    """

    layout = "custom"
    #: what a sample is: an image (``SeriesDataset``: ``"series"``, a stack of dates); models declare the same
    inputs = "images"
    #: how images and masks were paired when not by identical file stems (a line for the log), else None
    pairing: str | None = None

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        label_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
        colour_map: ColourMap | str | Path | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        unpaired_images: Sequence[Path] = (),
        unpaired_masks: Sequence[Path] = (),
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (compute them with compute_stats(dataset))")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std must be positive in every channel, got {list(std)}")
        self.samples = list(samples)
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in c) for c in (palette or default_palette(len(self.classes)))]
        self.ignore_index = ignore_index
        self.label_map = None if label_map is None else label_lookup(label_map)
        self.colour_map = load_colour_map(colour_map) if isinstance(colour_map, (str, Path)) else colour_map
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.transform = transform
        self.augment_seed: int | None = None
        self.unpaired_images = list(unpaired_images)
        self.unpaired_masks = list(unpaired_masks)
        self.region_masks: dict[Path, Path] | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) or None

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> SegmentationDataset:
        """A dataset of the chosen samples sharing this one's classes, maps, normalisation and files."""
        return SubsetDataset(self, indices)

    def describe(self, index: int) -> str:
        """The file of sample ``index``, as error messages name it."""
        return str(self.samples[index][0])

    def sample_name(self, index: int) -> str:
        """The name split lists use for sample ``index``: its image's file stem."""
        return Path(self.samples[index][0]).stem

    def select(self, names: Sequence[str], *, what: str = "split list") -> SegmentationDataset:
        """The samples named ``names`` (``sample_name``, or a file name with its extension), in that order.

        Raises:
            DatasetError: a name is not a sample of this dataset (the message lists a few).
        """
        return self.subset(named_indices(self, names, what))

    def set_region_masks(self, folder: str | Path) -> None:
        """Pairs every image with a valid-region mask in ``folder`` (matched like masks: by file stem, or by
        the part of the names that differs); zero pixels of a region mask become unlabelled.

        Raises:
            DatasetError: the folder is missing, or an image has no region mask (the message names it).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(
                f"region mask folder {folder} does not exist; pass the folder of valid-region masks "
                "(one per image, same file stem, 0 = outside)",
                path=folder,
                kind="missing",
            )
        images = list(dict.fromkeys(Path(image) for image, _ in self.samples))
        if not images or len(images) < len(self.samples):
            raise DatasetError(
                f"the {self.layout} layout does not store one image file per sample, which region masks "
                "need (one region mask per image file)",
                path=folder,
                kind="unsupported",
            )
        pairs, lonely, _ = pair_files(images, list_images(folder))
        if lonely:
            raise DatasetError(
                f"{len(lonely)} image(s) have no region mask in {folder}, e.g. {lonely[0].name} "
                f"({count_extensions(folder)}); add one per image, named like the image",
                path=lonely[0],
                kind="missing",
            )
        self.region_masks = dict(pairs)

    def load_region(self, index: int, shape: tuple[int, int]) -> np.ndarray | None:
        """``(H, W)`` bool: where sample ``index`` is scored; None without region masks.

        Raises:
            DatasetError: the region mask is unreadable or not of the image's size ``shape``.
        """
        if self.region_masks is None:
            return None
        path = self.region_masks[Path(self.samples[index][0])]
        region = read_mask(path)
        if region.shape != tuple(shape):
            raise DatasetError(
                f"region mask {path} is {region.shape[1]}x{region.shape[0]} but image "
                f"{self.describe(index)} is {shape[1]}x{shape[0]} (WxH); a region mask must have its "
                "image's size: re-export it (nearest-neighbour), or check that it belongs to this image",
                path=path,
                kind="size_mismatch",
            )
        return region != 0

    @property
    def unlabelled(self) -> int:
        """The label of pixels without a class: ``ignore_index``, or ``NO_LABEL`` (-100) without one."""
        return NO_LABEL if self.ignore_index is None else self.ignore_index

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, C)`` in the file's dtype."""
        return read_image(self.samples[index][0])

    def load_pixels(self, index: int) -> np.ndarray:
        """The stored pixels of sample ``index`` that statistics and the doctor read: ``(H, W, C)`` here, the
        valid dates ``(T, H, W, C)`` of a time series; the last three axes are always the mask's H and W and
        the channels."""
        return self.load_image(index)

    def load_raw_mask(self, index: int) -> np.ndarray | None:
        """``(H, W)`` int64 values as stored (after the colour map, before the label map); None if unlabelled."""
        mask_path = self.samples[index][1]
        return None if mask_path is None else read_mask(mask_path, self.colour_map)

    def mask_name(self, index: int) -> str:
        return str(self.samples[index][1])

    def apply_label_map(self, raw: np.ndarray, index: int) -> np.ndarray:
        """Raw values → labels; a value the label map does not cover is an error naming the mask."""
        if self.label_map is None:
            return raw
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.label_map)):
            bad = raw.max() if raw.max() >= len(self.label_map) else raw.min()
            raise DatasetError(
                f"mask {self.mask_name(index)} has value {bad}, which the {self.layout} label map "
                f"does not cover (0..{len(self.label_map) - 1}); fix the mask",
                path=self.mask_name(index),
                kind="label_range",
            )
        return self.label_map[raw]

    def labels(self, raw: np.ndarray, index: int) -> np.ndarray:
        """Raw mask values → range-checked labels: in 0..num_classes-1 or the ignore index.

        Raises:
            DatasetError: a value the label map does not cover, or a label out of range that is not
                the ignore index (``label_range``); the message names the mask.
        """
        mask = self.apply_label_map(raw, index)
        valid = (mask >= 0) if self.num_classes is None else ((mask >= 0) & (mask < self.num_classes))
        if self.ignore_index is not None:
            valid |= mask == self.ignore_index
        if not valid.all():
            bad = np.unique(mask[~valid])[:8].tolist()
            top = (self.num_classes or 1) - 1
            raise DatasetError(
                f"mask {self.mask_name(index)} has label values {bad} outside 0..{top} "
                f"that are not the ignore index ({self.ignore_index}); run `segforge doctor` on the "
                "dataset to see why (0/255 binary masks? colour masks?)",
                path=self.mask_name(index),
                kind="label_range",
            )
        return mask

    def load_mask(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``(H, W)`` int64 labels, unlabelled outside the valid region; an unlabelled sample is all
        ``ignore_index`` (or ``NO_LABEL``) of ``shape``.

        Raises:
            DatasetError: the mask (or region mask) is not of the image's size ``shape``, or its labels
                are out of range; the message names the file.
        """
        raw = self.load_raw_mask(index)
        if raw is None:
            if shape is None:
                raise ValueError(f"sample {self.describe(index)} has no mask and no shape to fill")
            return np.full(shape, self.unlabelled, dtype=np.int64)
        if shape is not None and raw.shape != tuple(shape):
            raise DatasetError(
                f"mask {self.mask_name(index)} is {raw.shape[1]}x{raw.shape[0]} but image "
                f"{self.describe(index)} is {shape[1]}x{shape[0]} (WxH); masks must have "
                "their image's size: re-export the mask, or resize it with nearest-neighbour",
                path=self.mask_name(index),
                kind="size_mismatch",
            )
        mask = self.labels(raw, index)
        region = self.load_region(index, mask.shape)
        return mask if region is None else np.where(region, mask, self.unlabelled)

    def sample(
        self, index: int, *, transform: Transform | None = None, augment_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` as tensors, augmented by ``transform`` with the draws of ``(augment_seed, index)``
        when both are given (a seeded transform; see ``augment_seed``)."""
        image = self.load_image(index)
        mask = self.load_mask(index, image.shape[:2])
        image = scale_image(image)
        if isinstance(transform, SeededTransform) and augment_seed is not None:
            image, mask = transform(image, mask, rng=np.random.default_rng([augment_seed, index]))
        elif transform is not None:
            image, mask = transform(image, mask)
        image_t = to_tensor(image, self.mean, self.std, name=self.describe(index))
        return image_t, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return self.sample(index % len(self), transform=self.transform, augment_seed=self.augment_seed)


class SubsetDataset(SegmentationDataset):
    """Samples ``indices`` of ``parent``; reading is delegated so that layouts with their own storage
    (ISBI volumes, synthetic samples) keep working. The transform is this dataset's own."""

    def __init__(self, parent: SegmentationDataset, indices: Sequence[int]) -> None:
        indices = [range(len(parent))[i] for i in indices]  # normalises negatives, raises IndexError
        super().__init__(
            [parent.samples[i] for i in indices] if parent.samples else [],
            classes=parent.classes,
            palette=parent.palette,
            ignore_index=parent.ignore_index,
            mean=parent.mean,
            std=parent.std,
            transform=parent.transform,
        )
        self.parent, self.indices = parent, indices
        self.label_map, self.colour_map, self.layout = parent.label_map, parent.colour_map, parent.layout
        self.region_masks, self.pairing = parent.region_masks, parent.pairing

    def sample_name(self, index: int) -> str:
        return self.parent.sample_name(self.indices[index])

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, index: int) -> str:
        return self.parent.describe(self.indices[index])

    def mask_name(self, index: int) -> str:
        return self.parent.mask_name(self.indices[index])

    def load_image(self, index: int) -> np.ndarray:
        return self.parent.load_image(self.indices[index])

    def load_raw_mask(self, index: int) -> np.ndarray | None:
        return self.parent.load_raw_mask(self.indices[index])
