"""Instance segmentation of image files: detections in, a picture, an instance-id map and a JSON record out.

>>> found = detect(model, x)                              # x (1, C, H, W) normalised → one image's detections
>>> record = instances_json(found, classes, image="a.png", size=(H, W), score_threshold=0.5)
>>> ids = instance_id_map(found, (H, W), score_threshold=0.5)   # (H, W) uint16, 0 the background
>>> predict_instance_files(model, ["images/"], Path("out"), info=info)   # the three files per image

Every output ranks the instances kept (``score >= score_threshold``) by decreasing score: instance ``i`` of the
JSON (ids from 1) is pixel value ``i`` of the id map and colour ``i - 1`` of the picture
(:mod:`segforge.instances.visualise`). Masks are stored as COCO compressed RLE (:mod:`segforge.instances.coco`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from segforge.files import atomic_write, check_output_folder
from segforge.inference.files import check_outputs, output_name, shard_of
from segforge.inference.image import prepare_image
from segforge.inference.inputs import expand_inputs
from segforge.instances.coco import rle_encode
from segforge.instances.visualise import class_name, detection_arrays, draw_instances, ranked
from segforge.plots import save_png

__all__ = ["OUTPUT_SUFFIXES", "detect", "instance_id_map", "instances_json", "predict_instance_files"]

#: what predict_instance_files writes for each input ``<name>``: the picture, the id map, the record
OUTPUT_SUFFIXES = ("_instances.png", "_ids.png", ".json")

Detections = Mapping[str, Tensor | np.ndarray]


def detect(model: nn.Module, image: Tensor, *, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """One image's detections: ``{"boxes" (K, 4), "labels" (K,), "scores" (K,) by decreasing score,
    "masks" (K, H, W) bool}``, on the CPU.

    Args:
        model: a :class:`~segforge.instances.model.MaskRCNN`; it is put in eval mode.
        image: ``(1, C, H, W)`` float, normalised as the training images were.
        device: where the model's weights are (default: there); the image is moved to it.

    Raises:
        ValueError: ``image`` is not one ``(1, C, H, W)`` float tensor.
    """
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"detect takes one image as a (1, C, H, W) tensor, got {shape}; one image is image[None]")
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        (found,) = model(image.to(device))
    return {key: value.cpu() for key, value in found.items()}


def instances_json(
    detections: Detections, classes: Sequence[str], *, image: str, size: tuple[int, int], score_threshold: float
) -> dict[str, Any]:
    """One image's instances as a JSON-ready record, by decreasing score:
    ``{"image", "height", "width", "instances": [{"id", "class", "class_name", "score", "box", "area", "mask"}]}``.

    Args:
        detections: ``boxes (K, 4)``, ``labels (K,)``, ``scores (K,)``, ``masks (K, h, w)`` with ``h, w`` at most
            ``size`` (as ``detect`` returns them).
        classes: class names by label (background first); ``class_name`` is None for a label without one.
        image: the image's name, as the record gives it.
        size: the image's ``(height, width)``.
        score_threshold: instances scoring less are left out.

    Returns:
        ids from 1 in the order of the list; ``box`` x1 y1 x2 y2 to 2 decimals; ``area`` the mask's pixels;
        ``mask`` COCO compressed RLE ``{"size": [height, width], "counts": str}``.

    Raises:
        ValueError: detections without scores, or what ``detection_arrays`` raises.
    """
    found = detection_arrays(detections, size)
    if found.scores is None:
        raise ValueError("detections need scores (K,) for a record of predictions")
    instances = []
    for rank, i in enumerate(ranked(found.scores, len(found.labels), score_threshold)):
        label = int(found.labels[i])
        instances.append(
            {
                "id": rank + 1,
                "class": label,
                "class_name": class_name(label, classes),
                "score": float(found.scores[i]),
                "box": [round(float(v), 2) for v in found.boxes[i]],
                "area": int(found.masks[i].sum()),
                "mask": rle_encode(found.masks[i]),
            }
        )
    return {"image": image, "height": int(size[0]), "width": int(size[1]), "instances": instances}


def instance_id_map(detections: Detections, size: tuple[int, int], *, score_threshold: float) -> np.ndarray:
    """``(H, W)`` uint16: 0 for the background, else the id (from 1, ``instances_json``'s) of the best-scoring kept
    instance covering the pixel.

    Raises:
        ValueError: more than 65535 instances kept, or what ``detection_arrays`` raises.
    """
    found = detection_arrays(detections, size)
    order = ranked(found.scores, len(found.labels), score_threshold)
    if len(order) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(order)} instances do not fit a 16-bit id map; raise score_threshold")
    masks = found.masks[order]  # (K', H, W), the best first: the first True along K' is the id
    ids = np.where(masks.any(axis=0), masks.argmax(axis=0) + 1, 0) if len(order) else np.zeros(size, np.int64)
    return ids.astype(np.uint16)


def _output_paths(path: Path, out: Path) -> list[Path]:
    return [out / f"{output_name(path)}{suffix}" for suffix in OUTPUT_SUFFIXES]


def _save_ids(ids: np.ndarray, path: Path) -> Path:
    """A 16-bit grey PNG (OpenCV picks the format by extension: the temporary file has none, so encode first)."""
    ok, encoded = cv2.imencode(".png", ids)
    if not ok:
        raise ValueError(f"could not encode the instance ids of {path} as a PNG")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))


def _predict_one(
    model: nn.Module, path: Path, out: Path, info: Mapping, device: torch.device | str, score_threshold: float
) -> Path:
    """Detects the instances of one image file and writes its three outputs; returns the JSON's path."""
    picture_path, ids_path, json_path = _output_paths(path, out)
    display, x = prepare_image(path, info, model.encoder.in_channels)
    found = detect(model, x, device=device)
    size = display.shape[:2]
    classes = list(info.get("classes") or [])
    save_png(draw_instances(display, found, classes, score_threshold=score_threshold), picture_path)
    _save_ids(instance_id_map(found, size, score_threshold=score_threshold), ids_path)
    record = instances_json(found, classes, image=path.name, size=size, score_threshold=score_threshold)
    text = json.dumps(record, indent=2) + "\n"
    return atomic_write(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def predict_instance_files(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    info: Mapping,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.5,
    progress: bool | None = None,
    skip_existing: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Writes, for each input image ``<name>``, ``out/<name>_instances.png`` (the instances drawn over it),
    ``out/<name>_ids.png`` (16-bit instance ids, ``instance_id_map``) and ``out/<name>.json``
    (``instances_json``).

    Args:
        model: a :class:`~segforge.instances.model.MaskRCNN`; it is moved to ``device`` and put in eval mode.
        inputs: image files, folders (their images) and glob patterns (``segforge.inference.inputs``).
        out: the output folder (created if missing).
        info: the checkpoint's ``info``: ``mean`` and ``std`` normalise the images, ``classes`` names the
            labels (background first).
        device: where the network runs.
        score_threshold: instances scoring less are left out of every output.
        progress: show a progress bar (default: when stderr is a terminal).
        skip_existing: leave alone an input whose three outputs all exist.
        shard: ``(rank, processes)``: this process's share of the inputs (``segforge.inference.files.shard_of``).

    Returns:
        The JSON files written, in input order (skipped inputs left out).

    Raises:
        ValueError: a missing or unreadable image, an image the model cannot take (naming the file), two inputs
            with one output name, an output that is an input, or an ``out`` that cannot be a folder.
    """
    out = check_output_folder(out)
    paths = expand_inputs(inputs)
    check_outputs(paths, out, OUTPUT_SUFFIXES)  # before any work: clashing names, outputs overwriting inputs
    paths = shard_of(paths, shard)
    model = model.to(device).eval()
    written = []
    quiet = None if progress is None else not progress  # tqdm's None: no bar when stderr is not a terminal
    for path in tqdm(paths, desc="predict", unit="image", disable=quiet):
        if skip_existing and all(target.exists() for target in _output_paths(path, out)):
            continue
        written.append(_predict_one(model, path, out, info, device, score_threshold))
    return written
