"""Prediction to files: images in (files, folders or globs), masks out.

``predict_files`` reads each image, runs the network on it whole (``segforge.inference.probabilities``)
or in tiles (``segforge.inference.tiling``), and writes its index mask as a palette PNG, a colour
overlay and, optionally, its class probabilities; ``segforge.inference.inputs`` names the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from segforge.data.base import default_palette
from segforge.files import atomic_write
from segforge.inference.image import image_probabilities, prepare_image
from segforge.inference.inputs import expand_inputs
from segforge.metrics import logits_to_labels
from segforge.plots import overlay_panel, save_index_png, save_png


def output_name(path: Path) -> str:
    """What an input's outputs are named after: its file stem (a series folder of dates: its name)."""
    return path.name if path.is_dir() else path.stem


def check_outputs(paths: Sequence[Path], out: Path, suffixes: Sequence[str]) -> None:
    """Refuses, before any work, outputs that would overwrite an input or one another: ``out/<name><suffix>``
    for each input (``suffixes``: e.g. ``.png`` and ``_overlay.png``).

    Raises:
        ValueError: two inputs share a name (naming both), or an output is an input (``--out`` is the input
            folder, or a pattern picked up masks written earlier).
    """
    inputs = {os.path.realpath(path): path for path in paths}
    owners: dict[str, Path] = {}
    for path in paths:
        for suffix in suffixes:
            target = out / f"{output_name(path)}{suffix}"
            real = os.path.realpath(target)
            if real in inputs:
                raise ValueError(
                    f"predicting {path} would write {target}, which is an input ({inputs[real]}): give --out a "
                    "folder apart from the images (and patterns that do not match masks written before)"
                )
            if real in owners and owners[real] != path:
                raise ValueError(
                    f"inputs {owners[real]} and {path} would both write {target} (outputs are named by the file "
                    "name): predict them into separate --out folders, or rename one"
                )
            owners[real] = path


def raw_values(label_map: Mapping[int, int], classes: int) -> np.ndarray:
    """The inverse of a label map: ``(classes,)`` raw mask value of each label, so predictions can be written
    as the training masks were stored (``{255: 1}``: class 1 → 255). A label that several raw values map to
    takes the smallest; a label the map does not name keeps its own value."""
    table = np.arange(classes, dtype=np.int64)
    for raw, label in sorted(label_map.items(), reverse=True):
        if 0 <= label < classes:
            table[label] = raw
    return table


def stored_label_map(info: dict) -> dict[int, int] | None:
    """The label map a checkpoint's ``info`` keeps (raw mask value → class), or None."""
    pairs = info.get("label_map")
    return {int(raw): int(label) for raw, label in pairs} if pairs else None


def mask_format(info: dict, classes: int, label_map: Mapping[int, int] | None) -> tuple[list, np.ndarray | None, list]:
    """How predicted masks are written: (the palette of the classes, the raw value of each class or None for
    the class indices themselves, the palette of the mask's values). With a ``label_map`` the masks come out
    as the training masks were stored, each raw value coloured like its class."""
    palette = info.get("palette") or []
    if len(palette) < classes:
        palette = default_palette(classes)
    if not label_map:
        return palette, None, palette
    stored = raw_values(label_map, classes)
    colours = [(0, 0, 0)] * (int(stored.max()) + 1)
    for label, raw in enumerate(stored.tolist()):
        colours[raw] = tuple(palette[label])
    return palette, stored, colours


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
        np.save(f, array)


