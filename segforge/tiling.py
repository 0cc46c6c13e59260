"""Inference at any size: tiles through the network, memory bounded by the tile, not the image.

Two ways to cut an image, chosen by the network:

* **Overlap-tile** (U-Net paper, Fig. 2) for valid-convolution networks (the original U-Net): output
  tiles abut exactly; each input tile is larger than its output tile by the network's border (92 px
  per side) and the image is extended by mirroring. Tile origins are multiples of the network's
  pooling period (16), so the stitched result equals running the network on the whole mirrored image.
* **Sliding windows** for padded networks: windows of ``tile`` pixels, ``overlap`` apart, the last
  one snapped to the image edge (no padding beyond the image); their class probabilities are blended
  with Gaussian weights (centre pixels count most, as in nnU-Net) or uniformly.

Tiles are batched through the network one row of tiles at a time, left to right, and only the
columns a batch of tiles is writing are accumulated (plus, for the next row of tiles, the rows the
two overlap): pixels are final, and handed on, as soon as no later tile covers them. So
``predict_tiled`` (in memory) and ``predict_tiff`` (a TIFF read by rows, labels written tile by tile)
share one code path and give the same labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from segforge.models.geometry import geometry_of, mirror_coordinates

Reader = Callable[[int, int, int, int], torch.Tensor]  # (y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)
TileFn = Callable[[torch.Tensor], torch.Tensor]  # (N, C, h, w) -> (N, K, oh, ow), oh >= tile output


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go. ``ys``/``xs``: output tile origins; ``output``: output tile size; input
    tile = ``output + 2 * border`` rounded up to a size the network takes (``window``)."""

    height: int
    width: int
    output: tuple[int, int]
    window: tuple[int, int]
    border: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    weights: torch.Tensor  # (output h, output w) blending weights, > 0

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def _starts(size: int, window: int, stride: int) -> tuple[int, ...]:
    """Window origins from 0 with ``stride``; the last one snapped so the window ends at the edge."""
    if size <= window:
        return (0,)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return tuple(starts)


def _weights(height: int, width: int, blend: str) -> torch.Tensor:
    if blend == "uniform":
        return torch.ones(height, width)
    if blend != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'uniform', got {blend!r}")
    axes = []
    for n in (height, width):
        position = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (position / (n / 8)) ** 2))  # sigma = tile / 8 (nnU-Net)
    weights = axes[0][:, None] * axes[1][None, :]
    # the corners of a Gaussian are ~1e-14: floor them so an edge pixel covered by one tile is still defined
    return (weights / weights.max()).clamp_min(1e-3).float()


