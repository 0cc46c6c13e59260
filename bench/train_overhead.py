"""``segforge train`` end to end against the bare step it is built on, paired, on CamVid crops.

    PYTHONPATH=. .venv/bin/python bench/train_overhead.py                    # U-Net R34, 256² crops, batch 4
    PYTHONPATH=. .venv/bin/python bench/train_overhead.py --rounds 3 --set data.workers=1
    PYTHONPATH=. .venv/bin/python bench/train_overhead.py --model segnet_basic --encoder default

Each round runs, each in a fresh process and in alternating order:

* **segforge train**: ``segforge train --iterations N --val-split none`` on the shared CamVid training
  images, as a user runs it: the data loader's workers decoding PNGs, the recipe's augmentation, loss and optimizer, the
  confusion matrix of every batch, the time budget's and the signals' checks. Its step time is the run's
  own measure (``state.pt``'s ``progress``: every step after the first, from fetching the batch to the
  metrics' update).
* **the bare step**: the same run's network, loss, optimizer and schedule, built by the training loop's
  own setup from that run's ``config.yaml``, stepped on one batch of its data held in memory: zero the
  gradients, forward, loss, backward, optimizer and schedule step, nothing else. Timed the same way
  (every step after the first).

The ratio of the two is what everything around the step costs; the issue's target is within 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"


def bare_step(config_path: Path, steps: int, compile_mode: str) -> float:
    """Seconds per step of the run's own network, loss and optimizer on one batch held in memory."""
    import torch

    from segforge.config import load_config
    from segforge.runtime import keep_freed_memory
    from segforge.training import distributed
    from segforge.training.budget import Clock
    from segforge.training.loop import _start
    from segforge.training.task import SegmentationTask

    keep_freed_memory()  # as the command line does
    config = load_config(config_path, {"data.workers": 0, "train.compile": "off"})
    process, device = distributed.Process(), torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        session = _start(config, SegmentationTask, None, Path(folder), process, device, False, Clock())
    task, optimizer, scheduler = session.task, session.optimizer, session.scheduler
    if compile_mode == "on":
        session.compilation.switch(task)
    batch = task.to_device(next(session.batches), device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = task.forward(batch)
        loss.item()  # (the loop reads the loss every step, for the NaN check)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seconds.append(time.perf_counter() - started)
    return sum(seconds[1:]) / (steps - 1)


def segforge_step(args: argparse.Namespace, out: Path) -> tuple[float, Path]:
    """Seconds per step of a ``segforge train`` run (its own measure), and its config."""
    sys.path.insert(0, str(ROOT))
    from segforge.checkpoint import load_state

    encoder = ["--encoder", args.encoder] if args.encoder != "default" else []
    command = [sys.executable, "-m", "segforge", "train", "--data", str(args.data), "--model", args.model, *encoder]
    command += ["--crop-size", str(args.crop), "--batch-size", str(args.batch), "--iterations", str(args.iterations)]
    command += ["--val-split", "none"]  # no validation: nothing but the steps (and a save at the end)
    command += ["--compile", args.compile, "--out", str(out), "--name", "run"]
    for value in args.set:
        command += ["--set", value]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    progress = load_state(out / "run" / "state.pt")["progress"]
    return progress["step_seconds"] / progress["timed_steps"], out / "run" / "config.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet_padded")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", choices=["on", "off"], default="off")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to segforge train")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # worker: a run's config.yaml
    args = parser.parse_args()
    if args.bare is not None:
        sys.path.insert(0, str(ROOT))
        print(f"BARE {bare_step(args.bare, args.iterations, args.compile)!r}")
        return 0
    if not (args.data / "train").is_dir():
        raise SystemExit(f"CamVid is not in {args.data}: pass --data (the folder with train/ and trainannot/)")

    ratios, trains, bares = [], [], []
    with tempfile.TemporaryDirectory(prefix="segforge-overhead-") as scratch:
        config = None
        for round_ in range(args.rounds):
            order = ["train", "bare"] if round_ % 2 == 0 else ["bare", "train"]
            if config is None:  # the bare step needs a run's config: the first round trains first
                order = ["train", "bare"]
            times = {}
            for side in order:
                if side == "train":
                    times["train"], config = segforge_step(args, Path(scratch) / f"round{round_}")
                else:
                    worker = [sys.executable, __file__, "--bare", str(config), "--iterations", str(args.iterations)]
                    done = subprocess.run(worker + ["--compile", args.compile], capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"the bare step failed:\n{done.stderr}")
                    times["bare"] = float(next(x for x in done.stdout.splitlines() if x.startswith("BARE "))[5:])
            trains.append(times["train"])
            bares.append(times["bare"])
            ratios.append(times["train"] / times["bare"])
            print(
                f"round {round_ + 1} ({' then '.join(order)}): segforge train {times['train']:.3f} s per step, "
                f"bare step {times['bare']:.3f} s: {ratios[-1]:.3f}x",
                flush=True,
            )
    settings = " ".join(args.set) or "defaults"
    print(
        f"{args.model} {args.encoder}, {args.crop}² crops, batch {args.batch}, compile {args.compile}, {settings}: "
        f"medians over {args.rounds} rounds: segforge train {statistics.median(trains):.3f} s per step, bare step "
        f"{statistics.median(bares):.3f} s, ratio {statistics.median(ratios):.3f}x "
        f"(per round {min(ratios):.3f}-{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
