"""Joint image + mask augmentation on numpy arrays, with OpenCV underneath.

A transform is a callable ``t(image, mask) -> (image, mask)``: image ``(H, W, C)`` float32 in [0, 1]
(any C), mask ``(H, W)`` int64 that may hold the ignore index. Every geometric transform draws its
random parameters once and applies them to both arrays; the image is resampled bilinearly, the mask
by nearest neighbour (it is only ever copied, never blended, so no new label can appear), and the
area a transform brings in from outside the image is 0 in the image and ``ignore_index`` in the mask.
Outputs are C-contiguous (``torch.from_numpy`` accepts them) and inputs are never modified in place.
Labels must fit in int32 (OpenCV's widest integer type).

Why OpenCV and not albumentations or kornia: ``bench/augmentation.py`` measures the three on this
pipeline; the numbers and the reasons are in ``bench/README.md``.

Randomness: pass ``seed`` (an int or a ``numpy.random.Generator``, which gives up one draw at
construction to seed worker streams) to a transform or to ``Compose``; ``Compose`` hands its
generator to its children, so one seed fixes the whole pipeline. A call can also take ``rng=``.
Inside a DataLoader worker the generator is re-derived once per worker from
``SeedSequence([seed, worker_seed])``, where ``worker_seed`` is ``torch.initial_seed()`` of the
worker (base seed + worker id, the base seed drawn from the parent's torch RNG each epoch). So workers
get distinct streams, epochs differ, and ``torch.manual_seed`` in the parent makes a run repeatable.
OpenCV keeps its own thread pool: call ``cv2.setNumThreads(1)`` in the DataLoader's ``worker_init_fn``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from torch.utils.data import get_worker_info

SeedLike = int | np.random.Generator | None
Pair = tuple[np.ndarray, np.ndarray]  # (image (H, W, C) float32, mask (H, W) integer)


class _Randomness:
    """A generator that is re-derived once inside each DataLoader worker (see the module docstring)."""

    def __init__(self, seed: SeedLike) -> None:
        if isinstance(seed, np.random.Generator):
            self._generator, self._entropy = seed, int(seed.integers(2**63))
        elif seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
            self._generator, self._entropy = np.random.default_rng(seed), seed
        else:
            raise TypeError(f"seed must be an int, a numpy.random.Generator or None, not {type(seed).__name__}")
        self._worker_seed: int | None = None

    def generator(self) -> np.random.Generator:
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            # Each worker starts with a copy of the parent's generator: without this step every
            # worker would draw the same augmentations.
            self._worker_seed = info.seed
            entropy = [info.seed] if self._entropy is None else [int(self._entropy), info.seed]
            self._generator = np.random.default_rng(np.random.SeedSequence(entropy))
        return self._generator


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(
            f"image must be an (H, W, C) array, got {getattr(image, 'shape', type(image))}; "
            "add a channel axis to a grayscale image with image[..., None]"
        )
    if image.dtype != np.float32:
        raise TypeError(f"image must be float32 in [0, 1], got {image.dtype}; use image.astype(np.float32) / 255")
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2] or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"mask must be an integer (H, W) array matching image {image.shape}, "
            f"got {getattr(mask, 'dtype', type(mask))} {getattr(mask, 'shape', '')}"
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_ignore_index(ignore_index: int) -> None:
    if not isinstance(ignore_index, (int, np.integer)) or not -(2**31) <= ignore_index < 2**31:
        raise ValueError(f"ignore_index must be an int that fits in int32, got {ignore_index!r}")


class Transform:
    """Base class: validates the pair, draws ``rng.random() < p`` and, if so, calls ``apply``.

    Inside a pipeline the mask travels as int32 (half the memory traffic of int64, and OpenCV's
    widest integer type); ``__call__`` converts it once on the way in and back to int64 on the way out.
    """

    def __init__(self, p: float, seed: SeedLike) -> None:
        _check_range("p", p, 0.0, 1.0)
        self.p = p
        self._random = _Randomness(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        """Args:
            image: (H, W, C) float32 in [0, 1], any C.
            mask: (H, W) integer labels, may hold the ignore index.
            rng: draw from this generator instead of the transform's own.

        Returns:
            image (H', W', C) float32 and mask (H', W') int64, both C-contiguous.

        Raises:
            ValueError, TypeError: wrong shapes or dtypes (the message says how to convert).
        """
        _check_pair(image, mask)
        rng = self._random.generator() if rng is None else rng
        image, mask = self._maybe_apply(image, mask.astype(np.int32, copy=False), rng)
        return np.ascontiguousarray(image), mask.astype(np.int64)  # always a new mask array

    def _maybe_apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        return self.apply(image, mask, rng) if rng.random() < self.p else (image, mask)

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


class Compose(Transform):
    """Applies ``transforms`` in order, all drawing from this object's generator.

    Args:
        transforms: segforge transforms, or any ``t(image, mask) -> (image, mask)`` callables (those
            draw from their own randomness, so ``seed`` does not fix them).
        seed: int, ``numpy.random.Generator`` or None (fresh entropy).
    """

    def __init__(self, transforms: Sequence, *, seed: SeedLike = None) -> None:
        super().__init__(1.0, seed)
        self.transforms = list(transforms)

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        for t in self.transforms:
            if isinstance(t, Transform):
                image, mask = t._maybe_apply(image, mask, rng)
            else:
                image, mask = t(image, mask.astype(np.int64))
                mask = mask.astype(np.int32, copy=False)
        return image, mask


def _flip(a: np.ndarray, axis: int) -> np.ndarray:
    if a.ndim == 2 or a.shape[2] <= 4:  # OpenCV's flip is ~10x faster than numpy's copy, up to 4 channels
        return cv2.flip(a, 1 if axis == 1 else 0).reshape(a.shape)
    return a.take(np.arange(a.shape[axis] - 1, -1, -1), axis=axis)


class HorizontalFlip(Transform):
    """Mirrors left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, *, seed: SeedLike = None) -> None:
        super().__init__(p, seed)

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        return _flip(image, 1), _flip(mask, 1)


