"""Loading torchvision-format ImageNet weights into an encoder.

A source is ``"imagenet"`` (the encoder's published weights, ``segforge.encoders.pretrained``), a
local ``.pth``/``.safetensors`` file or a URL (downloaded once into torch.hub's cache). The ImageNet
classifier is dropped, the encoder converts what it keeps differently (VGG's fc6/fc7), the first
convolution is adapted to the encoder's input channels, and the result must fit exactly: every
failure is a ``ValueError`` that names the file and says what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file

from segforge.encoders import pretrained
from segforge.encoders.base import Encoder

URL_SCHEMES = ("http", "https", "file")
IMAGENET = "imagenet"  # the encoder's published ImageNet weights, by name
# torchvision names its files ``<name>-<first hex digits of the sha256>.pth``. torch.hub accepts
# any run of hex after any dash; requiring 8+ digits right before the extension keeps names such
# as ``run-2024.pth`` from being "verified" against a hash they never had.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
MAX_LISTED_KEYS = 5


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turns an RGB first-convolution weight into one for ``in_channels`` inputs.

    The RGB filters are dealt out cyclically over ``max(in_channels, 3)`` slots, slot ``j``
    carrying filter ``j % 3`` into input channel ``j % in_channels``, and each filter is divided
    by how many slots it occupies. So 1 channel gets R+G+B, 2 get (R+B, G), 4 get
    (R/2, G, B, R/2), 6 get (R, G, B, R, G, B)/2. The sum over input channels is always R+G+B:
    a grey image replicated to all channels gives exactly the RGB model's activation on that
    grey image, whatever ``in_channels`` is.

    Args:
        weight: ``(out, 3, kh, kw)`` float.
        in_channels: input channels of the adapted convolution, >= 1.

    Returns:
        ``(out, in_channels, kh, kw)``, same dtype as ``weight``.

    Raises:
        ValueError: ``weight`` is not an RGB convolution weight, or ``in_channels < 1``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB convolution weight (out, 3, kh, kw), got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight.clone()
    slots = torch.arange(max(in_channels, 3))
    source, target = slots % 3, slots % in_channels
    copies = torch.bincount(source, minlength=3).float()
    filters = weight.float()[:, source] / copies[source].view(1, -1, 1, 1)
    adapted = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]), dtype=torch.float32)
    adapted.index_add_(1, target, filters)
    return adapted.to(weight.dtype)


def download_cached(url: str) -> Path:
    """Downloads ``url`` into torch.hub's checkpoint folder unless it is already there.

    A torchvision-style name (``resnet18-f37072fd.pth``) is checked against the SHA-256 prefix it
    carries; the file is renamed into place only when complete and verified.

    Raises:
        ValueError: the URL has no file name, the download fails, or the hash does not match.
    """
    filename = os.path.basename(urlparse(url).path)
    if not filename:
        raise ValueError(f"weights URL {url!r} does not end in a file name; give the URL of the .pth file")
    cached = pretrained.cache_dir() / filename
    if cached.is_file():
        return cached
    match = HASH_IN_NAME.search(filename)
    return pretrained.download(url, cached, match.group(1) if match else None)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict: ``.safetensors``, or a ``torch.save`` file loaded with ``weights_only``.

    Accepts a plain state dict or a checkpoint holding one under ``state_dict`` or ``model``,
    and strips DataParallel's ``module.`` prefix.

    Raises:
        ValueError: missing or unreadable file, or one that holds no dict of tensors.
    """
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist; pass the path or URL of a .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        else:
            # weights_only refuses arbitrary pickled objects: a weights file must not run code.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors errors share no base class
        raise ValueError(
            f"cannot read weights file {path} ({_reason(err)}): it is corrupt, or holds more than tensors; "
            "pass a state dict saved with torch.save(model.state_dict(), ...) or a .safetensors file"
        ) from err
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise ValueError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict of name → tensor "
            "(nor a checkpoint with one under 'state_dict' or 'model'); save model.state_dict()"
        )
    return {key.removeprefix("module."): value for key, value in obj.items()}


def _reason(err: Exception) -> str:
    """The informative part of a loading error, without torch's advice to disable weights_only."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split(". ", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'no details'}"


def _is_tensor_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_encoder_weights(encoder: Encoder, source: str | os.PathLike) -> dict[str, str]:
    """Loads ImageNet weights into ``encoder``, in place.

    Args:
        encoder: a built encoder; its ``in_channels`` decides how the first convolution is adapted.
        source: ``"imagenet"`` (the encoder's published weights, verified), a local path, or an
            ``http(s)://`` / ``file://`` URL (cached under torch.hub's dir).

    Returns:
        What the encoder started from, for the checkpoint: ``{"weights": source, "file": name,
        "sha256": digest}``.

    Raises:
        ValueError: no such weights, a failed download, or a file that is missing, unreadable, or
            does not fit the encoder exactly; the message lists missing and unexpected keys and the
            first shape mismatch.
    """
    text = os.fspath(source)
    label = getattr(encoder, "name", "") or type(encoder).__name__
    digest = None
    if text == IMAGENET:
        path, digest = pretrained.fetch(label)
    elif urlparse(text).scheme in URL_SCHEMES:
        path = download_cached(text)
    else:
        path = Path(text)
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(encoder.classifier_prefixes)}
    hint = f"is this a {label} ImageNet state dict (torchvision's layout)? pass the file that matches encoder {label!r}"
    try:
        state = encoder.convert_torchvision_state_dict(state)
    except RuntimeError as err:  # e.g. VGG's fc6 reshape of a classifier of another size
        raise ValueError(f"weights {text} do not fit encoder {label}: {err}; {hint}") from err
    first = state.get(encoder.first_conv_key)
    if first is not None and first.ndim == 4 and first.shape[1] == 3 and encoder.in_channels != 3:
        state[encoder.first_conv_key] = adapt_input_conv(first, encoder.in_channels)

    own = encoder.state_dict()
    # Files saved before PyTorch 0.4.1 lack num_batches_tracked; batch norm fills it in itself.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatch = next((k for k in state if k in own and state[k].shape != own[k].shape), None)
    if missing or unexpected or mismatch:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys {first_keys(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys {first_keys(unexpected)}")
        if mismatch:
            problems.append(
                f"shape mismatch at {mismatch!r}: file {tuple(state[mismatch].shape)}, "
                f"encoder {tuple(own[mismatch].shape)}"
            )
        where = text if str(path) == text else f"{text} (cached at {path})"
        raise ValueError(
            f"weights {where} do not fit encoder {label} (out_channels {encoder.out_channels}): "
            f"{'; '.join(problems)}. {hint[0].upper()}{hint[1:]}"
        )
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:  # dtype or other surprises the checks above did not foresee
        raise ValueError(f"weights {text} do not fit encoder {label}: {err}; {hint}") from err
    encoder.pretrained = {"weights": text, "file": path.name, "sha256": digest or pretrained.sha256_of(path)}
    return encoder.pretrained


def first_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return f"[{shown}{', ...' if len(keys) > MAX_LISTED_KEYS else ''}]"
