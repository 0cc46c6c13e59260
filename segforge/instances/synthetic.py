"""Built-in instance data: objects that touch and overlap, so that only an instance map can tell them apart.

Why this data set exists: in a semantic mask two objects of one class that touch are one blob, so a
semantic model can neither count them nor box them. Every image here holds ``touching_pairs`` clusters
of 2 or 3 objects of one class, each object placed to overlap or abut the one before it, and a few
other objects of any class; groups are painted in a random order and later objects occlude earlier
ones, so an instance is what remains visible of its object (possibly in several pieces).

Class k >= 1 is a shape (ellipse, square, blob, then again) with a colour from
``segforge.data.synthetic.class_signatures``; class 0 is the background. Each object gets its own shade
of its class colour, a dome-like shading that darkens towards its outline, and its own texture
strength, on a textured background under a smooth illumination field and per-pixel noise. Touching
objects of one class are told apart by the shading seams between them, not by colour.

The guarantee, checked on every image: at least ``touching_pairs`` pairs of same-class instances whose
visible masks are 4-adjacent (``touching_pairs_of`` lists them), and every instance at least ``min_area``
pixels. A draw that misses is redrawn from the same generator, so each image is still a pure function of
``(seed, index)``, whatever was generated before it and in any process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np
from PIL import Image

from segforge.data.base import default_palette
from segforge.data.synthetic import class_signatures
from segforge.plots import save_index_png

SHAPES = ("ellipse", "square", "blob")
#: draws tried per image before giving up (an image far too small for the clusters asked for)
MAX_DRAWS = 200
MIN_SIZE = 24


class InstanceSample(NamedTuple):
    """One generated image: ``image (H, W, 3) uint8``, ``instances (H, W) int32`` (0 = background,
    1..K) and ``classes (K,) int64`` (the class, 1..num_classes-1, of instance ``k`` at ``classes[k - 1]``)."""

    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray


class _Object(NamedTuple):
    label: int
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float
    wobble: float


def synthetic_instance_classes(num_classes: int) -> list[str]:
    """``["background", "ellipse", "square", "blob", "ellipse_2", ...]``: ``num_classes`` names, background first."""
    return ["background"] + [
        SHAPES[(k - 1) % 3] + ("" if k <= 3 else f"_{(k - 1) // 3 + 1}") for k in range(1, num_classes)
    ]


def touching_pairs_of(instances: np.ndarray, classes: np.ndarray) -> list[tuple[int, int]]:
    """The pairs ``(a, b)``, ``a < b``, of instances of one class whose masks are 4-adjacent.

    Args:
        instances: ``(H, W)`` integer instance ids, 0 = background.
        classes: ``(K,)`` class of each instance id 1..K.

    Returns:
        Sorted list of id pairs.
    """
    a = np.concatenate([instances[:, :-1].ravel(), instances[:-1, :].ravel()])
    b = np.concatenate([instances[:, 1:].ravel(), instances[1:, :].ravel()])
    keep = (a != b) & (a > 0) & (b > 0)
    if not keep.any():
        return []
    pairs = np.unique(np.sort(np.stack([a[keep], b[keep]], axis=1), axis=1), axis=0)
    classes = np.asarray(classes)
    same = classes[pairs[:, 0] - 1] == classes[pairs[:, 1] - 1]
    return [(int(i), int(j)) for i, j in pairs[same]]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """``(H, W, channels)`` smooth noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1, channels)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, channels)


