"""Which samples train and which validate, when the dataset does not say.

A dataset with split lists or split folders (``train``/``val``) is used as it is. Without them,
``holdout`` draws a seeded share of the training split for validation, and ``write_split_list``
records both parts in the run folder (``splits/train.txt``, ``splits/val.txt``): one sample name per
line under a header that names the split they come from. ``create_dataset`` accepts such a file as
a split (``--split runs/x/splits/val.txt``), so ``segforge evaluate`` and ``--resume`` see exactly
the images the run held out, even if files were added to the folder since.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segforge.data.base import SegmentationDataset
from segforge.data.io import DatasetError
from segforge.files import atomic_write

_HEADER = "# split: "
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "validation", "valid")


def default_splits(layout_splits: Sequence[str], *, every_pair: bool) -> tuple[str, str | None]:
    """``(train split, val split)`` of a layout that has these named splits; the val split is None when
    there is none to use (the caller holds out a share of the training split instead).

    Args:
        every_pair: the layout can name every sample with ``"all"`` (the plain folder).

    Raises:
        ValueError: no training split and no ``"all"`` (the message lists the splits found).
    """
    train = next((name for name in TRAIN_NAMES if name in layout_splits), None)
    if train is None:
        if not every_pair:
            raise ValueError(
                f"the dataset has no training split (splits found: {list(layout_splits)}); name one with --train-split"
            )
        train = "all"
    val = next((name for name in VAL_NAMES if name in layout_splits), None)
    return train, val


def holdout(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded ``(train indices, val indices)`` of ``count`` samples: ``round(fraction * count)`` held out,
    at least one, and at least one left to train on; both lists in dataset order.

    Raises:
        ValueError: fewer than two samples, or ``fraction`` outside (0, 1).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    if count < 2:
        raise ValueError(
            f"cannot hold out a validation image from {count} labelled image(s): add images, or train "
            "without validation (--val-split none; the last checkpoint is then the result)"
        )
    size = min(max(1, round(fraction * count)), count - 1)
    chosen = np.random.default_rng(seed).permutation(count)[:size]
    held = set(chosen.tolist())
    return [i for i in range(count) if i not in held], sorted(held)


def write_split_list(
    path: Path, dataset: SegmentationDataset, indices: Sequence[int], *, split: str, note: str
) -> Path:
    """Writes the names of ``dataset``'s samples ``indices`` under a header naming their ``split``."""
    lines = [f"# {note}", f"{_HEADER}{split}", *(dataset.sample_name(i) for i in indices)]
    if any("\n" in name or "\r" in name for name in lines[2:]):
        raise ValueError("a sample name holds a line break, which a split list cannot record: rename the file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))


def read_split_file(path: Path) -> tuple[str | None, list[str]]:
    """``(the split the names come from, or None, the names)`` of a split list file.

    Raises:
        DatasetError: the file cannot be read or names nothing.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read split list {path}: {err}", path=path, kind="unreadable") from None
    split = next((line[len(_HEADER) :].strip() for line in lines if line.startswith(_HEADER)), None)
    # One name per line, whole: file names may hold spaces or begin with "#"; comments begin with "# ".
    names = [line for line in lines if line.strip() and not (line.startswith("# ") or line.strip() == "#")]
    if not names:
        raise DatasetError(
            f"split list {path} names no samples; write one image name (file stem) per line", path=path, kind="missing"
        )
    return split, names
