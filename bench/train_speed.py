"""Training speed of segforge's architectures per setting: memory format x the step compiled, each cell in a
fresh process, the cells in turns over rounds (``bench/vs_smp.py``'s worker and timing).

    PYTHONPATH=. .venv/bin/python bench/train_speed.py                          # 256², batch 4, 2 rounds
    PYTHONPATH=. .venv/bin/python bench/train_speed.py --models unet_padded:resnet34 pspnet --rounds 3
    PYTHONPATH=. .venv/bin/python bench/train_speed.py --models pspnet --settings contiguous:off channels_last:off

Prints a Markdown table: training images/s and GFLOP/s (FLOPs of the whole step counted by
``torch.utils.flop_counter``), the same model's inference GFLOP/s in that memory format (batch norm
folded, as ``segforge predict`` runs it), their ratio, and the seconds the first compiled step took: in
the first round with an empty TorchInductor cache (a fresh one per invocation), and the least of the
later rounds, whose kernels come from that cache (as a second ``segforge train`` of a model finds them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VS_SMP = Path(__file__).with_name("vs_smp.py")
MODELS = ["unet", "unet_padded:resnet34", "unet_padded:resnet50", "pspnet", "fcn8s", "segnet_basic"]
SETTINGS = [  # (format, compile)
    ("contiguous", "off"),
    ("channels_last", "off"),
    ("contiguous", "on"),
    ("channels_last", "on"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="name or name:encoder")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[f"{memory_format}:{compiled}" for memory_format, compiled in SETTINGS],
        help="FORMAT:COMPILE cells, e.g. contiguous:off channels_last:on",
    )
    args = parser.parse_args()
    settings = [tuple(setting.split(":")) for setting in args.settings]
    cache = tempfile.mkdtemp(prefix="segforge-inductor-")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TORCHINDUCTOR_CACHE_DIR=cache)
    results: dict[tuple[str, str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for model in args.models:
            architecture, _, encoder = model.partition(":")
            for memory_format, compiled in settings:
                command = [sys.executable, str(VS_SMP), "--library", "segforge", "--architecture", architecture]
                command += ["--encoder", encoder or "default", "--format", memory_format, "--memory", "keep"]
                command += ["--fold", "on", "--compile", compiled, "--fused", "on"]
                command += [f"--{k}={getattr(args, k)}" for k in ("size", "batch", "classes", "threads")]
                command += [f"--{k}={getattr(args, k)}" for k in ("warmup", "repeats")]
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if not lines:
                    print(f"{model} {memory_format} compile {compiled} failed: {done.stderr[-800:]}", file=sys.stderr)
                    continue
                result = json.loads(lines[-1][len("RESULT ") :])
                results.setdefault((model, memory_format, compiled), []).append(result)
                print(f"round {round_ + 1}: {model} {memory_format} compile {compiled}: {result}", file=sys.stderr)

    import torch

    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} of 3x{args.size}x{args.size}, "
        f"{args.classes} classes, SGD (fused); median of {args.rounds} rounds x {args.repeats} steps\n"
    )
    print(
        "| model | memory format | compiled | GFLOP/img step | train img/s | train GFLOP/s | inference GFLOP/s "
        "| train / inference | first compiled step s: cold / cached |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for (model, memory_format, compiled), runs in results.items():
        train_rate = statistics.median(r["train_img_s"] for r in runs)
        eval_rate = statistics.median(r["eval_img_s"] for r in runs)
        train_gflops = train_rate * runs[0]["step_gflop"]
        eval_gflops = eval_rate * runs[0]["forward_gflop"]
        cached = min((r["compile_s"] for r in runs[1:]), default=float("nan"))
        first = f"{runs[0]['compile_s']:.0f} / {cached:.0f}" if compiled == "on" else "-"
        print(
            f"| {model} | {memory_format} | {compiled} | {runs[0]['step_gflop']:.1f} | {train_rate:.3f} | "
            f"{train_gflops:.0f} | {eval_gflops:.0f} | {train_gflops / eval_gflops:.0%} | {first} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
