"""Modules that read a time series of feature maps, ``(N, T, C, H, W)``, with a validity mask ``(N, T)``.

A date can be missing, cloud-covered or padding (batches of series of different lengths are padded with
empty dates); ``valid[n, t]`` says whether date ``t`` of series ``n`` holds data. Every module here
gives exactly the output it would give for the series without its invalid dates:

* the recurrent cells step through the dates in order, each date's acquisition day encoded with its
  features, and an invalid date leaves the hidden state as it was (ConvGRU: Ballas et al., ICLR 2016;
  ConvLSTM: Shi et al., NeurIPS 2015);
* ``TemporalAttention`` (the lightweight temporal attention of U-TAE, Garnot & Landrieu, ICCV 2021)
  gives invalid dates zero weight, and encodes each date's acquisition day so that irregular
  revisits are told apart;
* ``masked_mean`` averages over the valid dates only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean over the valid dates. ``x: (N, T, C, H, W)``, ``valid: (N, T)`` bool → ``(N, C, H, W)``;
    a series without a valid date gives zeros."""
    weights = valid.to(x.dtype)[:, :, None, None, None]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ConvGRUCell(nn.Module):
    """A convolutional GRU: the update gate ``z`` and reset gate ``r`` from the input and the hidden state,
    the candidate from the input and the reset hidden state, ``h' = (1 - z) h + z candidate``.

    The input's part of every convolution does not depend on the state: ``project`` computes it for all dates
    in one batched convolution, and ``step`` adds the state's part date after date (``forward`` does both, for
    one date). The sums are the convolutions of the concatenated ``[x, h]`` the equations write."""

    def __init__(self, in_channels: int, hidden_channels: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        self.input = nn.Conv2d(in_channels, 3 * hidden_channels, kernel_size, padding=padding)  # z, r, candidate
        self.hidden_gates = nn.Conv2d(hidden_channels, 2 * hidden_channels, kernel_size, padding=padding, bias=False)
        self.hidden_candidate = nn.Conv2d(hidden_channels, hidden_channels, kernel_size, padding=padding, bias=False)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.input(x)

    def step(self, projected: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gates, candidate = projected.split([2 * self.hidden_channels, self.hidden_channels], dim=1)
        z, r = torch.sigmoid(gates + self.hidden_gates(h)).chunk(2, dim=1)
        candidate = torch.tanh(candidate + self.hidden_candidate(r * h))
        return h + z * (candidate - h)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.step(self.project(x), h)


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM (without peepholes): input, forget and output gates and the cell input from
    convolutions of the input and the hidden state; ``c' = f c + i g``, ``h' = o tanh(c')``. The state is the
    pair ``(h, c)`` stacked on the channel axis, so that both cells carry one tensor. ``project`` and ``step``
    as ``ConvGRUCell`` has them."""

    def __init__(self, in_channels: int, hidden_channels: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        self.input = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=padding)  # i, f, o, g
        self.hidden = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=padding, bias=False)
        with torch.no_grad():  # a forget gate open at the start, the usual LSTM initialisation
            self.input.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 2 * self.hidden_channels, *x.shape[-2:])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.input(x)

    def step(self, projected: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h, c = state.chunk(2, dim=1)
        i, f, o, g = (projected + self.hidden(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.cat([h, c], 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.step(self.project(x), state)


class Recurrence(nn.Module):
    """Runs a recurrent cell through the dates in order; the last hidden state summarises the series.

    ``forward(x: (N, T, C, H, W), valid: (N, T) bool, days: (N, T) = 0..T-1) -> (N, hidden_channels, H, W)``.
    An invalid date leaves the state unchanged, so dates masked out, and padding after the last date, change
    nothing. Each date's input carries its acquisition day (``day_encoding``, ``day_channels`` channels, mapped
    to a bias of the cell's input projection): with irregular revisits the order of the dates alone does not say
    when in the season an image was taken, and a class told apart by the phase of its seasonal curve needs that.
    The input's projections of all dates are one batched convolution; only the state's part steps date by date.
    """

    def __init__(
        self,
        kind: Literal["gru", "lstm"],
        in_channels: int,
        hidden_channels: int,
        *,
        kernel_size: int = 3,
        day_channels: int = 16,
    ) -> None:
        super().__init__()
        cells = {"gru": ConvGRUCell, "lstm": ConvLSTMCell}
        if kind not in cells:
            raise ValueError(f"unknown recurrent cell {kind!r}; choose from {sorted(cells)}")
        self.norm_in = nn.GroupNorm(math.gcd(in_channels, 4), in_channels)
        self.cell = cells[kind](in_channels, hidden_channels, kernel_size=kernel_size)
        self.day = nn.Linear(day_channels, self.cell.input.out_channels, bias=False)
        self.day_channels = day_channels
        self.out_channels = hidden_channels

    def forward(self, x: torch.Tensor, valid: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        n, t = x.shape[:2]
        if days is None:
            days = torch.arange(t, device=x.device).expand(n, t)
        projected = self.cell.project(self.norm_in(x.flatten(0, 1))).unflatten(0, (n, t))
        projected = projected + self.day(day_encoding(days, self.day_channels).to(x.dtype))[..., None, None]
        state = self.cell.initial_state(x[:, 0])
        for date in range(t):
            keep = valid[:, date, None, None, None]
            state = torch.where(keep, self.cell.step(projected[:, date], state), state)
        return state[:, : self.out_channels]  # (an LSTM's state is (h, c): its output is h)


def day_encoding(days: torch.Tensor, channels: int, *, period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal encoding of acquisition days (the Transformer's, on the day count as L-TAE does):
    ``days: (N, T)`` → ``(N, T, channels)``, pairs of sine and cosine at geometric frequencies."""
    half = channels // 2
    frequencies = torch.exp(-math.log(period) * torch.arange(half, device=days.device, dtype=torch.float32) / half)
    angles = days.to(torch.float32)[..., None] * frequencies
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if channels % 2:
        encoding = torch.cat([encoding, encoding.new_zeros(*encoding.shape[:-1], 1)], dim=-1)
    return encoding


class TemporalAttention(nn.Module):
    """U-TAE's lightweight temporal attention (L-TAE), per pixel.

    Each date's features, plus the encoding of its acquisition day, give keys; each of ``heads`` learned
    *master queries* attends over the dates (softmax over the valid ones); head ``k`` averages the dates of
    its own group of channels with its weights, and a 1x1 convolution mixes the heads. The attention maps are
    returned too: U-TAE upsamples them to collapse the skip connections over time.

    ``forward(x: (N, T, C, H, W), valid: (N, T) bool, days: (N, T)) -> ((N, out_channels, H, W),
    attention (N, heads, T, H, W))``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, heads: int = 4, key_channels: int = 4) -> None:
        super().__init__()
        if in_channels % heads:
            raise ValueError(f"temporal attention: {in_channels} channels do not split into {heads} heads")
        self.heads, self.key_channels = heads, key_channels
        self.norm_in = nn.GroupNorm(heads, in_channels)
        self.keys = nn.Conv2d(in_channels, heads * key_channels, 1)
        self.queries = nn.Parameter(torch.randn(heads, key_channels) / math.sqrt(key_channels))
        self.mix = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1), nn.GroupNorm(1, out_channels), nn.ReLU(inplace=True)
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, valid: torch.Tensor, days: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, c, h, w = x.shape
        flat = self.norm_in(x.reshape(n * t, c, h, w))
        flat = flat + day_encoding(days, c).reshape(n * t, c, 1, 1).to(flat.dtype)
        keys = self.keys(flat).reshape(n, t, self.heads, self.key_channels, h, w)
        scores = torch.einsum("ntkdhw,kd->nkthw", keys, self.queries.to(keys.dtype)) / math.sqrt(self.key_channels)
        scores = scores.masked_fill(~valid[:, None, :, None, None], float("-inf"))
        attention = torch.softmax(scores, dim=2).nan_to_num(0.0)  # (a series without a valid date: all zero)
        values = flat.reshape(n, t, self.heads, c // self.heads, h, w)
        out = torch.einsum("nkthw,ntkchw->nkchw", attention, values).reshape(n, c, h, w)
        return self.mix(out), attention
