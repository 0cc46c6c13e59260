"""Instance segmentation on touching objects: Mask R-CNN against a semantic U-Net of the same encoder.

    PYTHONPATH=. .venv/bin/python bench/instances.py                    # both runs, 10 minutes each
    PYTHONPATH=. .venv/bin/python bench/instances.py --budget 3m --runs mask_rcnn

The built-in synthetic instances (``segforge.instances.synthetic``: objects of 3 classes, at least 3 pairs of
same-class objects touching in every image, each object its own shade of its class colour) are written in the
instance folder layout, and again as a semantic folder (the same images; masks of class ids, where touching
objects of one class are one blob). Each run is ``segforge train --data D --time-budget B`` with the recipe
choosing the rest: ``mask_rcnn`` on the instances; ``unet_padded`` on the class masks, given ``--encoder
resnet18`` (Mask R-CNN's). One run at a time, each with the whole machine.

Then, on the held-out images: ``segforge evaluate`` of Mask R-CNN's last weights (COCO mask and box AP, the
semantic scores of the union of its instances, objects kept at score >= 0.5 per image), and for the U-Net
``segforge evaluate`` (mean IoU) and its objects counted as the connected components (8-connected) of each
class in its predicted masks: what a semantic model can say of how many objects there are.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES, TRAIN, VAL, TOUCHING = 128, 4, 240, 40, 3
RUNS = ("mask_rcnn", "unet_padded")


def write_datasets(root: Path, seed: int) -> dict[str, Path]:
    """The synthetic instances, and the same images with masks of class ids (a semantic folder)."""
    from segforge.instances import write_synthetic_instance_dataset

    instances = write_synthetic_instance_dataset(
        root / "instances",
        num_train=TRAIN,
        num_val=VAL,
        size=SIZE,
        num_classes=CLASSES,
        seed=seed,
        touching_pairs=TOUCHING,
        class_source="png",
    )
    semantic = root / "semantic"
    semantic.mkdir()
    (semantic / "images").symlink_to(instances / "images")
    (semantic / "masks").symlink_to(instances / "classes")
    for name in ("train.txt", "val.txt", "classes.txt"):
        (semantic / name).write_bytes((instances / name).read_bytes())
    return {"mask_rcnn": instances, "unet_padded": semantic}


def true_counts(instances: Path, names: list[str]) -> list[np.ndarray]:
    """Objects per class (index 0 unused) of each named validation image."""
    from segforge.data import read_mask

    counts = []
    for name in names:
        ids = read_mask(instances / "instances" / f"{name}.png")
        classes = read_mask(instances / "classes" / f"{name}.png")
        present = np.unique(ids[ids > 0])
        labels = [int(np.bincount(classes[ids == i]).argmax()) for i in present]
        counts.append(np.bincount(labels, minlength=CLASSES))
    return counts


def components(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connected) of each class of a class-id mask: the objects a semantic model 'sees'."""
    import cv2

    found = np.zeros(CLASSES, dtype=np.int64)
    for label in range(1, CLASSES):
        count, _ = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
        found[label] = count - 1
    return found


def semantic_counts(run: Path, images: Path, names: list[str]) -> list[np.ndarray]:
    from segforge import predict
    from segforge.checkpoint import load_model

    model, info = load_model(run / "last.safetensors")
    return [components(predict(model, images / f"{name}.png", info=info).mask) for name in names]


def instance_counts(run: Path, images: Path, names: list[str]) -> list[np.ndarray]:
    from segforge.checkpoint import load_model
    from segforge.inference.image import prepare_image
    from segforge.instances.predict import detect

    model, info = load_model(run / "last.safetensors")
    counts = []
    for name in names:
        detections = detect(model, prepare_image(images / f"{name}.png", info, model.in_channels)[1])
        kept = detections["labels"][detections["scores"] >= 0.5].numpy()
        counts.append(np.bincount(kept, minlength=CLASSES))
    return counts


def _last_row(run: Path) -> dict:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--budget", default="10m", help="time budget of each run (default 10m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path.insert(0, str(ROOT))
    from segforge.metrics import load_json

    out = ROOT / "runs" / "bench" / "instances"
    rows = []
    with tempfile.TemporaryDirectory(prefix="segforge-instances-") as scratch:
        folders = write_datasets(Path(scratch), args.seed)
        names = (folders["mask_rcnn"] / "val.txt").read_text().split()
        truth = true_counts(folders["mask_rcnn"], names)
        for name in args.runs:
            command = [sys.executable, "-m", "segforge", "train", "--data", str(folders[name])]
            command += ["--encoder", "resnet18"] if name == "unet_padded" else []
            command += ["--model", name, "--time-budget", args.budget, "--out", str(out), "--name", name]
            print("$", shlex.join(command), flush=True)
            started = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            report = out / name / "final"
            evaluate = [sys.executable, "-m", "segforge", "evaluate"]
            evaluate += ["--checkpoint", str(out / name / "last.safetensors")]
            evaluate += ["--data", str(folders[name]), "--split", "val", "--out", str(report)]
            subprocess.run(evaluate, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            scores = load_json(report / "report.json")
            counter = instance_counts if name == "mask_rcnn" else semantic_counts
            found = counter(out / name, folders["mask_rcnn"] / "images", names)
            rows.append((name, scores, found, int(_last_row(out / name)["step"]), wall))
    print(_table(rows, truth, args.budget))
    return 0


def _table(rows: list, truth: list[np.ndarray], budget: str) -> str:
    true_total = int(sum(t.sum() for t in truth))
    lines = [
        f"\n{len(truth)} held-out images, {true_total} objects; each run {budget} of training on this CPU\n",
        "| model | steps | mask AP | mask AP50 | box AP50 | union mIoU | objects found | mean abs. count error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, scores, found, steps, _ in rows:
        summary = scores.get("summary", scores)
        error = np.mean([np.abs(f - t)[1:].sum() for f, t in zip(found, truth, strict=True)])
        ap = [summary.get(key) for key in ("mask_ap", "mask_ap50", "box_ap50")]
        shown = " | ".join("—" if v is None else f"{100 * v:.1f}" for v in ap)
        lines.append(
            f"| {name} | {steps} | {shown} | {100 * summary['mean_iou']:.1f} | {int(sum(f.sum() for f in found))} "
            f"/ {true_total} | {error:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
