"""Built-in data: shapes of several classes on textured backgrounds, so that demos and tests need no download.

Class 0 is the background; class k >= 1 is a shape (disk, rectangle, triangle, ring, then again)
with its own colour (RGB), grey level (grey) or band signature (any number of bands). Every
image is a pure function of ``(seed, index)``, so sample 7 is the same whatever was drawn before
it, in any process. A shared low-frequency "illumination" field and per-pixel noise make the
task need more than thresholding one pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segforge.data.base import SegmentationDataset, Transform, default_palette
from segforge.plots import save_index_png

SHAPES = ("disk", "rectangle", "triangle", "ring")


def synthetic_classes(num_classes: int) -> list[str]:
    """``["background", "disk", "rectangle", "triangle", "ring", "disk_2", ...]``."""
    return ["background"] + [
        SHAPES[(k - 1) % 4] + ("" if k <= 4 else f"_{(k - 1) // 4 + 1}") for k in range(1, num_classes)
    ]


def class_signatures(num_classes: int, channels: int) -> np.ndarray:
    """``(num_classes, channels)`` mean value of each class in [0, 1], the same for every seed."""
    if channels == 1:
        return np.linspace(0.15, 0.9, num_classes)[:, None]  # background darkest, classes brighter
    if channels == 3:
        return np.asarray(default_palette(num_classes), dtype=np.float64) / 255 * 0.8 + 0.1
    return np.random.default_rng(12345).uniform(0.1, 0.9, size=(num_classes, channels))


def _texture(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """``(H, W)`` smooth noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    y = np.linspace(0, cells, height)[:, None]
    x = np.linspace(0, cells, width)[None, :]
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = y - y0, x - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _shape(kind: str, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float, aspect: float) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels inside a shape centred at offset 0 (dy, dx: pixel offsets)."""
    if kind == "disk":
        return dy**2 + dx**2 <= radius**2
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= radius**2) & (d2 >= (0.55 * radius) ** 2)
    if kind == "rectangle":
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)
    corners = [(radius * np.sin(angle + a), radius * np.cos(angle + a)) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
    sides = [
        (dx - x1) * (y2 - y1) - (dy - y1) * (x2 - x1)  # which side of each edge a pixel lies
        for (y1, x1), (y2, x2) in zip(corners, corners[1:] + corners[:1], strict=True)
    ]
    return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 8 or width < 8:
        raise ValueError(f"synthetic images must be at least 8x8 pixels, got {height}x{width}")
    return int(height), int(width)


def synthetic_sample(
    index: int,
    *,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
    max_shapes: int = 6,
    noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its mask, a pure function of ``(seed, index)``.

    Args:
        index: sample number (>= 0).
        size: side, or ``(height, width)``; at least 8.
        num_classes: classes including the background (>= 2).
        channels: 1 (grey), 3 (RGB) or any other number of bands.
        seed: picks the dataset; two seeds give different images of the same classes.
        max_shapes: each image has 1..max_shapes shapes (later ones cover earlier ones).
        noise: standard deviation of the per-pixel noise, in [0, 1] units.

    Returns:
        ``(image (H, W, channels) uint8, mask (H, W) int64 in 0..num_classes-1)``.

    Raises:
        ValueError: fewer than 2 classes, fewer than 1 channel, an image smaller than 8x8.
    """
    height, width = _size(size)
    if num_classes < 2 or channels < 1 or max_shapes < 1:
        raise ValueError(
            f"need num_classes >= 2, channels >= 1, max_shapes >= 1; got {num_classes}, {channels}, {max_shapes}"
        )
    rng = np.random.default_rng([seed, index])
    dy, dx = np.mgrid[0:height, 0:width].astype(np.float64)
    mask = np.zeros((height, width), dtype=np.int64)
    for _ in range(rng.integers(1, max_shapes + 1)):
        label = int(rng.integers(1, num_classes))
        radius = max(2.0, rng.uniform(0.1, 0.3) * min(height, width))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        inside = _shape(SHAPES[(label - 1) % 4], dy - cy, dx - cx, radius, rng.uniform(0, np.pi), rng.uniform(0.4, 1.0))
        mask[inside] = label
    illumination = 0.08 * _texture(rng, height, width, cells=3)
    background = 0.12 * _texture(rng, height, width, cells=max(2, min(height, width) // 8)) * (mask == 0)
    image = class_signatures(num_classes, channels)[mask] + (illumination + background)[:, :, None]
    image += rng.normal(0, noise, size=image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mask


class SyntheticDataset(SegmentationDataset):
    """``num_samples`` synthetic images generated on the fly (nothing on disk).

    Args:
        num_samples: dataset length.
        size, num_classes, channels, seed: see ``synthetic_sample``.
        mean, std, transform: see ``SegmentationDataset``.
    """

    layout = "synthetic"

    def __init__(
        self,
        num_samples: int = 32,
        *,
        size: int | Sequence[int] = 64,
        num_classes: int = 4,
        channels: int = 3,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        synthetic_sample(0, size=size, num_classes=num_classes, channels=channels, seed=seed)  # validates arguments
        super().__init__([], classes=synthetic_classes(num_classes), mean=mean, std=std, transform=transform)
        self.num_samples, self.size, self.channels, self.seed = num_samples, _size(size), channels, seed
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # __getitem__ asks for the image, then the mask, of the same index: generate it once. The slot
        # is replaced by one assignment, so threads reading it never see half an entry.
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        sample = synthetic_sample(
            index, size=self.size, num_classes=len(self.classes), channels=self.channels, seed=self.seed
        )
        self._last = (index, sample)
        return sample

    def describe(self, index: int) -> str:
        return f"synthetic sample {index} (seed {self.seed})"

    mask_name = describe

    def load_image(self, index: int) -> np.ndarray:
        return self._sample(index)[0]

    def load_raw_mask(self, index: int) -> np.ndarray:
        return self._sample(index)[1]


def write_synthetic_dataset(
    root: str | Path,
    *,
    num_train: int = 16,
    num_val: int = 4,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
) -> Path:
    """Writes a synthetic dataset in the folder layout, ready for ``FolderDataset`` and ``segforge doctor``.

    Writes ``root/images/0000.png`` (``.tif`` when channels is not 1 or 3), ``root/masks/0000.png``
    (palette PNGs: the index is the class, the colours are for viewing), ``train.txt``, ``val.txt``
    and ``classes.txt``.

    Returns:
        ``root`` as a Path.
    """
    import tifffile

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    palette = default_palette(min(num_classes, 256))
    names = [f"{i:04d}" for i in range(num_train + num_val)]
    for index, name in enumerate(names):
        image, mask = synthetic_sample(index, size=size, num_classes=num_classes, channels=channels, seed=seed)
        if channels in (1, 3):
            Image.fromarray(image[:, :, 0] if channels == 1 else image).save(root / "images" / f"{name}.png")
        else:
            tifffile.imwrite(root / "images" / f"{name}.tif", image, photometric="minisblack", planarconfig="contig")
        save_index_png(mask, palette, root / "masks" / f"{name}.png")
    (root / "train.txt").write_text("".join(f"{n}\n" for n in names[:num_train]))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in names[num_train:]))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in synthetic_classes(num_classes)))
    return root
