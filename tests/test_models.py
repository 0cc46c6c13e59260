"""Every registered architecture, through the same tests; plus the papers' known numbers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import image_models, input_size_for
from torch import nn

from segforge import count_parameters, create_model, list_models
from segforge.models.unet import unet_input_size, unet_output_size

MODELS = image_models()


def expected_output_size(name: str, height: int, width: int) -> tuple[int, int]:
    if name == "unet":
        return unet_output_size(height), unet_output_size(width)
    return height, width


def test_registry_lists_every_architecture_of_the_notes() -> None:
    assert set(list_models()) - set(MODELS) == {"temporal_unet", "mask_rcnn"}  # (time series; instances)
    assert set(MODELS) == {
        "fcn32s",
        "fcn16s",
        "fcn8s",
        "deconvnet",
        "segnet",
        "segnet_basic",
        "unet",
        "unet_padded",
        "pspnet",
    }


def _heavy_with_the_slow_checks(cases: list[tuple], keep: tuple | None = None) -> list:
    """``cases`` (name first), DeconvNet's (252 M weights, at least 225x225: 13 s for a backward at batch 2, 3 s
    a forward) marked slow except ``keep``."""
    return [
        pytest.param(*case, marks=[pytest.mark.slow] if case[0] == "deconvnet" and case != keep else [])
        for case in cases
    ]


@pytest.mark.parametrize("name", _heavy_with_the_slow_checks([(name,) for name in MODELS]))
def test_backward_reaches_every_parameter_at_an_odd_size(name: str) -> None:
    model = create_model(name, 3, in_channels=3).train()
    height, width = input_size_for(name)
    out = model(torch.randn(2, 3, height, width))
    outputs = list(out) if isinstance(out, tuple) else [out]
    for logits in outputs:
        assert logits.shape == (2, 3, *expected_output_size(name, height, width))
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    "name, num_classes, in_channels",
    _heavy_with_the_slow_checks(
        [(name, k, c) for name in MODELS for k, c in [(1, 1), (2, 3), (21, 4)]], keep=("deconvnet", 2, 3)
    ),
)
def test_any_class_and_channel_count(name: str, num_classes: int, in_channels: int) -> None:
    model = create_model(name, num_classes, in_channels=in_channels).eval()
    height, width = input_size_for(name)
    with torch.no_grad():
        logits = model(torch.randn(1, in_channels, height, width))
    assert isinstance(logits, torch.Tensor)  # eval mode: a plain tensor, no auxiliary output
    assert logits.shape == (1, num_classes, *expected_output_size(name, height, width))
    assert torch.isfinite(logits).all()
    assert model.config == {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "encoder": None if name in ("segnet_basic", "unet") else model.encoder_name,
        "encoder_weights": None,
        "decoder_channels": {"unet_padded": [512, 256, 128, 64], "pspnet": [512, 512]}.get(name),
    }
    rebuilt = create_model(**model.config)  # a checkpoint's config rebuilds the same architecture
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("unet", "deconvnet")])
@pytest.mark.parametrize("size", [(1, 1), (31, 33), (64, 64)])
def test_padded_models_take_any_size_down_to_one_pixel(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, 2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 2, *size)


@pytest.mark.parametrize("encoder", ["vgg16", "vgg16_bn", "resnet18", "resnet50", "mobilenet_v2", "unet"])
def test_unet_padded_on_every_kind_of_encoder(encoder: str) -> None:
    model = create_model("unet_padded", 5, in_channels=4, encoder=encoder).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 75, 61)).shape == (1, 5, 75, 61)


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def meta_model(name: str, num_classes: int = 21, **options) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes, **options)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_has_134m_parameters_as_in_table_1(name: str) -> None:
    model = meta_model(name)
    # The paper counts the learned layers; FCN-32s's 64x64 upsampling kernel (1.8M weights for
    # 21 classes, fixed to bilinear in the reference) is the only large addition.
    upsampling = sum(p.numel() for m in model.modules() if isinstance(m, nn.ConvTranspose2d) for p in m.parameters())
    assert abs((count_parameters(model) - upsampling) / 1e6 - 134) < 0.5
    assert model.encoder.fc6.weight.shape == (4096, 512, 7, 7)
    assert model.encoder.fc7.weight.shape == (4096, 4096, 1, 1)
    kernels = sorted(m.kernel_size[0] for m in model.modules() if isinstance(m, nn.ConvTranspose2d))
    assert kernels == {"fcn32s": [64], "fcn16s": [4, 32], "fcn8s": [4, 4, 16]}[name]


def test_segnet_has_29_5m_parameters_and_13_plus_13_convolutions() -> None:
    model = meta_model("segnet", 11)
    assert abs(count_parameters(model) / 1e6 - 29.5) < 0.1
    assert len(_convs(model.encoder)) == 13
    assert len(_convs(model.decoder)) + len(_convs(model.head)) == 13  # conv1_1_D is the classifier


def test_segnet_basic_is_four_levels_of_64_channel_7x7_convolutions() -> None:
    convs = _convs(meta_model("segnet_basic", 11))
    assert len(convs) == 4 + 4 + 1
    assert all(c.kernel_size == (7, 7) and c.out_channels == 64 for c in convs[:8])
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 11


def test_unet_has_23_convolutional_layers_64_to_1024_channels() -> None:
    model = meta_model("unet", 2)
    convs = _convs(model)
    assert len(convs) == 23  # "In total the network has 23 convolutional layers."
    assert all(c.padding == (0, 0) for c in convs)
    assert [c.out_channels for c in convs[:10:2]] == [64, 128, 256, 512, 1024]
    assert sum(isinstance(c, nn.ConvTranspose2d) and c.kernel_size == (2, 2) for c in convs) == 4


def test_deconvnet_mirrors_vgg16_with_batch_norm_everywhere() -> None:
    model = meta_model("deconvnet")
    assert len(_convs(model.encoder)) == 13 + 2  # conv1_1 … conv5_3, fc6, fc7
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 1 + 13 and deconvs[0].kernel_size == (7, 7)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 13 + 2 + 14


def test_pspnet_pyramid_bins_and_output_stride_8() -> None:
    model = meta_model("pspnet")
    assert [b[0].output_size for b in model.decoder.ppm.branches] == [1, 2, 3, 6]
    assert model.encoder.reductions[-2:] == (8, 8)
    assert model.decoder.ppm.out_channels == 2048 + 4 * 512


def test_pspnet_returns_the_auxiliary_logits_in_training_only() -> None:
    model = create_model("pspnet", 4, encoder="resnet18")
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert out.logits.shape == out.aux_logits.shape == (2, 4, 64, 64)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


@pytest.mark.parametrize("input_size, output_size", [(572, 388), (188, 4), (204, 20), (508, 324)])
def test_unet_size_helpers_match_the_paper(input_size: int, output_size: int) -> None:
    assert unet_output_size(input_size) == output_size
    assert unet_input_size(output_size) == input_size
    assert unet_output_size(unet_input_size(output_size - 1)) >= output_size - 1


def test_unet_rejects_an_invalid_size_and_names_the_nearest_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"cannot take 500 pixels.*use 492 or 508"):
        unet_output_size(500)
    model = create_model("unet", 2)
    with pytest.raises(ValueError, match="unet_padded"):
        model(torch.randn(1, 1, 572, 500))


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'unet\+\+'; choose from \['deconvnet', 'fcn16s'"):
        create_model("unet++", 2)


@pytest.mark.parametrize(
    "name, encoder", [("fcn8s", "resnet50"), ("segnet", "mobilenet_v2"), ("pspnet", "vgg16"), ("deconvnet", "vgg16")]
)
def test_an_encoder_the_architecture_does_not_use_is_rejected(name: str, encoder: str) -> None:
    with pytest.raises(ValueError, match=rf"model '{name}' does not support encoder '{encoder}'; choose from"):
        create_model(name, 2, encoder=encoder)


def test_unknown_encoder_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet9'; choose from \['efficientnet_lite0', .*'vgg16'"):
        create_model("unet_padded", 2, encoder="resnet9")


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_class_count(bad) -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("segnet_basic", bad)


def test_wrong_channel_count_says_how_to_fix_it() -> None:
    model = create_model("segnet_basic", 2, in_channels=1)
    with pytest.raises(ValueError, match=r"built for 1 input channel\(s\) but the input has 3.*in_channels=3"):
        model(torch.randn(1, 3, 32, 32))


def test_missing_batch_dimension_and_integer_input() -> None:
    model = create_model("segnet_basic", 2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(3, 32, 32\); add a batch dimension"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating-point input.*x.float()"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_input_smaller_than_deconvnet_takes() -> None:
    model = create_model("deconvnet", 2).eval()
    with pytest.raises(ValueError, match=r"input 200x300 is smaller than deconvnet can take \(at least 224x224\)"):
        model(torch.randn(1, 3, 200, 300))


def test_batch_of_one_through_a_1x1_batch_norm_in_training() -> None:
    model = create_model("pspnet", 2, encoder="resnet18").train()
    with pytest.raises(ValueError, match="at least 2 images per batch in training mode.*model.eval()"):
        model(torch.randn(1, 3, 64, 64))


def test_create_model_loads_torchvision_encoder_weights_and_adapts_grayscale(tmp_path) -> None:
    from safetensors.torch import save_file

    from segforge import create_encoder

    rgb = create_encoder("resnet18")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in rgb.state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}  # torchvision's classifier
    path = tmp_path / "resnet18-test.safetensors"
    save_file(state, str(path))
    model = create_model("unet_padded", 2, in_channels=1, encoder="resnet18", encoder_weights=str(path))
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    with pytest.raises(ValueError, match=r"resnet18-test.safetensors.*do not fit encoder resnet50"):
        create_model("pspnet", 2, encoder="resnet50", encoder_weights=str(path))


@pytest.mark.parametrize("size,before,after", [(5, 2, 3), (5, 7, 11), (1, 3, 2), (2, 5, 0), (6, 0, 0)])
def test_mirror_pad_reflects_without_repeating_the_edge_by_any_amount(size: int, before: int, after: int) -> None:
    import numpy as np

    from segforge.models.geometry import mirror_pad

    x = torch.arange(3 * size * (size + 1), dtype=torch.float32).view(1, 3, size, size + 1)
    padded = mirror_pad(x, before, after, after, before)
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (before, after), (0, 0)), mode="reflect" if size > 1 else "edge")
    expected = np.pad(expected, ((0, 0), (0, 0), (0, 0), (after, before)), mode="reflect")
    assert torch.equal(padded, torch.from_numpy(expected))


@pytest.mark.slow  # 6 s: the original U-Net at the paper's 572 px
def test_full_size_forward_gives_the_original_unet_logits_for_every_pixel() -> None:
    from segforge.models.geometry import mirror_pad
    from segforge.models.segmenter import full_size_forward

    torch.manual_seed(0)
    model = create_model("unet", 2).eval()
    with torch.no_grad():
        for height, width in [(1, 1), (37, 100), (388, 388)]:
            x = torch.randn(1, 1, height, width)
            assert full_size_forward(model, x).shape == (1, 2, height, width)
        # 388 px: the paper's tile; 92 px of mirrored border on each side make the 572 px input
        x = torch.randn(1, 1, 388, 388)
        torch.testing.assert_close(full_size_forward(model, x), model(mirror_pad(x, 92, 92, 92, 92)))
        padded_model = create_model("unet_padded", 2, encoder="resnet18").eval()
        x = torch.randn(1, 3, 40, 56)
        assert torch.equal(full_size_forward(padded_model, x), padded_model(x))  # padded nets: untouched


@pytest.mark.parametrize(
    "name,encoder", [("unet_padded", "mobilenet_v2"), ("unet_padded", "resnet18"), ("pspnet", "resnet18")]
)
def test_folding_batch_norm_keeps_the_logits_and_leaves_the_model_alone(name: str, encoder: str) -> None:
    from segforge.models.fold import fold_batch_norm

    torch.manual_seed(0)
    model = create_model(name, 3, encoder=encoder)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics that are not the identity
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 10  # the original keeps its layers
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(
    "encoder, widths",
    [
        (None, [512, 256, 128, 64]),  # U-Net's own encoder: the paper's decoder
        ("unet16", [128, 64, 32, 16]),
        ("resnet50", [256, 128, 64, 32, 16]),  # skips of 2048..64: no wider than smp's light decoder
        ("resnet34", [256, 128, 64, 32, 16]),
        ("efficientnet_lite0", [112, 40, 24, 16, 16]),  # narrower skips: as wide as they are
    ],
)
def test_unet_padded_decoder_widths_default_by_encoder(encoder, widths) -> None:
    with torch.device("meta"):
        model = create_model("unet_padded", 3, encoder=encoder)
    assert model.config["decoder_channels"] == widths
    assert [block.conv[0].out_channels for block in model.decoder.blocks] == widths


def test_decoder_widths_are_a_choice_that_checkpoints_keep(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from segforge.checkpoint import load_model, save_checkpoint

    light = create_model("unet_padded", 2, encoder="resnet18", decoder_channels=[64, 32, 16, 16, 8])
    skips = create_model("unet_padded", 2, encoder="resnet18", decoder_channels="skips")
    assert skips.config["decoder_channels"] == [256, 128, 64, 64, 32]
    assert count_parameters(light) < count_parameters(skips)
    x = torch.randn(1, 3, 64, 96)
    assert light.eval()(x).shape == (1, 2, 64, 96)
    loaded, _ = load_model(save_checkpoint(tmp_path / "light.safetensors", light))
    assert loaded.config["decoder_channels"] == [64, 32, 16, 16, 8]
    torch.testing.assert_close(loaded.eval()(x), light(x))
    # a checkpoint written before the option (no decoder_channels) was as wide as the skips: it still loads
    path = save_checkpoint(tmp_path / "old.safetensors", skips)
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    config = json.loads(metadata["config"])
    del config["decoder_channels"]
    save_file(tensors, str(path), metadata=metadata | {"config": json.dumps(config)})
    assert load_model(path)[0].config["decoder_channels"] == [256, 128, 64, 64, 32]
    with pytest.raises(ValueError, match=r"decoder_channels must be 5 positive widths .* got \[64, 32\]"):
        create_model("unet_padded", 2, encoder="resnet18", decoder_channels=[64, 32])
    choices = r"\['pspnet', 'temporal_unet', 'unet_padded'\]"
    with pytest.raises(ValueError, match=r"model 'segnet' has the paper's decoder.*" + choices):
        create_model("segnet", 2, decoder_channels=[64, 32])


def test_pspnet_pyramid_and_fusing_widths_are_a_choice() -> None:
    with torch.device("meta"):
        paper = create_model("pspnet", 21)
        light = create_model("pspnet", 21, decoder_channels=[128, 256])
    assert paper.config["decoder_channels"] == [512, 512]  # ResNet-50: 2048 / 4 per branch, then 512
    assert [branch[1][0].out_channels for branch in light.decoder.ppm.branches] == [128] * 4
    assert light.decoder.out_channels == 256 and count_parameters(light) < count_parameters(paper)
    with pytest.raises(ValueError, match=r"PSPNet's decoder_channels are 2 widths"):
        create_model("pspnet", 21, decoder_channels=[128])


def test_the_decoder_widths_come_from_the_command_line_and_the_config() -> None:
    from segforge.cli import build_parser
    from segforge.config import config_from_dict

    args = build_parser().parse_args(["train", "--data", "d", "--decoder-channels", "128,64,32,16,8"])
    assert getattr(args, "model.decoder_channels") == [128, 64, 32, 16, 8]
    args = build_parser().parse_args(["train", "--data", "d", "--decoder-channels", "skips"])
    assert getattr(args, "model.decoder_channels") == "skips"
    assert config_from_dict({"model": {"decoder_channels": "skips"}}).model.decoder_channels == "skips"
    with pytest.raises(ValueError, match="model.decoder_channels must be positive widths"):
        config_from_dict({"model": {"decoder_channels": [64, 0]}})
