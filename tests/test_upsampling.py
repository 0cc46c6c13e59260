"""Upsampling operators: the notes' worked examples, the transposed-convolution arithmetic, invariants."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from segforge.layers.upsampling import (
    UPSAMPLERS,
    BedOfNailsUpsample,
    BilinearUpsample,
    MaxUnpool,
    NearestUpsample,
    TransposedConvUpsample,
    bilinear_kernel,
    bilinear_weight,
    create_upsampling,
    transposed_conv_output_size,
)

KINDS = ["nearest", "bed_of_nails", "bilinear", "max_unpool", "transposed_conv"]
NO_INDICES = [k for k in KINDS if k != "max_unpool"]


def as_map(rows: list[list[float]]) -> torch.Tensor:
    """A (1, 1, H, W) float map from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def run(op: nn.Module, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Call any operator; for unpooling, use the top-left of each window as the switch."""
    if isinstance(op, MaxUnpool):
        n, c, h, w = x.shape
        width = output_size[1] if output_size else (w - 1) * op.stride + op.kernel_size
        rows, cols = torch.arange(h) * op.stride, torch.arange(w) * op.stride
        indices = (rows[:, None] * width + cols[None, :]).expand(n, c, h, w)
        return op(x, indices, output_size=output_size)
    return op(x, output_size=output_size)


# --------------------------------------------------------------------------- the notes' worked examples


def test_nearest_worked_example() -> None:
    out = NearestUpsample(2)(as_map([[1, 2], [3, 4]]))
    expected = as_map([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_bed_of_nails_worked_example() -> None:
    out = BedOfNailsUpsample(2)(as_map([[1, 2], [3, 4]]))
    expected = as_map([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_max_pool_then_unpool_worked_example() -> None:
    x = as_map([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]])
    pooled, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
    torch.testing.assert_close(pooled, as_map([[5, 6], [7, 8]]), rtol=0, atol=0)

    out = MaxUnpool(kernel_size=2, stride=2)(as_map([[1, 2], [3, 4]]), indices)
    expected = as_map([[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- transposed convolution


def _size_grid() -> list[tuple[int, int, int, int, int, int]]:
    # torch rejects output_padding >= max(stride, dilation) at construction; leave those out
    return [
        (i, s, k, p, op, d)
        for i, s, k, p, op, d in itertools.product([1, 2, 3, 7], [1, 2, 3], [1, 2, 3, 4], [0, 1], [0, 1], [1, 2])
        if op < max(s, d)
    ]


@pytest.mark.parametrize(("i", "s", "k", "p", "op", "d"), _size_grid())
def test_transposed_conv_output_size_matches_torch(i: int, s: int, k: int, p: int, op: int, d: int) -> None:
    expected = transposed_conv_output_size(i, s, k, p, output_padding=op, dilation=d)
    conv = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d)
    x = torch.zeros(1, 1, i, i)
    if expected <= 0:
        # the formula's "no valid output" must be exactly where torch refuses
        with pytest.raises(RuntimeError, match="too small"):
            conv(x)
    else:
        assert conv(x).shape[-2:] == (expected, expected)


def test_transposed_conv_output_size_simple_form() -> None:
    # O = (I − 1)·S + K − 2P with D = 1: FCN's 2x layer (k=4, s=2, p=1) doubles a 7-pixel map
    assert transposed_conv_output_size(7, stride=2, kernel=4, padding=1) == 14
    assert transposed_conv_output_size(2, stride=2, kernel=2, padding=0) == 4


@pytest.mark.parametrize("s", [1, 2, 3, 4, 8])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (7, 3)])
def test_transposed_conv_upsample_is_exactly_s_times(s: int, h: int, w: int) -> None:
    up = TransposedConvUpsample(2, 3, s, bilinear_init=False)
    assert up(torch.randn(1, 2, h, w)).shape == (1, 3, s * h, s * w)
    assert up.conv.kernel_size == (2 * s - s % 2,) * 2


@pytest.mark.parametrize(("s", "k"), [(2, 4), (8, 16), (32, 64)])
def test_fcn_kernel_sizes(s: int, k: int) -> None:
    assert TransposedConvUpsample(1, 1, s).conv.kernel_size == (k, k)


@pytest.mark.parametrize(
    ("s", "dtype"),
    # odd scales weigh by thirds, fifths, ...: float32 rounding alone is ~1e-6 there, so check in float64
    [(s, torch.float32) for s in (2, 4, 8, 32)] + [(s, torch.float64) for s in (3, 5)],
    ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None,
)
def test_bilinear_transposed_conv_equals_interpolate(s: int, dtype: torch.dtype) -> None:
    torch.manual_seed(s)
    x = torch.randn(2, 3, 5, 6, dtype=dtype)
    up = TransposedConvUpsample(3, 3, s).to(dtype)
    reference = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    with torch.no_grad():
        # zero padding of the transposed conv differs from interpolate's edge clamping only near the border
        inner = up(x)[..., s:-s, s:-s]
        torch.testing.assert_close(inner, reference[..., s:-s, s:-s], rtol=0, atol=1e-6)
        # replicate-pad by one pixel = interpolate's clamping; the padded pixel spans s output pixels
        padded = up(F.pad(x, (1, 1, 1, 1), mode="replicate"))[..., s:-s, s:-s]
        torch.testing.assert_close(padded, reference, rtol=0, atol=1e-6)


def test_bilinear_kernel_values() -> None:
    # FCN's upsample_filt(4): profile [1, 3, 3, 1] / 4
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), torch.outer(profile, profile))
    profile = torch.tensor([0.5, 1.0, 0.5])
    torch.testing.assert_close(bilinear_kernel(3), torch.outer(profile, profile))
    assert bilinear_kernel(1).item() == 1.0


def test_bilinear_weight_is_diagonal() -> None:
    w = bilinear_weight(3, 4)
    assert w.shape == (3, 3, 4, 4)
    for a, b in itertools.product(range(3), range(3)):
        torch.testing.assert_close(w[a, b], bilinear_kernel(4) if a == b else torch.zeros(4, 4))


def test_transposed_conv_is_learnable() -> None:
    up = TransposedConvUpsample(2, 2, 4, bias=True)
    assert up.conv.weight.requires_grad
    assert torch.count_nonzero(up.conv.bias) == 0  # starts as plain bilinear
    up(torch.randn(1, 2, 3, 3)).square().sum().backward()
    assert up.conv.weight.grad is not None and up.conv.weight.grad.abs().sum() > 0
    assert up.conv.bias.grad is not None


def test_bed_of_nails_is_differentiable() -> None:
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    g = torch.randn(1, 2, 6, 8)
    (BedOfNailsUpsample(2)(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g[..., ::2, ::2])


# --------------------------------------------------------------------------- output_size


def test_unpool_undoes_odd_pooling() -> None:
    x = torch.randn(2, 3, 5, 7)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert pooled.shape[-2:] == (2, 3)
    out = MaxUnpool()(pooled, indices, output_size=(5, 7))
    assert out.shape == x.shape
    # every maximum is back where it was; the other pixels (last row/column included) are zero
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept])
    assert int(kept.sum()) == pooled.numel()
    assert not kept[..., 4, :].any() and not kept[..., :, 6].any()


def test_unpool_undoes_ceil_mode_pooling() -> None:
    x = torch.randn(1, 2, 5, 7)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    assert pooled.shape[-2:] == (3, 4)
    out = MaxUnpool()(pooled, indices, output_size=(5, 7))
    torch.testing.assert_close(out.amax(dim=(-2, -1)), x.amax(dim=(-2, -1)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (7, 5)])
def test_output_size_is_exact_for_every_operator(kind: str, size: tuple[int, int]) -> None:
    op = create_upsampling(kind, channels=2, scale=2)
    x = torch.randn(1, 2, 3, 3)  # default output 6x6; a pooled 5x7 or 7x5 map also pools to 3x3 (ceil)
    out = run(op, x, output_size=size)
    assert out.shape == (1, 2, *size)
    # the top-left stays anchored: the common part equals the default output
    with torch.no_grad():
        torch.testing.assert_close(out[..., :5, :5], run(op, x)[..., :5, :5])


def test_transposed_conv_output_size_grows_with_the_kernel_tail() -> None:
    up = TransposedConvUpsample(1, 1, 2)
    x = torch.randn(1, 1, 2, 3)
    with torch.no_grad():
        grown = up(x, output_size=(5, 7))
        # the extra row/column is what a larger transposed conv output would hold there
        full = F.conv_transpose2d(x, up.conv.weight, stride=2, padding=1, output_padding=1)
    torch.testing.assert_close(grown, full)


def test_output_size_out_of_reach() -> None:
    with pytest.raises(ValueError, match="out of reach.*F.interpolate"):
        NearestUpsample(2)(torch.randn(1, 1, 3, 3), output_size=(8, 6))
    with pytest.raises(ValueError, match="two ints"):
        NearestUpsample(2)(torch.randn(1, 1, 3, 3), output_size=(6,))


# --------------------------------------------------------------------------- factory and errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("s", [1, 2, 3])
def test_factory_builds_every_kind(kind: str, s: int) -> None:
    assert kind in UPSAMPLERS
    op = create_upsampling(kind, channels=3, scale=s)
    assert run(op, torch.randn(2, 3, 4, 5)).shape == (2, 3, 4 * s, 5 * s)


def test_registry_covers_the_kinds() -> None:
    assert sorted(KINDS) == UPSAMPLERS.names()


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"unknown upsampling 'pixel_shuffle'; choose from \['bed_of_nails'"):
        create_upsampling("pixel_shuffle", channels=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4, 4), (3, 4, 4), (1, 1, 3, 4, 4)])
def test_non_4d_input(kind: str, shape: tuple[int, ...]) -> None:
    op = create_upsampling(kind, channels=3)
    indices = torch.zeros(shape, dtype=torch.long) if kind == "max_unpool" else None
    with pytest.raises(ValueError, match=rf"expected input of shape \(N, C, H, W\), got a {len(shape)}-D tensor"):
        op(torch.randn(shape), indices)


def test_bilinear_init_needs_equal_channels() -> None:
    with pytest.raises(ValueError, match="bilinear_init needs in_channels == out_channels.*got 3 and 5"):
        TransposedConvUpsample(3, 5, 2)
    assert TransposedConvUpsample(3, 5, 2, bilinear_init=False)(torch.randn(1, 3, 2, 2)).shape == (1, 5, 4, 4)


@pytest.mark.parametrize("kind", NO_INDICES)
def test_indices_refused_where_unused(kind: str) -> None:
    x = torch.randn(1, 2, 4, 4)
    _, indices = F.max_pool2d(torch.randn(1, 2, 8, 8), 2, 2, return_indices=True)
    with pytest.raises(ValueError, match="does not use pooling indices.*MaxUnpool"):
        create_upsampling(kind, channels=2)(x, indices)


def test_unpool_needs_matching_indices() -> None:
    with pytest.raises(ValueError, match="needs the pooling switches.*return_indices=True"):
        MaxUnpool()(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="indices must have the shape of the input"):
        MaxUnpool()(torch.randn(1, 2, 4, 4), torch.zeros(1, 2, 3, 3, dtype=torch.long))


@pytest.mark.parametrize("scale", [0, -2, 1.5, "2", True])
def test_bad_scale(scale: object) -> None:
    with pytest.raises(ValueError, match="scale must be an int >= 1"):
        NearestUpsample(scale)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale must be an int >= 1"):
        create_upsampling("bilinear", channels=1, scale=scale)  # type: ignore[arg-type]


def test_bilinear_module_matches_interpolate() -> None:
    x = torch.randn(1, 2, 3, 4)
    for align in (False, True):
        out = BilinearUpsample(4, align_corners=align)(x)
        torch.testing.assert_close(out, F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=align))


# --------------------------------------------------------------------------- properties

maps = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**16)
)


@settings(max_examples=40, deadline=None)
@given(maps)
def test_bed_of_nails_property(params: tuple[int, int, int, int, int, int]) -> None:
    n, c, h, w, s, seed = params
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    out = BedOfNailsUpsample(s)(x)
    assert out.shape == (n, c, h * s, w * s)
    torch.testing.assert_close(out[..., ::s, ::s], x, rtol=0, atol=0)
    rest = out.clone()
    rest[..., ::s, ::s] = 0
    assert not rest.any()


@settings(max_examples=40, deadline=None)
@given(maps)
def test_nearest_property(params: tuple[int, int, int, int, int, int]) -> None:
    n, c, h, w, s, seed = params
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    out = NearestUpsample(s)(x)
    # view as (N, C, H, s, W, s): every s x s block is the input pixel, repeated
    blocks = out.reshape(n, c, h, s, w, s)
    torch.testing.assert_close(blocks, x[:, :, :, None, :, None].expand_as(blocks), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(maps)
def test_unpool_of_pool_keeps_only_the_maxima(params: tuple[int, int, int, int, int, int]) -> None:
    n, c, h, w, s, seed = params
    # positive values, so that the zeros unpooling fills in never beat a maximum
    x = torch.rand(n, c, h * s, w * s, generator=torch.Generator().manual_seed(seed)) + 0.5
    pooled, indices = F.max_pool2d(x, s, s, return_indices=True)
    out = MaxUnpool(s, s)(pooled, indices)
    kept = out != 0
    assert int(kept.sum()) == pooled.numel()
    torch.testing.assert_close(out[kept], x[kept], rtol=0, atol=0)
    torch.testing.assert_close(F.max_pool2d(out, s, s), pooled, rtol=0, atol=0)
