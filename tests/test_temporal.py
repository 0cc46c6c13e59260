"""The temporal U-Net and its modules: invalid dates and padding change nothing, any size and length work,
every parameter learns, and the recurrent cells compute what their papers say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segforge.layers.temporal import (
    ConvGRUCell,
    ConvLSTMCell,
    Recurrence,
    TemporalAttention,
    day_encoding,
    masked_mean,
)
from segforge.models.temporal import TEMPORAL_MODULES, temporal_unet

KINDS = list(TEMPORAL_MODULES)


def _series(n: int = 2, t: int = 4, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, t, c, h, w, generator=torch.Generator().manual_seed(seed))


def _calibrated(model: nn.Module) -> nn.Module:
    """Batch norm's running statistics set from one training pass: a fresh model's (mean 0, variance 1) let
    the features fade with depth in eval mode, so that the deepest maps would hardly reach the output."""
    momenta = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            momenta[module], module.momentum = module.momentum, 1.0
    with torch.no_grad():
        model.train()(_series(n=2, t=3, c=model.in_channels, seed=9))
    for module, momentum in momenta.items():
        module.momentum = momentum
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {kind: _calibrated(temporal_unet(3, in_channels=3, temporal=kind)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [False, True])
def test_an_invalid_date_changes_nothing(models, kind, train) -> None:
    """Whatever an invalid date holds, the output is the series' without it (in training mode too: invalid
    dates are never encoded, so they reach no batch-norm statistics)."""
    model = models[kind].train(train)
    x = _series(t=4)
    days = torch.tensor([[3, 10, 17, 40], [0, 5, 31, 32]])
    valid = torch.tensor([[True, False, True, True], [True, True, False, True]])
    garbage = x.clone()
    garbage[~valid] = 1e4 * torch.randn_like(garbage[~valid])
    with torch.no_grad():
        torch.manual_seed(1)
        masked = model(x, valid, days)
        torch.manual_seed(1)
        masked_garbage = model(garbage, valid, days)
        # the same series without their invalid dates (each has three valid ones)
        keep = valid.nonzero()[:, 1].reshape(2, 3)
        dropped = model(torch.stack([x[i, keep[i]] for i in range(2)]), None, torch.gather(days, 1, keep))
    torch.testing.assert_close(masked, masked_garbage, rtol=0, atol=0)
    torch.testing.assert_close(masked, dropped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_a_batch_with_empty_dates_changes_nothing(models, kind) -> None:
    """A series of 3 dates alone, and padded to 6 with empty dates in a batch beside a longer series: the same
    logits (eval mode: batch norm uses its running statistics, so batch neighbours do not matter)."""
    model = models[kind].eval()
    short, long = _series(n=1, t=3, seed=1), _series(n=1, t=6, seed=2)
    padded = torch.cat([torch.cat([short, torch.zeros(1, 3, 3, 32, 32)], 1), long])
    valid = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    days = torch.tensor([[0, 7, 14, 0, 0, 0], [0, 3, 6, 9, 12, 15]])
    with torch.no_grad():
        alone = model(short, None, days[:1, :3])
        together = model(padded, valid, days)
        long_alone = model(long, None, days[1:])
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[1:], long_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("t", "height", "width"), [(1, 32, 32), (1, 37, 45), (5, 33, 17), (3, 16, 64)])
def test_any_size_and_length_give_logits_of_the_input_size(models, kind, t, height, width) -> None:
    model = models[kind].eval()
    with torch.no_grad():
        logits = model(_series(n=2, t=t, h=height, w=width))
    assert logits.shape == (2, 3, height, width)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", KINDS)
def test_a_backward_pass_reaches_every_parameter(kind) -> None:
    torch.manual_seed(0)
    model = temporal_unet(4, in_channels=2, temporal=kind).train()
    valid = torch.tensor([[True, True, False], [True, True, True]])
    logits = model(_series(t=3, c=2), valid, torch.tensor([[1, 20, 0], [4, 9, 30]]))
    nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 32, 32))).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_any_encoder_serves_every_date(encoder) -> None:
    model = temporal_unet(5, in_channels=4, encoder=encoder, temporal="attention").eval()
    with torch.no_grad():
        assert model(_series(n=1, t=2, c=4, h=40, w=56)).shape == (1, 5, 40, 56)


def test_a_series_with_one_valid_date_attends_to_it_alone() -> None:
    torch.manual_seed(0)
    attention = TemporalAttention(16, 16, heads=4)
    valid = torch.tensor([[False, True, False], [True, True, True]])
    _, maps = attention(torch.randn(2, 3, 16, 5, 6), valid, torch.tensor([[0, 4, 9], [0, 4, 9]]))
    assert maps.shape == (2, 4, 3, 5, 6)
    torch.testing.assert_close(maps[0, :, 1], torch.ones(4, 5, 6))
    assert maps[0, :, [0, 2]].abs().max() == 0
    torch.testing.assert_close(maps[1].sum(1), torch.ones(4, 5, 6))


@pytest.mark.parametrize("kind", ["attention", "gru", "lstm"])
def test_acquisition_days_reach_every_temporal_module(kind) -> None:
    """The same images on other days read differently: irregular revisits are told apart by their days."""
    x, valid = _series(n=1, t=3), torch.ones(1, 3, dtype=torch.bool)
    early, late = torch.tensor([[0, 5, 10]]), torch.tensor([[0, 100, 300]])
    torch.manual_seed(0)
    model = _calibrated(temporal_unet(2, temporal=kind))
    with torch.no_grad():
        assert not torch.allclose(model(x, valid, early), model(x, valid, late))


def test_conv_lstm_with_1x1_kernels_is_an_lstm_cell_at_every_pixel() -> None:
    """The ConvLSTM's equations are the LSTM's: with 1x1 kernels it equals ``nn.LSTMCell`` pixel by pixel."""
    torch.manual_seed(0)
    reference, cell = nn.LSTMCell(3, 5), ConvLSTMCell(3, 5, kernel_size=1)
    i, f, g, o = (torch.arange(5) + 5 * k for k in range(4))  # nn.LSTMCell's gate order: i, f, g, o
    order = torch.cat([i, f, o, g])  # ConvLSTMCell's: i, f, o, g
    with torch.no_grad():
        cell.input.weight.copy_(reference.weight_ih[order][:, :, None, None])
        cell.hidden.weight.copy_(reference.weight_hh[order][:, :, None, None])
        cell.input.bias.copy_((reference.bias_ih + reference.bias_hh)[order])
    x, h, c = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    state = cell(x, torch.cat([h, c], 1))
    pixels = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
    expected_h, expected_c = reference(pixels(x), (pixels(h), pixels(c)))
    torch.testing.assert_close(pixels(state[:, :5]), expected_h)
    torch.testing.assert_close(pixels(state[:, 5:]), expected_c)


def test_conv_gru_gates_keep_or_replace_the_state() -> None:
    """``h' = (1 - z) h + z candidate``: a closed update gate keeps the state, an open one replaces it with
    the candidate ``tanh(W [x, r h])``."""
    cell = ConvGRUCell(2, 3, kernel_size=1)
    x, h = torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3)
    with torch.no_grad():
        cell.input.weight[:6].zero_()
        cell.hidden_gates.weight.zero_()
        cell.input.bias[:3].fill_(-100.0)  # z = 0
        torch.testing.assert_close(cell(x, h), h)
        cell.input.bias[:6].fill_(100.0)  # z = 1, r = 1
        # the candidate tanh(W [x, r h] + b), W [x, h] as one convolution of the concatenation
        weight = torch.cat([cell.input.weight[6:], cell.hidden_candidate.weight], 1)
        candidate = torch.tanh(nn.functional.conv2d(torch.cat([x, h], 1), weight, cell.input.bias[6:]))
        torch.testing.assert_close(cell(x, h), candidate)


def test_a_recurrence_reads_the_dates_in_order() -> None:
    torch.manual_seed(0)
    recurrence = Recurrence("gru", 2, 4)
    x, valid = torch.randn(1, 3, 2, 5, 5), torch.ones(1, 3, dtype=torch.bool)
    forward, backward = recurrence(x, valid), recurrence(x.flip(1), valid)
    assert not torch.allclose(forward, backward)
    # the acquisition days reach the state: the same images taken on other days read differently
    days = torch.tensor([[0, 40, 80]])
    assert torch.allclose(recurrence(x, valid, torch.tensor([[0, 1, 2]])), forward)  # (the default days)
    assert not torch.allclose(recurrence(x, valid, days), forward)
    with pytest.raises(ValueError, match="unknown recurrent cell 'rnn'; choose from"):
        Recurrence("rnn", 2, 4)


def test_masked_mean_and_day_encoding() -> None:
    x = torch.arange(4.0).reshape(1, 4, 1, 1, 1).expand(2, 4, 1, 1, 1)
    valid = torch.tensor([[True, False, True, False], [False] * 4])
    assert masked_mean(x, valid).flatten().tolist() == [1.0, 0.0]  # (0 + 2) / 2; no valid date: zeros
    encoding = day_encoding(torch.tensor([[0, 1]]), 7)
    assert encoding.shape == (1, 2, 7)
    assert encoding[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # sin 0, cos 0, odd padding
    torch.testing.assert_close(encoding[0, 1, 0], torch.sin(torch.tensor(1.0)))


def test_bad_inputs_say_what_to_do(models) -> None:
    model = models["gru"]
    with pytest.raises(ValueError, match=r"\(N, T, C, H, W\), got \(4, 3, 32, 32\); add a batch dimension"):
        model(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="built for 3 channel\\(s\\) per date but the series have 2"):
        model(torch.randn(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"valid must be \(N, T\) = \(1, 2\), one value per date; got \(2,\)"):
        model(torch.randn(1, 2, 3, 32, 32), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        model(torch.randn(1, 2, 3, 32, 32), torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown temporal module 'tcn'; choose from"):
        temporal_unet(2, temporal="tcn")
