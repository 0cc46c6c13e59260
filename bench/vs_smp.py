"""segforge and segmentation_models.pytorch side by side, in one run: inference and training images per second.

    bash ../shared/peers/setup.sh && $TMPDIR/peers/venv/bin/pip install -e .   # the peers' environment, once
    $TMPDIR/peers/venv/bin/python bench/vs_smp.py                                 # U-Net R34 and R50, 256², batch 4
    $TMPDIR/peers/venv/bin/python bench/vs_smp.py --size 256 --batch 4 --rounds 3 --repeats 3

smp lives in a separate environment (``../shared/peers``), never in segforge's dependencies. Every cell
(a library's model at one setting) runs in a fresh process, and the cells take turns in rounds, so the
machine's drift falls on all of them alike; each figure is the median over the rounds of the median
over ``--repeats`` timed calls after ``--warmup``. Settings: **as shipped** is what each library does
when used as documented (segforge: channels-last tensors and freed memory kept, as its commands run,
batch norm folded for inference as ``segforge predict`` does, the training step compiled as a long
``segforge train`` run does (``train.compile: auto``; its compile time is reported apart, not in the
rate) and fused optimizer kernels; smp: contiguous tensors, glibc's default allocator, eager PyTorch),
**the same** gives the other library those settings too. Training is an SGD step (momentum 0.9) on
cross entropy; FLOPs are counted by ``torch.utils.flop_counter`` for the forward pass and for the whole
training step, so training GFLOP/s is measured, not assumed to be three forward passes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

# what differs between the libraries as shipped: memory format, allocator, batch norm folded for inference,
# the training step compiled, fused optimizer kernels
SETTINGS = ("format", "memory", "fold", "compile", "fused")
PAIRS = {  # name: (segforge model, encoder, smp architecture, encoder)
    "U-Net ResNet-34": ("unet_padded", "resnet34", "Unet", "resnet34"),
    "U-Net ResNet-50": ("unet_padded", "resnet50", "Unet", "resnet50"),
}


def _keep_freed_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")  # as segforge.runtime.keep_freed_memory (applied to smp too, for "the same")
    libc.mallopt(-4, 0)
    libc.mallopt(-1, 2**31 - 1)


def _build(library: str, architecture: str, encoder: str, classes: int):
    if library == "segforge":
        import segforge

        return segforge.create_model(architecture, classes, encoder=None if encoder == "default" else encoder)
    try:  # only in the peers' environment: smp does not import beside segforge's CPU torch
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise SystemExit(
            f"smp is not importable here ({err}): run this script with the peers' environment, "
            "bash ../shared/peers/setup.sh, then $TMPDIR/peers/venv/bin/python bench/vs_smp.py"
        ) from None

    return getattr(smp, architecture)(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=classes)


def _median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> dict:
    if args.memory == "keep":
        _keep_freed_memory()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.format == "channels_last" else torch.contiguous_format
    model = _build(args.library, args.architecture, args.encoder, args.classes).to(memory_format=memory_format)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=memory_format)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size))
    parameters = sum(p.numel() for p in model.parameters())

    evaluated = model.eval()
    if args.fold == "on":  # batch norm folded into the convolutions, as `segforge predict` runs a model
        from segforge.models.fold import fold_batch_norm

        evaluated = fold_batch_norm(model)

    def forward() -> None:
        with torch.inference_mode():
            evaluated(x)

    with FlopCounterMode(display=False) as flops:
        forward()
    forward_flops = flops.get_total_flops() / args.batch
    eval_seconds = _median_seconds(forward, args.warmup, args.repeats)

    model.train()
    fused = True if args.fused == "on" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=fused)
    loss_fn = torch.nn.CrossEntropyLoss()
    stepped = model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = stepped(x)
        if isinstance(output, tuple):  # segforge's PSPNet in training: (logits, auxiliary logits), weighed 1 : 0.4
            loss = loss_fn(output[0], target) + 0.4 * loss_fn(output[1], target)
        else:
            loss = loss_fn(output, target)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as flops:
        step()  # (eager: the FLOPs of the computation, whatever runs it)
    step_flops = flops.get_total_flops() / args.batch
    compile_seconds = 0.0
    if args.compile == "on":
        stepped = torch.compile(model)
        started = time.perf_counter()
        step()
        compile_seconds = time.perf_counter() - started
    train_seconds = _median_seconds(step, args.warmup, args.repeats)
    return {
        "parameters": parameters,
        "forward_gflop": forward_flops / 1e9,
        "step_gflop": step_flops / 1e9,
        "eval_img_s": args.batch / eval_seconds,
        "train_img_s": args.batch / train_seconds,
        "compile_s": compile_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    for name in ("library", "architecture", "encoder", *SETTINGS):  # one cell, in its own process
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    shipped = {
        "segforge": ("channels_last", "keep", "on", "on", "on"),
        "smp": ("contiguous", "default", "off", "off", "off"),
    }
    cells = []  # (pair, library, setting, architecture, encoder, *SETTINGS)
    for pair in args.pairs:
        sf_model, sf_encoder, smp_model, smp_encoder = PAIRS[pair]
        for library, architecture, encoder in (("segforge", sf_model, sf_encoder), ("smp", smp_model, smp_encoder)):
            for setting, owner in (
                ("as shipped", library),
                ("the same", "smp" if library == "segforge" else "segforge"),
            ):
                cells.append((pair, library, setting, architecture, encoder, *shipped[owner]))
    results: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for round_ in range(args.rounds):
        for cell in cells:
            pair, library, setting, architecture, encoder, *values = cell
            command = [sys.executable, __file__, "--library", library, "--architecture", architecture]
            command += ["--encoder", encoder, *(f"--{name}={value}" for name, value in zip(SETTINGS, values))]
            command += [
                f"--{k}={getattr(args, k)}" for k in ("size", "batch", "classes", "threads", "warmup", "repeats")
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"{cell} failed: {done.stderr[-800:]}", file=sys.stderr)
                continue
            results[cell].append(json.loads(lines[-1][len("RESULT ") :]))
            print(f"round {round_ + 1}: {library} {pair} {setting}: {results[cell][-1]}", file=sys.stderr, flush=True)

    import torch

    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} of 3x{args.size}x{args.size}, "
        f"{args.classes} classes; median of {args.rounds} rounds x {args.repeats} calls\n"
    )
    print(
        "| model | library | setting | params (M) | GFLOP/img fwd | eval img/s | eval GFLOP/s | train img/s "
        "| train GFLOP/s | train / eval GFLOP/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell, runs in results.items():
        if not runs:
            continue
        pair, library, setting = cell[:3]
        first = runs[0]
        eval_rate = statistics.median(r["eval_img_s"] for r in runs)
        train_rate = statistics.median(r["train_img_s"] for r in runs)
        eval_gflops, train_gflops = eval_rate * first["forward_gflop"], train_rate * first["step_gflop"]
        print(
            f"| {pair} | {library} | {setting} | {first['parameters'] / 1e6:.1f} | {first['forward_gflop']:.1f} | "
            f"{eval_rate:.2f} | {eval_gflops:.0f} | {train_rate:.3f} | {train_gflops:.0f} | "
            f"{train_gflops / eval_gflops:.0%} |"
        )
    print()
    for pair in args.pairs:
        rate = {
            (library, setting, kind): statistics.median(r[kind] for r in runs)
            for (p, library, setting, *_), runs in results.items()
            if p == pair and runs
            for kind in ("eval_img_s", "train_img_s")
        }
        try:
            ratios = [
                rate["segforge", "as shipped", kind] / rate["smp", "as shipped", kind]
                for kind in ("eval_img_s", "train_img_s")
            ]
        except KeyError:
            print(f"{pair}: a cell failed; see above")
            continue
        print(f"{pair}, both as shipped: segforge / smp = {ratios[0]:.2f}x in inference, {ratios[1]:.2f}x in training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
