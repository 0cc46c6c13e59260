"""Reading images and masks from disk: one array convention for every file format.

``read_image`` returns ``(H, W, C)`` in the file's own dtype (uint8, uint16 or float32);
``read_mask`` returns ``(H, W)`` int64 class values. Every error is a ``DatasetError`` (a
``ValueError``) that names the file and says what to do, and carries a ``kind`` so that the
dataset doctor can group many files with the same problem into one report line.

Decisions, in one place:

- RGBA and LA images: the alpha channel is dropped (it is transparency, not a band); a
  4-band TIFF is kept as 4 bands.
- Palette ("P") images: ``read_image`` expands them to their colours (one grey band when every
  palette entry is grey, else RGB). ``read_mask`` keeps a palette PNG's *indices* (PASCAL VOC
  stores class indices this way) but reads a GIF by its colours: a GIF always has a palette, whose
  order the program that wrote it chose (Pillow writes a 0/255 mask as indices 0/1), so only the
  colours mean anything.
- 16-bit PNG/TIFF stays uint16, float TIFF becomes float32; other integer TIFFs (int16, uint32)
  become float32 with their values unchanged.
- 3-D TIFF: channels-last when the file says so (samples axis last, ``YXS``) or when the last axis
  is the smallest; otherwise channels-first (one band per page, or planar-separate storage).
- RGB masks whose three channels are equal are grey masks saved as RGB and are read as grey.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from segforge.data.colour import ColourMap, pack_rgb, unpack_rgb
from segforge.data.errors import DatasetError

#: what ``read_image``/``read_mask`` take: every raster format Pillow or tifffile reads that datasets use
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")
DEFAULT_MAX_IMAGE_MB = 4096  # one decoded image; more is refused before anything is allocated
MAX_IMAGE_ENV = "SEGFORGE_MAX_IMAGE_MB"
_CONVERT_TO_RGB = ("CMYK", "YCbCr")
_T = TypeVar("_T")


def is_image_file(path: Path) -> bool:
    """An image file by its name; a broken link counts too, so that reading it says so instead of the file
    silently dropping out of the dataset."""
    broken = path.is_symlink() and not path.exists()
    return (path.is_file() or broken) and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _check_exists(path: Path, what: str) -> None:
    if path.is_symlink() and not path.exists():
        raise DatasetError(
            f"{what} {path} is a broken link (to {os.readlink(path)}, which does not exist); fix or remove it",
            path=path,
            kind="missing",
        )
    if not path.is_file():
        raise DatasetError(
            f"{what} {path} does not exist; check the path (or remove it from the split list)",
            path=path,
            kind="missing",
        )


def max_image_bytes() -> int:
    """The largest decoded image segforge reads: ``SEGFORGE_MAX_IMAGE_MB`` (set by ``--max-image-mb`` and
    ``data.max_image_mb``; inherited by data-loader workers), else ``DEFAULT_MAX_IMAGE_MB``."""
    text = os.environ.get(MAX_IMAGE_ENV, "")
    try:
        megabytes = float(text) if text else DEFAULT_MAX_IMAGE_MB
    except ValueError:
        raise DatasetError(f"{MAX_IMAGE_ENV}={text!r} is not a number of megabytes (e.g. 4096)") from None
    return int(megabytes * 2**20)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 2**10:,.1f} KB"


def check_decoded_size(path: Path, what: str, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuses, before anything is allocated, an image whose header promises more than ``max_image_bytes()``."""
    size = itemsize
    for side in shape:
        size *= int(side)
    if size > max_image_bytes():
        raise DatasetError(
            f"{what} {path} would decode to {_megabytes(size)} ({' x '.join(str(int(s)) for s in shape)}), over "
            f"the {_megabytes(max_image_bytes())} limit on one image: predict large TIFFs tile by tile with "
            "segforge predict --tile 1024 --stream; cut large training images into tiles; or raise the limit "
            f"(--max-image-mb, data.max_image_mb, or {MAX_IMAGE_ENV}) if this machine has the memory",
            path=path,
            kind="unsupported",
        )