def shard_of(paths: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Process ``rank``'s share of ``paths`` (``shard=(rank, processes)``): every ``processes``-th from ``rank``."""
    rank, processes = shard
    if not 0 <= rank < processes:
        raise ValueError(f"shard must be (rank, processes) with 0 <= rank < processes, got {shard}")
    return list(paths)[rank::processes]


def _done(path: Path, out: Path, suffixes: Sequence[str]) -> bool:
    return all((out / f"{output_name(path)}{suffix}").exists() for suffix in suffixes)


def predict_files(
    model: nn.Module,
    info: dict,
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    device: torch.device | str = "cpu",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    overlays: bool = True,
    probabilities: bool = False,
    progress: bool | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    tile_batch: int = 4,
    blend: str = "gaussian",
    label_map: Mapping[int, int] | None = None,
    dates: str | Path | None = None,
    skip_existing: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Writes ``out/<stem>.png`` (palette index mask), ``out/<stem>_overlay.png`` and, when asked,
    ``out/<stem>_probs.npy`` (float16 ``(K, H, W)``) for every input image. Returns the mask paths.

    With ``label_map`` (raw value → label, as in training), each label is written as its raw value
    (``raw_values``), coloured like its class: the masks come out as the training masks were stored.

    With ``tile``, each image goes through the network in tiles (``segforge.inference.tiling.predict_tiled``:
    overlap-tile for the original U-Net, blended sliding windows otherwise), so the network's memory
    is bounded by the tile; ``overlap``, ``tile_batch`` and ``blend`` are passed on. Without it, an
    image the device has not the memory to run in one piece is refused before the pass
    (``segforge.inference.memory.check_fits``), with the advice to tile.

    A model of image time series (``model.inputs == "series"``) takes series instead of images
    (``segforge.inference.series``: ``.npy``/TIFF files or folders of dates), one mask each, with the dates'
    days and validity from ``dates`` (a ``series,date[,valid]`` CSV) or the date folders' file names.

    ``skip_existing`` leaves alone an input whose outputs all exist (an interrupted corpus run continues where
    it stopped). ``shard=(rank, processes)``: this process predicts inputs ``rank``, ``rank + processes``, ...
    of the sorted list (``segforge predict`` under torchrun), the same files a single process would write."""
    # (Long for its 19 options and their documentation; the body is the inputs, then one read-predict-write loop.)
    out = Path(out)
    series = getattr(model, "inputs", "images") == "series"
    if series:
        from segforge.inference.series import expand_series_inputs, prepare_series, series_dates

        paths = expand_series_inputs(inputs)
        table = series_dates(paths, dates)
    else:
        paths = expand_inputs(inputs)
    suffixes = [".png", *(["_overlay.png"] if overlays else []), *(["_probs.npy"] if probabilities else [])]
    check_outputs(paths, out, suffixes)  # (every process checks every input: the same answer everywhere)
    paths = [path for path in shard_of(paths, shard) if not (skip_existing and _done(path, out, suffixes))]
    model = model.to(device).eval()
    classes = max(model.num_classes, 2)  # a one-logit binary model predicts 2 classes
    palette, stored, mask_palette = mask_format(info, classes, label_map)
    written = []
    quiet = None if progress is None else not progress  # tqdm's None: no bar when stderr is not a terminal
    for path in tqdm(paths, desc="predict", unit="series" if series else "image", disable=quiet):
        if series:
            display, x, network = prepare_series(path, info, model, table[path])
        else:
            (display, x), network = prepare_image(path, info, model.in_channels), model
            x = x[0]
        probs = image_probabilities(
            network,
            x,
            f"{'series' if series else 'image'} {path}",
            device=device,
            tile=tile,
            overlap=overlap,
            tile_batch=tile_batch,
            blend=blend,
            flip=flip,
            scales=scales,
        )
        labels = logits_to_labels(probs[None])[0].numpy()  # K >= 2 probabilities: the most likely class
        name = output_name(path)  # (a series may be a folder of dates)
        written.append(save_index_png(labels if stored is None else stored[labels], mask_palette, out / f"{name}.png"))
        if overlays:
            save_png(overlay_panel(display, None, labels, palette), out / f"{name}_overlay.png")
        if probabilities:
            array = probs.numpy().astype(np.float16)
            atomic_write(out / f"{name}_probs.npy", lambda tmp: _save_npy(tmp, array))
    return written
