"""PASTIS (Garnot & Landrieu, ICCV 2021), read as it is distributed.

``DATA_S2/S2_<id>.npy`` (T x 10 x 128 x 128 Sentinel-2 series), ``ANNOTATIONS/TARGET_<id>.npy`` (its first
channel: 20 classes, 19 = void, ignored) and ``metadata.geojson`` (each patch's ``ID_PATCH``, ``Fold`` and
``dates-S2``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from segforge.data.io import DatasetError
from segforge.data.registry import DATASETS
from segforge.data.series import SeriesDataset, SeriesItem, day_reference, parse_day

PASTIS_CLASSES = (
    "Background",
    "Meadow",
    "Soft winter wheat",
    "Corn",
    "Winter barley",
    "Winter rapeseed",
    "Spring barley",
    "Sunflower",
    "Grapevine",
    "Beet",
    "Winter triticale",
    "Winter durum wheat",
    "Fruits, vegetables, flowers",
    "Potatoes",
    "Leguminous fodder",
    "Soybeans",
    "Orchard",
    "Mixed cereal",
    "Sorghum",
    "Void label",
)
PASTIS_VOID = 19

#: PASTIS's official 5 folds; ``train``/``val``/``test`` are U-TAE's first fold configuration
PASTIS_SPLITS = {"train": (1, 2, 3), "val": (4,), "test": (5,), **{f"fold{k}": (k,) for k in range(1, 6)}}


@DATASETS.register("pastis")
class PastisDataset(SeriesDataset):
    """PASTIS as distributed (module docstring); ``split``: ``train`` (folds 1-3), ``val`` (4), ``test`` (5),
    ``fold1`` ... ``fold5``, or ``all``.

    Raises:
        DatasetError: a missing file or folder, an unknown split, metadata without the fields PASTIS has.
    """

    layout = "pastis"
    expects = "metadata.geojson, DATA_S2/S2_<id>.npy and ANNOTATIONS/TARGET_<id>.npy (PASTIS as distributed)"

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform=None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        metadata = root / "metadata.geojson"
        if not metadata.is_file():
            raise DatasetError(
                f"{metadata} does not exist; pass the PASTIS folder (metadata.geojson, DATA_S2/, ANNOTATIONS/)",
                path=metadata,
                kind="missing",
            )
        split = split or "all"
        if split != "all" and split not in PASTIS_SPLITS:
            raise DatasetError(f"PASTIS has no split {split!r}; choose from {['all', *PASTIS_SPLITS]}", kind="missing")
        try:
            features = json.loads(metadata.read_text(encoding="utf-8"))["features"]
            patches = [
                (str(f["properties"]["ID_PATCH"]), int(f["properties"]["Fold"]), f["properties"]["dates-S2"])
                for f in features
            ]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(
                f"cannot read PASTIS metadata {metadata}: {err!r}; each feature needs ID_PATCH, Fold and dates-S2",
                path=metadata,
                kind="unreadable",
            ) from None
        folds = range(1, 6) if split == "all" else PASTIS_SPLITS[split]
        every_day, items = [], []
        for patch, fold, dates in patches:
            dates = json.loads(dates) if isinstance(dates, str) else dates
            days = tuple(parse_day(dates[key]) for key in sorted(dates, key=int))
            every_day += days
            if fold in folds:
                source, target = root / "DATA_S2" / f"S2_{patch}.npy", root / "ANNOTATIONS" / f"TARGET_{patch}.npy"
                items.append(SeriesItem(source, target, days))
        super().__init__(
            items,
            classes=PASTIS_CLASSES,
            ignore_index=PASTIS_VOID,
            mean=mean,
            std=std,
            transform=transform,
            reference=day_reference(every_day),
        )

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "metadata.geojson").is_file() and (root / "DATA_S2").is_dir()

    @staticmethod
    def splits(root: Path) -> list[str]:
        return list(PASTIS_SPLITS)
