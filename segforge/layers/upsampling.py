"""The upsampling operators from the notes, as standalone modules with one call shape.

Every operator here is called as ``op(x, indices=None, output_size=None)``:

- ``x``: ``(N, C, H, W)`` feature map;
- ``indices``: ``(N, C, H, W)`` int64 pooling switches, used by :class:`MaxUnpool` only
  (the others refuse them, so that a decoder wired to the wrong operator fails loudly);
- ``output_size``: ``(H_out, W_out)``; when given, the result has exactly that size. It exists to
  undo a pooling of an odd size (pool 5x7 with stride 2 → 2x3, upsample → 4x6, but 5x7 is needed),
  so each side may differ from ``s·H`` by less than ``s``. The output grid stays anchored at the
  top-left, as pooling windows are: extra rows/columns are what the operator would produce there
  (the edge value for nearest/bilinear, zeros for bed of nails and unpooling, the kernel's tail for
  the transposed convolution), and surplus ones are cropped.

and returns ``(N, C', H·s, W·s)`` (``C' = C`` except for :class:`TransposedConvUpsample`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segforge.registry import Registry

UpsamplingKind = Literal["nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed_conv"]

UPSAMPLERS: Registry = Registry("upsampling")

__all__ = [
    "BedOfNailsUpsample",
    "BilinearUpsample",
    "MaxUnpool",
    "NearestUpsample",
    "TransposedConvUpsample",
    "UPSAMPLERS",
    "bed_of_nails_upsample",
    "bilinear_kernel",
    "bilinear_upsample",
    "bilinear_weight",
    "create_upsampling",
    "max_unpool",
    "nearest_upsample",
    "transposed_conv_output_size",
]


# --------------------------------------------------------------------------- validation helpers


def _check_positive_int(value: object, name: str) -> int:
    # bool is an int subclass; scale=True is always a mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_4d(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"a {x.dim()}-D tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"expected input of shape (N, C, H, W), got {got}; "
            "add the missing batch/channel dimensions, e.g. x[None] for a single image"
        )


def _refuse_indices(indices: Tensor | None, op: str) -> None:
    if indices is not None:
        raise ValueError(
            f"{op} does not use pooling indices, but indices were given; pass indices only to MaxUnpool (or drop them)"
        )


def _check_output_size(
    output_size: Sequence[int] | None, default: tuple[int, int], step: int
) -> tuple[int, int] | None:
    """Validate ``output_size`` against the default output size ``default`` of a stride-``step`` op.

    Each side may differ from the default by less than ``step``: exactly the range that undoing a
    floor- or ceil-mode stride-``step`` pooling can need (and the range torch's own unpooling accepts).
    """
    if output_size is None:
        return None
    size = tuple(output_size)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ValueError(f"output_size must be two ints >= 1 (H_out, W_out), got {output_size!r}")
    if any(abs(o - d) >= step for o, d in zip(size, default)):
        lo = tuple(d - step + 1 for d in default)
        hi = tuple(d + step - 1 for d in default)
        raise ValueError(
            f"output_size {size} is out of reach of this operator: its default output is {default}, "
            f"and each side may differ from that by less than the stride {step} (from {lo} to {hi}); "
            "to resize freely use F.interpolate(x, size=...)"
        )
    return size  # type: ignore[return-value]


def _fit(y: Tensor, size: tuple[int, int] | None, fill: Literal["edge", "zero"]) -> Tensor:
    """Crop or pad ``y: (N, C, H, W)`` at the bottom/right to ``size``; the top-left stays put."""
    if size is None:
        return y
    h, w = size
    y = y[..., :h, :w]
    pad_h, pad_w = h - y.shape[-2], w - y.shape[-1]
    if pad_h or pad_w:
        mode = "replicate" if fill == "edge" else "constant"
        y = F.pad(y, (0, pad_w, 0, pad_h), mode=mode)
    return y


# --------------------------------------------------------------------------- pure functions


def transposed_conv_output_size(
    i: int, stride: int, kernel: int, padding: int, output_padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a transposed convolution along one axis.

    ``O = (I − 1)·S − 2P + D·(K − 1) + output_padding + 1``, i.e. ``O = (I − 1)·S + K − 2P`` for
    ``D = 1`` and no output padding. A result ``<= 0`` means torch would reject the layer/input pair.

    Args:
        i: input length ``I``.
        stride: ``S``; kernel: ``K``; padding: ``P``; output_padding: extra rows added at the end
            (must be smaller than the stride or the dilation); dilation: ``D``.

    Returns:
        The output length ``O``.
    """
    return (i - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def bilinear_kernel(size: int) -> Tensor:
    """The FCN/Caffe ``upsample_filt`` bilinear kernel.

    With ``factor = (size + 1) // 2`` and ``center = factor − 1`` (odd size) or ``factor − 0.5``
    (even size), the 1-D profile is ``1 − |x − center| / factor`` and the kernel is its outer product.
    Used by a stride-``s`` transposed convolution with ``size = 2s − (s mod 2)`` and padding
    ``(size − s) // 2``, it reproduces ``F.interpolate(mode="bilinear", align_corners=False)``
    away from the border.

    Args:
        size: kernel side ``k >= 1``.

    Returns:
        ``(size, size)`` float32 kernel.
    """
    _check_positive_int(size, "size")
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(og, og).to(torch.float32)


def bilinear_weight(channels: int, kernel_size: int) -> Tensor:
    """Transposed-convolution weight that upsamples each channel on its own with :func:`bilinear_kernel`.

    Args:
        channels: number of input (= output) channels ``C``.
        kernel_size: kernel side ``k``.

    Returns:
        ``(C, C, k, k)`` float32 weight, the bilinear kernel on the channel diagonal and zero elsewhere
        (so channels do not mix; learning may later mix them).
    """
    _check_positive_int(channels, "channels")
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = bilinear_kernel(kernel_size)
    return weight


def nearest_upsample(x: Tensor, scale: int = 2, output_size: Sequence[int] | None = None) -> Tensor:
    """Nearest-neighbour upsampling: each pixel becomes an ``s x s`` block.

    Args:
        x: ``(N, C, H, W)`` float.
        scale: integer factor ``s >= 1``.
        output_size: optional exact ``(H_out, W_out)``, each within ``s − 1`` of ``s·H``/``s·W``;
            extra rows/columns repeat the edge.

    Returns:
        ``(N, C, H·s, W·s)``, or ``(N, C, *output_size)``.
    """
    _check_positive_int(scale, "scale")
    _check_4d(x)
    size = _check_output_size(output_size, (x.shape[-2] * scale, x.shape[-1] * scale), scale)
    return _fit(F.interpolate(x, scale_factor=scale, mode="nearest"), size, "edge")


def bed_of_nails_upsample(x: Tensor, scale: int = 2, output_size: Sequence[int] | None = None) -> Tensor:
    """Bed-of-nails upsampling: each pixel goes to the top-left of its ``s x s`` block, the rest is zero.

    Args:
        x: ``(N, C, H, W)``.
        scale: integer factor ``s >= 1``.
        output_size: optional exact ``(H_out, W_out)``, each within ``s − 1`` of ``s·H``/``s·W``;
            extra rows/columns are zero.

    Returns:
        ``(N, C, H·s, W·s)`` (or ``output_size``) with ``out[..., ::s, ::s] == x``; differentiable in ``x``.
    """
    _check_positive_int(scale, "scale")
    _check_4d(x)
    n, c, h, w = x.shape
    size = _check_output_size(output_size, (h * scale, w * scale), scale)
    out = x.new_zeros(n, c, h * scale, w * scale)
    # slice assignment is recorded by autograd (CopySlices), so gradients reach x through the nails
    out[..., ::scale, ::scale] = x
    return _fit(out, size, "zero")


def bilinear_upsample(
    x: Tensor, scale: int = 2, align_corners: bool = False, output_size: Sequence[int] | None = None
) -> Tensor:
    """Bilinear upsampling by an integer factor (``F.interpolate``).

    Args:
        x: ``(N, C, H, W)`` float.
        scale: integer factor ``s >= 1``.
        align_corners: as in ``F.interpolate``.
        output_size: optional exact ``(H_out, W_out)``, each within ``s − 1`` of ``s·H``/``s·W``.
            With ``align_corners=False`` the sampling grid keeps the scale ``s`` (extra rows repeat the
            edge, which is what bilinear sampling gives past the last pixel centre); with
            ``align_corners=True`` the result is resampled to that size so that corners still align.

    Returns:
        ``(N, C, H·s, W·s)``, or ``(N, C, *output_size)``.
    """
    _check_positive_int(scale, "scale")
    _check_4d(x)
    size = _check_output_size(output_size, (x.shape[-2] * scale, x.shape[-1] * scale), scale)
    if size is not None and align_corners:
        # align_corners=True means "corner pixels coincide", which only holds when sampling to the size
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    y = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners)
    return _fit(y, size, "edge")


def max_unpool(
    x: Tensor,
    indices: Tensor | None,
    kernel_size: int = 2,
    stride: int = 2,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """Max unpooling: put each value back where its pooling window had its maximum; zeros elsewhere.

    Args:
        x: ``(N, C, H, W)`` values to place.
        indices: ``(N, C, H, W)`` int64 switches from ``F.max_pool2d(..., return_indices=True)``
            (or ``nn.MaxPool2d(return_indices=True)``) with the same kernel size and stride.
        kernel_size, stride: those of the pooling being undone.
        output_size: the size of the map before pooling, e.g. ``(5, 7)`` when a 5x7 map was pooled
            to 2x3; needed whenever that size was odd (each side within ``stride − 1`` of the default).

    Returns:
        ``(N, C, (H−1)·stride + kernel_size, (W−1)·stride + kernel_size)`` (``H·s`` for
        ``kernel_size == stride == s``), or ``(N, C, *output_size)``.

    Raises:
        ValueError: missing indices, or indices whose shape differs from ``x``.
    """
    _check_positive_int(kernel_size, "kernel_size")
    _check_positive_int(stride, "stride")
    _check_4d(x)
    if indices is None:
        raise ValueError(
            "max unpooling needs the pooling switches: pool with return_indices=True "
            "(F.max_pool2d(x, 2, 2, return_indices=True)) and pass them as indices="
        )
    if indices.shape != x.shape:
        raise ValueError(
            f"indices must have the shape of the input {tuple(x.shape)}, got {tuple(indices.shape)}; "
            "pass the indices of the pooling layer whose output x mirrors"
        )
    default = tuple(transposed_conv_output_size(d, stride, kernel_size, 0) for d in x.shape[-2:])
    size = _check_output_size(output_size, default, stride)  # type: ignore[arg-type]
    return F.max_unpool2d(x, indices, kernel_size, stride, output_size=size)


# --------------------------------------------------------------------------- modules


class NearestUpsample(nn.Module):
    """Module form of :func:`nearest_upsample`: ``(N, C, H, W) → (N, C, H·s, W·s)``."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = _check_positive_int(scale, "scale")

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        _refuse_indices(indices, type(self).__name__)
        return nearest_upsample(x, self.scale, output_size)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class BedOfNailsUpsample(nn.Module):
    """Module form of :func:`bed_of_nails_upsample`: ``(N, C, H, W) → (N, C, H·s, W·s)``."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = _check_positive_int(scale, "scale")

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        _refuse_indices(indices, type(self).__name__)
        return bed_of_nails_upsample(x, self.scale, output_size)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class BilinearUpsample(nn.Module):
    """Module form of :func:`bilinear_upsample`: ``(N, C, H, W) → (N, C, H·s, W·s)``."""

    def __init__(self, scale: int = 2, align_corners: bool = False) -> None:
        super().__init__()
        self.scale = _check_positive_int(scale, "scale")
        self.align_corners = align_corners

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        _refuse_indices(indices, type(self).__name__)
        return bilinear_upsample(x, self.scale, self.align_corners, output_size)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, align_corners={self.align_corners}"


class MaxUnpool(nn.Module):
    """Module form of :func:`max_unpool`: ``(N, C, H, W)`` + switches ``→ (N, C, H·s, W·s)``."""

    def __init__(self, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = _check_positive_int(kernel_size, "kernel_size")
        self.stride = _check_positive_int(stride, "stride")

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        return max_unpool(x, indices, self.kernel_size, self.stride, output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class TransposedConvUpsample(nn.Module):
    """Learnable upsampling by a transposed convolution: ``(N, C_in, H, W) → (N, C_out, H·s, W·s)``.

    Kernel ``k = 2s − (s mod 2)`` and padding ``(k − s) // 2`` make the output exactly ``s·H`` for
    any ``s >= 1`` (``O = (H − 1)·s + k − 2P``); FCN's layers are s=2 k=4, s=8 k=16, s=32 k=64.
    With ``bilinear_init`` the layer starts as bilinear interpolation (FCN) and stays learnable.

    Args:
        in_channels, out_channels: ``C_in``, ``C_out``.
        scale: integer factor ``s >= 1``.
        bilinear_init: initialise the weight with :func:`bilinear_weight` (needs ``C_in == C_out``);
            otherwise PyTorch's default initialisation.
        bias: add a learnable bias (initialised to zero under ``bilinear_init``).

    Raises:
        ValueError: bad ``scale``, or ``bilinear_init`` with ``in_channels != out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int = 2,
        *,
        bilinear_init: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.scale = _check_positive_int(scale, "scale")
        if bilinear_init and in_channels != out_channels:
            raise ValueError(
                f"bilinear_init needs in_channels == out_channels (a per-channel kernel), got "
                f"{in_channels} and {out_channels}; pass bilinear_init=False, or project the channels "
                "with a 1x1 convolution first"
            )
        kernel = 2 * scale - scale % 2
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel, stride=scale, padding=(kernel - scale) // 2, bias=bias
        )
        if bilinear_init:
            with torch.no_grad():
                self.conv.weight.copy_(bilinear_weight(in_channels, kernel))
                if self.conv.bias is not None:
                    self.conv.bias.zero_()

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        _check_4d(x)
        _refuse_indices(indices, type(self).__name__)
        s = self.scale
        size = _check_output_size(output_size, (x.shape[-2] * s, x.shape[-1] * s), s)
        if size is None:
            return self.conv(x)
        # torch grows the output by output_padding (up to s − 1 rows computed from the kernel's tail);
        # a smaller size is a crop of the default output
        grown = [max(o, d * s) for o, d in zip(size, x.shape[-2:])]
        return _fit(self.conv(x, output_size=grown), size, "zero")


# --------------------------------------------------------------------------- factory


@UPSAMPLERS.register("nearest")
def _nearest(channels: int, scale: int) -> nn.Module:
    return NearestUpsample(scale)


@UPSAMPLERS.register("bed_of_nails")
def _bed_of_nails(channels: int, scale: int) -> nn.Module:
    return BedOfNailsUpsample(scale)


@UPSAMPLERS.register("bilinear")
def _bilinear(channels: int, scale: int) -> nn.Module:
    return BilinearUpsample(scale)


@UPSAMPLERS.register("max_unpool")
def _max_unpool(channels: int, scale: int) -> nn.Module:
    return MaxUnpool(kernel_size=scale, stride=scale)


@UPSAMPLERS.register("transposed_conv")
def _transposed_conv(channels: int, scale: int) -> nn.Module:
    return TransposedConvUpsample(channels, channels, scale, bilinear_init=True)


def create_upsampling(kind: UpsamplingKind, channels: int, scale: int = 2) -> nn.Module:
    """Build an upsampling operator by name; all share the call ``op(x, indices=None, output_size=None)``.

    Args:
        kind: one of ``UPSAMPLERS.names()``: "bed_of_nails", "bilinear", "max_unpool", "nearest",
            "transposed_conv" (bilinear-initialised, learnable).
        channels: ``C`` of the ``(N, C, H, W)`` input (only the transposed convolution uses it).
        scale: integer factor ``s >= 1`` (for "max_unpool", the pooling's kernel size and stride).

    Returns:
        A module mapping ``(N, C, H, W) → (N, C, H·s, W·s)``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the choices) or bad ``scale``.
    """
    return UPSAMPLERS.get(kind)(channels, _check_positive_int(scale, "scale"))
