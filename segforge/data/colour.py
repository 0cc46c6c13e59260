"""Colour-coded masks: a user's RGB → class mapping, loaded from YAML/JSON and applied without loops.

Accepted mapping files (YAML or JSON; class index = order of appearance)::

    road: [128, 64, 128]          # name: colour
    sky: "#4682b4"                # hex works too
    car: [[0, 0, 142], [0, 0, 143]]   # several colours for one class

    # or a list:  [["road", [128, 64, 128]], {"name": "sky", "colour": [70, 130, 180]}]
    # or with colours that mean "ignore these pixels":
    classes: {road: [128, 64, 128], sky: [70, 130, 180]}
    ignore: [[0, 0, 0]]
    ignore_index: 255             # default 255

On the command line the same mapping can be given inline: ``--palette "road=128,64,128;sky=70,130,180"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segforge.data.errors import DatasetError


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours → ``(...)`` uint32 keys ``r << 16 | g << 8 | b``."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2].astype(np.uint32)


def unpack_rgb(key: int) -> tuple[int, int, int]:
    """A ``pack_rgb`` key → ``(r, g, b)``."""
    return (int(key) >> 16, (int(key) >> 8) & 255, int(key) & 255)


@dataclass(frozen=True)
class ColourMap:
    """Which RGB colour is which class.

    Attributes:
        classes: class names; class ``i`` is ``classes[i]``.
        colours: ``(K, 3)`` uint8, every colour of the mapping (K >= number of classes).
        labels: ``(K,)`` int64, the class index of each colour, or ``ignore_index``.
        ignore_index: the label of the ``ignore`` colours (None when there are none).
        source: where the mapping came from, for error messages.
    """

    classes: tuple[str, ...]
    colours: np.ndarray
    labels: np.ndarray
    ignore_index: int | None = None
    source: str = "the palette mapping"

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """The first colour of each class, in class order (for drawing predictions)."""
        first = {}
        for colour, label in zip(self.colours.tolist(), self.labels.tolist(), strict=True):
            first.setdefault(label, tuple(colour))
        return [first[i] for i in range(len(self.classes))]

    def to_index(self, rgb: np.ndarray, *, path: Path | str = "<array>") -> np.ndarray:
        """Maps an RGB mask to class indices.

        Args:
            rgb: ``(H, W, 3)`` uint8.
            path: the mask's file, named in the error.

        Returns:
            ``(H, W)`` int64 class indices (``ignore_index`` for ignore colours).

        Raises:
            DatasetError: the mask holds colours that are not in the mapping; the message lists them
                with their pixel counts.
        """
        keys = pack_rgb(rgb)
        table = pack_rgb(self.colours)
        order = np.argsort(table)
        sorted_keys, sorted_labels = table[order], self.labels[order]
        position = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
        found = sorted_keys[position] == keys
        if not found.all():
            values, counts = np.unique(keys[~found], return_counts=True)
            top = np.argsort(-counts)[:8]
            listed = ", ".join(f"{unpack_rgb(values[i])} in {counts[i]} px" for i in top)
            raise DatasetError(
                f"mask {path} has {len(values)} colour(s) not in {self.source}: {listed}; add them to "
                "the mapping (as a class, or under 'ignore:'), or fix the mask",
                path=path,
                kind="unexpected_colour",
            )
        return sorted_labels[position]


def _parse_colour(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) == 6:
            try:
                return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
            except ValueError:
                pass
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"{where}: {value!r} is not a colour; write [r, g, b] with integers 0..255 or '#rrggbb'")


def _colours_of(value: Any, where: str) -> list[tuple[int, int, int]]:
    """One colour, or a list of colours."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple, str)) for v in value):
        return [_parse_colour(v, where) for v in value]
    return [_parse_colour(value, where)]


def _entries(data: Any, where: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        return [(str(name), colour) for name, colour in data.items()]
    if isinstance(data, list):
        entries = []
        for item in data:
            if isinstance(item, dict) and "name" in item:
                entries.append((str(item["name"]), item.get("colour", item.get("color"))))
            elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
                entries.append((item[0], item[1]))
            else:
                raise ValueError(f"{where}: entry {item!r} should be [name, [r, g, b]] or {{name: ..., colour: ...}}")
        return entries
    raise ValueError(f"{where}: expected a mapping of class name to colour, or a list of [name, colour]")


def colour_map_from_data(data: Any, *, source: str = "the palette mapping") -> ColourMap:
    """Builds a ``ColourMap`` from already-parsed YAML/JSON data (see the module docstring)."""
    ignore, ignore_index = [], None
    if isinstance(data, dict) and "classes" in data:
        ignore = [_parse_colour(c, f"{source}, ignore") for c in data.get("ignore") or []]
        ignore_index = int(data.get("ignore_index", 255)) if ignore else None
        data = data["classes"]
    classes, colours, labels = [], [], []
    for index, (name, value) in enumerate(_entries(data, source)):
        classes.append(name)
        for colour in _colours_of(value, f"{source}, class {name!r}"):
            colours.append(colour)
            labels.append(index)
    colours += ignore
    labels += [ignore_index] * len(ignore)
    if not classes:
        raise ValueError(f"{source} defines no classes; write one 'name: [r, g, b]' line per class")
    seen: dict[tuple[int, int, int], int] = {}
    for colour, label in zip(colours, labels, strict=True):
        if seen.setdefault(colour, label) != label:
            raise ValueError(f"{source}: colour {colour} is given to two classes; each colour must mean one class")
    return ColourMap(
        tuple(classes),
        np.array(colours, dtype=np.uint8).reshape(-1, 3),
        np.array(labels, dtype=np.int64),
        ignore_index,
        source,
    )


def parse_inline(text: str) -> ColourMap:
    """``"road=128,64,128;sky=70,130,180"`` → ``ColourMap`` (for the command line)."""
    data = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, colour = part.partition("=")
        try:
            data[name.strip()] = [int(v) for v in colour.split(",")]
        except ValueError:
            raise ValueError(f"palette {text!r}: {part!r} should be name=r,g,b") from None
    return colour_map_from_data(data, source=f"palette {text!r}")


def load_colour_map(source: str | Path) -> ColourMap:
    """Loads a colour mapping from a YAML or JSON file, or parses an inline ``name=r,g,b;...`` string.

    Raises:
        ValueError: the file is missing or unparsable, a colour is malformed, or one colour is given
            to two classes; the message names the file.
    """
    path = Path(source)
    if not path.is_file():
        if isinstance(source, str) and "=" in source:
            return parse_inline(source)
        raise DatasetError(
            f"palette mapping {path} does not exist; write a YAML file with one 'name: [r, g, b]' line per class",
            path=path,
            kind="missing",
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001  yaml and json raise their own error types
        raise DatasetError(f"cannot parse palette mapping {path}: {err}", path=path, kind="unreadable") from None
    return colour_map_from_data(data, source=str(path))
