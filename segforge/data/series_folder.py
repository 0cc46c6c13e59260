"""The series layout: image time series in plain folders.

::

    root/
      series/   a.npy  b.tif  c/            (one per sample: a T x C x H x W array, a multi-page TIFF
                                             of T dates, or a folder of one image per date)
      masks/    a.png  b.png  c.png         (class index per pixel, matched by name)
      dates.csv                             (optional: series,date[,valid] - one row per date, in order)
      train.txt val.txt classes.txt         (optional, as in the folder layout)

A ``dates.csv`` row names the series (its file or folder stem), the acquisition date (``2024-05-17``,
``20240517``, or a day number) and optionally ``valid`` (0 for a cloud-covered or missing date). In a
folder of dates the file names may be the dates themselves (``2024-05-17.tif``). Without dates the
acquisitions count as days 0, 1, 2, ...
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segforge.data.folder import class_names
from segforge.data.io import DatasetError, list_images
from segforge.data.registry import DATASETS
from segforge.data.series import (
    SERIES_DIR,
    SERIES_EXTENSIONS,
    SeriesDataset,
    SeriesItem,
    date_names,
    day_reference,
    read_dates_csv,
    series_sources,
)


def _read_names(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.split()]


def _split_names(root: Path, split: str | None) -> list[str] | None:
    """The series names of ``split`` (a list ``root/<split>.txt``), or None for every series."""
    if split is None or split == "all":
        return None
    listed = root / f"{split}.txt"
    if not listed.is_file():
        found = sorted(p.stem for p in root.glob("*.txt") if p.stem not in ("classes", "README", "readme"))
        raise DatasetError(
            f"split {split!r} has no list {listed} (splits found: {', '.join(found) or 'none'}); write one series "
            "name per line, or name every series with the split 'all'",
            path=listed,
            kind="missing",
        )
    return [Path(name).stem if Path(name).suffix.lower() in SERIES_EXTENSIONS else name for name in _read_names(listed)]


@DATASETS.register("series")
class SeriesFolderDataset(SeriesDataset):
    """The series layout (module docstring): ``root/series/``, ``root/masks/``, ``root/dates.csv``.

    Args:
        root: the dataset folder.
        split: None or ``"all"`` for every series; else a list ``root/<split>.txt`` of series names.
        classes, num_classes, ignore_index: as the folder layout takes them (``classes.txt`` is read).
        mean, std, transform: see ``SeriesDataset``.

    Raises:
        DatasetError: a missing folder or split list, a series without a mask, dates that do not parse.
    """

    layout = "series"
    expects = "series/ (a T x C x H x W .npy, multi-page TIFF or folder of dates per sample) and masks/"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform=None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        series_dir, masks_dir = root / SERIES_DIR, root / "masks"
        wanted = ((series_dir, "series (one .npy/.tif file or folder of dates per sample)"), (masks_dir, "masks"))
        for folder, what in wanted:
            if not folder.is_dir():
                raise DatasetError(f"folder {folder} does not exist; put the {what} there", path=folder, kind="missing")
        sources = {path.stem if path.is_file() else path.name: path for path in series_sources(series_dir)}
        masks = {path.stem: path for path in list_images(masks_dir)}
        masks |= {path.stem: path for path in masks_dir.glob("*.npy")}
        names = _split_names(root, split) or list(sources)
        missing = [name for name in names if name not in sources]
        if missing:
            raise DatasetError(
                f"{len(missing)} series named in split {split!r} are not in {series_dir}, e.g. "
                f"{', '.join(missing[:3])}",
                path=series_dir,
                kind="missing",
            )
        unmasked = [name for name in names if name not in masks]
        if unmasked:
            raise DatasetError(
                f"{len(unmasked)} series have no mask in {masks_dir} (e.g. {', '.join(unmasked[:3])}); add one "
                "per series, named like it",
                path=sources[unmasked[0]],
                kind="unpaired",
            )
        table = read_dates_csv(root / "dates.csv") if (root / "dates.csv").is_file() else {}
        items = []
        for name in names:
            days, valid = table.get(name, (None, None))
            if days is None and sources[name].is_dir():
                days = date_names(sources[name])
            items.append(SeriesItem(sources[name], masks[name], _tuple(days), _tuple(valid)))
        every_day = [day for days, _ in table.values() for day in days] + [d for item in items for d in item.days or ()]
        classes = class_names(root, classes, num_classes)
        super().__init__(
            items,
            classes=classes or [],
            ignore_index=ignore_index,
            mean=mean,
            std=std,
            transform=transform,
            reference=day_reference(every_day),
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / SERIES_DIR).is_dir() and (root / "masks").is_dir()

    @staticmethod
    def splits(root: Path) -> list[str]:
        return sorted(p.stem for p in root.glob("*.txt") if p.stem not in ("classes", "README", "readme"))


def _tuple(values: list | None) -> tuple | None:
    return None if values is None else tuple(values)


def write_synthetic_series_dataset(
    root: str | Path,
    *,
    num_train: int = 16,
    num_val: int = 4,
    size: int | Sequence[int] = 64,
    num_classes: int = 4,
    channels: int = 4,
    seed: int = 0,
    dates: tuple[int, int] = (8, 16),
    cloud_rate: float = 0.2,
    year: int = 2024,
) -> Path:
    """Writes ``segforge.data.synthetic_series`` samples in the series layout: ``series/NNNN.npy``
    (T x C x H x W float32), ``masks/NNNN.png``, ``dates.csv`` (the dates of ``year``, clouded ones invalid),
    ``train.txt``, ``val.txt`` and ``classes.txt``."""
    from segforge.data.base import default_palette
    from segforge.data.synthetic_series import synthetic_series
    from segforge.plots import save_index_png

    root = Path(root)
    (root / SERIES_DIR).mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    names = [f"{i:04d}" for i in range(num_train + num_val)]
    first = dt.date(year, 1, 1)
    rows = ["series,date,valid"]
    for index, name in enumerate(names):
        sample = synthetic_series(
            index, size=size, num_classes=num_classes, channels=channels, seed=seed, dates=dates, cloud_rate=cloud_rate
        )
        np.save(root / SERIES_DIR / f"{name}.npy", sample.images)
        save_index_png(sample.mask, default_palette(num_classes), root / "masks" / f"{name}.png")
        rows += [f"{name},{first + dt.timedelta(days=int(d))},{int(v)}" for d, v in zip(sample.days, sample.valid)]
    (root / "dates.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "train.txt").write_text("".join(f"{n}\n" for n in names[:num_train]), encoding="utf-8")
    (root / "val.txt").write_text("".join(f"{n}\n" for n in names[num_train:]), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"season_peak_{k}\n" for k in range(num_classes)), encoding="utf-8")
    return root
