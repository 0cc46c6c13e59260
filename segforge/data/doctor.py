"""The dataset doctor: read a dataset once, report what is in it and what would make training wrong.

``diagnose(root)`` detects the layout, counts every split, reads each image and mask of the
scanned splits once (on a thread pool), and returns a ``DoctorReport``: sizes, channels, the raw
label values and their pixel shares, per-class frequencies and median-frequency weights, and
``problems``, each with the fix. ``report.exit_code`` is 1 when a problem is an error (training
on the data as it is would be wrong or would crash), else 0. ``segforge doctor --data ...`` prints
``report.format()``.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from segforge.data.base import SegmentationDataset
from segforge.data.class_weights import ClassPixels
from segforge.data.colour import ColourMap
from segforge.data.io import DatasetError, map_files
from segforge.data.normalisation import image_moments
from segforge.data.registry import DATASETS, create_dataset, detect_layout

#: the fix for each kind of DatasetError, when the doctor reports a group of them; ``{palette}`` is a command
FIXES = {
    "missing": "restore the files or correct the path",
    "unreadable": "re-export the files (or remove them and their masks)",
    "unsupported": "convert the files to a supported mode (see the message)",
    "colour_mask": "write a palette file, one 'name: [r, g, b]' line per class, and pass it, e.g. `{palette}` "
    "(colour_map= in Python)",
    "unexpected_colour": "add the colours to the palette mapping (as classes, or under 'ignore:'), or repaint them",
    "label_range": "fix the masks, or the label map",
    "no_pairs": "name each mask like its image (a.jpg <-> a.png)",
    "unpaired": "add the missing files, or remove the unpaired ones",
    "layout": "rearrange the folder (see the message)",
}
_TRAIN_NAMES = ("train", "training")


@dataclass
class Problem:
    """One thing wrong with the data, and what to do about it."""

    severity: Literal["error", "warning"]
    message: str
    fix: str
    files: list[Path] = field(default_factory=list)


@dataclass
class SplitSummary:
    """What one split holds. Only scanned splits have sizes, values and pixels.

    Mask values are counted inside the valid region when the dataset has region masks, over the
    whole mask and over its top and left halves (``raw_top``, ``raw_left``), so that a recipe can
    tell whether the layout of the classes has an up and a down.
    """

    name: str
    samples: int
    scanned: bool = False
    labelled: int = 0
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    dates: Counter = field(default_factory=Counter)  # valid dates per sample -> samples (1 for images)
    channels: Counter = field(default_factory=Counter)  # (channels, dtype) -> images
    raw_values: dict[int, int] = field(default_factory=dict)  # raw mask value -> pixels
    raw_top: Counter = field(default_factory=Counter)  # raw mask value -> pixels in the masks' top halves
    raw_left: Counter = field(default_factory=Counter)  # ... in their left halves
    moments: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # per image, see image_moments
    max_value: float = 0.0  # the largest pixel value of the images, as stored
    pixels: ClassPixels | None = None
    labels_ok: bool = True  # False when the label values have an error (no weights then)


@dataclass
class DoctorReport:
    """The doctor's findings; ``format()`` is the text ``segforge doctor`` prints."""

    root: Path
    layout: str
    detected: bool
    classes: list[str]
    ignore_index: int | None
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    weights: np.ndarray | None = None
    weights_split: str | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    options: list[tuple[str, str]] = field(default_factory=list)  # the data flags the data was read with
    num_classes: int | None = None  # given, or inferred from the labels

    def command(self, name: str, *flags: str) -> str:
        """A ``segforge <name>`` command line on this data: its flags as given, ``flags`` added or replacing."""
        added = set(flags[::2])
        kept = [item for flag, value in self.options if flag not in added for item in (flag, value)]
        return shlex.join(["segforge", name, "--data", str(self.root), *kept, *flags])

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def exit_code(self) -> int:
        """1 when any problem is an error, else 0."""
        return 1 if self.errors else 0

    def format(self) -> str:
        """The report as text: layout, splits, label values, class table with weights, problems."""
        return _format(self)