def _level(obj: _Object, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """0 at the object's centre, 1 on its outline (inside is ``< 1``); ``dy``, ``dx`` are pixel positions."""
    dy, dx = dy - obj.cy, dx - obj.cx
    u = dx * np.cos(obj.angle) + dy * np.sin(obj.angle)
    v = -dx * np.sin(obj.angle) + dy * np.cos(obj.angle)
    kind = SHAPES[(obj.label - 1) % len(SHAPES)]
    if kind == "ellipse":
        return (u / obj.radius) ** 2 + (v / (obj.radius * obj.aspect)) ** 2
    if kind == "square":
        return (np.maximum(np.abs(u), np.abs(v)) / (0.85 * obj.radius)) ** 2
    theta = np.arctan2(v, u)  # a blob: a disk whose radius wobbles with the angle
    edge = obj.radius * (1 + 0.22 * np.sin(3 * theta + obj.wobble) + 0.08 * np.sin(5 * theta + 2 * obj.wobble))
    return (u**2 + v**2) / edge**2


def _new_object(rng: np.random.Generator, label: int, cy: float, cx: float, radius: float) -> _Object:
    return _Object(label, cy, cx, radius, rng.uniform(0, np.pi), rng.uniform(0.55, 0.9), rng.uniform(0, 2 * np.pi))


def _draw_objects(
    rng: np.random.Generator, height: int, width: int, num_classes: int, touching_pairs: int, max_extra: int
) -> list[_Object]:
    """The objects of one draw, in painting order: clusters of one class, and single objects of any."""
    base = min(height, width)
    groups: list[list[_Object]] = []
    for _ in range(touching_pairs):
        label = int(rng.integers(1, num_classes))
        radius = rng.uniform(0.1, 0.17) * base
        cluster = [
            _new_object(rng, label, rng.uniform(radius, height - radius), rng.uniform(radius, width - radius), radius)
        ]
        for _ in range(int(rng.integers(1, 3))):
            previous, radius = cluster[-1], rng.uniform(0.1, 0.17) * base
            # closer than the sum of the radii: the new object overlaps the last one (or just meets it)
            distance = (previous.radius + radius) * rng.uniform(0.5, 0.95)
            direction = rng.uniform(0, 2 * np.pi)
            cy = float(np.clip(previous.cy + distance * np.sin(direction), 0, height - 1))
            cx = float(np.clip(previous.cx + distance * np.cos(direction), 0, width - 1))
            cluster.append(_new_object(rng, label, cy, cx, radius))
        groups.append(cluster)
    for _ in range(int(rng.integers(0, max_extra + 1))):
        radius = rng.uniform(0.08, 0.15) * base
        groups.append(
            [_new_object(rng, int(rng.integers(1, num_classes)), rng.uniform(0, height), rng.uniform(0, width), radius)]
        )
    return [obj for i in rng.permutation(len(groups)) for obj in groups[i]]


def _paint(objects: Sequence[_Object], dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    instances = np.zeros(dy.shape, dtype=np.int32)
    for k, obj in enumerate(objects, start=1):
        instances[_level(obj, dy, dx) <= 1] = k
    return instances


def _check_arguments(
    size: int | Sequence[int], num_classes: int, touching_pairs: int, min_area: int
) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(
            f"synthetic instance images must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {height}x{width}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too: it must be >= 2, got {num_classes}")
    if touching_pairs < 0 or min_area < 1:
        raise ValueError(f"need touching_pairs >= 0 and min_area >= 1, got {touching_pairs} and {min_area}")
    return height, width


def synthetic_instance_sample(
    index: int,
    *,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    seed: int = 0,
    touching_pairs: int = 2,
    max_extra: int = 3,
    min_area: int = 8,
    noise: float = 0.05,
) -> InstanceSample:
    """One image with touching and overlapping instances, a pure function of ``(seed, index)``.

    Args:
        index: sample number (>= 0).
        size: side, or ``(height, width)``; at least 24.
        num_classes: classes including the background (>= 2): instances are of classes 1..num_classes-1.
        seed: picks the data set.
        touching_pairs: the image holds at least this many pairs of same-class instances whose masks
            are 4-adjacent (one per cluster; a cluster of 3 may add more).
        max_extra: up to this many more objects, of any class, placed anywhere.
        min_area: every instance has at least this many visible pixels (objects hidden more are left out).
        noise: standard deviation of the per-pixel noise, in [0, 1] units.

    Returns:
        ``InstanceSample(image (H, W, 3) uint8, instances (H, W) int32, classes (K,) int64)``.

    Raises:
        ValueError: an image smaller than 24x24, num_classes < 2, or an image too small for the clusters
            asked for (no draw of ``MAX_DRAWS`` kept the touching pairs visible).
    """
    height, width = _check_arguments(size, num_classes, touching_pairs, min_area)
    rng = np.random.default_rng([seed, index])
    dy, dx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(MAX_DRAWS):
        objects = _draw_objects(rng, height, width, num_classes, touching_pairs, max_extra)
        areas = np.bincount(_paint(objects, dy, dx).ravel(), minlength=len(objects) + 1)[1:]
        # leaving a hidden object out only uncovers what lies beneath, so the rest stay >= min_area
        objects = [obj for obj, area in zip(objects, areas) if area >= min_area]
        instances = _paint(objects, dy, dx)
        classes = np.asarray([obj.label for obj in objects], dtype=np.int64)
        if len(touching_pairs_of(instances, classes)) >= touching_pairs:
            break
    else:
        raise ValueError(
            f"no draw of {MAX_DRAWS} kept {touching_pairs} touching pairs visible in a {height}x{width} image; "
            "ask for fewer touching_pairs or a larger size"
        )
    return InstanceSample(_render(rng, instances, objects, num_classes, noise, dy, dx), instances, classes)


def _render(
    rng: np.random.Generator,
    instances: np.ndarray,
    objects: Sequence[_Object],
    num_classes: int,
    noise: float,
    dy: np.ndarray,
    dx: np.ndarray,
) -> np.ndarray:
    """The RGB image of an instance map: textured background, shaded and textured objects, illumination, noise."""
    height, width = instances.shape
    base = min(height, width)
    colours = class_signatures(num_classes, 3)
    image = colours[0] + 0.15 * _smooth_noise(rng, height, width, max(2, base // 8), 3).astype(np.float64)
    texture = _smooth_noise(rng, height, width, max(2, base // 4), 3)
    for k, obj in enumerate(objects, start=1):
        where = instances == k
        shade = 1 - 0.35 * np.clip(_level(obj, dy[where], dx[where]), 0, 1)
        colour = colours[obj.label] + rng.normal(0, 0.05, size=3)  # each object its own shade of the class colour
        image[where] = colour * shade[:, None] + rng.uniform(-0.12, 0.12) * texture[where]
    image += 0.08 * _smooth_noise(rng, height, width, 2, 1)  # illumination, over objects and background alike
    image += rng.normal(0, noise, size=image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_synthetic_instance_dataset(
    root: str | Path,
    *,
    num_train: int = 16,
    num_val: int = 4,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    seed: int = 0,
    touching_pairs: int = 2,
    class_source: Literal["json", "png"] = "json",
) -> Path:
    """Writes synthetic instance data in the folder layout that ``segforge.instances.folder.InstanceFolderDataset``
    reads.

    Writes ``root/images/0000.png`` (RGB), ``root/instances/0000.png`` (16-bit grey: the instance id),
    the class of each instance (``class_source="json"``: ``root/instances.json``, ``{"0000": {"1": 2, ...}}``;
    ``"png"``: ``root/classes/0000.png``, palette PNGs of class ids), ``train.txt``, ``val.txt`` and
    ``classes.txt`` (background first).

    Args:
        root: the folder to write (created).
        num_train, num_val: samples of each split; samples are numbered on across the two.
        size, num_classes, seed, touching_pairs: see ``synthetic_instance_sample``.
        class_source: how instance classes are stored.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: a bad argument (see ``synthetic_instance_sample``) or an unknown ``class_source``.
    """
    if class_source not in ("json", "png"):
        raise ValueError(f"class_source must be 'json' or 'png', got {class_source!r}")
    root = Path(root)
    folders = ("images", "instances") + (("classes",) if class_source == "png" else ())
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    palette = default_palette(num_classes)
    names = [f"{i:04d}" for i in range(num_train + num_val)]
    table: dict[str, dict[str, int]] = {}
    for index, name in enumerate(names):
        sample = synthetic_instance_sample(
            index, size=size, num_classes=num_classes, seed=seed, touching_pairs=touching_pairs
        )
        Image.fromarray(sample.image).save(root / "images" / f"{name}.png")
        Image.fromarray(sample.instances.astype(np.uint16)).save(root / "instances" / f"{name}.png")
        if class_source == "png":
            class_map = np.concatenate([[0], sample.classes])[sample.instances]
            save_index_png(class_map, palette, root / "classes" / f"{name}.png")
        table[name] = {str(k): int(c) for k, c in enumerate(sample.classes, start=1)}
    if class_source == "json":
        (root / "instances.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    (root / "train.txt").write_text("".join(f"{n}\n" for n in names[:num_train]), encoding="utf-8")
    (root / "val.txt").write_text("".join(f"{n}\n" for n in names[num_train:]), encoding="utf-8")
    (root / "classes.txt").write_text(
        "".join(f"{c}\n" for c in synthetic_instance_classes(num_classes)), encoding="utf-8"
    )
    return root
