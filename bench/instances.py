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
import shutil
import subprocess
import sys
import tempfile
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


def truth(instances: Path, names: list[str]) -> list[dict]:
    """The target (boxes, labels, masks) of each named validation image, and its class-id mask."""
    import torch

    from segforge.data import read_mask
    from segforge.instances import masks_to_boxes

    targets = []
    for name in names:
        ids = read_mask(instances / "instances" / f"{name}.png")
        classes = read_mask(instances / "classes" / f"{name}.png")
        present = np.unique(ids[ids > 0])
        masks = torch.from_numpy(np.stack([ids == i for i in present]))
        labels = torch.as_tensor([int(np.bincount(classes[ids == i]).argmax()) for i in present])
        targets.append({"boxes": masks_to_boxes(masks), "labels": labels, "masks": masks, "classes": classes})
    return targets


def components(mask: np.ndarray) -> dict:
    """The connected components (8-connected) of each class of a class-id mask, as detections of score 1: the
    objects a semantic model can tell apart."""
    import cv2
    import torch

    from segforge.instances import masks_to_boxes

    masks, labels = [], []
    for label in range(1, CLASSES):
        count, regions = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
        masks += [regions == i for i in range(1, count)]
        labels += [label] * (count - 1)
    masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *mask.shape), dtype=torch.bool)
    scores = torch.ones(len(labels))
    return {
        "boxes": masks_to_boxes(masks),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "scores": scores,
        "masks": masks,
    }


def semantic_detections(run: Path, images: Path, names: list[str]) -> list[dict]:
    from segforge import predict
    from segforge.checkpoint import load_model

    model, info = load_model(run / "last.safetensors")
    return [components(predict(model, images / f"{name}.png", info=info).mask) for name in names]


def instance_detections(run: Path, images: Path, names: list[str]) -> list[dict]:
    from segforge.checkpoint import load_model
    from segforge.inference.image import prepare_image
    from segforge.instances.predict import detect

    model, info = load_model(run / "last.safetensors")
    return [detect(model, prepare_image(images / f"{name}.png", info, model.in_channels)[1]) for name in names]


def scores_of(detections: list[dict], targets: list[dict]) -> dict:
    """Mask AP and AP50, objects found (score >= 0.5) and the mean absolute count error per image and class."""
    from segforge.instances import average_precision

    ap = average_precision(detections, targets, iou_type="segm")
    errors, found = [], 0
    for d, t in zip(detections, targets, strict=True):
        kept = np.bincount(d["labels"][d["scores"] >= 0.5].numpy(), minlength=CLASSES)
        found += int(kept.sum())
        errors.append(np.abs(kept - np.bincount(t["labels"].numpy(), minlength=CLASSES))[1:].sum())
    return {"mask_ap": ap["AP"], "mask_ap50": ap["AP50"], "found": found, "count_error": float(np.mean(errors))}


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
        targets = truth(folders["mask_rcnn"], names)
        perfect = scores_of([components(t["classes"]) for t in targets], targets)
        rows.append(("class masks' components (a perfect semantic model)", None, perfect | {"mean_iou": 1.0}))
        for name in args.runs:
            command = [sys.executable, "-m", "segforge", "train", "--data", str(folders[name])]
            command += ["--encoder", "resnet18"] if name == "unet_padded" else []
            command += ["--model", name, "--time-budget", args.budget, "--out", str(out), "--name", name]
            shutil.rmtree(out / name, ignore_errors=True)  # (a previous bench's run of the same name)
            print("$", shlex.join(command), flush=True)
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            report = out / name / "final"
            evaluate = [sys.executable, "-m", "segforge", "evaluate"]
            evaluate += ["--checkpoint", str(out / name / "last.safetensors")]
            evaluate += ["--data", str(folders[name]), "--split", "val", "--out", str(report)]
            subprocess.run(evaluate, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            summary = load_json(report / "report.json")
            summary = summary.get("summary", summary)
            detector = instance_detections if name == "mask_rcnn" else semantic_detections
            found = scores_of(detector(out / name, folders["mask_rcnn"] / "images", names), targets)
            rows.append((name, int(_last_row(out / name)["step"]), found | {"mean_iou": summary["mean_iou"]}))
    print(_table(rows, int(sum(len(t["labels"]) for t in targets)), len(targets), args.budget))
    return 0


def _table(rows: list, objects: int, images: int, budget: str) -> str:
    lines = [
        f"\n{images} held-out images, {objects} objects; each run {budget} of training on this CPU\n",
        "| model | steps | mask AP | mask AP50 | union mIoU | objects found | mean abs. count error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, steps, r in rows:
        lines.append(
            f"| {name} | {steps or '—'} | {100 * r['mask_ap']:.1f} | {100 * r['mask_ap50']:.1f} | "
            f"{100 * r['mean_iou']:.1f} | {r['found']} / {objects} | {r['count_error']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