def _open_pil(path: Path, what: str) -> Image.Image:
    """Opens and fully decodes a file with Pillow (decoding catches truncated files too)."""
    try:
        with warnings.catch_warnings():  # segforge's own size limit (check_decoded_size) decides, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        bands = len(image.getbands())
        check_decoded_size(
            path,
            what,
            (image.height, image.width, bands),
            2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1,
        )
        image.load()
    except Image.DecompressionBombError as err:
        raise DatasetError(
            f"{what} {path} is larger than Pillow reads in one piece ({err}); save it as a tiled TIFF "
            "and predict it with segforge predict --tile 1024 --stream, or cut it into tiles",
            path=path,
            kind="unsupported",
        ) from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"cannot read {what} {path}: {err}; the file is corrupt or not an image — "
            "re-export it or remove it from the dataset",
            path=path,
            kind="unreadable",
        ) from None
    return image


def _read_tiff(path: Path, what: str) -> tuple[np.ndarray, str]:
    """Reads a TIFF with tifffile; returns the array and its axes string (e.g. ``YXS``, ``QYX``)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_decoded_size(path, what, series.shape, series.dtype.itemsize)
            return series.asarray(), series.axes
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001  tifffile raises many types for a bad file; all mean the same here
        try:  # some compressions need codecs tifffile lacks but Pillow has
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns about the same corruption it then raises on
                return np.asarray(_open_pil(path, what)), ""
        except DatasetError:
            raise DatasetError(
                f"cannot read {what} {path}: {err}; the file is corrupt or not a TIFF — "
                "re-export it or remove it from the dataset",
                path=path,
                kind="unreadable",
            ) from None


def pixel_dtype(array: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    """``array`` in a pixel type segforge computes with (uint8, uint16 or float32; other integers and floats
    become float32, booleans 0/255); refuses non-finite values and other types, naming ``what path``."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{what} {path} holds {int(bad.sum()):,} non-finite pixel value(s) (NaN or infinity; the "
            f"first at index {where}): no model can learn from or predict them; replace them (e.g. "
            "numpy.nan_to_num) or mask them out",
            path=path,
            kind="unsupported",
        )
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "iuf":
        return array.astype(np.float32)
    raise DatasetError(
        f"{what} {path} has unsupported pixel type {array.dtype}; save it as uint8, uint16 or float32",
        path=path,
        kind="unsupported",
    )


