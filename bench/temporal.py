"""Image time series: the temporal U-Net against the same network given one date, or the temporal mean.

    PYTHONPATH=. .venv/bin/python bench/temporal.py                       # accuracy: 5 runs, 4 minutes each
    PYTHONPATH=. .venv/bin/python bench/temporal.py --budget 2m --runs gru one-date
    PYTHONPATH=. .venv/bin/python bench/temporal.py --throughput          # dates x megapixels per second

**Accuracy.** The built-in synthetic series (``segforge.data.synthetic_series``: parcels whose class is the
peak day of a seasonal curve, 8-16 irregular dates a year, a fifth of them clouded and marked invalid) are
written in the series layout, and twice more as plain image folders of the same parcels: one clear date
per series (drawn at random), and each pixel's mean over the clear dates. Each run is ``segforge train
--data D --time-budget B`` with the recipe choosing the rest (``temporal_unet`` with a ConvGRU, a ConvLSTM
or the temporal attention on the series; ``unet_padded`` on the images, the same ``unet16`` encoder and
decoder), then ``segforge evaluate`` of the final weights on the held-out series. One run at a time,
each with the whole machine; the CPU time is the run's processes' own (user + system).

**Throughput.** Training steps and forward passes of ``temporal_unet`` on random series (batch 2 x 8 dates
of 4 bands at 128 px) against ``unet_padded`` (the same encoder and decoder) on the same pixels as 16
images: dates x megapixels per second, each in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES, CHANNELS, TRAIN, VAL = 64, 4, 4, 96, 24

# name: (dataset, extra train arguments)
RUNS = {
    "gru": ("series", ["--temporal", "gru"]),
    "lstm": ("series", ["--temporal", "lstm"]),
    "attention": ("series", ["--temporal", "attention"]),
    "one-date": ("one-date", []),
    "temporal-mean": ("temporal-mean", []),
}


def write_datasets(root: Path, seed: int) -> dict[str, Path]:
    """The synthetic series, and the same parcels as one clear date and as the mean of the clear dates."""
    import tifffile
    from PIL import Image

    from segforge.data.series_folder import write_synthetic_series_dataset
    from segforge.data.synthetic_series import synthetic_series

    series = write_synthetic_series_dataset(
        root / "series", num_train=TRAIN, num_val=VAL, size=SIZE, num_classes=CLASSES, channels=CHANNELS, seed=seed
    )
    rng = np.random.default_rng(seed)
    folders = {"series": series}
    for kind in ("one-date", "temporal-mean"):
        folder = root / kind
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        for name in ("train.txt", "val.txt", "classes.txt"):
            (folder / name).write_text((series / name).read_text())
        folders[kind] = folder
    for index in range(TRAIN + VAL):
        sample = synthetic_series(index, size=SIZE, num_classes=CLASSES, channels=CHANNELS, seed=seed)
        clear = np.flatnonzero(sample.valid)
        images = {
            "one-date": sample.images[rng.choice(clear)],
            "temporal-mean": sample.images[clear].mean(0),
        }
        for kind, image in images.items():
            name = f"{index:04d}"
            tifffile.imwrite(
                folders[kind] / "images" / f"{name}.tif", image.transpose(1, 2, 0), photometric="minisblack"
            )
            Image.open(series / "masks" / f"{name}.png").save(folders[kind] / "masks" / f"{name}.png")
    return folders


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def accuracy(args: argparse.Namespace) -> None:
    from segforge.metrics import load_json  # (segforge's report reader)

    out = ROOT / "runs" / "bench" / "temporal"
    with tempfile.TemporaryDirectory(prefix="segforge-temporal-") as scratch:
        folders = write_datasets(Path(scratch), args.seed)
        rows = []
        for name in args.runs:
            kind, extra = RUNS[name]
            command = [sys.executable, "-m", "segforge", "train", "--data", str(folders[kind]), *extra]
            command += ["--time-budget", args.budget, "--out", str(out), "--name", name]
            print("$", shlex.join(command), flush=True)
            cpu, started = _children_cpu(), time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
            report = out / name / "final"
            evaluate = [
                sys.executable,
                "-m",
                "segforge",
                "evaluate",
                "--checkpoint",
                str(out / name / "last.safetensors"),
            ]
            evaluate += ["--data", str(folders[kind]), "--split", "val", "--out", str(report)]
            subprocess.run(evaluate, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            scores = load_json(report / "report.json")
            steps = _steps(out / name)
            rows.append((name, kind, scores["mean_iou"], scores["pixel_accuracy"], steps, wall, cpu))
            print(f"{name}: val mIoU {100 * scores['mean_iou']:.1f}, {steps} steps, {wall:.0f} s wall, {cpu:.0f} s CPU")
    print("\n| run | input | val mIoU | pixel accuracy | steps | wall | CPU |\n|---|---|---:|---:|---:|---:|---:|")
    for name, kind, miou, accuracy_, steps, wall, cpu in rows:
        print(
            f"| {name} | {kind} | {100 * miou:.1f} | {100 * accuracy_:.1f} | {steps} | "
            f"{wall / 60:.1f} min | {cpu / 60:.1f} min |"
        )


def _steps(run: Path) -> int:
    import csv

    with (run / "metrics.csv").open() as handle:
        return int(list(csv.DictReader(handle))[-1]["step"])


def throughput_worker(kind: str, mode: str, repeats: int) -> float:
    """Dates x megapixels per second of one model kind (``unet_padded``, or ``temporal_unet:<temporal>``) and
    mode."""
    import torch

    from segforge import create_model
    from segforge.runtime import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    n, t, side = 2, 8, 128
    series = kind.startswith("temporal_unet")
    if series:
        temporal = kind.split(":")[1]
        model = create_model("temporal_unet", CLASSES, in_channels=CHANNELS, encoder="unet16", temporal=temporal)
        x = (torch.randn(n, t, CHANNELS, side, side), torch.ones(n, t, dtype=torch.bool), torch.arange(t).expand(n, t))
    else:
        model = create_model("unet_padded", CLASSES, in_channels=CHANNELS, encoder="unet16")
        x = (torch.randn(n * t, CHANNELS, side, side).contiguous(memory_format=torch.channels_last),)
    model = model.to(memory_format=torch.channels_last)
    target = torch.randint(0, CLASSES, (n if series else n * t, side, side))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def step() -> None:
        if mode == "train":
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model.train()(*x), target).backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model.eval()(*x)

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - started) / repeats
    return n * t * side * side / 1e6 / seconds


def throughput(args: argparse.Namespace) -> None:
    kinds = {
        "unet_padded": "unet_padded on the 16 dates as images",
        "temporal_unet:gru": "temporal_unet, ConvGRU",
        "temporal_unet:lstm": "temporal_unet, ConvLSTM",
        "temporal_unet:attention": "temporal_unet, temporal attention",
    }
    results = {}
    for mode in ("eval", "train"):
        for kind in kinds:
            worker = [sys.executable, __file__, "--worker", kind, mode, "--repeats", str(args.repeats)]
            done = subprocess.run(worker, cwd=ROOT, check=True, capture_output=True, text=True)
            results[(kind, mode)] = float(done.stdout.split()[-1])
    print(f"\n| model (batch 2 x 8 dates, {CHANNELS} bands, 128 px) | inference dates x MP/s | training dates x MP/s |")
    print("|---|---:|---:|")
    for kind, what in kinds.items():
        print(f"| {what} | {results[(kind, 'eval')]:.3f} | {results[(kind, 'train')]:.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--budget", default="4m", help="time budget of each run (default 4m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if args.worker:
        print(throughput_worker(*args.worker, args.repeats))
    elif args.throughput:
        throughput(args)
    else:
        accuracy(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
