"""Prediction to files: images in (files, folders or globs), masks out.

``predict_files`` reads each image, runs the network on it whole (``segforge.inference.probabilities``)
or in tiles (``segforge.inference.tiling``), and writes its index mask as a palette PNG, a colour
overlay and, optionally, its class probabilities. ``expand_inputs`` names each real file once.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from segforge.data.base import default_palette
from segforge.data.io import list_images
from segforge.files import atomic_write
from segforge.inference.image import image_probabilities, prepare_image
from segforge.metrics import logits_to_labels
from segforge.plots import overlay_panel, save_index_png, save_png

WILDCARDS = "*?["


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components ``parts`` match glob components ``pattern`` (``**``: any number of folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    hidden = parts and parts[0].startswith(".") and not pattern[0].startswith(".")
    return bool(parts) and not hidden and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def glob_files(pattern: str) -> list[Path]:
    """The files a glob pattern names (``**`` recursive), each real file once, sorted.

    Unlike ``glob.glob``, symbolic links to folders are not followed, so a link that points back up
    the tree can neither repeat files nor loop forever; a link to a file counts as that file.
    """
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in WILDCARDS)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root).parts
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if _matches((*relative, name), rest) and path.is_file():
                real = os.path.realpath(path)
                if real not in found or not path.is_symlink():  # the file's own name over a link's
                    found[real] = path
    return sorted(found.values())


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images) and glob patterns → image paths, in order, each real file once."""
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(ch in text for ch in WILDCARDS):
            matches = glob_files(text)
            if not matches:
                raise ValueError(
                    f"no files match {text!r}; check the pattern (quote it so the shell does not expand it)"
                )
            paths += matches
        elif Path(text).is_dir():
            found = list_images(Path(text))
            if not found:
                raise ValueError(f"folder {text} holds no images (png, jpg, tif, bmp)")
            paths += found
        elif Path(text).is_file():
            paths.append(Path(text))
        else:
            raise ValueError(f"input {text} does not exist; give image files, folders or glob patterns")
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


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


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
        np.save(f, array)


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
    days and validity from ``dates`` (a ``series,date[,valid]`` CSV) or the date folders' file names."""
    out = Path(out)
    series = getattr(model, "inputs", "images") == "series"
    if series:
        from segforge.inference.series import expand_series_inputs, prepare_series, series_dates

        paths = expand_series_inputs(inputs)
        table = series_dates(paths, dates)
    else:
        paths = expand_inputs(inputs)
    check_outputs(
        paths, out, [".png", *(["_overlay.png"] if overlays else []), *(["_probs.npy"] if probabilities else [])]
    )
    model = model.to(device).eval()
    classes = max(model.num_classes, 2)  # a one-logit binary model predicts 2 classes
    palette = info.get("palette") or []
    if len(palette) < classes:
        palette = default_palette(classes)
    stored = None
    if label_map:
        stored = raw_values(label_map, classes)
        colours = [(0, 0, 0)] * (int(stored.max()) + 1)
        for label, raw in enumerate(stored.tolist()):
            colours[raw] = tuple(palette[label])
        mask_palette = colours
    else:
        mask_palette = palette
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