def _channels_last(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Turns a 2-D or 3-D TIFF array into (H, W, C); see the module docstring for the rule."""
    squeezed = array.squeeze() if array.ndim > 3 else array
    if squeezed.ndim == 2:
        return squeezed[:, :, None]
    if squeezed.ndim != 3:
        raise DatasetError(
            f"image {path} holds a {array.ndim}-D stack {array.shape}; read_image takes one image "
            "per file: save one image per file, or use the ISBI layout for a volume of slices",
            path=path,
            kind="unsupported",
        )
    axes = axes if len(axes) == 3 else ""
    if axes.endswith(("S", "C")) or (not axes.startswith(("S", "C")) and squeezed.shape[2] < squeezed.shape[0]):
        return squeezed
    return np.moveaxis(squeezed, 0, -1)


def _grey_palette(image: Image.Image) -> bool:
    """Whether every palette entry a palette image uses is grey (R = G = B)."""
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    indices = np.asarray(image)
    used = np.unique(indices[..., 0] if indices.ndim == 3 else indices)  # PA: (index, alpha)
    used = used[used < len(palette)]
    colours = palette[used]
    return bool(len(colours)) and bool((colours == colours[:, :1]).all())


def _pil_image_array(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return (np.asarray(image, dtype=np.uint8) * 255)[:, :, None]
    if mode in ("L", "LA"):
        return np.asarray(image.convert("L"))[:, :, None]
    if mode in ("P", "PA"):
        if _grey_palette(image):
            return np.asarray(image.convert("L"))[:, :, None]
        return np.asarray(image.convert("RGB"))
    if mode in ("RGB", "RGBA", "RGBX"):
        return np.asarray(image)[:, :, :3]
    if mode in _CONVERT_TO_RGB:
        return np.asarray(image.convert("RGB"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)[:, :, None]
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(
                f"image {path} is 32-bit with values outside 0..65535; save it as a float32 TIFF",
                path=path,
                kind="unsupported",
            )
        return values.astype(np.uint16)[:, :, None]
    if mode == "F":
        return np.asarray(image, dtype=np.float32)[:, :, None]
    raise DatasetError(
        f"image {path} has unsupported mode {mode!r}; convert it to grey (L), RGB, 16-bit grey or "
        "float32, e.g. Image.open(p).convert('RGB').save(p)",
        path=path,
        kind="unsupported",
    )


def _png_bit_depth(path: Path) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's header, or None for another format."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png_48(path: Path) -> np.ndarray:
    """A 16-bit-per-channel RGB(A) PNG as uint16 RGB: Pillow would keep only the high byte of each value."""
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 3 or array.dtype != np.uint16:
        raise DatasetError(
            f"cannot read image {path} as 16-bit RGB; the file is corrupt — re-export it", path=path, kind="unreadable"
        )
    return np.ascontiguousarray(array[:, :, 2::-1])  # BGR(A) → RGB


def read_image(path: str | Path) -> np.ndarray:
    """Reads one image as ``(H, W, C)`` keeping its dtype.

    Args:
        path: a PNG, JPEG, BMP or TIFF file (multi-band and multi-page TIFF: pages are bands).

    Returns:
        ``(H, W, C)`` uint8, uint16 or float32; C = 1 for grey, 3 for RGB, any for TIFF.

    Raises:
        DatasetError: the file is missing, corrupt, or of an unsupported mode or pixel type.
    """
    path = Path(path)
    _check_exists(path, "image")
    if path.suffix.lower() in TIFF_EXTENSIONS:
        array, axes = _read_tiff(path, "image")
        return np.ascontiguousarray(_channels_last(pixel_dtype(array, path, "image"), axes, path))
    with _open_pil(path, "image") as image:
        if image.format == "PNG" and image.mode in ("RGB", "RGBA") and _png_bit_depth(path) in ((16, 2), (16, 6)):
            return _read_png_48(path)
        return np.ascontiguousarray(_pil_image_array(image, path))


def read_volume(path: str | Path) -> np.ndarray:
    """Reads a multi-page TIFF volume (e.g. ISBI 2012's ``train-volume.tif``) as a stack of slices.

    Returns:
        ``(D, H, W)`` for grey slices, ``(D, H, W, C)`` for multi-channel ones, in the file's dtype.

    Raises:
        DatasetError: missing or unreadable file, or not a 2-D/3-D/4-D array.
    """
    path = Path(path)
    _check_exists(path, "volume")
    array, axes = _read_tiff(path, "volume")
    array = pixel_dtype(array, path, "volume")
    if array.ndim == 2 or (array.ndim == 3 and axes.endswith("S")):
        return array[None]
    if array.ndim not in (3, 4):
        raise DatasetError(
            f"volume {path} has shape {array.shape}; expected pages of 2-D slices", path=path, kind="unsupported"
        )
    return array


def _unique_colours(rgb: np.ndarray, limit: int = 8) -> str:
    values, counts = np.unique(pack_rgb(rgb), return_counts=True)
    order = np.argsort(-counts)[:limit]
    shown = ", ".join(str(unpack_rgb(v)) for v in values[order])
    return f"{len(values)} colours, e.g. {shown}"


def _mask_from_rgb(rgb: np.ndarray, path: Path, colour_map: ColourMap | None) -> np.ndarray:
    if colour_map is not None:
        return colour_map.to_index(rgb, path=path)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.int64)  # a grey mask saved as RGB
    raise DatasetError(
        f"mask {path} is RGB: colour-coded masks need a palette mapping (--palette file.yaml, or "
        f"colour_map= in Python) that says which colour is which class; it holds "
        f"{_unique_colours(rgb)}",
        path=path,
        kind="colour_mask",
    )


def _integer_mask(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise DatasetError(
                f"mask {path} holds fractional values; store class indices as integers "
                "(a mask resized with bilinear interpolation? resize masks with nearest)",
                path=path,
                kind="unsupported",
            )
    elif values.dtype.kind not in "iub":
        raise DatasetError(
            f"mask {path} has unsupported pixel type {values.dtype}; store class indices as uint8 or uint16",
            path=path,
            kind="unsupported",
        )
    return values.astype(np.int64)


def read_mask(path: str | Path, colour_map: ColourMap | None = None) -> np.ndarray:
    """Reads one label mask as ``(H, W)`` int64 class values (before any dataset label map).

    Args:
        path: a PNG, BMP or TIFF mask: grey or palette values are class indices (a palette PNG gives
            its indices, not its colours). RGB masks need ``colour_map``.
        colour_map: when given, every mask is read as colours (palette, grey and RGB files alike)
            and mapped to class indices.

    Returns:
        ``(H, W)`` int64.

    Raises:
        DatasetError: missing or corrupt file; an RGB mask and no colour map (``colour_mask``); a
            colour not in the map (``unexpected_colour``); fractional values.
    """
    path = Path(path)
    _check_exists(path, "mask")
    if path.suffix.lower() in TIFF_EXTENSIONS:
        values, _ = _read_tiff(path, "mask")
        values = values.squeeze() if values.ndim > 2 else values
        if values.ndim == 3 and values.shape[-1] in (3, 4):
            return _mask_from_rgb(values[..., :3].astype(np.uint8), path, colour_map)
        if values.ndim != 2:
            raise DatasetError(
                f"mask {path} has shape {values.shape}; a mask is one 2-D page of class indices",
                path=path,
                kind="unsupported",
            )
        if colour_map is not None:
            return _mask_from_rgb(np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1), path, colour_map)
        return _integer_mask(values, path)
    with _open_pil(path, "mask") as image:
        mode = image.mode
        if mode in ("P", "PA") and path.suffix.lower() == ".gif":  # a GIF's meaning is its colours (module doc)
            if colour_map is None and _grey_palette(image):
                return np.asarray(image.convert("L")).astype(np.int64)
            image, mode = image.convert("RGB"), "RGB"
        if colour_map is not None or mode in ("RGB", "RGBA", "RGBX"):
            return _mask_from_rgb(np.asarray(image.convert("RGB")), path, colour_map)
        if mode in ("LA", "PA"):
            return np.asarray(image)[..., 0].astype(np.int64)
        if mode in ("1", "L", "P", "I", "F") or mode.startswith("I;16"):
            return _integer_mask(np.asarray(image), path)
        raise DatasetError(
            f"mask {path} has unsupported mode {mode!r}; save masks as grey (L), palette (P) or "
            "16-bit PNGs holding class indices",
            path=path,
            kind="unsupported",
        )


def map_files(
    function: Callable[[int], _T],
    count: int,
    *,
    desc: str = "reading",
    workers: int | None = None,
    progress: bool | None = None,
) -> Iterable[_T]:
    """Yields ``function(i)`` for i in ``range(count)`` in order, decoding files on a thread pool.

    Pillow and numpy release the GIL while decoding, so threads scale on the file reads. A tqdm
    progress bar is shown when ``progress`` is True, or by default for long scans on a terminal.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    show = progress if progress is not None else (count >= 200 and sys.stderr.isatty())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(function, range(count))
        if show:
            from tqdm import tqdm

            results = tqdm(results, total=count, desc=desc, unit="file")
        yield from results


def natural_key(path: Path) -> tuple:
    """Sorts ``2.png`` before ``10.png`` (ISBI and many exports number files without padding)."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def list_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` (not recursive), naturally sorted."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)


def count_extensions(folder: Path) -> str:
    """What ``folder`` holds, for messages: ``"20 files (.tif 20)"``, naming the files it cannot read."""
    if not folder.is_dir():
        return "missing"
    counts = Counter(
        p.suffix.lower() or "(no extension)" for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    if not counts:
        return "no files"
    shown = ", ".join(f"{ext} {n}" for ext, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    unread = sorted(ext for ext in counts if ext not in IMAGE_EXTENSIONS)
    skipped = f"; not read: {', '.join(unread)} (segforge reads {' '.join(IMAGE_EXTENSIONS)})" if unread else ""
    return f"{sum(counts.values())} file(s) ({shown}){skipped}"
