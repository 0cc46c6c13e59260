"""Trains and evaluates the papers' networks on the shared real data; prints a README results row.

    PYTHONPATH=. .venv/bin/python bench/reproduce.py isbi             # U-Net, ISBI 2012, 25 / 5 slices
    PYTHONPATH=. .venv/bin/python bench/reproduce.py camvid           # SegNet-Basic, CamVid 367 / 233
    PYTHONPATH=. .venv/bin/python bench/reproduce.py camvid --epochs 30 --crop-size 360   # any train flag

Each run is ``segforge train --config configs/<config>.yaml`` plus this script's CPU-budget flags
(printed, and overridable: later flags win), then ``segforge evaluate`` of the best checkpoint on
the held-out split at full resolution. The numbers, the command and the wall-clock times are
printed as a markdown row and saved to ``runs/bench/<name>/result.json``. Data: ``../shared/data``
(or ``--data``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# name: (config, dataset folder, evaluation split, CPU-budget train flags)
RUNS = {
    "isbi": ("configs/unet_isbi2012.yaml", "isbi2012", "train[25:]", []),
    # 240x240 crops of the 360x480 images (a third of the pixels), Adam: converges in a CPU budget
    "camvid": ("configs/segnet_basic_camvid.yaml", "camvid", "test",
               ["--crop-size", "240", "--optimizer", "adam", "--lr", "0.001", "--weight-decay", "0.0005",
                "--schedule", "poly", "--epochs", "12"]),
}
PAPER = {"camvid": "SegNet tutorial (SegNet-Basic): 82.8 / 62.3 / 46.3"}


def _run(command: list[str]) -> float:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=sorted(RUNS))
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args, extra = parser.parse_known_args()
    config, folder, split, budget = RUNS[args.run]
    data = args.data / folder
    if not data.is_dir():
        print(f"{data} is missing: the shared datasets are not on this machine", file=sys.stderr)
        return 2
    name = Path(config).stem
    run = ROOT / "runs" / "bench" / name
    segforge = [sys.executable, "-m", "segforge"]
    train = segforge + ["train", "--config", config, "--data", str(data), "--out", str(run.parent), "--name", name,
                        *budget, *extra]
    train_seconds = _run(train)
    report = run / f"eval-{split}"
    evaluate = segforge + ["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(data),
                           "--split", split, "--out", str(report)]
    eval_seconds = _run(evaluate)
    scores = json.loads((report / "report.json").read_text())
    epochs = sum(1 for _ in open(run / "metrics.csv")) - 1
    result = {"run": args.run, "train_command": shlex.join(train[2:]), "evaluate_split": split, "epochs": epochs,
              "train_seconds": round(train_seconds), "evaluate_seconds": round(eval_seconds),
              "pixel_accuracy": scores["pixel_accuracy"], "mean_accuracy": scores["mean_accuracy"],
              "mean_iou": scores["mean_iou"], "iou": dict(zip(scores["class_names"], scores["iou"]))}
    (run / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    minutes = f"{train_seconds / 60:.0f} min train + {eval_seconds / 60:.1f} min eval, {epochs} epochs"
    if args.run == "isbi":
        numbers = (f"pixel error {100 * (1 - scores['pixel_accuracy']):.2f} %, "
                   f"membrane IoU {100 * scores['iou'][1]:.1f} %, mIoU {100 * scores['mean_iou']:.1f} %")
    else:
        numbers = (f"global acc {100 * scores['pixel_accuracy']:.1f} / class avg acc "
                   f"{100 * scores['mean_accuracy']:.1f} / mIoU {100 * scores['mean_iou']:.1f} "
                   f"({PAPER[args.run]})")
    print(f"\n| {args.run} | `{shlex.join(train[2:])}` | {numbers} | {minutes} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
