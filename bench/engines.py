"""ONNX Runtime against PyTorch: forward-pass time and achieved GFLOP/s of every architecture.

    PYTHONPATH=. .venv/bin/python bench/engines.py --size 512 --repeats 5
    PYTHONPATH=. .venv/bin/python bench/engines.py --models segnet_basic unet_padded --size 256

Each model (random weights, 2 classes, 3 input channels) is exported with ``segforge.export``
(dynamic sizes, checked against PyTorch) and timed on one ``size x size`` image: PyTorch as
``segforge predict`` runs it (eval, batch norm folded, channels-last, ``inference_mode``) and ONNX
Runtime's CPU provider with its default graph optimisations and threads. The original U-Net takes
the smallest valid input whose output covers ``size``. Median of ``--repeats`` timed passes after
one warm-up; FLOPs from ``segforge.summary``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from models import time_forward  # bench/models.py, beside this script

from segforge import create_model, list_models
from segforge.export import OnnxSegmenter, export_onnx
from segforge.models.fold import fold_batch_norm
from segforge.runtime import keep_freed_memory
from segforge.summary import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list_models())
    args = parser.parse_args()
    kept = keep_freed_memory()  # as segforge predict does; SEGFORGE_KEEP_FREED_MEMORY=0 measures without
    print(
        f"one {args.size}x{args.size} image, {torch.get_num_threads()} threads, median of {args.repeats}, "
        f"freed memory kept: {kept}\n"
    )
    print("| model | GFLOPs | PyTorch ms | PyTorch GFLOP/s | ONNX Runtime ms | ONNX Runtime GFLOP/s | export s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        summary = summarize(name, args.size, num_classes=2, in_channels=3)
        model = create_model(name, 2, in_channels=3).eval()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.onnx"
            started = time.perf_counter()
            export_onnx(model, path)
            export_seconds = time.perf_counter() - started
            engine = OnnxSegmenter(path)
            x = torch.randn(1, 3, summary.input_size, summary.input_size)
            onnx_seconds = time_forward(engine, x, args.repeats)
        fast = fold_batch_norm(model.to(memory_format=torch.channels_last))
        x_last = x.contiguous(memory_format=torch.channels_last)
        torch_seconds = time_forward(fast, x_last, args.repeats)
        gflops = summary.flops / 1e9
        print(
            f"| {name} | {gflops:.1f} | {torch_seconds * 1e3:.0f} | {gflops / torch_seconds:.0f} | "
            f"{onnx_seconds * 1e3:.0f} | {gflops / onnx_seconds:.0f} | {export_seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