@dataclass
class _Check:
    """What reading one sample found."""

    image_shape: tuple[int, ...] | None = None
    image_dtype: str = ""
    mask_shape: tuple[int, ...] | None = None
    values: np.ndarray | None = None  # raw mask values present (inside the valid region)
    counts: np.ndarray | None = None  # their pixels
    top: np.ndarray | None = None  # their pixels in the top half of the mask
    left: np.ndarray | None = None  # ... in the left half
    moments: tuple[int, np.ndarray, np.ndarray] | None = None  # image_moments of the image
    max_value: float = 0.0
    dates: int = 1  # the valid dates of a time series (1: an image)
    errors: list[DatasetError] = field(default_factory=list)


def _value_counts(raw: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """``(values, pixels, pixels in the top half, pixels in the left half)`` of a mask, inside ``region``."""
    low = min(int(raw.min()), 0) if raw.size else 0
    shifted = raw - low  # bincount takes no negative values (int16 TIFF masks)
    size = int(shifted.max()) + 1 if raw.size else 1

    def count(rows: slice, cols: slice) -> np.ndarray:
        part = shifted[rows, cols] if region is None else shifted[rows, cols][region[rows, cols]]
        return np.bincount(part.ravel(), minlength=size)

    every = slice(None)
    total = count(every, every)
    top, left = count(slice(0, raw.shape[0] // 2), every), count(every, slice(0, raw.shape[1] // 2))
    values = np.flatnonzero(total)
    return values + low, total[values], top[values], left[values]


def _inspect(dataset: SegmentationDataset, index: int) -> _Check:
    check = _Check()
    try:
        image = dataset.load_pixels(index)
        check.image_shape, check.image_dtype = image.shape[-3:], str(image.dtype)
        check.dates = image.shape[0] if image.ndim == 4 else 1
        check.moments, check.max_value = image_moments(image), float(image.max(initial=0))
    except DatasetError as err:
        check.errors.append(err)
    try:
        raw = dataset.load_raw_mask(index)
        if raw is not None:
            check.mask_shape = raw.shape
            region = None
            if dataset.region_masks is not None:
                region = dataset.load_region(index, check.image_shape[:2] if check.image_shape else raw.shape)
            if region is not None and region.shape != raw.shape:
                region = None  # the mask's own size is wrong: reported as a size mismatch
            check.values, check.counts, check.top, check.left = _value_counts(raw, region)
    except DatasetError as err:
        check.errors.append(err)
    return check


def _luminance(palette: Sequence[Sequence[int]]) -> set[int]:
    """Grey levels Pillow's ``convert("L")`` gives the palette colours (ITU-R 601-2 luma), ±1."""
    levels = {round((299 * r + 587 * g + 114 * b) / 1000) for r, g, b in palette}
    return {v + d for v in levels for d in (-1, 0, 1)}


def _scan(
    dataset: SegmentationDataset,
    summary: SplitSummary,
    report: DoctorReport,
    *,
    num_classes: int | None,
    workers: int | None,
    progress: bool | None,
) -> None:
    """Reads every sample of one split and appends its problems to the report."""
    tag = f"[{summary.name}] "
    checks = list(
        map_files(
            lambda i: _inspect(dataset, i),
            len(dataset),
            desc=f"doctor {summary.name}",
            workers=workers,
            progress=progress,
        )
    )
    summary.scanned = True
    by_kind: dict[str, list[DatasetError]] = {}
    mismatched, modes = [], {}
    for index, check in enumerate(checks):
        for err in check.errors:
            by_kind.setdefault(err.kind, []).append(err)
        if check.image_shape is not None:
            summary.sizes[(check.image_shape[1], check.image_shape[0])] += 1
            summary.channels[(check.image_shape[2], check.image_dtype)] += 1
            modes.setdefault((check.image_shape[2], check.image_dtype), Path(dataset.describe(index)))
            summary.dates[check.dates] += 1
        if (
            check.image_shape is not None
            and check.mask_shape is not None
            and tuple(check.image_shape[:2]) != tuple(check.mask_shape)
        ):
            mismatched.append(Path(dataset.mask_name(index)))
        if check.moments is not None:
            summary.moments.append(check.moments)
            summary.max_value = max(summary.max_value, check.max_value)
        if check.values is not None:
            summary.labelled += 1
            values = check.values.tolist()
            for value, count in zip(values, check.counts.tolist(), strict=True):
                summary.raw_values[value] = summary.raw_values.get(value, 0) + count
            summary.raw_top.update(dict(zip(values, check.top.tolist(), strict=True)))
            summary.raw_left.update(dict(zip(values, check.left.tolist(), strict=True)))
    for kind, errors in by_kind.items():
        files = [e.path for e in errors if e.path is not None]
        report.problems.append(
            Problem("error", f"{tag}{len(errors)} file(s) cannot be used: {errors[0]}", _fix(kind, report), files)
        )
    if mismatched:
        report.problems.append(
            Problem(
                "error",
                f"{tag}{len(mismatched)} mask(s) differ in size from their image",
                "re-export each mask at its image's size (resize masks with nearest-neighbour, never bilinear)",
                mismatched,
            )
        )
    if len(summary.channels) > 1:
        found = ", ".join(
            f"{c} x {d} in {n}, e.g. {modes[(c, d)].name}" for (c, d), n in sorted(summary.channels.items())
        )
        commonest = summary.channels.most_common(1)[0][0]
        report.problems.append(
            Problem(
                "error",
                f"{tag}images differ in channels or pixel type ({found}); a batch needs one",
                "convert all images to one mode (e.g. all RGB)",
                [path for mode, path in modes.items() if mode != commonest],
            )
        )
    if not summary.labelled:
        report.notes.append(f"{tag}no masks: only the images were checked")
        return
    _check_labels(dataset, summary, report, checks, num_classes=num_classes)


#: an inferred class count above this whose classes mostly never occur means the values are not class indices
SPARSE_CLASSES = 16


def _sparse_labels(
    report: DoctorReport, tag: str, present: list[int], num_classes: int, lossy: str, files: list[Path]
) -> None:
    """Masks whose values are not class indices (0/30000/60000, or a lossy JPEG's 0..255): inferring the
    class count from the largest would make thousands of classes that never occur."""
    mapping = ",".join(f"{value}={label}" for label, value in enumerate(present) if value != label)
    fix = (
        f"map each value to a class index on every command, e.g. `{report.command('train', '--label-map', mapping)}`"
        if len(present) <= 12 and mapping
        else "re-save the masks with class indices 0, 1, 2, ..."
    )
    report.problems.append(
        Problem(
            "error",
            f"{tag}the masks hold {len(present)} label value(s) ({', '.join(map(str, present[:8]))}"
            f"{', ...' if len(present) > 8 else ''}) but the "
            f"largest would make {num_classes} classes, {num_classes - len(present)} of which never occur: the "
            f"values are not class indices 0..K-1.{lossy}",
            fix,
            files[:3],
        )
    )


def _check_labels(
    dataset: SegmentationDataset,
    summary: SplitSummary,
    report: DoctorReport,
    checks: list[_Check],
    *,
    num_classes: int | None,
) -> None:
    """Label values: 0/255 binary masks, grey-converted colour masks, values out of range, absent classes."""
    tag = f"[{summary.name}] "
    binary_255 = _check_binary_255(dataset, summary, report, tag)
    jpeg = [Path(dataset.mask_name(i)) for i in range(len(checks))]
    jpeg = [path for path in jpeg if path.suffix.lower() in (".jpg", ".jpeg")]
    lossy = (
        " The masks are JPEG files: JPEG's lossy compression invents values at every edge between classes; "
        "save masks as PNG or TIFF."
        if jpeg
        else ""
    )
    if num_classes is None:
        num_classes, sparse = _infer_classes(dataset, summary, report, binary_255)
        if sparse is not None:
            _sparse_labels(report, tag, sparse, num_classes, lossy, jpeg)
            lossy = ""
    report.num_classes = num_classes
    counts = _count_labels(dataset, checks, num_classes, binary_255)
    summary.pixels = counts.pixels
    summary.labels_ok = not (binary_255 or counts.uncovered or counts.out_of_range)
    if counts.uncovered:
        report.problems.append(
            Problem(
                "error",
                f"{tag}mask values {_listing(counts.uncovered)} are not covered by the "
                f"{dataset.layout} label map (0..{len(dataset.label_map) - 1})",
                "these masks are not in this layout's encoding: fix or remove them",
                counts.uncovered_files,
            )
        )
    if counts.out_of_range:
        _report_out_of_range(dataset, report, tag, counts, num_classes, lossy)
    elif lossy:  # (said with the error otherwise)
        report.problems.append(Problem("warning", f"{tag}{lossy.strip()}", "re-save the masks losslessly", jpeg))
    absent = [
        dataset.classes[c] if c < len(dataset.classes) else str(c)
        for c in np.flatnonzero(counts.pixels.class_pixels == 0)
    ]
    if absent and not binary_255:  # with 0/255 masks class 1 is absent for that reason, already reported
        report.problems.append(
            Problem(
                "warning",
                f"{tag}{len(absent)} class(es) never occur: {', '.join(absent[:12])}"
                f"{', ...' if len(absent) > 12 else ''}",
                "check the class list and the masks; a class never seen in training cannot be "
                "learned (its median-frequency weight is set to 1)",
            )
        )


def _check_binary_255(dataset: SegmentationDataset, summary: SplitSummary, report: DoctorReport, tag: str) -> bool:
    """Whether the masks store a binary task as 0/255 with no label map to read them (an error, reported);
    a label map that reads 0/255 masks is noted."""
    raw, lut = summary.raw_values, dataset.label_map
    if set(raw) == {0, 255} and lut is None:
        report.problems.append(
            Problem(
                "error",
                f"{tag}masks store a binary task as 0 and 255: 255 is not class 1 (it is out of range, or "
                "silently ignored when 255 is the ignore index), so the foreground would never be learned",
                f"map 255 to 1 on every command, e.g. `{report.command('train', '--label-map', '255=1')}` "
                "(label_map={255: 1} in Python), or re-save the masks with values 0/1",
            )
        )
        return True
    if lut is not None and set(raw) <= {0, 255} and max(raw, default=0) < len(lut):
        mapped = ", ".join(
            f"{v} -> {lut[v]}" + (f" ({dataset.classes[lut[v]]})" if 0 <= lut[v] < len(dataset.classes) else "")
            for v in sorted(raw)
        )
        report.notes.append(f"{tag}masks store 0/255; the {dataset.layout} label map turns them into labels ({mapped})")
    return False


def _infer_classes(
    dataset: SegmentationDataset, summary: SplitSummary, report: DoctorReport, binary_255: bool
) -> tuple[int, list[int] | None]:
    """The class count ``segforge train`` would infer from the labels (noted), and the labels present when
    they are sparse codes rather than class indices (more than ``SPARSE_CLASSES``, most never occurring)."""
    lut, ignore = dataset.label_map, dataset.ignore_index
    labels = [lut[v] if lut is not None and v < len(lut) else v for v in summary.raw_values]
    present = sorted({v for v in labels if v != ignore and v >= 0})
    largest = max(present, default=0)
    num_classes = 2 if binary_255 else largest + 1
    basis = "0/255 masks: a binary task" if binary_255 else f"the largest label is {largest}"
    report.notes.append(
        f"classes: {num_classes}, inferred from the labels ({basis}), as segforge train infers "
        f"them; to set them: `{report.command('train', '--num-classes', str(num_classes))}`"
    )
    sparse = not binary_255 and num_classes > SPARSE_CLASSES and 2 * len(present) < num_classes
    return num_classes, present if sparse else None


@dataclass
class _LabelCounts:
    """Per-class pixels of a split's masks, and the values a label map does not cover or out of range."""

    pixels: ClassPixels
    uncovered: Counter = field(default_factory=Counter)
    out_of_range: Counter = field(default_factory=Counter)
    uncovered_files: list[Path] = field(default_factory=list)
    out_files: list[Path] = field(default_factory=list)


def _count_labels(
    dataset: SegmentationDataset, checks: list[_Check], num_classes: int, binary_255: bool
) -> _LabelCounts:
    lut, ignore = dataset.label_map, dataset.ignore_index
    counted = _LabelCounts(ClassPixels.zeros(num_classes))
    for index, check in enumerate(checks):
        if check.values is None:
            continue
        values, counts = check.values, check.counts
        if lut is not None:
            covered = (values >= 0) & (values < len(lut))
            if not covered.all():
                counted.uncovered.update(dict(zip(values[~covered].tolist(), counts[~covered].tolist(), strict=True)))
                counted.uncovered_files.append(Path(dataset.mask_name(index)))
            values, counts = lut[values[covered]], counts[covered]
        in_range = (values >= 0) & (values < num_classes)
        ignored = values == ignore if ignore is not None else np.zeros_like(in_range)
        bad = ~in_range & ~ignored
        if bad.any() and not binary_255:
            counted.out_of_range.update(dict(zip(values[bad].tolist(), counts[bad].tolist(), strict=True)))
            counted.out_files.append(Path(dataset.mask_name(index)))
        class_counts = np.bincount(values[in_range], weights=counts[in_range], minlength=num_classes)
        counted.pixels.add(class_counts.astype(np.int64), int(check.counts.sum()), int(counts[ignored].sum()))
    return counted


def _report_out_of_range(
    dataset: SegmentationDataset,
    report: DoctorReport,
    tag: str,
    counts: _LabelCounts,
    num_classes: int,
    lossy: str,
) -> None:
    """Labels >= the class count: grey levels of colour masks, codes to map, or a class count or ignore
    index to give."""
    out_of_range = counts.out_of_range
    greys = _luminance(dataset.palette) - set(range(num_classes))
    from_colour = sum(n for v, n in out_of_range.items() if v in greys) > 0.5 * sum(out_of_range.values())
    if from_colour and len([v for v in out_of_range if v in greys]) >= 2:
        report.problems.append(
            Problem(
                "error",
                f"{tag}masks look like colour masks converted to grey: their "
                f"values {_listing(out_of_range)} are the grey levels of the class colours",
                "use the original RGB masks with a palette file (one 'name: [r, g, b]' line "
                f"per class), e.g. `{report.command('train', '--palette', 'colours.yaml')}`",
                counts.out_files,
            )
        )
        return
    largest = max(out_of_range)
    others = [value for value in out_of_range if value != largest]  # (one ignore index covers one value)
    ignoring = ["--num-classes", str(max(others) + 1)] if others else []
    ignoring += ["--ignore-index", str(largest)]
    present = sorted({*range(num_classes), *out_of_range})
    if largest + 1 > SPARSE_CLASSES and 2 * len(present) < largest + 1:  # codes, not class indices
        mapping = ",".join(f"{value}={label}" for label, value in enumerate(present) if value != label)
        fix = f"map each value to a class index, e.g. `{report.command('train', '--label-map', mapping)}`"
    else:
        fix = f"give the class count, e.g. `{report.command('train', '--num-classes', str(largest + 1))}`"
    report.problems.append(
        Problem(
            "error",
            f"{tag}label values {_listing(out_of_range)} are >= the number of classes ({num_classes}) and "
            f"are not the ignore index ({dataset.ignore_index}).{lossy}",
            f"{fix}, or mark the value of unlabelled pixels (usually the largest), e.g. "
            f"`{report.command('train', *ignoring)}`, or fix the masks",
            counts.out_files,
        )
    )


def _check_label_map(report: DoctorReport, label_map: Mapping[int, int]) -> None:
    """A label map that names values no scanned mask holds is a warning: a typo, or masks of another encoding."""
    found = {value for s in report.splits.values() if s.scanned for value in s.raw_values}
    unused = sorted(set(label_map) - found)
    if found and unused:
        report.problems.append(
            Problem(
                "warning",
                f"the label map names value(s) {unused} that no mask holds (the masks hold "
                f"{sorted(found)[:12]}{' ...' if len(found) > 12 else ''})",
                "check the label map against the mask values listed above; map the values the masks hold",
            )
        )


def _fix(kind: str, report: DoctorReport) -> str:
    return FIXES.get(kind, "see the message").format(palette=report.command("train", "--palette", "colours.yaml"))


def _listing(counter: Mapping[int, int], limit: int = 8) -> str:
    total = sum(counter.values())
    shown = ", ".join(f"{v} ({n / total:.0%})" for v, n in sorted(counter.items(), key=lambda kv: -kv[1])[:limit])
    return shown + (f" and {len(counter) - limit} more" if len(counter) > limit else "")


def data_options(
    *,
    layout: str = "auto",
    num_classes: int | None = None,
    ignore_index: int | None = None,
    colour_map: ColourMap | str | Path | None = None,
    label_map: Mapping[int, int] | Sequence[int] | None = None,
    region_masks: str | Path | None = None,
    image_dir: str | None = None,
    mask_dir: str | None = None,
) -> list[tuple[str, str]]:
    """The command-line flags that describe data read with these options (for the fixes' command lines)."""
    options = [("--format", layout)] if layout != "auto" else []
    if num_classes is not None:
        options.append(("--num-classes", str(num_classes)))
    if ignore_index is not None:
        options.append(("--ignore-index", str(ignore_index)))
    if isinstance(colour_map, (str, Path)):
        options.append(("--palette", str(colour_map)))
    if label_map is not None:
        pairs = label_map.items() if isinstance(label_map, Mapping) else enumerate(label_map)
        changed = ",".join(f"{raw}={label}" for raw, label in pairs if raw != label)
        if changed:
            options.append(("--label-map", changed))
    for flag, value in (("--region-masks", region_masks), ("--image-dir", image_dir), ("--mask-dir", mask_dir)):
        if value is not None:
            options.append((flag, str(value)))
    return options


def check_split(
    report: DoctorReport,
    dataset: SegmentationDataset,
    name: str,
    *,
    scan: bool = True,
    workers: int | None = None,
    progress: bool | None = None,
) -> SplitSummary:
    """Adds one split of a dataset to ``report``: its unpaired files and, with ``scan``, what reading every
    sample finds (sizes, channels, label values, class pixels, problems). Training checks its data with it."""
    report.classes, report.ignore_index = dataset.classes, dataset.ignore_index
    summary = report.splits.setdefault(name, SplitSummary(name, len(dataset)))
    if dataset.pairing and dataset.pairing not in report.notes:
        report.notes.append(dataset.pairing)
    if dataset.unpaired_images:
        report.problems.append(
            Problem(
                "error",
                f"[{name}] {len(dataset.unpaired_images)} image(s) have no mask",
                "add the masks (same file stem as the image), remove the images, or list "
                "only paired images in the split file",
                dataset.unpaired_images,
            )
        )
    if dataset.unpaired_masks:
        report.problems.append(
            Problem(
                "warning",
                f"[{name}] {len(dataset.unpaired_masks)} mask(s) have no image (they are not used)",
                "add their images or delete them",
                dataset.unpaired_masks,
            )
        )
    if scan:
        _scan(dataset, summary, report, num_classes=dataset.num_classes, workers=workers, progress=progress)
    return summary


def diagnose(
    root: str | Path,
    *,
    layout: str = "auto",
    split: str | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    colour_map: ColourMap | str | Path | None = None,
    label_map: Mapping[int, int] | None = None,
    region_masks: str | Path | None = None,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> DoctorReport:
    """Reads a dataset once and reports its contents and problems.

    Args:
        root: the dataset folder.
        layout: one of ``list_dataset_layouts()``, or ``"auto"`` to detect it.
        split: scan only this split (every split is still counted); None scans all.
        num_classes, ignore_index, colour_map, label_map, region_masks, image_dir, mask_dir: as for
            ``create_dataset``; the folder layout infers the number of classes from the labels (as
            training does) when not given.
        workers: reader threads (default: up to 8); progress: tqdm bar (default: on a terminal).

    Returns:
        A ``DoctorReport``; problems of a split that cannot be built at all are reported, not raised.

    Raises:
        ValueError: ``root`` missing, layout unknown or undetectable, or options the layout refuses.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"data folder {root} does not exist; pass the folder that holds the dataset", path=root, kind="missing"
        )
    options = data_options(
        layout=layout,
        num_classes=num_classes,
        ignore_index=ignore_index,
        colour_map=colour_map,
        label_map=label_map,
        region_masks=region_masks,
        image_dir=image_dir,
        mask_dir=mask_dir,
    )
    detected = layout == "auto"
    layout = detect_layout(root, named_folders=bool(image_dir or mask_dir)) if detected else layout
    report = DoctorReport(root, layout, detected, [], None, options=options)
    readers = {"num_classes": num_classes, "ignore_index": ignore_index, "colour_map": colour_map}
    readers |= {"label_map": label_map, "region_masks": region_masks, "image_dir": image_dir, "mask_dir": mask_dir}
    for name in _splits_in_order(DATASETS.get(layout).splits(root), split):
        _check_named_split(
            report, name, readers, scan=split is None or name == split, workers=workers, progress=progress
        )
    if isinstance(label_map, Mapping):
        _check_label_map(report, label_map)
    labelled = [
        s for s in report.splits.values() if s.pixels is not None and s.pixels.class_pixels.any() and s.labels_ok
    ]
    chosen = next((s for s in labelled if s.name in _TRAIN_NAMES), labelled[0] if labelled else None)
    if chosen is not None:
        report.weights, report.weights_split = chosen.pixels.weights(), chosen.name
    if detected:
        report.notes.insert(0, f"layout detected from the folder structure: {layout} (override with --format)")
    return report


def _splits_in_order(names: list[str], split: str | None) -> list[str | None]:
    """The layout's splits (None: the whole folder), with ``split`` if it is not among them, training first."""
    names = names or [None]
    if split is not None and split not in names:
        names = [*names, split]
    order = {n: i for i, n in enumerate(("train", "training", "val", "validation", "trainval", "test"))}
    return sorted(names, key=lambda n: (order.get(n, len(order)), str(n)))


def _check_named_split(
    report: DoctorReport, name: str | None, readers: dict, *, scan: bool, workers: int | None, progress: bool | None
) -> None:
    """Builds split ``name`` with ``readers`` (``create_dataset``'s options) and checks it; a split that cannot be
    built at all is a problem of the report."""
    label = name or "all"
    try:
        dataset = create_dataset(report.layout, report.root, name, strict=False, **readers)
    except DatasetError as err:
        report.problems.append(
            Problem("error", f"[{label}] {err}", _fix(err.kind, report), [err.path] if err.path else [])
        )
        return
    if getattr(dataset, "task", "semantic") == "instance":
        _check_instance_split(report, dataset, label, scan=scan, progress=progress)
    else:
        check_split(report, dataset, label, scan=scan, workers=workers, progress=progress)


def _check_instance_split(report: DoctorReport, dataset, label: str, *, scan: bool, progress: bool | None) -> None:
    """An instance split (``segforge.instances``): read every sample once; what it holds goes in the notes, the
    first file that cannot be used in the problems (with the reader's fix)."""
    from segforge.instances.fingerprint import instance_fingerprint

    report.classes = report.classes or list(dataset.classes)
    if not scan:
        report.notes.append(f"[{label}] {len(dataset)} images (not scanned)")
        return
    try:
        fp = instance_fingerprint(dataset, progress=progress)
    except DatasetError as err:
        report.problems.append(
            Problem("error", f"[{label}] {err}", _fix(err.kind, report), [err.path] if err.path else [])
        )
        return
    report.num_classes = report.num_classes or fp.num_classes
    report.classes = report.classes or list(fp.classes)
    report.notes += [f"[{label}] {line}" for line in fp.describe()]


def _class_name(report: DoctorReport, index: int) -> str:
    return report.classes[index] if index < len(report.classes) else f"class_{index}"


def _format(report: DoctorReport) -> str:
    lines = [f"segforge doctor: {report.root}", f"layout: {report.layout}"]
    classes = (
        f"{len(report.classes)} ({', '.join(report.classes[:12])}{', ...' if len(report.classes) > 12 else ''})"
        if report.classes
        else "not given"
    )
    lines.append(f"classes: {classes}; ignore index: {report.ignore_index}")
    lines += [f"note: {n}" for n in report.notes]
    lines.append("")
    if report.splits:  # (an instance layout's splits are described in the notes)
        lines.append(f"{'split':<12}{'samples':>8}{'labelled':>10}  image sizes (WxH)         channels")
    for s in report.splits.values():
        if not s.scanned:
            lines.append(f"{s.name:<12}{s.samples:>8}{'':>10}  (not scanned)")
            continue
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in s.sizes.most_common(3))
        sizes += f" +{len(s.sizes) - 3} more" if len(s.sizes) > 3 else ""
        channels = ", ".join(f"{c} {d} ({n})" for (c, d), n in s.channels.most_common())
        if set(s.dates) - {1}:  # time series: how many valid dates they hold
            dates = sorted(s.dates.elements())
            channels += f"; {dates[0]}-{dates[-1]} valid dates (median {dates[len(dates) // 2]})"
        lines.append(f"{s.name:<12}{s.samples:>8}{s.labelled:>10}  {sizes:<26}{channels}")
    for s in report.splits.values():
        if s.raw_values:
            total = sum(s.raw_values.values())
            shown = sorted(s.raw_values.items())[:24]
            values = ", ".join(f"{v}: {n / total:.2%}" for v, n in shown)
            more = f" and {len(s.raw_values) - 24} more values" if len(s.raw_values) > 24 else ""
            lines.append(f"\nmask values in {s.name} (as stored, share of pixels): {values}{more}")
    chosen = report.splits.get(report.weights_split or "")
    if chosen is not None and chosen.pixels is not None and report.weights is not None:
        p = chosen.pixels
        lines.append(
            f"\nclasses in {chosen.name} (frequency = pixels / pixels of the images that contain the class; "
            "weight = median frequency / frequency, as SegNet):"
        )
        lines.append(f"  {'class':<22}{'pixels':>8}{'images':>8}{'frequency':>11}{'weight':>9}")
        for c, weight in enumerate(report.weights):
            share = p.class_pixels[c] / max(p.total_pixels, 1)
            freq = p.class_pixels[c] / p.present_pixels[c] if p.present_pixels[c] else 0.0
            lines.append(f"  {_class_name(report, c):<22}{share:>8.2%}{p.images[c]:>8}{freq:>11.4f}{weight:>9.3f}")
        if p.ignored_pixels:
            lines.append(f"  {'(ignored)':<22}{p.ignored_pixels / max(p.total_pixels, 1):>8.2%}")
        lines.append("  weights: " + ", ".join(f"{w:.3f}" for w in report.weights))
    lines.append("")
    if not report.problems:
        lines.append("no problems found")
    for problem in report.problems:
        lines.append(f"{problem.severity.upper()}: {problem.message}")
        lines.append(f"  fix: {problem.fix}")
        if problem.files:
            shown = ", ".join(str(f) for f in problem.files[:5])
            lines.append(f"  files: {shown}{f' (+{len(problem.files) - 5} more)' if len(problem.files) > 5 else ''}")
    errors, warnings = len(report.errors), len(report.problems) - len(report.errors)
    lines.append(
        f"\n{errors} error(s), {warnings} warning(s)"
        + (": training on this data as it is would be wrong" if errors else "")
    )
    return "\n".join(lines)
