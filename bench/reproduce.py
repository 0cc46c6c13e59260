"""The papers' networks trained end to end on the shared real data; prints the README table's rows.

    PYTHONPATH=. .venv/bin/python bench/reproduce.py segnet-camvid     # SegNet-Basic, CamVid 367 / 233
    PYTHONPATH=. .venv/bin/python bench/reproduce.py unet-isbi         # U-Net, ISBI 2012 25 / 5 slices
    PYTHONPATH=. .venv/bin/python bench/reproduce.py pretrained-camvid # U-Net on EfficientNet-Lite0 (ImageNet)
    PYTHONPATH=. .venv/bin/python bench/reproduce.py all               # each in turn, skipping finished ones
    PYTHONPATH=. .venv/bin/python bench/reproduce.py segnet-camvid --budget 6h   # another budget (new runs)

Each run is one ``segforge train ... --time-budget B`` (the recipe fills what the command leaves out),
then ``segforge evaluate`` of the run's final weights (``last.safetensors``: no checkpoint is picked
by its test score) on the held-out images at full resolution. Runs are resumable: running the same
command again continues an interrupted run (``segforge train --resume``, its clock counting the
earlier sittings) and, once it is complete, evaluates it. Stop a sitting with Ctrl-C or SIGTERM; the
run saves its state first.

The CamVid runs validate on the 233 test images at every round, so ``metrics.csv`` is the curve of
test mIoU against epochs; the number reported is the final model's, not the best round's. Writes
``runs/bench/reproduce/<run>/`` and copies ``metrics.csv`` and ``result.json`` (small text files) to
``bench/results/<run>/``. Data: ``../shared/data`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from scores import held_out  # bench/scores.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "runs" / "bench" / "reproduce"
RESULTS = ROOT / "bench" / "results"
CAMVID = ["--val-split", "test", "--class-weights", "median_frequency"]

# name: (dataset folder, train arguments, evaluation split, default budget, the paper's numbers)
RUNS = {
    "segnet-camvid": (
        "camvid",
        ["--model", "segnet_basic", *CAMVID],
        "test",
        "3h",
        "SegNet tutorial (SegNet-Basic): 82.8 / 62.3 / 46.3",
    ),
    "pretrained-camvid": (
        "camvid",
        ["--model", "unet_padded", "--encoder", "efficientnet_lite0", "--encoder-weights", "imagenet", *CAMVID],
        "test",
        "3h",
        "same budget as segnet-camvid",
    ),
    "unet-isbi": (
        "isbi2012",
        ["--model", "unet", "--train-split", "train[:25]", "--val-split", "train[25:]"],
        "train[25:]",
        "90m",
        "U-Net paper: pixel error 0.0611 (challenge test set)",
    ),
}


def machine() -> str:
    """One line: CPU model, cores, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _run(command: list[str], log: Path) -> tuple[int, float, float]:
    """Runs ``command``, its output to the terminal and ``log``; returns (exit code, wall s, CPU s)."""
    print("$", shlex.join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                out.write(line)
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its state
            pass
        code = process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, time.perf_counter() - started, cpu


def _curve(metrics: Path) -> list[dict]:
    with open(metrics, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("val_mean_iou")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=[*RUNS, "all"], help="one run, or all: each in turn, skipping finished ones")
    parser.add_argument("--budget", help="time budget of a new run (default: the run's own, see RUNS)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args = parser.parse_args()
    for name in RUNS if args.run == "all" else [args.run]:
        if args.run == "all" and (RESULTS / name / "result.json").exists():
            print(f"{name}: done ({RESULTS / name / 'result.json'})")
            continue
        code = reproduce(name, args.data, args.budget)
        if code != 0:
            return code
    return 0


def reproduce(name: str, data_root: Path, budget_override: str | None) -> int:
    """Starts, continues or evaluates run ``name``; its exit code (non-zero: stopped, run again to continue)."""
    folder, train_args, split, budget, paper = RUNS[name]
    data = data_root / folder
    if not data.is_dir():
        print(f"{data} is missing: the shared datasets are not on this machine", file=sys.stderr)
        return 2
    run = OUT / name
    run.mkdir(parents=True, exist_ok=True)
    sittings_file = run / "sittings.json"
    sittings = json.loads(sittings_file.read_text()) if sittings_file.exists() else []
    segforge = [sys.executable, "-m", "segforge"]
    budget = budget_override or budget
    if (run / "config.yaml").exists():  # a started run keeps its budget
        budget = yaml.safe_load((run / "config.yaml").read_text())["train"]["time_budget"]
    fresh = segforge + [
        "train",
        "--data",
        str(data),
        *train_args,
        "--time-budget",
        budget,
        "--out",
        str(OUT),
        "--name",
        name,
    ]
    train = segforge + ["train", "--resume", str(run)] if (run / "state.pt").exists() else fresh
    code, wall, cpu = _run(train, run / "train.log")
    sittings.append(
        {"ended": time.strftime("%Y-%m-%d %H:%M"), "wall_seconds": round(wall), "cpu_seconds": round(cpu), "exit": code}
    )
    sittings_file.write_text(json.dumps(sittings, indent=2) + "\n")
    if code != 0:
        print(f"training stopped (exit {code}); run the same command again to continue it", file=sys.stderr)
        return code
    report = run / f"eval-{split}"
    evaluate = segforge + [
        "evaluate",
        "--checkpoint",
        str(run / "last.safetensors"),
        "--data",
        str(data),
        "--split",
        split,
        "--out",
        str(report),
    ]
    code, eval_seconds, _ = _run(evaluate, run / "evaluate.log")
    if code != 0:
        return code
    scores = json.loads((report / "report.json").read_text())
    curve = _curve(run / "metrics.csv")
    train_seconds = float(curve[-1]["seconds"]) if curve else sum(s["wall_seconds"] for s in sittings)
    cpu_hours = sum(s["cpu_seconds"] for s in sittings) / 3600
    epochs = float(curve[-1]["epoch"]) if curve and "epoch" in curve[-1] else None
    config = (run / "config.yaml").read_text()
    result = {
        "run": name,
        "command": shlex.join(["segforge", *fresh[3:]]),
        "machine": machine(),
        "sittings": sittings,
        "train_seconds": round(train_seconds),
        "cpu_hours": round(cpu_hours, 2),
        "evaluate_seconds": round(eval_seconds),
        "evaluate_split": split,
        "checkpoint": "last.safetensors",
        "epochs": epochs,
        "pixel_accuracy": scores["pixel_accuracy"],
        "mean_accuracy": scores["mean_accuracy"],
        "mean_iou": scores["mean_iou"],
        "iou": dict(zip(scores["class_names"], scores["iou"])),
        "curve": [
            {"step": int(r["step"]), "epoch": r.get("epoch"), "val_mean_iou": float(r["val_mean_iou"])} for r in curve
        ],
        "config": config,
    }
    saved = RESULTS / name
    saved.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "metrics.csv", saved / "metrics.csv")
    (saved / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "\ncurve (validation mIoU by epoch):",
        ", ".join(f"{r.get('epoch', r['step'])}: {100 * float(r['val_mean_iou']):.1f}" for r in curve),
    )
    numbers = held_out(scores, membranes=name.endswith("isbi"))
    print(
        f"\n| {name} | {numbers} | {paper} | {train_seconds / 3600:.1f} h wall, "
        f"{cpu_hours:.1f} CPU h, {len(sittings)} sitting(s) | {machine()} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
