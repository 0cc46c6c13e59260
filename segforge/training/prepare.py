"""Before a new run trains: find the data's layout and splits, check the data, choose the recipe.

``prepare(config)`` reads what the user gave (often just ``data.root``) and returns a complete
config: the layout detected, ``train``/``val`` splits or a seeded hold-out, the training split
read once with the doctor's checks (its problems stop the run here, with the fix), the class count
inferred from the masks, and every value the user left open chosen by ``segforge.training.recipe``.
Nothing is written until ``Prepared.write(folder)``: the split lists of a hold-out and the run's
``config.yaml``, which then reruns the same plan.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segforge.config import Config
from segforge.data import create_dataset, detect_layout
from segforge.data.base import SegmentationDataset
from segforge.data.doctor import DoctorReport, data_options
from segforge.data.fingerprint import Fingerprint, fingerprint
from segforge.data.registry import DATASETS
from segforge.data.splits import default_splits, holdout, write_split_list
from segforge.files import atomic_write
from segforge.instances.fingerprint import InstanceFingerprint, instance_fingerprint
from segforge.training.instance_recipe import plan_instances
from segforge.training.recipe import Choice, plan

EVERY_PAIR = ("folder", "instance_folder")  # layouts that name every sample with the split "all"


@dataclass
class Prepared:
    """A new run's complete config, and what was learnt on the way.

    Attributes:
        config: every value resolved (the hold-out's split lists are named once ``write`` placed them).
        fingerprint: the training split's.
        choices: the recipe's lines.
        notes: how the splits were found, warnings from the data checks.
        held_out: ``(dataset, train indices, val indices, split name)`` of a hold-out, else None.
    """

    config: Config
    fingerprint: Fingerprint | InstanceFingerprint
    choices: list[Choice]
    notes: list[str] = field(default_factory=list)
    held_out: tuple[SegmentationDataset, list[int], list[int], str] | None = None

    def format(self) -> str:
        lines = [f"data: {self.config.data.root} ({self.config.data.format} layout)"]
        lines += [f"  {line}" for line in self.fingerprint.describe()]
        lines += [f"  {note}" for note in self.notes]
        lines.append("recipe (chosen from the data; any flag or config key overrides a line):")
        lines += [choice.format() for choice in self.choices]
        return "\n".join(lines)

    def write(self, folder: Path) -> Config:
        """Writes the hold-out's ``splits/train.txt`` and ``splits/val.txt`` (then names them in the config) and
        ``config.yaml`` into the run folder; returns the config the run trains with."""
        config = copy.deepcopy(self.config)
        if self.held_out is not None:
            dataset, keep, held, split = self.held_out
            note = (
                f"hold-out of {len(held)} of the {len(dataset)} samples of split {split!r} of {config.data.root} "
                f"(data.val_fraction {config.data.val_fraction}, seed {config.train.seed})"
            )
            splits = folder.resolve() / "splits"
            config.data.train_split = str(write_split_list(splits / "train.txt", dataset, keep, split=split, note=note))
            config.data.val_split = str(write_split_list(splits / "val.txt", dataset, held, split=split, note=note))
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        atomic_write(folder / "config.yaml", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return config


def dataset_options(config: Config) -> dict:
    """``create_dataset`` keyword arguments of ``config.data`` (what the mask values mean, region masks)."""
    data = config.data
    options = {
        "num_classes": data.num_classes,
        "ignore_index": data.ignore_index,
        "colour_map": data.palette,
        "label_map": data.label_map,
        "region_masks": data.region_masks,
        "image_dir": data.image_dir,
        "mask_dir": data.mask_dir,
    }
    if data.format != "folder":  # the other layouts fix their labels: pass only what was given, to be checked
        options = {key: value for key, value in options.items() if value is not None}
    return options


def prepare(config: Config, *, cuda: bool = False, progress: bool | None = None) -> Prepared:
    """Resolves layout and splits, checks and fingerprints the training split, and plans the recipe.

    Raises:
        ValueError: no data folder, an unknown layout or split, too few images for a hold-out, or a
            problem the doctor finds in the training split (the message gives each fix as a command).
    """
    config = copy.deepcopy(config)
    data = config.data
    if not data.root:
        raise ValueError("data.root is not set: pass --data PATH (a dataset folder) or set data.root in the config")
    root = Path(data.root)
    options = data_options(
        layout=data.format,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        colour_map=data.palette,
        label_map=data.label_map,
        region_masks=data.region_masks,
        image_dir=data.image_dir,
        mask_dir=data.mask_dir,
    )
    if data.format == "auto":
        data.format = "folder" if data.image_dir or data.mask_dir else detect_layout(root)
    layout = DATASETS.get(data.format)
    if data.format != "folder" and root.is_dir() and not layout.detect(root):
        raise ValueError(
            f"the data at {root} are not in the {data.format} layout, which expects {layout.expects}; "
            f"drop --format (data.format) to detect the layout, or rearrange the folder"
        )
    notes, hold = [], False
    if "auto" in (data.train_split, data.val_split):
        train_split, val_split = default_splits(layout.splits(root), every_pair=data.format in EVERY_PAIR)
        data.train_split = train_split if data.train_split == "auto" else data.train_split
        if data.val_split == "auto":
            data.val_split, hold = val_split, val_split is None
            if hold:
                notes.append(
                    f"no validation split: {data.val_fraction:.0%} of {data.train_split!r} is held out "
                    "(seeded; listed in the run folder's splits/)"
                )
    train = create_dataset(data.format, root, data.train_split, **dataset_options(config))
    if data.val_split is not None and not hold:
        create_dataset(data.format, root, data.val_split, **dataset_options(config))  # a missing split fails now
    held_out = None
    if hold:
        keep, held = holdout(len(train), data.val_fraction, config.train.seed)
        held_out = (train, keep, held, data.train_split)
        train = train.subset(keep)
    if getattr(train, "task", "semantic") == "instance":
        fp = instance_fingerprint(train, progress=progress)
        config, choices = plan_instances(config, fp, cuda=cuda)
        if hold:
            config.data.val_split = "auto"  # until write() names the hold-out's list
        return Prepared(config, fp, choices, notes, held_out)
    report = DoctorReport(root, data.format, False, [], None, options=options)
    fp = fingerprint(train, report=report, progress=progress)
    notes += [note for note in report.notes if not note.startswith("classes:")]
    notes += [f"warning: {p.message} (fix: {p.fix})" for p in report.problems if p.severity == "warning"]
    if data.label_map:
        unused = sorted(set(data.label_map) - set(fp.raw_values))
        if unused:
            notes.append(
                f"warning: the label map names value(s) {unused} that no training mask holds (they hold "
                f"{sorted(fp.raw_values)[:12]}); check --label-map"
            )
    config, choices = plan(config, fp, cuda=cuda)
    crop = config.data.crop_size
    if crop and crop > max(fp.median_size):
        notes.append(
            f"warning: {crop}-px crops are larger than the images ({fp.median_size[0]}x{fp.median_size[1]} px, "
            "median): the batches are mostly padding, which trains slowly and skews batch norm; --crop-size 0 "
            "trains on whole images"
        )
    if hold:
        config.data.val_split = "auto"  # until write() names the hold-out's list
    return Prepared(config, fp, choices, notes, held_out)
