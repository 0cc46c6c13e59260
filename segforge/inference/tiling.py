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
``predict_tiled`` (in memory) and ``segforge.inference.streaming.predict_tiff`` (a TIFF read by rows, labels
written tile by tile)
share one code path and give the same labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from segforge.inference.probabilities import check_finite, predict_probabilities, probabilities
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


def plan_tiles(
    height: int,
    width: int,
    *,
    tile: int = 512,
    overlap: float = 0.25,
    blend: str = "gaussian",
    model: nn.Module | None = None,
) -> TilePlan:
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
    return TilePlan(
        height,
        width,
        (wh, ww),
        (wh, ww),
        0,
        _starts(height, wh, stride),
        _starts(width, ww, stride),
        _weights(wh, ww, blend),
    )


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


def row_steps(plan: TilePlan) -> list[int]:
    """Rows each row of tiles finishes: those no later row of tiles covers."""
    ends = [*plan.ys[1:], plan.height]
    return [min(end - y, plan.height - y) for y, end in zip(plan.ys, ends)]


def tile_blocks(
    fn: TileFn, read: Reader, plan: TilePlan, *, num_outputs: int, batch: int = 4, progress: bool | None = None
) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
    """Runs ``fn`` over the tiles of ``plan`` and yields ``(y0, y1, x0, x1, values (K, y1 - y0, x1 - x0))``:
    blended blocks, each pixel once, row of tiles by row of tiles and left to right within a row (a row
    is complete when ``x1`` is the image width). ``values`` is a view, valid until the next block.

    Memory is bounded by the tile, not the image: the columns a row of tiles is still writing (a
    batch of tiles wide) and, for the next row of tiles, the rows where the two overlap.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    oh, ow = plan.output
    steps = row_steps(plan)
    reach = plan.xs[-1] + ow  # overlap-tile outputs may run past the right edge; cut when handed on
    span = min((batch + 1) * ow, reach)  # working columns: room for the open columns plus one batch
    carried = max([oh - step for step in steps[:-1]], default=0)
    work, spare = torch.zeros(num_outputs, oh, span), torch.zeros(num_outputs, oh, span)
    total, spare_total = torch.zeros(oh, span), torch.zeros(oh, span)
    carry, next_carry = torch.zeros(num_outputs, carried, plan.width), torch.zeros(num_outputs, carried, plan.width)
    carry_total, next_total = torch.zeros(carried, plan.width), torch.zeros(carried, plan.width)
    weights = plan.weights
    bar = tqdm(
        total=plan.num_tiles, desc="tiles", unit="tile", disable=None if progress is None else not progress, leave=False
    )
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
                    next_carry[:, : oh - step, base:stop] = work[:, step:, :m]
                    next_total[: oh - step, base:stop] = total[step:, :m]
                yield y, y + step, base, stop, work[:, :step, :m].div_(total[:step, :m])
            rest = filled - n
            spare[:, :, :rest], spare_total[:, :rest] = work[:, :, n:filled], total[:, n:filled]
            spare[:, :, rest:], spare_total[:, rest:] = 0, 0
            work, spare, total, spare_total = spare, work, spare_total, total
            base, filled = upto, rest

        origins = list(plan.xs)
        for first in range(0, len(origins), batch):
            chunk = origins[first : first + batch]
            if chunk[-1] + ow - base > span:  # no room: hand on the columns no tile of this chunk reaches
                yield from flush(chunk[0])
            inputs = torch.stack([_read_window(read, plan, y, x) for x in chunk])
            outputs = fn(inputs)[..., :oh, :ow].float().cpu()
            for x, out in zip(chunk, outputs):
                work[:, :, x - base : x - base + ow].addcmul_(out, weights)
                total[:, x - base : x - base + ow] += weights
            filled = chunk[-1] + ow - base
            bar.update(len(chunk))
        yield from flush(reach)
        carry, next_carry, carry_total, next_total = next_carry, carry, next_total, carry_total
        rows_in = oh - step
    bar.close()


def _network_fn(
    model: nn.Module, plan: TilePlan, device: torch.device, *, flip: bool, scales: Sequence[float]
) -> TileFn:
    """Class probabilities of a batch of tiles, averaged over flips and scales."""
    if plan.border == 0:

        def padded(x: torch.Tensor) -> torch.Tensor:
            return predict_probabilities(
                model, x.to(device).contiguous(memory_format=torch.channels_last), flip=flip, scales=scales
            )

        return padded
    if tuple(scales) != (1.0,):
        raise ValueError(
            "multi-scale test-time augmentation does not fit overlap-tile inference (a valid-"
            "convolution network's border does not scale); use flip only"
        )

    @torch.inference_mode()
    def valid(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        probs = check_finite(probabilities(model(x).float()), f"a tile of {x.shape[-2]}x{x.shape[-1]}")
        if flip:  # the border is the same on both sides, so the mirrored tile's output mirrors back in place
            probs = (probs + probabilities(model(x.flip(-1)).float()).flip(-1)) / 2
        return probs

    return valid


def plan_network(
    model: nn.Module,
    height: int,
    width: int,
    *,
    tile: int,
    overlap: float,
    blend: str,
    flip: bool,
    scales: Sequence[float],
    device: torch.device | str | None,
) -> tuple[TilePlan, TileFn, int]:
    """The plan, the per-tile function and the number of classes for ``model`` on an image."""
    if device is None:  # an ONNX Runtime model (segforge.export.OnnxSegmenter) has no parameters: CPU
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    model.eval()
    plan = plan_tiles(height, width, tile=tile, overlap=overlap, blend=blend, model=model)
    return plan, _network_fn(model, plan, device, flip=flip, scales=scales), max(model.num_classes, 2)


def _stitch(
    fn: TileFn, image: torch.Tensor, plan: TilePlan, num_outputs: int, *, batch: int, progress: bool | None
) -> torch.Tensor:
    """The blended ``(num_outputs, H, W)`` result of ``fn`` over an image held in memory."""
    out = torch.empty(num_outputs, *image.shape[1:])
    for y0, y1, x0, x1, values in tile_blocks(
        fn, lambda a, b, c, d: image[:, a:b, c:d], plan, num_outputs=num_outputs, batch=batch, progress=progress
    ):
        out[:, y0:y1, x0:x1] = values
    return out


def predict_tiled(
    model: nn.Module,
    image: torch.Tensor,
    *,
    tile: int = 512,
    overlap: float = 0.25,
    batch: int = 4,
    blend: str = "gaussian",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Class probabilities ``(K, H, W)`` of an image ``(C, H, W)`` (normalised like the training data),
    computed tile by tile. See the module docstring; ``flip``/``scales`` are test-time augmentation
    applied to every tile."""
    if image.ndim != 3:
        raise ValueError(f"predict_tiled takes one image (C, H, W), got shape {tuple(image.shape)}")
    plan, fn, num_classes = plan_network(
        model,
        image.shape[1],
        image.shape[2],
        tile=tile,
        overlap=overlap,
        blend=blend,
        flip=flip,
        scales=scales,
        device=device,
    )
    return _stitch(fn, image, plan, num_classes, batch=batch, progress=progress)


def tiled_map(
    fn: TileFn, image: torch.Tensor, *, tile: int, overlap: float = 0.25, batch: int = 4, blend: str = "gaussian"
) -> torch.Tensor:
    """Any same-size function of ``(N, C, h, w)`` tiles, over an image ``(C, H, W)``, blended: the
    tiler without a network (its invariants are tested this way)."""
    plan = plan_tiles(image.shape[1], image.shape[2], tile=tile, overlap=overlap, blend=blend)
    return _stitch(fn, image, plan, fn(image[None, :, :1, :1]).shape[1], batch=batch, progress=False)
