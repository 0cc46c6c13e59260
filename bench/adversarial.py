"""Adversarial training (Luc et al., 2016) against plain training, at equal time, on ISBI 2012.

    PYTHONPATH=. .venv/bin/python bench/adversarial.py                     # 3 seeds x 2 arms, 5 minutes each
    PYTHONPATH=. .venv/bin/python bench/adversarial.py --budget 10m --seeds 0 1 --set adversarial.weight=0.5
    PYTHONPATH=. .venv/bin/python bench/adversarial.py --seeds 1 --arms plain     # one arm of one seed again

Each run is ``segforge train --data isbi2012 --train-split "train[:25]" --val-split "train[25:]"
--time-budget B --seed S``, the recipe choosing the rest, with ``--adversarial`` (the defaults: lambda 0.1,
the scaling encoding, the large field-of-view adversary judging every location) or without; then
``segforge evaluate`` of the best checkpoint on the 5 held-out slices at full size. Both arms get the same
wall-clock budget on the whole machine, one run at a time, the adversarial arm paying for its adversary's
steps with fewer segmenter steps: the comparison a user with a fixed machine and a fixed hour makes. Seeds
pair the arms (same weights at the start, same batches). Prints per-seed rows, each arm's mean and the
paired difference, and writes ``runs/bench/adversarial/<run>/result.json``. Data: ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
SPLITS = ["--train-split", "train[:25]", "--val-split", "train[25:]"]
HELD_OUT = "train[25:]"


def _run(command: list[str], log: Path) -> tuple[float, float]:
    """Runs ``command`` with its output in ``log``; (wall s, CPU s of the process and its children)."""
    print("$", shlex.join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        subprocess.run(command, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - started, cpu


def one_run(args: argparse.Namespace, seed: int, adversarial: bool) -> dict:
    out = ROOT / "runs" / "bench" / "adversarial"
    name = f"{'adversarial' if adversarial else 'plain'}-seed{seed}"
    segforge = [sys.executable, "-m", "segforge"]
    train = [*segforge, "train", "--data", str(args.data), *SPLITS, "--time-budget", args.budget]
    train += ["--seed", str(seed), "--out", str(out), "--name", name]
    if adversarial:
        train.append("--adversarial")
        for setting in args.set:
            train += ["--set", setting]
    (out / name).mkdir(parents=True, exist_ok=True)
    wall, cpu = _run(train, out / f"{name}.train.log")
    report = out / name / "eval-held-out"
    evaluate = [*segforge, "evaluate", "--checkpoint", str(out / name / "best.safetensors"), "--data", str(args.data)]
    evaluate += ["--split", HELD_OUT, "--out", str(report)]
    _run(evaluate, out / f"{name}.eval.log")
    scores = json.loads((report / "report.json").read_text())
    rows = (out / name / "metrics.csv").read_text().splitlines()
    result = {
        "run": name,
        "train_command": shlex.join(train[2:]),
        "steps": int(rows[-1].split(",")[0]),
        "train_wall_seconds": round(wall),
        "train_cpu_seconds": round(cpu),
        "pixel_error": 1 - scores["pixel_accuracy"],
        "membrane_iou": scores["iou"][1],
        "mean_iou": scores["mean_iou"],
    }
    (out / name / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{name}: {result['steps']} steps, pixel error {result['pixel_error']:.4f}, membrane IoU "
        f"{100 * result['membrane_iou']:.1f} %, mIoU {100 * result['mean_iou']:.1f} %, {cpu / 60:.1f} CPU min",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="5m", help="time budget of each run (default 5m)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=["plain", "adversarial"], default=["plain", "adversarial"])
    parser.add_argument("--set", action="append", default=[], help="adversarial settings, e.g. adversarial.weight=0.5")
    parser.add_argument("--data", type=Path, default=DATA, help="the ISBI 2012 folder")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} is missing: the shared datasets are not on this machine", file=sys.stderr)
        return 2
    arms = [arm == "adversarial" for arm in args.arms]
    results = {(seed, arm): one_run(args, seed, arm) for seed in args.seeds for arm in arms}
    print(f"\n| seed | arm | steps | pixel error | membrane IoU | mIoU | train CPU time (budget {args.budget} wall) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (seed, arm), r in results.items():
        print(
            f"| {seed} | {'adversarial' if arm else 'plain'} | {r['steps']} | {r['pixel_error']:.4f} | "
            f"{100 * r['membrane_iou']:.1f} % | {100 * r['mean_iou']:.1f} % | {r['train_cpu_seconds'] / 60:.1f} min |"
        )
    if len(arms) < 2:
        return 0
    for key, label, scale in (("pixel_error", "pixel error", 1), ("membrane_iou", "membrane IoU (points)", 100)):
        plain = [scale * results[(s, False)][key] for s in args.seeds]
        adversarial = [scale * results[(s, True)][key] for s in args.seeds]
        differences = [a - p for a, p in zip(adversarial, plain, strict=True)]
        spread = f" (per seed: {', '.join(f'{d:+.4g}' for d in differences)})"
        print(
            f"{label}: plain {statistics.mean(plain):.4g}, adversarial {statistics.mean(adversarial):.4g}, "
            f"adversarial - plain {statistics.mean(differences):+.4g}{spread}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