def plan_tiles(height: int, width: int, *, tile: int = 512, overlap: float = 0.25, blend: str = "gaussian",
               model: nn.Module | None = None) -> TilePlan:
    """The tiles for an ``height x width`` image.

    Args:
        tile: output tile side. Valid-convolution networks round it down to their pooling period
            (16 for U-Net) and take ``tile + 2 x 92`` pixel input tiles; padded networks take
            ``tile``-pixel windows (the whole side when the image is smaller).
        overlap: share of a window that the next one overlaps (padded networks), in [0, 1).
        blend: "gaussian" or "uniform" weights for overlapping windows.
        model: the network (or None for a plain function of the tile, same size in and out).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a share of the tile in [0, 1), got {overlap}; e.g. 0.25")
    geometry = geometry_of(model)
    if geometry.valid_convolutions:  # overlap-tile: abutting outputs, each from a mirrored input window
        period = geometry.tile_period
        out = max(period, tile - tile % period)
        border, after, _, _ = geometry.border(out, out)
        window = border + out + after
        ys, xs = tuple(range(0, height, out)), tuple(range(0, width, out))
        return TilePlan(height, width, (out, out), (window, window), border, ys, xs, _weights(out, out, "uniform"))
    wh, ww = min(tile, height), min(tile, width)
    multiple = geometry.tile_period  # shifts by the network stride keep its pooling grid aligned
    stride = max(1, round(tile * (1 - overlap)))
    stride = max(multiple, stride - stride % multiple) if stride >= multiple else stride
    return TilePlan(height, width, (wh, ww), (wh, ww), 0, _starts(height, wh, stride), _starts(width, ww, stride),
                    _weights(wh, ww, blend))


def _read_window(read: Reader, plan: TilePlan, y: int, x: int) -> torch.Tensor:
    """The input window of the output tile at (y, x); outside the image, mirrored."""
    wh, ww = plan.window
    top, left = y - plan.border, x - plan.border
    if top >= 0 and left >= 0 and top + wh <= plan.height and left + ww <= plan.width:
        return read(top, top + wh, left, left + ww)
    rows = mirror_coordinates(torch.arange(top, top + wh), plan.height)
    cols = mirror_coordinates(torch.arange(left, left + ww), plan.width)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    region = read(y0, y1, x0, x1)
    return region.index_select(-2, rows - y0).index_select(-1, cols - x0)


def _row_steps(plan: TilePlan) -> list[int]:
    """Rows each row of tiles finishes: those no later row of tiles covers."""
    ends = [*plan.ys[1:], plan.height]
    return [min(end - y, plan.height - y) for y, end in zip(plan.ys, ends)]


def tile_blocks(fn: TileFn, read: Reader, plan: TilePlan, *, num_outputs: int, batch: int = 4,
                progress: bool | None = None) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
    """Runs ``fn`` over the tiles of ``plan`` and yields ``(y0, y1, x0, x1, values (K, y1 - y0, x1 - x0))``:
    blended blocks, each pixel once, row of tiles by row of tiles and left to right within a row (a row
    is complete when ``x1`` is the image width). ``values`` is a view, valid until the next block.

    Memory is bounded by the tile, not the image: the columns a row of tiles is still writing (a
    batch of tiles wide) and, for the next row of tiles, the rows where the two overlap.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    oh, ow = plan.output
    steps = _row_steps(plan)
    reach = plan.xs[-1] + ow  # overlap-tile outputs may run past the right edge; cut when handed on
    span = min((batch + 1) * ow, reach)  # working columns: room for the open columns plus one batch
    carried = max([oh - step for step in steps[:-1]], default=0)
    work, spare = torch.zeros(num_outputs, oh, span), torch.zeros(num_outputs, oh, span)
    total, spare_total = torch.zeros(oh, span), torch.zeros(oh, span)
    carry, next_carry = torch.zeros(num_outputs, carried, plan.width), torch.zeros(num_outputs, carried, plan.width)
    carry_total, next_total = torch.zeros(carried, plan.width), torch.zeros(carried, plan.width)
    weights = plan.weights
    bar = tqdm(total=plan.num_tiles, desc="tiles", unit="tile", disable=None if progress is None else not progress,
               leave=False)
    rows_in = 0  # rows of the current row of tiles that earlier rows of tiles wrote to (in `carry`)
    for row, y in enumerate(plan.ys):
        step, last_row = steps[row], row + 1 == len(plan.ys)
        base, filled = 0, 0  # image column of work[..., 0]; columns of `work` written so far

        def flush(upto: int) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
            """Hands on columns [base, upto), keeps their overlap rows, moves the open columns to the front."""
            nonlocal base, filled, work, spare, total, spare_total
            n, stop = upto - base, min(upto, plan.width)
            if stop > base:
                m = stop - base
                work[:, :rows_in, :m] += carry[:, :rows_in, base:stop]
                total[:rows_in, :m] += carry_total[:rows_in, base:stop]
                if not last_row:
                    next_carry[:, :oh - step, base:stop] = work[:, step:, :m]
                    next_total[:oh - step, base:stop] = total[step:, :m]
                yield y, y + step, base, stop, work[:, :step, :m].div_(total[:step, :m])
            rest = filled - n
            spare[:, :, :rest], spare_total[:, :rest] = work[:, :, n:filled], total[:, n:filled]
            spare[:, :, rest:], spare_total[:, rest:] = 0, 0
            work, spare, total, spare_total = spare, work, spare_total, total
            base, filled = upto, rest

        origins = list(plan.xs)
        for first in range(0, len(origins), batch):
            chunk = origins[first:first + batch]
            if chunk[-1] + ow - base > span:  # no room: hand on the columns no tile of this chunk reaches
                yield from flush(chunk[0])
            inputs = torch.stack([_read_window(read, plan, y, x) for x in chunk])
            outputs = fn(inputs)[..., :oh, :ow].float().cpu()
            for x, out in zip(chunk, outputs):
                work[:, :, x - base:x - base + ow].addcmul_(out, weights)
                total[:, x - base:x - base + ow] += weights
            filled = chunk[-1] + ow - base
            bar.update(len(chunk))
        yield from flush(reach)
        carry, next_carry, carry_total, next_total = next_carry, carry, next_total, carry_total
        rows_in = oh - step
    bar.close()


