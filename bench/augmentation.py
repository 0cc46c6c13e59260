"""Augmentation on CPU: segforge (numpy/OpenCV) vs albumentations vs kornia, on one pipeline.

    PYTHONPATH=. .venv/bin/python bench/augmentation.py [--repeats 5] [--samples 40]

Pipeline (every step on, except the flip at p = 0.5): horizontal flip, rotation ±15°, scale
0.75-1.25, random 256x256 crop (padded with 0 / ignore), photometric jitter (brightness, contrast,
saturation ±0.2), elastic deformation with ~10 px displacement std. Input: 512x512 float32 images
(RGB and grayscale) with an int64 mask of blob-shaped labels and an ignore region.

How each library spells it (the differences are part of the comparison):
- segforge: ``build_transforms``; elastic = the U-Net paper's 3x3 grid, N(0, 10^2), bicubic.
- albumentations: its own transforms; ``RandomScale`` (mask ``INTER_NEAREST_EXACT``) + ``PadIfNeeded``
  + ``RandomCrop``; elastic = ``ElasticTransform`` (Gaussian-smoothed noise, Simard 2003: it has no
  coarse-grid variant), sigma = 32 px smoothing, alpha calibrated here to 10 px displacement std.
- kornia: ``AugmentationSequential`` on (N, C, H, W) tensors, rotation and scale fused into one
  ``RandomAffine`` (kornia has no size-changing scale in a batch); ``RandomElasticTransform``
  (63x63 kernel, sigma 32, alpha calibrated). Kornia pads masks with 0, a real class, so the mask is
  shifted by +1 and the padding mapped to ignore afterwards (``kornia+shift``); ``kornia native``
  in the correctness table is without that workaround.

Prints markdown tables: correctness (new labels, padding -> ignore, image-mask offset, C = 1 / 3 / 5),
the photometric step per C, the elastic step alone, and speed per (candidate, image, threads) as the
median over repeats after a warm-up. Threads = OpenCV's and torch's intra-op threads (1 is what each
DataLoader worker should use). On a shared machine, run it twice and compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import albumentations as A
import cv2
import kornia.augmentation as K
import numpy as np
import torch

from segforge.data.transforms import ElasticDeformation, PhotometricJitter, build_transforms

IGNORE, SIZE, CROP, BATCH = 255, 512, 256, 16
warnings.filterwarnings("ignore")


def make_sample(rng: np.random.Generator, channels: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Blob-shaped labels 1..4 plus an ignore region; the image is a function of the mask."""
    coarse = rng.integers(1, 5, (size // 32, size // 32))
    mask = cv2.resize(coarse.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    mask[: size // 8] = IGNORE
    return image_of(mask, channels), mask


def image_of(mask: np.ndarray, channels: int) -> np.ndarray:
    """Piecewise constant: channel c of a pixel with label k is ((17 k + 40 c) % 256) / 255; ignore -> 0."""
    values = ((17 * mask[..., None] + 40 * np.arange(channels)) % 256 / 255).astype(np.float32)
    return np.where((mask == IGNORE)[..., None], np.float32(0), values)


# ---------------------------------------------------------------- the three candidates, numpy in/out
def segforge_pipeline(channels: int, jitter: bool = True, crop: bool = True, elastic: bool = True):
    config = {
        "hflip": {"p": 0.5},
        "rotate": {"limit_degrees": 15, "p": 1.0},
        "scale": {"scale_range": (0.75, 1.25)},
        "jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 1.0} if jitter else None,
        "elastic": {"sigma": 10.0, "p": 1.0} if elastic else None,
    }
    return build_transforms(config, ignore_index=IGNORE, crop_size=CROP if crop else None, seed=0)


def calibrate(warp_x) -> float:
    """Displacement std (px) of an elastic warp with alpha = 1: warp an x-ramp image and compare."""
    ramp = np.tile(np.arange(CROP, dtype=np.float32), (CROP, 1))
    shifts = [warp_x(ramp) - ramp for _ in range(4)]
    return float(np.std([s[32:-32, 32:-32] for s in shifts]))


def albumentations_pipeline(channels: int, jitter: bool = True, crop: bool = True, elastic: bool = True):
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE)
    deform = lambda alpha: A.ElasticTransform(alpha=alpha, sigma=32, p=1.0, **border)  # noqa: E731
    alpha = 10.0 / calibrate(lambda x: deform(1.0)(image=x)["image"])
    photometric = (
        A.ColorJitter(0.2, 0.2, 0.2, 0.0, p=1.0)
        if channels in (1, 3)  # 1 or 3 channels only
        else A.RandomBrightnessContrast(0.2, 0.2, p=1.0)
    )
    steps = [
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=15, p=1.0, **border),
        A.RandomScale(scale_limit=(-0.25, 0.25), p=1.0, mask_interpolation=cv2.INTER_NEAREST_EXACT),
        *([A.PadIfNeeded(CROP, CROP, position="random", **border), A.RandomCrop(CROP, CROP)] if crop else []),
        *([photometric] if jitter else []),
        *([deform(alpha)] if elastic else []),
    ]
    pipeline = A.Compose(steps, seed=0)

    def run(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"].astype(np.int64)  # albumentations returns int32 masks

    return run


def kornia_sequential(channels: int, jitter: bool = True, crop: bool = True) -> K.AugmentationSequential:
    def elastic(alpha: float) -> K.RandomElasticTransform:
        return K.RandomElasticTransform(kernel_size=(63, 63), sigma=(32.0, 32.0), alpha=(alpha, alpha), p=1.0)

    def warp_x(x: np.ndarray) -> np.ndarray:
        return elastic(1.0)(torch.from_numpy(x)[None, None])[0, 0].numpy()

    alpha = 10.0 / calibrate(warp_x)
    photometric = (
        K.ColorJitter(0.2, 0.2, 0.2, 0.0, p=1.0)
        if channels in (1, 3)  # RGB or gray only
        else K.AugmentationSequential(K.RandomBrightness((0.8, 1.2)), K.RandomContrast((0.8, 1.2)))
    )
    steps = [
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(15, scale=(0.75, 1.25), p=1.0),
        *([K.RandomCrop((CROP, CROP), pad_if_needed=True)] if crop else []),
        *([photometric] if jitter else []),
        elastic(alpha),
    ]
    return K.AugmentationSequential(*steps, data_keys=["input", "mask"])


def kornia_batch(sequential: K.AugmentationSequential, images: torch.Tensor, masks: torch.Tensor, shift: bool = True):
    """images (N, C, H, W) float32, masks (N, H, W) int64 -> augmented, with the +1 shift workaround."""
    m = (masks + 1 if shift else masks)[:, None].float()
    out, out_mask = sequential(images, m)
    out_mask = out_mask[:, 0].round().long()
    if shift:
        out_mask = torch.where(out_mask == 0, IGNORE, out_mask - 1)
    return out, out_mask


def kornia_pipeline(channels: int, jitter: bool = True, crop: bool = True, shift: bool = True):
    sequential = kornia_sequential(channels, jitter, crop)

    def run(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, out_mask = kornia_batch(
            sequential, torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(mask)[None], shift
        )
        return out[0].permute(1, 2, 0).contiguous().numpy(), out_mask[0].numpy()

    return run


# ---------------------------------------------------------------- measurement
def median_ms(step, samples_per_call: int, calls: int, repeats: int) -> float:
    for _ in range(max(2, calls // 4)):
        step()  # warm-up: caches, lazy initialisation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        times.append((time.perf_counter() - start) * 1000 / (calls * samples_per_call))
    return statistics.median(times)


def speed_table(samples: int, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows = ["| candidate | image | threads | ms/sample | samples/s |", "|---|---|---:|---:|---:|"]
    print("\n".join(rows), flush=True)
    for threads in (1, 2):
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
        for name, channels in (("RGB", 3), ("gray", 1)):
            pool = [make_sample(rng, channels) for _ in range(8)]
            images = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i, _ in pool] * (BATCH // 8))
            masks = torch.stack([torch.from_numpy(m) for _, m in pool] * (BATCH // 8))
            it = iter(range(10**9))
            sequential = kornia_sequential(channels)
            candidates = {  # label -> (one call, samples per call)
                "segforge numpy/OpenCV": (segforge_pipeline(channels), 1),
                "albumentations": (albumentations_pipeline(channels), 1),
                "kornia+shift, per sample": (kornia_pipeline(channels), 1),
                f"kornia+shift, batch of {BATCH}": (lambda *_: kornia_batch(sequential, images, masks), BATCH),
                "(segforge without the elastic step)": (segforge_pipeline(channels, elastic=False), 1),
                "(albumentations without the elastic step)": (albumentations_pipeline(channels, elastic=False), 1),
            }
            for label, (pipeline, per_call) in candidates.items():
                calls = max(2, samples // per_call)
                ms = median_ms(lambda: pipeline(*pool[next(it) % 8]), per_call, calls, repeats)
                rows.append(f"| {label} | {name} 512² | {threads} | {ms:.2f} | {1000 / ms:.0f} |")
                print(rows[-1], flush=True)
    return rows


CANDIDATES = {  # name -> factory(channels, jitter=..., crop=...)
    "segforge numpy/OpenCV": segforge_pipeline,
    "albumentations": albumentations_pipeline,
    "kornia, mask padded natively (with 0)": lambda c, **kw: kornia_pipeline(c, shift=False, **kw),
    "kornia+shift": kornia_pipeline,
}


def new_labels(make) -> str:
    """Labels 1..4 + ignore through the geometric pipeline, C = 1, 3, 5, on an image smaller than the
    crop (forces padding): 'none' or the labels that appeared."""
    rng, seen = np.random.default_rng(1), set()
    for channels in (1, 3, 5):
        pipeline = make(channels, jitter=False)
        for _ in range(4):
            image, mask = make_sample(rng, channels, size=384)
            seen |= set(np.unique(pipeline(image[:200], mask[:200])[1]).tolist())
    return "none" if seen <= {1, 2, 3, 4, IGNORE} else f"**{sorted(seen - {1, 2, 3, 4, IGNORE})}**"


def padding_is_ignore(make) -> str:
    """An all-ones image with an all-1 mask: where the image is exactly 0 (no input pixel in the
    bilinear footprint), the mask must say ignore."""
    pipeline, misses = make(3, jitter=False), 0
    for _ in range(4):
        out, out_mask = pipeline(np.ones((200, 384, 3), np.float32), np.ones((200, 384), np.int64))
        misses += int(np.count_nonzero(out_mask[(out == 0).all(axis=2)] != IGNORE))
    return "yes" if misses == 0 else f"**no** ({misses} padded pixels labelled)"


def offsets(make, size: int = 320, margin: int = 72) -> str:
    """Distance (px, per axis) between where the image was sampled and the input pixel the mask copied.

    The image holds coordinate ramps (bilinear sampling of a ramp returns the sample point, through
    every step) and the mask holds pixel ids (nearest sampling returns the source pixel). No crop, and
    only sources ``margin`` px inside the input, so that no padding enters a bilinear footprint (kornia's
    fixed-size affine cuts up to ~60 px off the corners when it scales up and rotates).
    A consistent pipeline stays within a few tenths of a pixel; a half-pixel shift moves the median.
    """
    pipeline, found = make(3, jitter=False, crop=False), []
    y, x = np.mgrid[:size, :size].astype(np.float32)
    image = np.stack([y / size, x / size, y / size], axis=-1)
    ids = 256 + np.arange(size * size, dtype=np.int64).reshape(size, size)  # never equal to IGNORE
    for _ in range(6):
        out, out_ids = pipeline(image, ids)
        src_y, src_x = np.divmod(out_ids - 256, size)
        keep = (out_ids != IGNORE) & (np.minimum(src_y, src_x) >= margin) & (np.maximum(src_y, src_x) < size - margin)
        found.append(np.maximum(np.abs(out[..., 0] * size - src_y), np.abs(out[..., 1] * size - src_x))[keep])
    found = np.concatenate(found)
    return f"{np.median(found):.2f} / {np.percentile(found, 99.9):.2f}"


def runs_on(make) -> str:
    cells = []
    for channels in (1, 3, 5):
        try:
            make(channels)(*make_sample(np.random.default_rng(2), channels))
            cells.append("yes")
        except Exception as error:  # a library that cannot take this input: say so in the table
            cells.append(f"**no** ({type(error).__name__})")
    return " / ".join(cells)


def correctness_table() -> list[str]:
    rows = [
        "| candidate | new labels | padding -> ignore | image-mask offset, px (median / 99.9 %) "
        "| full pipeline runs, C = 1 / 3 / 5 |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(rows), flush=True)
    for label, make in CANDIDATES.items():
        rows.append(f"| {label} | {new_labels(make)} | {padding_is_ignore(make)} | {offsets(make)} | {runs_on(make)} |")
        print(rows[-1], flush=True)
    rows += ["", "| photometric step (brightness, contrast, saturation) | C = 1 | C = 3 | C = 5 |", "|---|---|---|---|"]
    jitters = {
        "segforge PhotometricJitter": lambda x: PhotometricJitter(0.2, 0.2, 0.2, p=1.0)(x, np.zeros(x.shape[:2], int)),
        "albumentations ColorJitter": lambda x: A.ColorJitter(0.2, 0.2, 0.2, 0.0, p=1.0)(image=x),
        "kornia ColorJitter": lambda x: K.ColorJitter(0.2, 0.2, 0.2, 0.0, p=1.0)(torch.from_numpy(x).permute(2, 0, 1)),
    }
    for label, jitter in jitters.items():
        cells = []
        for channels in (1, 3, 5):
            try:
                jitter(np.random.default_rng(0).random((64, 64, channels), dtype=np.float32))
                cells.append("yes")
            except Exception as error:
                cells.append(f"**no** ({type(error).__name__})")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    print("\n".join(rows[-len(jitters) - 3 :]) + "\n", flush=True)
    return rows


def elastic_table(samples: int, repeats: int) -> None:
    """The elastic step alone on a 256x256 RGB crop: where the pipelines' difference comes from."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    image, mask = make_sample(np.random.default_rng(3), 3, size=CROP)
    ours = ElasticDeformation(sigma=10.0, p=1.0, ignore_index=IGNORE, seed=0)
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE)
    theirs = A.Compose([A.ElasticTransform(alpha=1000.0, sigma=32, p=1.0, **border)], seed=0)
    kornia_elastic = K.AugmentationSequential(
        K.RandomElasticTransform((63, 63), (32.0, 32.0), (1.0, 1.0), p=1.0), data_keys=["input", "mask"]
    )
    tensors = torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(mask)[None, None].float()
    steps = {
        "segforge ElasticDeformation (3x3 grid, bicubic, remap)": lambda: ours(image, mask),
        "albumentations ElasticTransform (sigma 32 Gaussian blur of 2 noise fields, remap)": lambda: theirs(
            image=image, mask=mask
        ),
        "kornia RandomElasticTransform (63x63 kernel, grid_sample)": lambda: kornia_elastic(*tensors),
    }
    print("| elastic step alone, 256² RGB, 1 thread | ms/sample |\n|---|---:|")
    for label, step in steps.items():
        print(f"| {label} | {median_ms(step, 1, samples, repeats):.2f} |", flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="samples per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, albumentations {A.__version__}, kornia {__import__('kornia').__version__}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}\n"
    )
    correctness_table()
    elastic_table(args.samples, args.repeats)
    speed_table(args.samples, args.repeats)


if __name__ == "__main__":
    main()