class VerticalFlip(Transform):
    """Mirrors top-bottom with probability ``p`` (right for aerial and microscopy images, not street scenes)."""

    def __init__(self, p: float = 0.5, *, seed: SeedLike = None) -> None:
        super().__init__(p, seed)

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        return _flip(image, 0), _flip(mask, 0)


def _warp(image: np.ndarray, mask: np.ndarray, ignore_index: int, warp: Callable) -> Pair:
    """Runs one OpenCV warp on both arrays: image bilinear with 0 outside, mask nearest with ignore_index."""
    border = dict(borderMode=cv2.BORDER_CONSTANT)
    out = warp(image, cv2.INTER_LINEAR, dict(border, borderValue=0))
    out_mask = warp(mask, cv2.INTER_NEAREST, dict(border, borderValue=ignore_index))
    return out.reshape(*out_mask.shape, image.shape[2]), out_mask  # OpenCV drops the axis of C == 1


class Rotate(Transform):
    """Rotates about the image centre by an angle drawn uniformly from ``[-limit_degrees, limit_degrees]``.

    The output keeps the input size; the corners brought in are 0 (image) and ``ignore_index`` (mask).
    """

    def __init__(self, limit_degrees: float = 15.0, p: float = 0.5, *, ignore_index: int, seed: SeedLike = None):
        super().__init__(p, seed)
        _check_range("limit_degrees", limit_degrees, 0.0, 180.0)
        _check_ignore_index(ignore_index)
        self.limit_degrees, self.ignore_index = limit_degrees, ignore_index

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = mask.shape
        angle = rng.uniform(-self.limit_degrees, self.limit_degrees)
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        warp = lambda a, flag, kw: cv2.warpAffine(a, matrix, (w, h), flags=flag, **kw)  # noqa: E731
        return _warp(image, mask, self.ignore_index, warp)


class RandomScale(Transform):
    """Resizes both axes by one factor drawn uniformly from ``scale_range``; the output size changes.

    The mask takes, for each output pixel, the input pixel nearest to the point the bilinear image
    sample is centred on (OpenCV's half-pixel convention), so the two stay aligned.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.75, 1.25), p: float = 1.0, *, seed: SeedLike = None):
        super().__init__(p, seed)
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = mask.shape
        s = rng.uniform(*self.scale_range)
        out_h, out_w = max(1, round(h * s)), max(1, round(w * s))
        out = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR).reshape(out_h, out_w, -1)
        rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.intp), h - 1)
        cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.intp), w - 1)
        return out, mask.take(rows, axis=0).take(cols, axis=1)


def _window(a: np.ndarray, top: int, left: int, height: int, width: int, fill: float) -> np.ndarray:
    """``a[top:top+height, left:left+width]`` where the parts outside ``a`` are ``fill``."""
    out = np.full((height, width, *a.shape[2:]), fill, dtype=a.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, a.shape[0]), min(left + width, a.shape[1])
    out[y0 - top : y1 - top, x0 - left : x1 - left] = a[y0:y1, x0:x1]
    return out


class RandomCrop(Transform):
    """Cuts a random ``height x width`` window; an image smaller than that is padded (0 / ``ignore_index``).

    When the image is smaller, it lands at a random position inside the padded window. With
    ``min_valid_fraction > 0`` the crop is redrawn up to ``max_tries`` times until at least that share
    of its mask pixels is not ``ignore_index``; if no draw gets there, the best draw is returned.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        ignore_index: int,
        min_valid_fraction: float = 0.0,
        max_tries: int = 10,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(1.0, seed)
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError(f"crop height and width must be positive ints, got {height!r} x {width!r}")
        _check_range("min_valid_fraction", min_valid_fraction, 0.0, 1.0)
        _check_ignore_index(ignore_index)
        if not (isinstance(max_tries, int) and max_tries >= 1):
            raise ValueError(f"max_tries must be an int >= 1, got {max_tries!r}")
        self.height, self.width, self.ignore_index = height, width, ignore_index
        self.min_valid_fraction, self.max_tries = min_valid_fraction, max_tries

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = mask.shape
        best, best_share = (0, 0), -1.0
        for _ in range(self.max_tries if self.min_valid_fraction > 0 else 1):
            # Negative offsets place a too-small image inside the padded window.
            top = int(rng.integers(min(0, h - self.height), max(0, h - self.height) + 1))
            left = int(rng.integers(min(0, w - self.width), max(0, w - self.width) + 1))
            window = _window(mask, top, left, self.height, self.width, self.ignore_index)
            share = np.count_nonzero(window != self.ignore_index) / window.size
            if share > best_share:
                best, best_share, best_mask = (top, left), share, window
            if share >= self.min_valid_fraction:
                break
        return _window(image, *best, self.height, self.width, 0.0), best_mask


