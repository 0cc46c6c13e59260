"""Where a training step's time goes: the PyTorch profiler over SGD steps, by phase and by operation.

    PYTHONPATH=. .venv/bin/python bench/profile_step.py                       # unet_padded-R34, pspnet, segnet
    PYTHONPATH=. .venv/bin/python bench/profile_step.py --models unet_padded:resnet34 --size 256 --batch 4

Each model trains as ``segforge train`` runs it (channels-last unless ``--contiguous``, freed memory kept,
SGD with momentum, cross entropy, the loss's inputs on the CPU) on random images of ``--size``; after
``--warmup`` steps, ``--steps`` steps are profiled. The phases (data to device, forward, loss, backward,
optimizer step, zero_grad) are ``record_function`` ranges; the operations are the profiler's own CPU time
of each aten operation (convolution forward and backward, batch norm, activation, pooling, upsampling,
concatenation, the optimizer's element-wise updates...), summed into families. Prints one markdown table
per model: milliseconds per step and share of the step.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import segforge
from segforge.config import OptimizerConfig
from segforge.losses import create_loss
from segforge.models.segmenter import full_size_forward
from segforge.runtime import keep_freed_memory
from segforge.training.optim import create_optimizer

PHASES = ("to_device", "forward", "loss", "backward", "optimizer", "zero_grad")
# operation families, first match wins (aten names as the CPU profiler reports them)
FAMILIES = [
    ("convolution backward", r"convolution_backward|mkldnn_convolution_backward|slow_conv.*backward"),
    ("convolution", r"convolution|_convolution|mkldnn_convolution|conv2d|conv_transpose"),
    ("batch norm backward", r"batch_norm_backward|native_batch_norm_backward"),
    ("batch norm", r"batch_norm"),
    ("activation backward", r"threshold_backward|relu_backward"),
    ("activation", r"relu|clamp|hardtanh|silu|sigmoid"),
    ("pooling (and backward)", r"max_pool|max_unpool|adaptive_avg_pool|avg_pool"),
    ("upsampling (and backward)", r"upsample|interpolate|grid_sampler"),
    ("concatenate / copy", r"aten::cat|aten::copy_|contiguous|clone|to_dense|_to_copy"),
    ("loss", r"nll_loss|log_softmax|cross_entropy|_softmax"),
    ("optimizer arithmetic", r"_foreach|aten::add_|aten::mul_|aten::addcmul_|aten::lerp_|aten::sqrt|aten::div_"),
    ("zero / fill", r"zero_|fill_|aten::zeros|aten::empty"),
]


def _family(name: str) -> str:
    for family, pattern in FAMILIES:
        if re.search(pattern, name):
            return family
    return "other"


def profile_model(spec: str, *, size: int, batch: int, classes: int, steps: int, warmup: int, contiguous: bool) -> str:
    name, _, encoder = spec.partition(":")
    torch.manual_seed(0)
    model = segforge.create_model(name, classes, encoder=encoder or None)
    memory_format = torch.contiguous_format if contiguous else torch.channels_last
    model = model.to(memory_format=memory_format).train()
    aux_weight = 0.4 if model.aux_head is not None else None  # PSPNet's auxiliary loss, as segforge train weighs it
    loss_fn = create_loss("ce", ignore_index=255, validate=False, aux_weight=aux_weight)
    optimizer = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    images = torch.randn(batch, model.in_channels, size, size)
    masks = torch.randint(0, classes, (batch, size, size))

    def step() -> None:
        with record_function("zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with record_function("to_device"):
            x = images.to(memory_format=memory_format)
        with record_function("forward"):
            output = full_size_forward(model, x)
        with record_function("loss"):
            loss = loss_fn(output, masks)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - started) / steps * 1e3
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key in PHASES}
    families: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key.startswith("aten::"):
            families[_family(e.key)] += e.self_cpu_time_total / 1e3 / steps
    lines = [
        f"**{spec}**, batch {batch} of {size}x{size}, {'contiguous' if contiguous else 'channels-last'}: "
        f"{wall:.0f} ms per step (profiled; the profiler adds its own overhead)",
        "",
        "| phase | ms/step | share |",
        "|---|---:|---:|",
    ]
    total = sum(phases.values()) or 1.0
    lines += [f"| {p} | {phases.get(p, 0):.0f} | {phases.get(p, 0) / total:.0%} |" for p in PHASES]
    lines += ["", "| operations | self ms/step | share |", "|---|---:|---:|"]
    op_total = sum(families.values()) or 1.0
    for family, ms in sorted(families.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {family} | {ms:.0f} | {ms / op_total:.0%} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet_padded:resnet34", "pspnet", "segnet"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--contiguous", action="store_true", help="NCHW tensors instead of channels-last")
    args = parser.parse_args()
    kept = keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, freed memory kept: {kept}\n")
    for spec in args.models:
        print(
            profile_model(
                spec,
                size=args.size,
                batch=args.batch,
                classes=args.classes,
                steps=args.steps,
                warmup=args.warmup,
                contiguous=args.contiguous,
            )
        )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
