"""A model loaded for prediction as ``segforge predict`` and ``segforge serve`` run it: a checkpoint in PyTorch,
its batch norms folded into the convolutions and its weights channels-last, or an exported ``.onnx`` file in
ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def load_for_inference(
    checkpoint: str | Path, engine: str = "auto", device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict]:
    """(model, info) for prediction: a checkpoint (``engine="torch"``) or an exported .onnx file (``"onnx"``);
    ``"auto"``: by the file's suffix.

    Raises:
        ValueError: an engine that does not fit the file, or what ``load_model`` / ``load_onnx`` refuse.
    """
    checkpoint = str(checkpoint)
    if engine == "auto":
        engine = "onnx" if checkpoint.endswith(".onnx") else "torch"
    if engine == "onnx":
        if not checkpoint.endswith(".onnx"):
            raise ValueError(
                f"--engine onnx runs an exported model: export {checkpoint} first with segforge export "
                f"--checkpoint {checkpoint} --format onnx, then pass the .onnx file"
            )
        from segforge.export import load_onnx

        return load_onnx(checkpoint, device=device)
    if checkpoint.endswith(".onnx"):
        raise ValueError(f"{checkpoint} is an ONNX model: use --engine onnx (or auto)")
    from segforge.checkpoint import load_model
    from segforge.models.fold import fold_batch_norm

    model, info = load_model(checkpoint, map_location=device)
    model.eval()
    if model.task == "instance":  # (RoIAlign samples its feature maps; they stay contiguous)
        return fold_batch_norm(model, inplace=True), info
    return fold_batch_norm(model.to(memory_format=torch.channels_last), inplace=True), info
