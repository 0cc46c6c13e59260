"""The recipe chosen from the data against the hand-written configs, given the same time on this machine.

    PYTHONPATH=. .venv/bin/python bench/recipe.py                      # all four runs, 30 minutes each
    PYTHONPATH=. .venv/bin/python bench/recipe.py --budget 10m --runs isbi-recipe camvid-recipe

Each run is ``segforge train ... --time-budget B`` (the recipe sees only ``--data``, and the splits the
benchmark prescribes; the configs are ``configs/*.yaml`` as written, the recipe filling only the keys
they leave out), then ``segforge evaluate`` of the best checkpoint on the held-out data at full
resolution: ISBI 2012 slices 25-29 (trained on 0-24; the challenge's test labels were never
released), CamVid's 233 test images (trained on the 367 train images, the 101 val images choosing
the best checkpoint). Runs go one after the other, each with the whole machine. Prints a markdown
table and writes ``runs/bench/recipe/<run>/result.json``. Data: ``../shared/data`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from scores import held_out  # bench/scores.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ISBI_SPLITS = ["--train-split", "train[:25]", "--val-split", "train[25:]"]

# name: (dataset folder, train arguments before the budget, evaluation split)
RUNS = {
    "isbi-recipe": ("isbi2012", ["--data", "{data}", *ISBI_SPLITS], "train[25:]"),
    "isbi-config": ("isbi2012", ["--config", "configs/unet_isbi2012.yaml", "--data", "{data}"], "train[25:]"),
    "camvid-recipe": ("camvid", ["--data", "{data}"], "test"),
    "camvid-config": ("camvid", ["--config", "configs/segnet_basic_camvid.yaml", "--data", "{data}"], "test"),
}


def _run(command: list[str], log: Path) -> float:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        subprocess.run(command, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--budget", default="30m", help="time budget of each run (default 30m)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args = parser.parse_args()
    out = ROOT / "runs" / "bench" / "recipe"
    rows = []
    for name in args.runs:
        folder, train_args, split = RUNS[name]
        data = args.data / folder
        if not data.is_dir():
            print(f"{data} is missing: the shared datasets are not on this machine", file=sys.stderr)
            return 2
        segforge = [sys.executable, "-m", "segforge"]
        train = segforge + [
            "train",
            *(a.format(data=data) for a in train_args),
            "--time-budget",
            args.budget,
            "--out",
            str(out),
            "--name",
            name,
        ]
        (out / name).mkdir(parents=True, exist_ok=True)
        train_seconds = _run(train, out / f"{name}.train.log")
        report = out / name / "eval-held-out"
        evaluate = segforge + [
            "evaluate",
            "--checkpoint",
            str(out / name / "best.safetensors"),
            "--data",
            str(data),
            "--split",
            split,
            "--out",
            str(report),
        ]
        eval_seconds = _run(evaluate, out / f"{name}.eval.log")
        scores = json.loads((report / "report.json").read_text())
        steps = int((out / name / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
        config = (out / name / "config.yaml").read_text()
        result = {
            "run": name,
            "train_command": shlex.join(train[2:]),
            "evaluate_split": split,
            "steps": steps,
            "train_seconds": round(train_seconds),
            "evaluate_seconds": round(eval_seconds),
            "pixel_accuracy": scores["pixel_accuracy"],
            "mean_accuracy": scores["mean_accuracy"],
            "mean_iou": scores["mean_iou"],
            "iou": dict(zip(scores["class_names"], scores["iou"])),
            "config": config,
        }
        (out / name / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        numbers = held_out(scores, membranes=name.startswith("isbi"))
        row = (
            f"| {name} | `{shlex.join(train[3:-4])}` | {steps} | {numbers} | "
            f"{train_seconds / 60:.1f} min + {eval_seconds / 60:.1f} min eval |"
        )
        rows.append(row)
        print(row, flush=True)
    print("\n| run | command (plus --time-budget " + args.budget + ") | steps | held-out result | time |")
    print("|---|---|---:|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