def _network_fn(model: nn.Module, plan: TilePlan, device: torch.device, *, flip: bool,
                scales: Sequence[float]) -> TileFn:
    """Class probabilities of a batch of tiles, averaged over flips and scales."""
    from segforge.predict import _probabilities, predict_probabilities

    if plan.border == 0:
        def padded(x: torch.Tensor) -> torch.Tensor:
            return predict_probabilities(model, x.to(device).contiguous(memory_format=torch.channels_last),
                                         flip=flip, scales=scales)
        return padded
    if tuple(scales) != (1.0,):
        raise ValueError("multi-scale test-time augmentation does not fit overlap-tile inference (a valid-"
                         "convolution network's border does not scale); use flip only")

    @torch.inference_mode()
    def valid(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        probs = _probabilities(model(x).float())
        if flip:  # the border is the same on both sides, so the mirrored tile's output mirrors back in place
            probs = (probs + _probabilities(model(x.flip(-1)).float()).flip(-1)) / 2
        return probs
    return valid


def _prepare(model: nn.Module, height: int, width: int, *, tile: int, overlap: float, blend: str, flip: bool,
             scales: Sequence[float], device: torch.device | str | None) -> tuple[TilePlan, TileFn, int]:
    """The plan, the per-tile function and the number of classes for ``model`` on an image."""
    if device is None:  # an ONNX Runtime model (segforge.export.OnnxSegmenter) has no parameters: CPU
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    model.eval()
    plan = plan_tiles(height, width, tile=tile, overlap=overlap, blend=blend, model=model)
    return plan, _network_fn(model, plan, device, flip=flip, scales=scales), max(model.num_classes, 2)


def _stitch(fn: TileFn, image: torch.Tensor, plan: TilePlan, num_outputs: int, *, batch: int,
            progress: bool | None) -> torch.Tensor:
    """The blended ``(num_outputs, H, W)`` result of ``fn`` over an image held in memory."""
    out = torch.empty(num_outputs, *image.shape[1:])
    for y0, y1, x0, x1, values in tile_blocks(fn, lambda a, b, c, d: image[:, a:b, c:d], plan,
                                              num_outputs=num_outputs, batch=batch, progress=progress):
        out[:, y0:y1, x0:x1] = values
    return out


def predict_tiled(model: nn.Module, image: torch.Tensor, *, tile: int = 512, overlap: float = 0.25,
                  batch: int = 4, blend: str = "gaussian", flip: bool = False, scales: Sequence[float] = (1.0,),
                  device: torch.device | str | None = None, progress: bool | None = None) -> torch.Tensor:
    """Class probabilities ``(K, H, W)`` of an image ``(C, H, W)`` (normalised like the training data),
    computed tile by tile. See the module docstring; ``flip``/``scales`` are test-time augmentation
    applied to every tile."""
    if image.ndim != 3:
        raise ValueError(f"predict_tiled takes one image (C, H, W), got shape {tuple(image.shape)}")
    plan, fn, num_classes = _prepare(model, image.shape[1], image.shape[2], tile=tile, overlap=overlap, blend=blend,
                                     flip=flip, scales=scales, device=device)
    return _stitch(fn, image, plan, num_classes, batch=batch, progress=progress)


def tiled_map(fn: TileFn, image: torch.Tensor, *, tile: int, overlap: float = 0.25, batch: int = 4,
              blend: str = "gaussian") -> torch.Tensor:
    """Any same-size function of ``(N, C, h, w)`` tiles, over an image ``(C, H, W)``, blended: the
    tiler without a network (its invariants are tested this way)."""
    plan = plan_tiles(image.shape[1], image.shape[2], tile=tile, overlap=overlap, blend=blend)
    return _stitch(fn, image, plan, fn(image[None, :, :1, :1]).shape[1], batch=batch, progress=False)


class TiffRows:
    """Reads rows of a TIFF's first page without decoding the whole image, scaled and normalised like
    the training images; the last band read is kept for the next tiles.

    Uncompressed contiguous files are read straight from the file; compressed or tiled ones (deflate,
    LZW, JPEG, ... as tifffile decodes them) by the strips or tiles that hold the rows asked for.
    """

    def __init__(self, path: str | Path, info: dict, in_channels: int) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (OSError, tifffile.TiffFileError) as err:
            raise ValueError(f"cannot read {self.path} as a TIFF ({err}); streaming reads TIFF files") from err
        page = self._tif.pages.first
        if (page.planarconfig == 2 and page.samplesperpixel > 1) or len(page.chunked) > 3:
            self._tif.close()
            raise ValueError(f"{self.path} stores its channels in separate planes (or is a volume): streaming reads "
                             "interleaved 2D TIFFs; rewrite it with tifffile.imwrite(path, image, planarconfig='contig')")
        self._page, self.dtype = page, np.dtype(self._tif.byteorder + page.dtype.char)
        self.height, self.width = page.shape[:2]
        self.channels = page.shape[2] if len(page.shape) == 3 else 1
        if self.channels != in_channels:
            self._tif.close()
            raise ValueError(f"image {self.path} has {self.channels} channel(s) but the model expects {in_channels}")
        self._raw = page.is_contiguous and page.compression == 1 and not page.is_tiled
        self.offset, self.row_bytes = page.dataoffsets[0], self.width * self.channels * self.dtype.itemsize
        self.mean, self.std = info.get("mean"), info.get("std")
        self._band: tuple[int, int, np.ndarray] | None = None

    def close(self) -> None:
        self._tif.close()

    def _decode_rows(self, y0: int, y1: int) -> tuple[int, int, np.ndarray]:
        """Decodes the strips or tiles holding rows [y0, y1): (first row, end row, rows x width x channels)."""
        page, fh = self._page, self._tif.filehandle
        chunk_h, chunk_w = page.chunks[0], (page.chunks[1] if page.is_tiled else self.width)
        across = page.chunked[1] if page.is_tiled else 1
        first, last = y0 // chunk_h, (y1 - 1) // chunk_h
        top, bottom = first * chunk_h, min((last + 1) * chunk_h, self.height)
        band = np.empty((bottom - top, self.width, self.channels), self.dtype)
        for row in range(first, last + 1):
            for col in range(across):
                index = row * across + col
                fh.seek(page.dataoffsets[index])
                try:
                    segment = page.decode(fh.read(page.databytecounts[index]), index, jpegtables=page.jpegtables)[0]
                except Exception as err:  # a codec tifffile lacks (imagecodecs) or a damaged chunk
                    raise ValueError(f"cannot decode {self.path} (chunk {index}: {err}); for LZW/JPEG/... TIFFs "
                                     "pip install imagecodecs, or rewrite it uncompressed") from err
                y, x = row * chunk_h - top, col * chunk_w
                h, w = min(chunk_h, bottom - top - y), min(chunk_w, self.width - x)
                band[y:y + h, x:x + w] = segment.reshape(segment.shape[-3:])[:h, :w]
        return top, bottom, band

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        from segforge.data.base import scale_image, to_tensor

        if self._band is None or not (self._band[0] <= y0 and y1 <= self._band[1]):
            if self._raw:
                self._tif.filehandle.seek(self.offset + y0 * self.row_bytes)
                raw = np.frombuffer(self._tif.filehandle.read((y1 - y0) * self.row_bytes), dtype=self.dtype)
                self._band = (y0, y1, raw.reshape(y1 - y0, self.width, self.channels))  # as stored: 1/4 of float32
            else:
                self._band = self._decode_rows(y0, y1)
        top, _, band = self._band
        return to_tensor(scale_image(band[y0 - top:y1 - top, x0:x1]), self.mean, self.std, name=str(self.path))


def predict_tiff(model: nn.Module, info: dict, source: str | Path, target: str | Path, *, tile: int = 512,
                 overlap: float = 0.25, batch: int = 4, blend: str = "gaussian", flip: bool = False,
                 scales: Sequence[float] = (1.0,), device: torch.device | str | None = None,
                 progress: bool | None = None, block: int = 256, label_values: np.ndarray | None = None) -> Path:
    """Streams a large TIFF (uncompressed, compressed, stripped or tiled) through ``model``: reads it by
    rows, writes class indices as a tiled, deflate-compressed TIFF of ``block``-pixel tiles. Memory is
    bounded by the tile (see ``tile_blocks``), whatever the image height; the labels equal those of
    ``predict_tiled`` on the same image. ``label_values`` (``(classes,)``, see
    ``segforge.predict.raw_values``) writes each label as that value instead."""
    reader = TiffRows(source, info, model.in_channels)
    try:
        return _stream(model, reader, target, tile=tile, overlap=overlap, batch=batch, blend=blend, flip=flip,
                       scales=scales, device=device, progress=progress, block=block, label_values=label_values)
    finally:
        reader.close()


def _stream(model: nn.Module, reader: TiffRows, target: str | Path, *, tile: int, overlap: float, batch: int,
            blend: str, flip: bool, scales: Sequence[float], device: torch.device | str | None,
            progress: bool | None, block: int, label_values: np.ndarray | None) -> Path:
    import tifffile

    from segforge.files import atomic_write

    plan, fn, num_classes = _prepare(model, reader.height, reader.width, tile=tile, overlap=overlap, blend=blend,
                                     flip=flip, scales=scales, device=device)
    largest = num_classes - 1 if label_values is None else int(label_values.max())
    dtype = np.uint8 if largest < 256 else np.uint16

    def blocks() -> Iterator[np.ndarray]:
        # finished label rows wait here until a whole row of TIFF blocks can be written
        pending, count = np.empty((block + max(_row_steps(plan)), reader.width), dtype), 0
        for y0, y1, x0, x1, values in tile_blocks(fn, reader, plan, num_outputs=num_classes, batch=batch,
                                                  progress=progress):
            labels = values.argmax(0).numpy()
            pending[count:count + y1 - y0, x0:x1] = labels if label_values is None else label_values[labels]
            if x1 < reader.width:
                continue
            count += y1 - y0
            while count >= block or (y1 == reader.height and count):
                rows = min(block, count)
                for x in range(0, reader.width, block):  # copies: tifffile may compress them later
                    yield pending[:rows, x:x + block].copy()  # it zero-pads incomplete edge blocks
                pending[:count - rows] = pending[rows:count]
                count -= rows

    def write(tmp: str) -> None:
        # With several threads tifffile gathers `buffersize` bytes of blocks before compressing them
        # (512 MiB by default: every block of a 16384² image); one row of blocks bounds it.
        row_of_blocks = -(-reader.width // block) * block * block * np.dtype(dtype).itemsize
        tifffile.imwrite(tmp, data=blocks(), shape=(reader.height, reader.width), dtype=dtype, tile=(block, block),
                         compression="zlib", buffersize=row_of_blocks)

    return atomic_write(Path(target), write)
