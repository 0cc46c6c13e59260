"""Pairing images with masks (and region masks) by file name.

A mask pairs with the image of the same file stem (``a.jpg`` ↔ ``a.png``). Datasets are often
distributed with names that differ by a fixed prefix or suffix per folder (``21_training.tif`` ↔
``21_manual1.gif`` ↔ ``21_training_mask.gif``); when stems leave files unpaired, each folder is keyed
by the part of its names that differs, and that pairing is used if it pairs more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segforge.data.io import DatasetError


def stems(paths: Sequence[Path]) -> dict[str, Path]:
    """Maps file stem to path, refusing two files with the same stem (``a.png`` and ``a.jpg``)."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise DatasetError(
                f"{found[path.stem]} and {path} share the stem {path.stem!r}, so the mask pairing is "
                "ambiguous; remove or rename one of them",
                path=path,
                kind="layout",
            )
        found[path.stem] = path
    return found


def differing_parts(paths: Sequence[Path]) -> dict[str, Path] | None:
    """Keys the files by the part of their stems that differs: ``21_training``, ``22_training`` → ``21``, ``22``.

    The longest prefix and suffix that every stem shares are dropped, never cutting into a number
    (``10``, ``11`` share the prefix ``1``, which stays). Returns None when fewer than two files
    are given or the keys are not unique and non-empty.
    """
    names = [p.stem for p in paths]
    if len(names) < 2:
        return None
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    while prefix and prefix[-1].isdigit():
        prefix = prefix[:-1]
    while suffix and suffix[0].isdigit():
        suffix = suffix[1:]
    if len(prefix) + len(suffix) >= min(map(len, names)):
        return None
    keys = [n[len(prefix) : len(n) - len(suffix)] for n in names]
    return dict(zip(keys, paths, strict=True)) if len(set(keys)) == len(keys) else None


def pair_files(images: Sequence[Path], masks: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Matches images and masks by stem; failing that, by the part of their stems that differs.

    ``a.jpg`` pairs with ``a.png``. When some files are left unpaired and keying each folder by
    ``differing_parts`` pairs more of them (``21_training.tif`` with ``21_manual1.gif``), that
    pairing is used instead (``pairing_note`` says so).

    Returns:
        ``(pairs, images without a mask, masks without an image)``, pairs in image order.
    """
    by_stem = stems(masks)
    stems(images)  # refuses duplicate image stems
    pairs = [(image, by_stem[image.stem]) for image in images if image.stem in by_stem]
    if len(pairs) < min(len(images), len(masks)):
        image_keys, mask_keys = differing_parts(images), differing_parts(masks)
        if image_keys is not None and mask_keys is not None:
            keyed = [(image, mask_keys[key]) for key, image in image_keys.items() if key in mask_keys]  # image order
            if len(keyed) > len(pairs):
                pairs = keyed
    paired_images, paired_masks = {i for i, _ in pairs}, {m for _, m in pairs}
    return pairs, [i for i in images if i not in paired_images], [m for m in masks if m not in paired_masks]


def pairing_note(pairs: Sequence[tuple[Path, Path]]) -> str | None:
    """A line for the log when files were paired by the differing part of their names, else None."""
    renamed = [(i, m) for i, m in pairs if i.stem != m.stem]
    if not renamed:
        return None
    image, mask = renamed[0]
    return (
        f"files paired by the part of their names that differs, e.g. {image.name} <-> {mask.name} "
        f"({len(renamed)} of {len(pairs)} pairs)"
    )
