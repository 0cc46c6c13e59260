"""The training configuration: typed sections, read from YAML and/or flags, strictly validated.

A config file mirrors these dataclasses (``model:``, ``data:``, ``loss:``, ``optimizer:``,
``schedule:``, ``train:``). Flags override the file; a flag left unset never does. A key that is
not a field, or a value of the wrong type, is rejected with the key's full name and the choices.

A value left at None (``null``) is chosen by the recipe (``segforge.training.recipe``) from a
fingerprint of the training data: model, crop and batch size, optimizer and learning rate, loss,
class weights, normalisation, augmentation and the number of steps. The run's ``config.yaml``
holds every value as resolved, so it can be edited and rerun.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ModelConfig:
    name: str | None = None  # None: the recipe's choice
    encoder: str | None = None  # None: the recipe's choice, or the architecture's own
    encoder_weights: str | None = None  # "imagenet", or the path or URL of torchvision-format weights
    in_channels: int | None = None  # default: the dataset's channels
    # the decoder's widths, deepest first, where the architecture has the choice (unet_padded); "skips": as wide
    # as the encoder's skips; None: the architecture's default
    decoder_channels: list[int] | Literal["skips"] | None = None
    # how a model of image time series reads the dates (temporal_unet); None: the architecture's default
    temporal: Literal["gru", "lstm", "attention"] | None = None


@dataclass
class DataConfig:
    root: str = ""
    format: str = "auto"  # a layout of segforge.data.list_dataset_layouts(), or auto-detect
    train_split: str = "auto"  # auto: "train" when the dataset has it, else every pair ("all")
    val_split: str | None = "auto"  # auto: "val" if the dataset has it, else a seeded hold-out; None/"none": none
    val_fraction: float = 0.2  # the share of the training split a hold-out takes (at least one image)
    num_classes: int | None = None  # default: the dataset's, or inferred from the masks
    ignore_index: int | None = None  # default: the dataset's
    palette: str | None = None  # colour-coded masks: a YAML/JSON colour → class mapping
    label_map: dict[int, int] | None = None  # raw mask value → label, e.g. {255: 1} for 0/255 masks
    region_masks: str | None = None  # a folder of valid-region masks (0 = not scored), one per image
    image_dir: str | None = None  # folder layout: the images' folder in root (default: images/, image/, imgs/, img/)
    mask_dir: str | None = None  # folder layout: the masks' folder in root (default: masks/, labels/, gt/, ...)
    crop_size: int | None = None  # random crops of this side; 0: whole images
    batch_size: int | None = None
    # data-loader processes; auto: none on the CPU (measured: workers there only compete with the network's
    # threads for the same cores, bench/train_overhead.py), 2 with CUDA
    workers: int | Literal["auto"] = "auto"
    max_image_mb: float | None = None  # largest decoded image; None: $SEGFORGE_MAX_IMAGE_MB, else 4096
    augmentation: dict[str, Any] | None = None  # see segforge.data.transforms.build_transforms
    class_weights: Literal["none", "median_frequency"] | list[float] | None = None
    mean: list[float] | None = None  # per-channel normalisation of the [0, 1]-scaled images
    std: list[float] | None = None
    temporal_dropout: float = 0.0  # time series: the chance that training leaves out each valid date


@dataclass
class LossConfig:
    name: str | None = None  # a loss of segforge.losses.LOSSES: ce, dice, ce+dice
    dice_weight: float = 1.0
    aux_weight: float = 0.4  # PSPNet's auxiliary head
    smooth: float = 1.0


@dataclass
class OptimizerConfig:
    name: str | None = None  # an optimizer of segforge.training.optim.OPTIMIZERS: sgd, adam, adamw
    lr: float | None = None
    momentum: float = 0.9  # SGD; the U-Net paper uses 0.99
    weight_decay: float = 1e-4


@dataclass
class ScheduleConfig:
    name: str | None = None  # a schedule of segforge.training.optim.SCHEDULES: poly, cosine, step, constant
    power: float = 0.9  # poly
    step_size: int = 30  # step, in epochs
    gamma: float = 0.1  # step
    warmup_iters: int | None = None  # None: 5 % of the steps, at most 100


@dataclass
class TrainConfig:
    epochs: int | None = None  # the run's length in epochs; or iterations; or time_budget
    iterations: int | None = None  # optimizer steps; overrides epochs when set
    time_budget: str | None = None  # e.g. "30m", "1h30m": the steps that fit, measured; overrides both
    accumulate: int = 1  # gradient accumulation steps
    amp: Literal["auto", "on", "off"] = "auto"  # mixed precision, CUDA only
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA; on the CPU as the architecture trains faster
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the training step (segforge.training.compilation)
    seed: int = 0
    device: str = "auto"  # auto: CUDA if present
    eval_every: int = 1  # epochs, when the run's length is in epochs
    eval_steps: int | None = None  # validate every N optimizer steps (default: about 15 times per run)
    early_stop: int | None = None  # validations without a better val mIoU
    checkpoint_minutes: float = 10.0  # also save the resume state mid-epoch this often (0: at epoch ends only)
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun (CUDA)
    out: str = "runs"
    name: str | None = None  # run folder name; default: model and time


@dataclass
class AdversarialConfig:
    """Adversarial training (``segforge.training.adversarial``, Luc et al. 2016): off unless enabled."""

    enabled: bool = False
    weight: float = 0.1  # lambda: the segmenter's loss is its own + weight x the adversarial term
    encoding: Literal["basic", "product", "scaling"] = "scaling"  # how the adversary sees a label map
    network: str = "large_fov"  # an adversary of segforge.models.adversary.ADVERSARIES
    judges: Literal["location", "image"] = "location"  # a verdict per location, or one per image (their mean)
    steps: int = 1  # adversary updates per segmenter step
    lr: float = 1e-4  # the adversary's Adam learning rate
    # label maps and image average-pooled by this factor before the adversary sees them: the paper's segmenters
    # predicted at 1/8 of the image and its adversaries are sized for that; 1: every pixel (LargeFOV's 128-channel
    # convolutions at full resolution cost some 30 times a U-Net16 step)
    stride: int = 8


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_union(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Returns ``value`` as type ``tp`` or raises ValueError naming ``key`` and the expected type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
    elif _is_union(tp):
        for option in args:
            try:
                return _coerce(value, option, key)
            except ValueError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a field type this function does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ValueError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    odd = [key for key in values if not isinstance(key, str)]  # (a list: the odd key may itself be None)
    if odd:
        odd = odd[0]
        raise ValueError(
            f"config key {odd!r} in {prefix.rstrip('.') or 'the config'} is not a name; valid keys: {names}"
        )
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys in {prefix.rstrip('.') or 'the config'}: {names}"
        )
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ValueError(f"config section {prefix + name!r} must be a mapping of keys, got {value!r}")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def parse_duration(text: str) -> float:
    """``"30m"``, ``"1h30m"``, ``"90s"``, ``"1.5h"`` → seconds.

    Raises:
        ValueError: not such a duration, or not positive (the message shows the accepted forms).
    """
    match = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d*)?)\s*h)?\s*(?:(\d+(?:\.\d*)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d*)?)\s*s)?\s*", str(text)
    )
    if match is None or not any(match.groups()):
        raise ValueError(f"train.time_budget must be a duration such as 30m, 1h30m, 90s or 1.5h, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ValueError(f"train.time_budget must be longer than zero, got {text!r}")
    return total


# Numbers that have the right type but cannot be right: (key, allowed?, what is allowed).
RANGES: tuple[tuple[str, typing.Callable[[float], bool], str], ...] = (
    ("data.crop_size", lambda v: v >= 0, ">= 0 (0: whole images)"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.workers", lambda v: v == "auto" or v >= 0, ">= 0 (0: load in the main process) or auto"),
    ("data.num_classes", lambda v: v >= 1, ">= 1"),
    ("data.max_image_mb", lambda v: v > 0, "a positive number of megabytes"),
    ("data.temporal_dropout", lambda v: 0 <= v < 1, "a chance in [0, 1) (time series only)"),
    ("model.in_channels", lambda v: v >= 1, ">= 1"),
    ("loss.dice_weight", lambda v: v >= 0, ">= 0"),
    ("loss.aux_weight", lambda v: v >= 0, ">= 0"),
    ("loss.smooth", lambda v: v >= 0, ">= 0"),
    ("optimizer.lr", lambda v: v > 0, "a positive number"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.9"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("schedule.power", lambda v: v > 0, "> 0"),
    ("schedule.step_size", lambda v: v >= 1, ">= 1 (epochs)"),
    ("schedule.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("schedule.warmup_iters", lambda v: v >= 0, ">= 0 (0: no warm-up)"),
    ("train.epochs", lambda v: v >= 1, ">= 1"),
    ("train.iterations", lambda v: v >= 1, ">= 1"),
    ("train.accumulate", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 1, ">= 1 (epochs)"),
    ("train.eval_steps", lambda v: v >= 1, ">= 1 (steps)"),
    ("train.early_stop", lambda v: v >= 1, ">= 1 (validations)"),
    ("train.checkpoint_minutes", lambda v: v >= 0, ">= 0 (0: at round ends only)"),
    ("adversarial.weight", lambda v: v >= 0, ">= 0 (0: the adversary learns, the segmenter ignores it)"),
    ("adversarial.steps", lambda v: v >= 1, ">= 1 (adversary updates per segmenter step)"),
    ("adversarial.lr", lambda v: v > 0, "a positive number"),
    ("adversarial.stride", lambda v: v >= 1, ">= 1 (1: the adversary sees every pixel)"),
)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# Names a registry defines: (key, module, registry, names allowed besides). Read when a config is checked,
# so that this module imports none of them and a builder registered by the user's code counts too.
NAMES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("model.name", "segforge.models", "MODELS", ()),
    ("model.encoder", "segforge.encoders", "ENCODERS", ()),
    ("adversarial.network", "segforge.models.adversary", "ADVERSARIES", ()),
    ("data.format", "segforge.data.registry", "DATASETS", ("auto",)),
    ("loss.name", "segforge.losses", "LOSSES", ()),
    ("optimizer.name", "segforge.training.optim", "OPTIMIZERS", ()),
    ("schedule.name", "segforge.training.optim", "SCHEDULES", ()),
)


def registered(key: str) -> list[str]:
    """The values ``key`` (one of ``NAMES``) may take."""
    _, module, registry, besides = next(entry for entry in NAMES if entry[0] == key)
    return [*besides, *getattr(importlib.import_module(module), registry).names()]


def _check_values(config: Config) -> None:
    """Values that have the right type but cannot be right."""
    for key, allowed, what in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not allowed(value):
            raise ValueError(f"{key} must be {what}, got {value}")
    widths = config.model.decoder_channels
    if isinstance(widths, list) and (not widths or min(widths) < 1):
        raise ValueError(f"model.decoder_channels must be positive widths, deepest first, or skips; got {widths}")
    for key, *_ in NAMES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and value not in (choices := registered(key)):
            raise ValueError(f"{key} {value!r} is not one segforge knows; choose from {choices}")
    if not DEVICE.fullmatch(config.train.device):
        raise ValueError(
            f"train.device must be auto, cpu, cuda or cuda:N (N: the GPU's index), got {config.train.device!r}"
        )
    data = config.data
    if not 0 < data.val_fraction < 1:
        raise ValueError(
            f"data.val_fraction must be a share between 0 and 1 (e.g. 0.2 holds out 20 %), got "
            f"{data.val_fraction}; to train without validation use --val-split none"
        )
    if data.label_map is not None:
        for raw, label in data.label_map.items():
            if not (isinstance(raw, int) and isinstance(label, int) and not isinstance(raw, bool)) or raw < 0:
                raise ValueError(
                    f"data.label_map maps raw mask values to labels, both integers >= 0 for the raw "
                    f"value (e.g. {{255: 1}}), got {raw!r}: {label!r}"
                )
    if (data.mean is None) != (data.std is None) or (data.mean is not None and len(data.mean) != len(data.std)):
        raise ValueError(
            f"data.mean and data.std go together, one value per channel each; got {data.mean} and {data.std}"
        )
    if config.train.time_budget is not None:
        parse_duration(config.train.time_budget)
    name = config.train.name
    if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
        raise ValueError(
            f"train.name is the run folder's name inside train.out, not a path: got {name!r}; choose where runs go "
            "with --out (train.out) and give --name a plain name"
        )


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Builds a validated ``Config``; missing keys take their defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(values).__name__}")
    config = _build(Config, values, "")
    if config.data.val_split == "none":
        config.data.val_split = None
    _check_values(config)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Reads a YAML config (optional) and applies dotted overrides such as ``{"data.batch_size": 4}``.

    ``None`` override values are skipped: an unset flag never replaces a value from the file.

    Raises:
        ValueError: unreadable YAML, unknown keys, wrong types; the message names the file or key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config file {path} is a folder; pass a YAML file (see configs/ for examples)")
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist; see configs/ for examples")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"config file {path} is not UTF-8 text ({err.reason}); save it as UTF-8 YAML") from None
        if not isinstance(values, dict):
            raise ValueError(
                f"config file {path} must hold sections (model:, data:, ...), not a {type(values).__name__}"
            )
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ValueError(f"override {dotted!r} must name a section and a key, e.g. data.batch_size")
        target = values.setdefault(section, {})
        if not isinstance(target, dict):
            where = f"{path}: " if path is not None else ""
            raise ValueError(f"{where}config section {section!r} must be a mapping of keys, got {target!r}")
        target[key] = value
    try:
        return config_from_dict(values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path is not None else str(err)) from None
