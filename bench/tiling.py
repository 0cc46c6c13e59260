"""Peak memory and speed of streamed tiled inference on generated images of growing size.

    PYTHONPATH=. .venv/bin/python bench/tiling.py                      # 4096² and 16384²
    PYTHONPATH=. .venv/bin/python bench/tiling.py --sizes 2048 4096 --in-memory

Each size is a generated grayscale uint8 TIFF (uncompressed, written through a memory map so the
generator never holds it); each measurement runs in a fresh process, which reports its own peak RSS
(``VmHWM``) and megapixels per second. The network is ``unet_padded`` on a MobileNetV2 encoder
(2 classes, random weights: speed and memory do not depend on the weights; batch norm folded into
the convolutions, as ``segforge predict`` does), 512-pixel tiles,
overlap 0.25 (Gaussian blending), 4 tiles per call. ``--in-memory`` also runs ``predict_tiled`` on
the whole image held in memory, for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generate(path: Path, size: int) -> None:
    import numpy as np
    import tifffile

    image = tifffile.memmap(path, shape=(size, size), dtype=np.uint8)
    rng = np.random.default_rng(0)
    band = 1024
    for y in range(0, size, band):
        rows = min(band, size - y)
        yy, xx = np.mgrid[y : y + rows, 0:size]
        cells = ((np.sin(yy / 23.0) + np.cos(xx / 31.0)) > 0.3) * 120 + rng.integers(0, 60, (rows, size))
        image[y : y + rows] = cells.astype(np.uint8)
        image.flush()
    del image


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Not ``getrusage``'s ``ru_maxrss``: Linux carries that
    across exec from the parent (which peaked generating the image), so it over-reports a child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def _child(path: Path, mode: str, tile: int) -> None:
    import torch

    from segforge import create_model
    from segforge.inference import predict_tiff, predict_tiled, prepare_image
    from segforge.models.fold import fold_batch_norm
    from segforge.runtime import keep_freed_memory

    keep_freed_memory()  # as segforge predict does
    torch.manual_seed(0)
    model = create_model("unet_padded", 2, in_channels=1, encoder="mobilenet_v2").eval()
    model = fold_batch_norm(model.to(memory_format=torch.channels_last), inplace=True)  # as segforge predict does
    info = {"mean": [0.5], "std": [0.25]}
    started = time.perf_counter()
    if mode == "stream":
        predict_tiff(
            model,
            info,
            path,
            path.with_name(path.stem + "_labels.tif"),
            tile=tile,
            overlap=0.25,
            batch=4,
            progress=False,
        )
    else:
        _, x = prepare_image(path, info, 1)
        predict_tiled(model, x[0], tile=tile, overlap=0.25, batch=4, progress=False).argmax(0)
    seconds = time.perf_counter() - started
    peak_mib = _peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--in-memory", action="store_true", help="also measure predict_tiled on the whole image")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child[0]), args.child[1], args.tile)
        return 0
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; unet_padded + mobilenet_v2, "
        f"tile {args.tile}, overlap 0.25, batch 4\n"
    )
    print("| image | mode | megapixels | seconds | MP/s | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"image_{size}.tif"
            _generate(path, size)
            for mode in ["stream", "memory"] if args.in_memory else ["stream"]:
                result = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), mode, "--tile", str(args.tile)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                megapixels = size * size / 1e6
                print(
                    f"| {size}x{size} | {mode} | {megapixels:.0f} | {measured['seconds']:.0f} | "
                    f"{megapixels / measured['seconds']:.2f} | {measured['peak_rss_mib']:.0f} |",
                    flush=True,
                )
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
