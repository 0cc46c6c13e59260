"""ONNX export of every architecture, and an ONNX Runtime engine for prediction.

``export_onnx`` writes a model with a dynamic batch, height and width (``torch.export`` + the
ONNX exporter): padding to the network's stride, SegNet's max-unpooling, PSPNet's pyramid pooling
(bins computed from the input size at run time) and the crop back to the input size are all in the
graph. The original U-Net is the exception that the architecture imposes: its valid convolutions
and 2x2 poolings only take sides of 16k + 124 pixels, so its height and width are declared as
``16·k + 124`` and its logits are ``16·k − 60`` (``segforge predict`` mirror-pads to such a size).
The export is checked against PyTorch on two input sizes before it is written.

``OnnxSegmenter`` wraps an exported file as a module that ``segforge.inference`` uses like the PyTorch
model: the network runs in ONNX Runtime; reading images, tiling, blending and the argmax stay as they are.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segforge.files import atomic_write
from segforge.models.geometry import geometry_of

INPUT, OUTPUT = "image", "logits"
METADATA_KEY = "segforge"
_MISSING = "ONNX export and the onnx engine need onnx, onnxscript and onnxruntime: pip install 'segforge[onnx]'"


@dataclass(frozen=True)
class ExportCheck:
    """How the exported graph compared with PyTorch: the input shapes tried and the largest logit
    difference on each, relative to the largest logit magnitude."""

    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: tuple[float, ...]
    max_abs_logit: tuple[float, ...]


def example_sizes(model: nn.Module) -> tuple[int, int, int]:
    """(export size, two check sizes): a valid-convolution network's smallest valid size whose output
    covers 64 pixels and the next two (the original U-Net: 252, 268, 284); the others, the smallest
    multiple of the stride of at least 64 (or the architecture's minimum), then sizes off the stride
    grid, so a graph that kept the example's padding would fail the check."""
    geometry = geometry_of(model)
    if geometry.valid_convolutions:
        base = geometry.input_size(64)
        return base, base + geometry.tile_period, base + 2 * geometry.tile_period
    stride = max(geometry.tile_period, 1)
    base = -(-max(geometry.min_size, 64) // stride) * stride
    return base, base + stride // 2 + 1, base + stride + 3


def _dynamic_shapes(model: nn.Module) -> tuple[dict, ...]:
    dim, geometry = torch.export.Dim, geometry_of(model)
    if geometry.valid_convolutions:  # tile_period x k + offset (U-Net: 16k + 124, k >= 4: even poolings)
        period, offset = geometry.tile_period, geometry.offset
        smallest = (geometry.min_size - offset) // period
        rows, cols = dim("k_height", min=smallest), dim("k_width", min=smallest)
        return ({0: dim("batch"), 2: period * rows + offset, 3: period * cols + offset},)
    smallest = max(geometry.min_size, 2)
    return ({0: dim("batch"), 2: dim("height", min=smallest), 3: dim("width", min=smallest)},)


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines, its warnings about torchvision ops and FutureWarnings."""
    loggers = [
        logging.getLogger(name)
        for name in (
            "torch.onnx",
            "torch._dynamo",
            "torch.export",
            "onnx_ir",
            "onnxscript",
            "torch.fx.experimental.symbolic_shapes",
        )
    ]
    levels = [logger.level for logger in loggers]
    text = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            warnings.simplefilter("ignore")
            yield text
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_exportable(model: nn.Module) -> None:
    """Raises ValueError, saying why and what to use instead, for a model this export cannot trace."""
    name = getattr(model, "config", {}).get("name")
    if getattr(model, "inputs", "images") == "series":
        raise ValueError(
            f"{name} reads a time series date by date (a loop whose length is the series'), which "
            "this ONNX export does not trace; predict time series with segforge predict (the PyTorch engine)"
        )
    if getattr(model, "task", "semantic") == "instance":
        raise ValueError(
            f"{name} is not exported to ONNX: how many boxes and masks it gives depends on the image "
            "(top-k proposals per pyramid level, NMS, score thresholds), and this plain-PyTorch Mask R-CNN computes "
            "them with Python loops over images and levels that the exporter would trace into the shapes of one "
            "example image; predict with segforge predict --checkpoint model.safetensors (the PyTorch engine)"
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    info: dict | None = None,
    size: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportCheck | None:
    """Writes ``model`` as an ONNX file with dynamic batch, height and width (see the module notes).

    Args:
        model: a model built by ``segforge.create_model`` (its config goes into the file's metadata).
        info: checkpoint information to keep with it (classes, palette, mean, std).
        size: side of the example input (default: ``example_sizes(model)[0]``).
        check: run the exported file in ONNX Runtime on two input sizes and compare with PyTorch;
            raise if any logit differs by more than ``atol + rtol · max|logit|``.

    Returns:
        the comparison, or None when ``check`` is off.

    Raises:
        ValueError: the export or its check failed (the message says which and how).
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:  # torch's exporter needs onnxscript (and its onnx_ir), the check onnxruntime
        raise ValueError(f"{_MISSING} (missing: {', '.join(missing)})")
    config = getattr(model, "config", None)
    if not config:
        raise ValueError("model has no config: build it with segforge.create_model (or load a checkpoint)")
    check_exportable(model)
    if size is not None:
        smallest = max(geometry_of(model).min_size, 2)
        if size < smallest:  # (the exporter's own message is a page of symbolic-shape reasoning)
            raise ValueError(f"--size {size} is smaller than {config.get('name')} takes: give {smallest} or more")
    device, training = next(model.parameters()).device, model.training
    try:  # exported and checked on the CPU in eval mode; the caller's model is given back as it was
        return _export(model.cpu().eval(), Path(path), info=info, size=size, check=check, atol=atol, rtol=rtol)
    finally:
        model.to(device).train(training)


def _export(
    model: nn.Module, path: Path, *, info: dict | None, size: int | None, check: bool, atol: float, rtol: float
) -> ExportCheck | None:
    import onnx_ir as ir

    export_size, *check_sizes = example_sizes(model)
    export_size = size or export_size
    example = torch.randn(2, model.in_channels, export_size, export_size)
    with _quiet() as log:
        try:
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=_dynamic_shapes(model),
                dynamo=True,
                verbose=False,
            )
        except Exception as err:  # torch.export raises many unrelated types
            raise ValueError(
                f"exporting {model.config.get('name')} to ONNX failed: {err}\n{log.getvalue()[-4000:]}"
            ) from err
    valid = geometry_of(model).valid_convolutions
    if not valid:  # the logits have the input's size; name the dims so (instead of the padding arithmetic)
        program.model.graph.outputs[0].shape = ir.Shape(["batch", model.num_classes, "height", "width"])
    metadata = {"config": model.config, "info": info or {}, "valid_convolutions": valid}
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    path = atomic_write(path, lambda tmp: program.save(tmp))
    if not check:
        return None
    shapes = ((2, model.in_channels, export_size, export_size), (1, model.in_channels, check_sizes[0], check_sizes[1]))
    return check_export(model, path, shapes, atol=atol, rtol=rtol)


def check_export(
    model: nn.Module, path: str | os.PathLike, shapes, *, atol: float = 1e-4, rtol: float = 1e-3
) -> ExportCheck:
    """Runs the file at ``path`` in ONNX Runtime on random inputs of ``shapes`` and compares its
    logits with ``model``'s; raises ValueError (naming the shape) beyond ``atol + rtol · max|logit|``."""
    session = _session(path, "cpu")
    generator = torch.Generator().manual_seed(0)
    diffs, scales = [], []
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        try:
            (got,) = session.run([OUTPUT], {INPUT: x.numpy()})
        except Exception as err:  # onnxruntime's errors are its own pybind types
            raise ValueError(f"the exported {path} does not run on input {shape}: {err}") from err
        if got.shape != expected.shape:
            raise ValueError(f"the exported {path} gives logits {got.shape} on input {shape}, PyTorch {expected.shape}")
        diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
        if diff > atol + rtol * scale:
            raise ValueError(
                f"the exported {path} differs from PyTorch on input {shape}: max |Δlogit| = {diff:.3g} "
                f"(logits up to {scale:.3g}); report it with the model name and torch/onnxruntime "
                "versions"
            )
        diffs.append(diff)
        scales.append(scale)
    return ExportCheck(tuple(tuple(s) for s in shapes), tuple(diffs), tuple(scales))


def _session(path: str | os.PathLike, device: torch.device | str):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ValueError(f"{_MISSING} ({err})") from err
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"ONNX model {path} does not exist; write one with "
            "segforge export --checkpoint runs/<name>/best.safetensors --format onnx"
        )
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("this onnxruntime has no CUDA provider: install onnxruntime-gpu, or use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # onnxruntime's errors are its own pybind types
        raise ValueError(
            f"ONNX model {path} is corrupt or not an ONNX file ({err}); export it again with segforge export"
        ) from err


class OnnxSegmenter(nn.Module):
    """An ONNX file written by ``export_onnx``, run by ONNX Runtime, with the attributes the
    prediction code reads from a segforge model (``num_classes``, ``in_channels``, ``config`` and
    ``geometry``, the exported architecture's, built from its config on the meta device). ``forward``
    takes and returns tensors.
    """

    def __init__(self, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.session = _session(path, device)
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise ValueError(
                f"ONNX model {path} was not written by segforge export (no class or normalisation "
                "metadata); export the checkpoint with segforge export --format onnx"
            )
        from segforge.checkpoint import check_model_config, model_from_config

        try:
            metadata = json.loads(text)
            config, info = metadata["config"], metadata["info"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"ONNX model {path} has damaged segforge metadata ({type(err).__name__}: {err}); "
                "export the checkpoint again with segforge export"
            ) from None
        self.config, self.info = check_model_config(config, info, f"ONNX model {path}")
        self.num_classes, self.in_channels = self.config["num_classes"], self.config["in_channels"]
        with torch.device("meta"):  # shapes only: no weights are made
            architecture = model_from_config(self.config, f"ONNX model {path}")
        self.geometry = architecture.geometry
        #: the exported network in PyTorch, on the meta device (not a submodule: ``to`` leaves it), whose
        #: memory stands for the graph's (``segforge.inference.memory``)
        self.__dict__["architecture"] = architecture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.path} takes (N, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        for side in x.shape[-2:]:
            self.geometry.output_size(int(side))  # raises with the nearest valid sizes
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT], {INPUT: array})
        return torch.from_numpy(logits).to(x.device)


def load_onnx(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[OnnxSegmenter, dict]:
    """``(model, info)`` for an exported file, like ``segforge.checkpoint.load_model``."""
    model = OnnxSegmenter(path, device=device)
    return model, model.info


__all__ = ["ExportCheck", "OnnxSegmenter", "check_export", "example_sizes", "export_onnx", "load_onnx"]