class PhotometricJitter(Transform):
    """Random brightness, contrast, saturation and gamma; the mask passes through untouched.

    Factors are drawn uniformly: brightness ``b`` in ``1 ± brightness`` (``x * b``), contrast ``c`` in
    ``1 ± contrast`` (``(x - mean) * c + mean``, mean over the whole image), saturation ``s`` in
    ``1 ± saturation`` (blend with the BT.601 luma; only when C == 3, ignored otherwise, so one config
    serves RGB, grayscale and multispectral data), then clip to [0, 1] and gamma ``g`` in ``1 ± gamma``
    (``x ** g``).
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        gamma: float = 0.0,
        p: float = 0.8,
        *,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(p, seed)
        for name, value in [("brightness", brightness), ("contrast", contrast), ("saturation", saturation)]:
            _check_range(name, value, 0.0, 1.0)
        _check_range("gamma", gamma, 0.0, 0.99)
        self.brightness, self.contrast, self.saturation, self.gamma = brightness, contrast, saturation, gamma

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        b, c, s, g = 1 + rng.uniform(-1, 1, 4) * (self.brightness, self.contrast, self.saturation, self.gamma)
        # Brightness then contrast in one pass: (b x - b mean) c + b mean. A new array, so the
        # caller's image is never modified.
        out = image * np.float32(b * c)
        out += np.float32(b * (1 - c) * image.mean())
        if image.shape[2] == 3 and self.saturation > 0:
            gray = out @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
            out *= np.float32(s)
            out += gray * np.float32(1 - s)
        np.clip(out, 0.0, 1.0, out=out)
        if self.gamma > 0:
            np.power(out, np.float32(g), out=out)
        return out, mask


@functools.lru_cache(maxsize=64)
def cubic_interpolation_matrix(n_out: int, n_grid: int) -> np.ndarray:
    """Weights that interpolate ``n_grid`` evenly spaced samples onto ``n_out`` pixels (Keys cubic, a = -0.5).

    Grid point k sits at pixel ``k * (n_out - 1) / (n_grid - 1)`` (first and last on the edge pixels);
    samples beyond the ends are replicated. Where a grid point falls on a pixel its row is one-hot,
    so the interpolated field passes exactly through the grid values.

    Returns:
        (n_out, n_grid) float32, read-only; every row sums to 1.
    """
    t = np.arange(n_out) * ((n_grid - 1) / max(n_out - 1, 1))  # positions in grid units
    base = np.floor(t).astype(int)
    weights = np.zeros((n_out, n_grid))
    for offset in (-1, 0, 1, 2):
        x = np.abs(t - (base + offset))
        w = np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2)
        np.add.at(weights, (np.arange(n_out), np.clip(base + offset, 0, n_grid - 1)), np.where(x < 2, w, 0.0))
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def elastic_displacement(
    height: int, width: int, *, grid: tuple[int, int], sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """The U-Net paper's displacement field: N(0, sigma^2) vectors on a coarse grid, bicubically interpolated.

    Returns:
        (2, height, width) float32: (dy, dx) in pixels.
    """
    coarse = rng.normal(0.0, sigma, size=(2, *grid)).astype(np.float32)
    return cubic_interpolation_matrix(height, grid[0]) @ coarse @ cubic_interpolation_matrix(width, grid[1]).T


class ElasticDeformation(Transform):
    """Elastic deformation as in U-Net (Ronneberger et al., 2015): smooth random displacements.

    Output pixel ``(y, x)`` samples the input at ``(y + dy, x + dx)``, with ``(dy, dx)`` from
    ``elastic_displacement``; points that land outside are 0 (image) and ``ignore_index`` (mask).
    """

    def __init__(
        self,
        grid: tuple[int, int] = (3, 3),
        sigma: float = 10.0,
        p: float = 0.5,
        *,
        ignore_index: int,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(p, seed)
        if len(grid) != 2 or min(grid) < 2:
            raise ValueError(f"grid must be (rows, cols) with at least 2 points per axis, got {grid}")
        _check_range("sigma", sigma, 0.0, float("inf"))
        _check_ignore_index(ignore_index)
        self.grid, self.sigma, self.ignore_index = (int(grid[0]), int(grid[1])), float(sigma), ignore_index

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = mask.shape
        dy, dx = elastic_displacement(h, w, grid=self.grid, sigma=self.sigma, rng=rng)
        map_y, map_x = dy + np.arange(h, dtype=np.float32)[:, None], dx + np.arange(w, dtype=np.float32)
        remap = lambda a, flag, kw: cv2.remap(a, map_x, map_y, flag, **kw)  # noqa: E731
        return _warp(image, mask, self.ignore_index, remap)


# Config key -> transform class, in the order the pipeline applies them. Each value in a config is a
# dict of that class's keyword arguments ({} or True: defaults; None or False: left out).
AUGMENTATIONS: dict[str, type[Transform]] = {
    "hflip": HorizontalFlip,
    "vflip": VerticalFlip,
    "rotate": Rotate,
    "scale": RandomScale,
    "crop": RandomCrop,
    "jitter": PhotometricJitter,
    "elastic": ElasticDeformation,
}
DEFAULT_AUGMENTATION: dict[str, dict] = {"hflip": {}, "scale": {}, "jitter": {}}


def build_transforms(
    config: dict | None, *, ignore_index: int, crop_size: int | tuple[int, int] | None = None, seed: SeedLike = None
) -> Compose:
    """Builds the training pipeline from a plain dict (e.g. the ``augmentation:`` section of a YAML file).

    Example: ``build_transforms({"hflip": {"p": 0.5}, "rotate": {}}, ignore_index=255, crop_size=256)``.

    Args:
        config: ``{key: {option: value}}`` with keys from ``AUGMENTATIONS``; None means
            ``DEFAULT_AUGMENTATION`` (flip, scale 0.75-1.25, jitter), ``{}`` means no augmentation.
        ignore_index: the mask label for pixels brought in by rotation, cropping and deformation.
        crop_size: ``size`` or ``(height, width)``; when given (and not 0), a random crop of that size is added
            (``crop.height`` / ``crop.width`` in the config take precedence; ``crop: null`` leaves it out).
        seed: int, ``numpy.random.Generator`` or None; see the module docstring for DataLoader workers.

    Returns:
        A ``Compose`` that applies the chosen transforms in the order of ``AUGMENTATIONS``.

    Raises:
        ValueError: an unknown key or option (the message lists the valid ones), or a crop without a size.
    """
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"augmentation config must be a dict or None, got {type(config).__name__}")
    config = dict(DEFAULT_AUGMENTATION if config is None else config)
    unknown = sorted(set(config) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; choose from {list(AUGMENTATIONS)}")
    if crop_size:  # None or 0: whole images
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if not (isinstance(crop_size, (tuple, list)) and len(crop_size) == 2):
            raise ValueError(f"crop_size must be an int or (height, width), got {crop_size!r}")
        config.setdefault("crop", {})
    transforms = []
    for key, cls in AUGMENTATIONS.items():
        options = config.get(key)
        if options is None or options is False:
            continue
        options = {} if options is True else options
        if not isinstance(options, dict):
            raise ValueError(f"augmentation {key!r} takes a dict of options, true or null, got {options!r}")
        valid = [name for name in inspect.signature(cls).parameters if name not in ("ignore_index", "seed")]
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ValueError(f"unknown option {bad[0]!r} for augmentation {key!r}; choose from {valid}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}  # YAML gives lists
        if "ignore_index" in inspect.signature(cls).parameters:
            options["ignore_index"] = ignore_index
        if cls is RandomCrop:
            if crop_size is None and not {"height", "width"} <= set(options):
                raise ValueError("augmentation 'crop' needs a size: pass crop_size=, or set crop.height and crop.width")
            if crop_size is not None:
                options = {"height": crop_size[0], "width": crop_size[1], **options}
        transforms.append(cls(**options))
    return Compose(transforms, seed=seed)
