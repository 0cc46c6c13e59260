"""A fingerprint of an instance-segmentation training split: what its recipe needs to know.

``instance_fingerprint(dataset)`` reads every sample once, so that an unreadable file, a class out of range or
an instance map of another size stops the run before it trains (each layout's reader raises with the file and
the fix). It returns counts, sizes, channels, normalisation statistics, the objects per image and per class,
and the objects' sizes (which the recipe reads for anchors and crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from segforge.data.base import scale_image
from segforge.data.normalisation import combine_moments
from segforge.instances.data import InstanceDataset


@dataclass(frozen=True)
class InstanceFingerprint:
    """What an instance training split holds.

    Attributes:
        images: samples; empty: those without any object.
        median_size, min_size: ``(height, width)`` of the images (median, and smallest side by side).
        channels, dtype: bands per image, as stored.
        num_classes: classes counting the background (the dataset's, else the largest label + 1).
        classes: their names.
        objects: objects per class (index 0, the background, holds 0).
        objects_per_image: median and largest count.
        object_side: the 10th, 50th and 90th percentile of the objects' size, ``sqrt(area)`` in pixels.
        mean, std: per-channel statistics of the [0, 1]-scaled images.
        inputs: ``"images"`` (the field semantic fingerprints have; the recipe reads it).
    """

    images: int
    empty: int
    median_size: tuple[int, int]
    min_size: tuple[int, int]
    channels: int
    dtype: str
    num_classes: int
    classes: tuple[str, ...]
    objects: tuple[int, ...]
    objects_per_image: tuple[int, int]
    object_side: tuple[float, float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    inputs: str = "images"

    def describe(self) -> list[str]:
        """A few lines for the log."""
        h, w = self.median_size
        per_class = ", ".join(f"{name} {count}" for name, count in zip(self.classes[1:13], self.objects[1:]))
        low, mid, high = self.object_side
        return [
            (
                f"{self.images} images ({self.empty} without objects), median {w}x{h} (WxH), smallest side "
                f"{min(self.min_size)} px, {self.channels} channel(s) of {self.dtype}"
            ),
            f"{sum(self.objects)} objects in {self.num_classes - 1} classes: {per_class}"
            + (", ..." if self.num_classes > 13 else ""),
            (
                f"objects per image: median {self.objects_per_image[0]}, at most {self.objects_per_image[1]}; "
                f"object size (sqrt of area) {low:.0f} / {mid:.0f} / {high:.0f} px (10th / 50th / 90th percentile)"
            ),
        ]


def instance_fingerprint(dataset: InstanceDataset, *, progress: bool | None = None) -> InstanceFingerprint:
    """Reads every sample of ``dataset`` once (untransformed) and summarises it.

    Raises:
        ValueError: an empty dataset, or what the layout's reader raises for a bad file (naming it).
    """
    if len(dataset) == 0:
        raise ValueError("the training split holds no images; check the split list or the folders")
    sizes, counts, sides, moments = [], [], [], []
    label_counts: dict[int, int] = {}
    dtype, channels = "", 0
    for i in tqdm(range(len(dataset)), desc="reading the training images", disable=progress is False, leave=False):
        record = dataset.load(i)
        image = record.image if record.image.ndim == 3 else record.image[:, :, None]
        dtype, channels = str(image.dtype), image.shape[-1]
        sizes.append(image.shape[:2])
        areas = np.bincount(record.regions.ravel(), minlength=len(record.members)) @ record.members  # (K,)
        real = ~record.iscrowd & (areas > 0)
        counts.append(int(real.sum()))
        sides.extend(np.sqrt(areas[real]).tolist())
        for label in record.labels[real].tolist():
            label_counts[label] = label_counts.get(label, 0) + 1
        pixels = scale_image(image).reshape(-1, channels).astype(np.float64)
        moments.append((len(pixels), pixels.mean(axis=0), pixels.var(axis=0)))
    num_classes = dataset.num_classes or max(label_counts, default=1) + 1
    classes = tuple(dataset.classes) or ("background", *(f"class_{c}" for c in range(1, num_classes)))
    mean, var = combine_moments(moments)
    array = np.asarray(sizes)
    return InstanceFingerprint(
        images=len(dataset),
        empty=sum(c == 0 for c in counts),
        median_size=tuple(int(v) for v in np.median(array, axis=0)),
        min_size=tuple(int(v) for v in array[np.argmin(array.min(axis=1))]),
        channels=channels,
        dtype=dtype,
        num_classes=num_classes,
        classes=classes,
        objects=tuple(label_counts.get(c, 0) for c in range(num_classes)),
        objects_per_image=(int(np.median(counts)), max(counts)),
        object_side=tuple(float(v) for v in np.percentile(sides, (10, 50, 90))) if sides else (0.0, 0.0, 0.0),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in np.sqrt(var)),
    )
