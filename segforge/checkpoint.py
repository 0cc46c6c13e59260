"""Checkpoints: safetensors weights with the config to rebuild the model, written atomically.

A checkpoint ``best.safetensors`` holds the model's tensors; its metadata holds JSON: the
``create_model`` config, class names, palette and anything the caller adds (metrics, epoch).
Loading never unpickles: safetensors is a flat tensor format, and the optional training state
(optimizer, scheduler, RNG) is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from segforge.encoders.weights import first_keys
from segforge.files import atomic_write

FORMAT = "segforge-checkpoint-1"
MAX_CLASSES = 10_000  # more is a damaged file, not a dataset (ADE20K has 150, COCO-Stuff 182)
MAX_CHANNELS = 1_000


def check_model_config(config: object, info: object, source: str) -> tuple[dict, dict]:
    """The model config and info of a checkpoint or an exported file, checked before anything is built.

    Raises:
        ValueError: a missing or impossible value (a model name that is not a string, a class or
            channel count no dataset has); the message names ``source`` and the key.
    """
    for what, value in (("the model config", config), ("the metadata's info", info)):
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {what} is a {type(value).__name__}, not a mapping; the file is damaged")
    missing = [key for key in ("name", "num_classes", "in_channels") if key not in config]
    if missing:
        raise ValueError(
            f"{source}: the model config lacks {', '.join(missing)}; the file is damaged or was not written by segforge"
        )
    name, classes, channels, encoder = (
        config["name"],
        config["num_classes"],
        config["in_channels"],
        config.get("encoder"),
    )
    if not isinstance(name, str) or not name:  # (whether it is registered, create_model says)
        raise ValueError(f"{source}: the model name is {name!r}, not a name; the file is damaged")
    for key, value, largest in (("num_classes", classes, MAX_CLASSES), ("in_channels", channels, MAX_CHANNELS)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= largest:
            raise ValueError(
                f"{source}: {key} is {value!r}, not a count between 1 and {largest:,}; the file is damaged"
            )
    if encoder is not None and (not isinstance(encoder, str) or not encoder):
        raise ValueError(f"{source}: the encoder is {encoder!r}, not a name; the file is damaged")
    widths = config.get("decoder_channels")
    if widths is not None and not (
        isinstance(widths, list)
        and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 2**16 for w in widths)
    ):
        raise ValueError(f"{source}: decoder_channels is {widths!r}, not a list of widths; the file is damaged")
    temporal = config.get("temporal")
    if temporal is not None and not isinstance(temporal, str):
        raise ValueError(f"{source}: temporal is {temporal!r}, not the name of a temporal module; the file is damaged")
    return config, info


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **info: Any) -> Path:
    """Writes ``model``'s weights and ``model.config`` plus ``info`` (JSON-serialisable) atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: a model built by ``segforge.create_model`` (its ``config`` rebuilds it).
        info: e.g. ``classes=[...]``, ``palette=[...]``, ``epoch=3``, ``metrics={...}``.
    """
    config = getattr(model, "config", None)
    if not config:
        raise ValueError("model has no config: build it with segforge.create_model so a checkpoint can rebuild it")
    module = model.module if hasattr(model, "module") else model  # DistributedDataParallel
    # safetensors refuses tensors that share memory and non-contiguous ones: store plain copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(config), "info": json.dumps(info, allow_nan=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Reads ``(state_dict, config, info)`` from a checkpoint written by ``save_checkpoint``.

    Raises:
        ValueError: missing, truncated or corrupt file, or not a segforge checkpoint; the message
            names the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        raise ValueError(
            f"checkpoint {path} is a folder; pass the .safetensors file in it"
            + (f", e.g. {found[0]}" if found else " (a run folder holds best.safetensors and last.safetensors)")
        )
    if not path.is_file():
        raise ValueError(
            f"checkpoint {path} does not exist; pass the .safetensors file a training run wrote "
            "(runs/<name>/best.safetensors or last.safetensors)"
        )
    if path.suffix.lower() == ".onnx":
        raise ValueError(
            f"{path} is an exported ONNX model: this command takes the run's .safetensors checkpoint "
            "(segforge predict --engine onnx runs an ONNX model)"
        )
    if path.name == "state.pt":
        raise ValueError(
            f"{path} is a run's resume state (segforge train --resume {path.parent}); give a checkpoint: "
            f"{path.parent / 'best.safetensors'} or {path.parent / 'last.safetensors'}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # safetensors' own error type moved between releases
        raise ValueError(
            f"checkpoint {path} is corrupt or not a safetensors file ({err}); "
            "use another checkpoint of the run (last.safetensors / best.safetensors)"
        ) from err
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not a segforge checkpoint (no model config in its "
            "metadata); for an encoder's ImageNet weights use encoder_weights="
        )
    try:
        config, info = json.loads(metadata["config"]), json.loads(metadata.get("info", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} has damaged metadata ({err}); use another checkpoint of the run") from err
    return (state, *check_model_config(config, info, f"checkpoint {path}"))


def model_from_config(config: dict, source: str) -> nn.Module:
    """Builds (untrained) the model a checked config (``check_model_config``) describes; ``source`` names the
    file in errors. Nothing is downloaded: ``encoder_weights`` there is a record of the starting weights.
    Under ``torch.device("meta")`` it costs nothing (``OnnxSegmenter`` reads the geometry so)."""
    from segforge.models import create_model

    recorded = config.get("encoder_weights")  # a record ({"weights", "file", "sha256"}) is kept, never loaded
    try:
        return create_model(
            config["name"],
            config["num_classes"],
            in_channels=config["in_channels"],
            encoder=config.get("encoder"),
            encoder_weights=recorded if isinstance(recorded, dict) else None,
            # a checkpoint from before decoder widths were a choice: its decoders were as wide as the skips
            decoder_channels=config.get("decoder_channels", "skips"),
            temporal=config.get("temporal"),
        )
    except ValueError as err:  # a model or encoder this segforge does not have
        raise ValueError(f"{source}: {err}") from None


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuilds the model of a checkpoint and loads its weights; returns ``(model, info)``.

    Nothing is downloaded: the checkpoint holds every weight, and its config only records which
    ImageNet weights the encoder started from (``config["encoder_weights"]``).
    """
    state, config, info = read_checkpoint(path)
    model = model_from_config(config, f"checkpoint {path}")
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatch = next((key for key in state if key in own and state[key].shape != own[key].shape), None)
    if missing or unexpected or mismatch:
        problems = [f"{len(missing)} missing tensors {first_keys(missing)}"] if missing else []
        problems += [f"{len(unexpected)} unexpected tensors {first_keys(unexpected)}"] if unexpected else []
        if mismatch:
            problems.append(
                f"{mismatch!r} is {tuple(state[mismatch].shape)} in the file, {tuple(own[mismatch].shape)} in the model"
            )
        raise ValueError(
            f"checkpoint {path} holds the weights of another model than the {config['name']} "
            f"({config.get('encoder') or 'own encoder'}, {config['num_classes']} classes) its config "
            f"names: {'; '.join(problems)}; the file is damaged or was edited"
        )
    model.load_state_dict(state, strict=True)
    model.info = info
    return model.to(map_location), info


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically saves a training state made of tensors, numbers, strings, lists and dicts."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a training state with ``weights_only=True``: no arbitrary objects are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training state {path} does not exist; --resume needs the run folder of an earlier run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and unpickler errors share no base class
        raise ValueError(
            f"training state {path} is corrupt or holds more than tensors and numbers ({err}); "
            "resume from the last good run folder, or start a new run"
        ) from err
