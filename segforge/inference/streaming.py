"""Streaming: a TIFF larger than memory read by rows, through the tiler, its labels written tile by tile.

``TiffRows`` reads the rows the next row of tiles needs (by strips or tiles when compressed), scaled
and normalised like the training images; ``predict_tiff`` writes ``<name>.tif`` labels as the tiler
hands finished pixels on (``segforge.inference.tiling.tile_blocks``). Memory is bounded by the tile,
not the image, and the labels equal those of ``predict_tiled`` on the image in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segforge.inference.tiling import plan_network, row_steps, tile_blocks
from segforge.metrics import logits_to_labels


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
        if len(self._tif.pages) > 1:
            pages = len(self._tif.pages)
            self._tif.close()
            raise ValueError(
                f"{self.path} holds {pages} pages: streaming reads one-page TIFF images; save each page as its "
                "own file (a time series: predict it with a model of time series, without --stream)"
            )
        if (page.planarconfig == 2 and page.samplesperpixel > 1) or len(page.chunked) > 3:
            self._tif.close()
            raise ValueError(
                f"{self.path} stores its channels in separate planes (or is a volume): streaming reads "
                "interleaved 2D TIFFs; rewrite it with tifffile.imwrite(path, image, planarconfig='contig')"
            )
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
                    raise ValueError(
                        f"cannot decode {self.path} (chunk {index}: {err}); for LZW/JPEG/... TIFFs "
                        "pip install imagecodecs, or rewrite it uncompressed"
                    ) from err
                y, x = row * chunk_h - top, col * chunk_w
                h, w = min(chunk_h, bottom - top - y), min(chunk_w, self.width - x)
                band[y : y + h, x : x + w] = segment.reshape(segment.shape[-3:])[:h, :w]
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
        return to_tensor(scale_image(band[y0 - top : y1 - top, x0:x1]), self.mean, self.std, name=str(self.path))


def predict_tiff(
    model: nn.Module,
    info: dict,
    source: str | Path,
    target: str | Path,
    *,
    tile: int = 512,
    overlap: float = 0.25,
    batch: int = 4,
    blend: str = "gaussian",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    device: torch.device | str | None = None,
    progress: bool | None = None,
    block: int = 256,
    label_values: np.ndarray | None = None,
) -> Path:
    """Streams a large TIFF (uncompressed, compressed, stripped or tiled) through ``model``: reads it by
    rows, writes class indices as a tiled, deflate-compressed TIFF of ``block``-pixel tiles. Memory is
    bounded by the tile (see ``tile_blocks``), whatever the image height; the labels equal those of
    ``predict_tiled`` on the same image. ``label_values`` (``(classes,)``, see
    ``segforge.inference.raw_values``) writes each label as that value instead."""
    reader = TiffRows(source, info, model.in_channels)
    try:
        return _stream(
            model,
            reader,
            target,
            tile=tile,
            overlap=overlap,
            batch=batch,
            blend=blend,
            flip=flip,
            scales=scales,
            device=device,
            progress=progress,
            block=block,
            label_values=label_values,
        )
    finally:
        reader.close()


def _stream(
    model: nn.Module,
    reader: TiffRows,
    target: str | Path,
    *,
    tile: int,
    overlap: float,
    batch: int,
    blend: str,
    flip: bool,
    scales: Sequence[float],
    device: torch.device | str | None,
    progress: bool | None,
    block: int,
    label_values: np.ndarray | None,
) -> Path:
    import tifffile

    from segforge.files import atomic_write

    plan, fn, num_classes = plan_network(
        model,
        reader.height,
        reader.width,
        tile=tile,
        overlap=overlap,
        blend=blend,
        flip=flip,
        scales=scales,
        device=device,
    )
    largest = num_classes - 1 if label_values is None else int(label_values.max())
    dtype = np.uint8 if largest < 256 else np.uint16

    def blocks() -> Iterator[np.ndarray]:
        # finished label rows wait here until a whole row of TIFF blocks can be written
        pending, count = np.empty((block + max(row_steps(plan)), reader.width), dtype), 0
        for y0, y1, x0, x1, values in tile_blocks(
            fn, reader, plan, num_outputs=num_classes, batch=batch, progress=progress
        ):
            labels = logits_to_labels(values[None])[0].numpy()
            pending[count : count + y1 - y0, x0:x1] = labels if label_values is None else label_values[labels]
            if x1 < reader.width:
                continue
            count += y1 - y0
            while count >= block or (y1 == reader.height and count):
                rows = min(block, count)
                for x in range(0, reader.width, block):  # copies: tifffile may compress them later
                    yield pending[:rows, x : x + block].copy()  # it zero-pads incomplete edge blocks
                pending[: count - rows] = pending[rows:count]
                count -= rows

    def write(tmp: str) -> None:
        # With several threads tifffile gathers `buffersize` bytes of blocks before compressing them
        # (512 MiB by default: every block of a 16384² image); one row of blocks bounds it.
        row_of_blocks = -(-reader.width // block) * block * block * np.dtype(dtype).itemsize
        tifffile.imwrite(
            tmp,
            data=blocks(),
            shape=(reader.height, reader.width),
            dtype=dtype,
            tile=(block, block),
            compression="zlib",
            buffersize=row_of_blocks,
        )

    return atomic_write(Path(target), write)
