"""``segforge train`` end to end against the bare training step it is built on, on CamVid crops.

    PYTHONPATH=. .venv/bin/python bench/train_overhead.py                     # U-Net R34, 256² crops, batch 4
    PYTHONPATH=. .venv/bin/python bench/train_overhead.py --model segnet_basic --iterations 40

One ``segforge train --iterations N`` on the shared CamVid training images (its data loader with 2
workers decoding PNGs, the recipe's augmentation, the confusion matrix of every batch, the progress
bar), then, in a fresh process, the bare step on random tensors of the same shape (``bench/vs_smp.py``'s
worker: model, loss, backward, optimizer, nothing else), both with the same memory format, fused
optimizer kernels and (``--compile``) compilation. segforge's step time is the run's own measure
(``state.pt``'s ``progress``: every step after the first, from fetching the batch to the metrics'
update); the run's whole wall time per step, validation and checkpoints included, is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"
VS_SMP = Path(__file__).with_name("vs_smp.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet_padded")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--compile", choices=["on", "off"], default="off")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"CamVid is not in {args.data}: pass --data (the folder with train/ and trainannot/)")
    sys.path.insert(0, str(ROOT))
    from segforge.checkpoint import load_state

    out = Path(tempfile.mkdtemp(prefix="segforge-overhead-"))
    encoder = ["--encoder", args.encoder] if args.encoder != "default" else []
    command = [sys.executable, "-m", "segforge", "train", "--data", str(args.data), "--model", args.model, *encoder]
    command += ["--crop-size", str(args.crop), "--batch-size", str(args.batch), "--iterations", str(args.iterations)]
    command += ["--eval-steps", str(args.iterations)]  # one validation, at the end (233 full-size test images)
    command += ["--compile", args.compile, "--out", str(out), "--name", "run"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    progress = load_state(out / "run" / "state.pt")["progress"]
    train_step = progress["step_seconds"] / progress["timed_steps"]
    classes = yaml.safe_load((out / "run" / "config.yaml").read_text())["data"]["num_classes"]

    worker = [sys.executable, str(VS_SMP), "--library", "segforge", "--architecture", args.model]
    worker += ["--encoder", args.encoder, "--format", "channels_last", "--memory", "keep", "--fold", "on"]
    worker += ["--compile", args.compile, "--fused", "on", f"--size={args.crop}", f"--batch={args.batch}"]
    worker += [f"--classes={classes}", f"--threads={os.cpu_count()}", "--warmup=2", "--repeats=10"]
    done = subprocess.run(worker, capture_output=True, text=True, check=True)
    bare = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    bare_step = args.batch / bare["train_img_s"]
    print(
        f"{args.model} {args.encoder}, {args.crop}² crops, batch {args.batch}, compile {args.compile}: "
        f"segforge train {train_step:.3f} s per step ({progress['timed_steps']} timed), bare step "
        f"{bare_step:.3f} s: {train_step / bare_step:.2f}x; the whole run {wall:.0f} s for {args.iterations} "
        f"steps ({wall / args.iterations:.2f} s per step, data checks, validation and checkpoints included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
