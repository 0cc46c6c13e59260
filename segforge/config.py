"""The training configuration: typed sections, read from YAML and/or flags, strictly validated.

A config file mirrors these dataclasses (``model:``, ``data:``, ``loss:``, ``optimizer:``,
``schedule:``, ``train:``). Flags override the file; a flag left unset never does. A key that is
not a field, or a value of the wrong type, is rejected with the key's full name and the choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ModelConfig:
    name: str = "unet_padded"
    encoder: str | None = None
    encoder_weights: str | None = None  # path or URL of torchvision ImageNet weights
    in_channels: int | None = None  # default: the dataset's channels


@dataclass
class DataConfig:
    root: str = ""
    format: str = "auto"  # a layout of segforge.data.list_dataset_layouts(), or auto-detect
    train_split: str = "train"
    val_split: str | None = "val"
    num_classes: int | None = None  # default: the dataset's
    ignore_index: int | None = None  # default: the dataset's
    palette: str | None = None  # colour-coded masks: a YAML/JSON colour → class mapping
    crop_size: int | None = None
    batch_size: int = 8
    workers: int = 2
    augmentation: dict[str, Any] | None = None  # see segforge.data.transforms.build_transforms
    class_weights: Literal["none", "median_frequency"] | list[float] = "none"


@dataclass
class LossConfig:
    name: Literal["ce", "dice", "ce+dice"] = "ce"
    dice_weight: float = 1.0
    aux_weight: float = 0.4  # PSPNet's auxiliary head
    smooth: float = 1.0


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD; the U-Net paper uses 0.99
    weight_decay: float = 1e-4


@dataclass
class ScheduleConfig:
    name: Literal["poly", "cosine", "step", "constant"] = "poly"
    power: float = 0.9  # poly
    step_size: int = 30  # step, in epochs
    gamma: float = 0.1  # step
    warmup_iters: int = 0


@dataclass
class TrainConfig:
    epochs: int = 50
    iterations: int | None = None  # overrides epochs when set
    accumulate: int = 1  # gradient accumulation steps
    amp: Literal["auto", "on", "off"] = "auto"  # mixed precision, CUDA only
    channels_last: bool = True
    seed: int = 0
    device: str = "auto"  # auto: CUDA if present
    eval_every: int = 1  # epochs
    early_stop: int | None = None  # epochs without a better val mIoU
    checkpoint_minutes: float = 10.0  # also save the resume state mid-epoch this often (0: at epoch ends only)
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun (CUDA)
    out: str = "runs"
    name: str | None = None  # run folder name; default: model and time


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; valid keys in "
                         f"{prefix.rstrip('.') or 'the config'}: {names}")
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


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Builds a validated ``Config``; missing keys take their defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build(Config, values, "")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Reads a YAML config (optional) and applies dotted overrides such as ``{"data.batch_size": 4}``.

    ``None`` override values are skipped: an unset flag never replaces a value from the file.

    Raises:
        ValueError: unreadable YAML, unknown keys, wrong types; the message names the file or key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist; see configs/ for examples")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold sections (model:, data:, ...), not a {type(values).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ValueError(f"override {dotted!r} must name a section and a key, e.g. data.batch_size")
        target = values.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"config section {section!r} must be a mapping of keys, got {target!r}")
        target[key] = value
    try:
        return config_from_dict(values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path is not None else str(err)) from None
