"""Whether an image fits through a network in one piece: its peak memory, measured without allocating it.

An image that decodes within the size limit (``segforge.data.io.max_image_bytes``) can still be far
too large to run through a network whole: a U-Net keeps 64 float32 maps of the full image alive, so a
12000x12000 photograph (410 KB as a PNG) needs over 200 GB. ``check_fits`` runs the forward pass
on the meta device (shapes only, no memory, no arithmetic), adds up the activations alive at each
step, and refuses before the real pass when the peak exceeds the memory available to the device,
pointing at tiled prediction. The count is a lower bound: the resident memory a real pass on the CPU
adds measured 1.0-1.5 times it at 1024x1024 (``bench/memory.py``; the convolutions' workspace comes on top).
``out_of_memory_hint`` turns an allocation failure that gets past the estimate into the same advice.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from segforge.models.geometry import geometry_of

PROBE_SIDE = 512  # the size at which a model's memory per pixel is measured once
_PER_PIXEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> bytes per pixel at PROBE_SIDE
TILE_ADVICE = (
    "predict it in tiles, e.g. segforge predict --tile 1024 (add --stream for a TIFF larger than memory), or resize it"
)


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that operations create while they are alive, and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for index, tensor in enumerate(tree_flatten(out)[0]):
            if not isinstance(tensor, torch.Tensor):
                continue
            if index < len(returns) and returns[index].alias_info is not None:
                continue  # a view, or the result of an in-place operation: no new memory
            size = tensor.numel() * tensor.element_size()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, size)
        return out


def forward_peak_bytes(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """The most memory ``full_size_forward(model, x)`` holds at once in inference, ``x`` of ``shape``
    (``(N, C, H, W)``): its activations, the mirrored input of a valid-convolution network and the
    logits; not the input or the weights. Measured on the meta device with the weights replaced by
    their shapes (``torch.func.functional_call``): nothing is allocated or computed."""
    net = getattr(model, "module", model)  # DistributedDataParallel
    net = getattr(net, "architecture", net)  # an ONNX model: the exported PyTorch network (segforge.export)
    weights = {name: torch.empty_like(t, device="meta") for name, t in [*net.named_parameters(), *net.named_buffers()]}
    top, bottom, left, right = geometry_of(net).border(*shape[-2:])
    x = torch.empty(shape, dtype=dtype, device="meta")
    counter = _LiveBytes()
    with torch.no_grad(), counter:
        if top or bottom or left or right:  # the mirrored copy (geometry.mirror_pad) is a new tensor: counted
            x = torch.empty(
                (*shape[:-2], shape[-2] + top + bottom, shape[-1] + left + right), dtype=dtype, device="meta"
            )
        torch.func.functional_call(net, weights, (x,))
    return counter.peak


def available_bytes(device: torch.device | str) -> int | None:
    """Memory this process may still allocate on ``device``: free GPU memory plus what torch's cache holds
    unused; on the CPU, the kernel's ``MemAvailable`` capped by a cgroup limit. None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):  # a container's limit (cgroup v2)
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current", encoding="ascii").read())
        if limit != "max":
            available = min(available or 2**63, int(limit) - used)
    if available is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available


def _gb(size: int) -> str:
    return f"{size / 2**30:,.1f} GB"


def check_fits(
    model: nn.Module,
    shape: tuple[int, ...],
    device: torch.device | str,
    what: str,
    *,
    scale: float = 1.0,
    advice: str = TILE_ADVICE,
) -> None:
    """Refuses, before any memory is taken, to run ``what`` (``"image a.png"``) of ``shape`` through ``model``
    in one piece when the forward pass needs more memory than ``device`` has available.

    Activations grow with the pixels: the model's memory per pixel is measured once (at 512x512), and
    only an image that would need more than half the available memory by that rate is measured on its
    own. ``scale``: the largest test-time resize factor (the pass runs at that size). Raises ``ValueError``
    naming the image, its size, the memory it needs (a lower bound: the convolutions' own workspace
    comes on top) and has, and ``advice``."""
    height, width = round(shape[-2] * scale), round(shape[-1] * scale)
    have = available_bytes(device)
    if have is None:
        return
    per_pixel = _PER_PIXEL.get(model)
    if per_pixel is None:  # one measured pass per model; an image needing under half the memory goes on at once
        side = geometry_of(model).input_size(PROBE_SIDE)
        per_pixel = _PER_PIXEL[model] = forward_peak_bytes(model, (1, *shape[1:-2], side, side)) / side**2
    pixels = height * width * (shape[0] if len(shape) >= 4 else 1)  # (a series: per series of its dates)
    if 2 * per_pixel * pixels < have:
        return
    need = forward_peak_bytes(model, (*shape[:-2], height, width))
    if need > have:
        raise ValueError(
            f"{what} is {shape[-2]}x{shape[-1]} pixels: running the network on it in one piece "
            f"needs at least {_gb(need)} and {torch.device(device)} has {_gb(have)} available; "
            f"{advice}"
        )


@contextlib.contextmanager
def out_of_memory_hint(what: str, advice: str = TILE_ADVICE) -> Iterator[None]:
    """Turns an allocation failure inside the block (CUDA out of memory, the CPU allocator refusing) into a
    ``ValueError`` that names ``what`` and the fix, instead of a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise ValueError(
            f"{what}: the device ran out of memory running the network on it in one piece; {advice}"
        ) from None
    except RuntimeError as err:
        if "can't allocate memory" not in str(err) and "not enough memory" not in str(err):
            raise
        raise ValueError(
            f"{what}: the machine ran out of memory running the network on it in one piece "
            f"({str(err).splitlines()[0][:160]}); {advice}"
        ) from None
