"""Forward-pass speed of every architecture on this machine: ms per image and achieved GFLOP/s.

    python bench/models.py --size 256 --batch 1 --repeats 5
    python bench/models.py --train --models unet_padded --size 256 --batch 8   # training steps

``--train`` times one SGD step (forward, cross-entropy, backward, update; channels-last, training
mode) instead and reports ms per step.

FLOPs come from ``segforge.summary`` (torch.utils.flop_counter: convolutions and matrix products,
a multiply-add = 2). Each model runs in eval mode under ``torch.inference_mode`` in the default
(contiguous, NCHW) memory format and in channels-last (NHWC), after a warm-up pass; the median of
``--repeats`` timed passes is reported. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segforge import create_model, list_models
from segforge.runtime import keep_freed_memory
from segforge.summary import summarize


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass (after one warm-up pass)."""
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_training_step(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one SGD step on random labels (after one warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    target = torch.randint(0, model.num_classes, (x.shape[0], *x.shape[-2:]))
    times = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        output = model(x)
        logits = output[0] if isinstance(output, tuple) else output  # PSPNet: (logits, aux) in training
        loss = torch.nn.functional.cross_entropy(logits, target[..., : logits.shape[-2], : logits.shape[-1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--train", action="store_true", help="time SGD steps instead of forward passes")
    args = parser.parse_args()
    kept = keep_freed_memory()  # as segforge commands do; SEGFORGE_KEEP_FREED_MEMORY=0 measures without
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.batch}x3x{args.size}x{args.size}, "
        f"freed memory kept: {kept}\n"
    )
    if args.train:
        print("| model | input | ms per step |")
        print("|---|---|---:|")
        for name in args.models:
            torch.manual_seed(0)
            model = create_model(name, 21).to(memory_format=torch.channels_last).train()
            size = summarize(name, args.size, num_classes=21).input_size
            x = torch.randn(args.batch, model.in_channels, size, size).contiguous(memory_format=torch.channels_last)
            print(
                f"| {name} | {args.batch}x{size}² | {time_training_step(model, x, args.repeats) * 1e3:.0f} |",
                flush=True,
            )
        return
    print("| model | input | GFLOPs/image | NCHW ms/image | NCHW GFLOP/s | NHWC ms/image | NHWC GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        summary = summarize(name, args.size, num_classes=21)
        torch.manual_seed(0)
        model = create_model(name, 21).eval()
        x = torch.randn(args.batch, model.in_channels, summary.input_size, summary.input_size)
        cells = []
        for memory_format in (torch.contiguous_format, torch.channels_last):
            model = model.to(memory_format=memory_format)
            seconds = time_forward(model, x.to(memory_format=memory_format), args.repeats) / args.batch
            cells += [f"{seconds * 1e3:.0f}", f"{summary.flops / seconds / 1e9:.0f}"]
        print(f"| {name} | {summary.input_size} | {summary.flops / 1e9:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
