"""How close ``segforge.inference.memory``'s count comes to the memory a real forward pass takes.

    PYTHONPATH=. .venv/bin/python bench/memory.py --size 1024 --models unet segnet_basic fcn8s pspnet unet_padded
    PYTHONPATH=. .venv/bin/python bench/memory.py --size 12000 --count-only   # the count alone (no real pass)

For each model, in a fresh process with freed memory returned to the kernel (``SEGFORGE_KEEP_FREED_MEMORY=0``,
so the resident set measures this pass alone): the count on the meta device (``forward_peak_bytes``), then one
real inference pass, its peak resident memory above the level before it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _resident_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def _child(name: str, size: int) -> dict:
    import torch

    from segforge import create_model
    from segforge.inference.memory import forward_peak_bytes
    from segforge.models.segmenter import full_size_forward

    model = create_model(name, 5).eval()
    x = torch.randn(1, model.in_channels, size, size)
    small = model.geometry.input_size(64)
    with torch.no_grad():  # a first, small pass: the allocator and the kernels' own set-up are not counted
        full_size_forward(model, torch.randn(1, model.in_channels, small, small))
    counted = forward_peak_bytes(model, tuple(x.shape))
    before = _resident_bytes()
    with torch.no_grad():
        full_size_forward(model, x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"counted": counted, "measured": peak - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--models", nargs="+", default=["unet", "segnet_basic", "fcn8s", "pspnet", "unet_padded"])
    parser.add_argument("--count-only", action="store_true", help="print the count alone, for sizes no machine holds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_only:
        from segforge import create_model
        from segforge.inference.memory import forward_peak_bytes

        print(f"one {args.size}x{args.size} image, inference: the activations alive at once, counted\n")
        print("| model | counted (GB) |")
        print("|---|---:|")
        for name in args.models:
            model = create_model(name, 5).eval()
            counted = forward_peak_bytes(model, (1, model.in_channels, args.size, args.size))
            print(f"| {name} | {counted / 2**30:,.1f} |")
        return 0
    if args.child:
        print("RESULT " + json.dumps(_child(args.child, args.size)), flush=True)
        return 0
    env = dict(os.environ, SEGFORGE_KEEP_FREED_MEMORY="0")
    print(f"one {args.size}x{args.size} image, inference, freed memory returned to the kernel\n")
    print("| model | counted (MB) | measured peak above the start (MB) | measured / counted |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, "--size", str(args.size)],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
        if line is None:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1:]} | | |")
            continue
        result = json.loads(line[len("RESULT ") :])
        counted, measured = result["counted"] / 2**20, result["measured"] / 2**20
        print(f"| {name} | {counted:,.0f} | {measured:,.0f} | {measured / counted:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
