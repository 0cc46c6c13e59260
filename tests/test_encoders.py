"""Encoder contract, torchvision layout (without torchvision) and weight loading."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from segforge.encoders import create_encoder, list_encoders, load_encoder_weights
from segforge.encoders.vgg import FullyConvolutional, VGGEncoder
from segforge.encoders.weights import adapt_input_conv

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]
# Encoders with no torchvision ImageNet counterpart (trained from scratch).
NO_TORCHVISION_COUNTERPART = {"unet", "unet32", "unet16"}
# ImageNet weights from registry packages, not torchvision: checked against those files in test_pretrained.py.
PACKAGED_WEIGHTS = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
VGG_CLASSIFIER = {
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}
# torchvision's ImageNet classifier of each encoder: the keys its state dicts carry and we drop.
CLASSIFIERS: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet18": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
    "resnet34": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
    "resnet50": {"fc.weight": (1000, 2048), "fc.bias": (1000,)},
    "resnet101": {"fc.weight": (1000, 2048), "fc.bias": (1000,)},
    "mobilenet_v2": {"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)},
    "vgg16": VGG_CLASSIFIER,
    "vgg16_bn": VGG_CLASSIFIER,
}
# Parameter totals published in torchvision's weight tables (features + classifier).
TORCHVISION_TOTALS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "mobilenet_v2": 3_504_872,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
}


def check_contract(encoder, x: torch.Tensor) -> None:
    features = encoder(x)
    assert isinstance(features, list)
    assert len(features) == len(encoder.out_channels) == len(encoder.reductions)
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions):
        assert feature.shape == (x.shape[0], channels, x.shape[2] // reduction, x.shape[3] // reduction)


@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("name", list_encoders())
def test_encoder_contract(name: str, in_channels: int) -> None:
    encoder = create_encoder(name, in_channels=in_channels).eval()
    assert encoder.in_channels == in_channels
    with torch.no_grad():
        check_contract(encoder, torch.randn(2, in_channels, 64, 96))


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", RESNETS)
def test_dilated_resnet_contract(name: str, output_stride: int) -> None:
    encoder = create_encoder(name, output_stride=output_stride).eval()
    assert encoder.stride == output_stride
    with torch.no_grad():
        check_contract(encoder, torch.randn(2, 3, 64, 96))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilation_replaces_stride_exactly(name: str) -> None:
    # With the same weights, a dilated layer computes the strided layer's outputs and the ones in
    # between: subsampling the dense map must give the strided map exactly (BN in eval is pointwise).
    torch.manual_seed(0)
    strided = create_encoder(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = strided(x)
        for output_stride in (16, 8):
            dilated = create_encoder(name, output_stride=output_stride).eval()
            dilated.load_state_dict(strided.state_dict())
            for ref, out, r_ref, r_out in zip(reference, dilated(x), strided.reductions, dilated.reductions):
                step = r_ref // r_out
                torch.testing.assert_close(out[..., ::step, ::step], ref, rtol=1e-4, atol=1e-4)


def test_dilations_follow_torchvision() -> None:
    r50 = create_encoder("resnet50", output_stride=8)
    assert (r50.layer3[0].conv2.stride, r50.layer3[0].conv2.dilation) == ((1, 1), (1, 1))
    assert r50.layer3[0].downsample[0].stride == (1, 1)
    assert r50.layer3[1].conv2.dilation == (2, 2) and r50.layer3[1].conv2.padding == (2, 2)
    assert (r50.layer4[0].conv2.dilation, r50.layer4[2].conv2.dilation) == ((2, 2), (4, 4))
    r18 = create_encoder("resnet18", output_stride=16)
    assert (r18.layer4[0].conv1.stride, r18.layer4[0].conv1.dilation, r18.layer4[0].conv2.dilation) == (
        (1, 1),
        (1, 1),
        (2, 2),
    )
    assert r18.layer4[1].conv1.dilation == r18.layer4[1].conv2.dilation == (2, 2)


def test_every_encoder_is_checked_against_torchvision() -> None:
    assert set(list_encoders()) - NO_TORCHVISION_COUNTERPART - PACKAGED_WEIGHTS == set(TORCHVISION_TOTALS)


@pytest.mark.parametrize("name", sorted(TORCHVISION_TOTALS))
def test_parameter_count_matches_torchvision(name: str) -> None:
    encoder = create_encoder(name)
    classifier = sum(torch.Size(shape).numel() for shape in CLASSIFIERS[name].values())
    assert sum(p.numel() for p in encoder.parameters()) + classifier == TORCHVISION_TOTALS[name]


@pytest.mark.parametrize(
    "name, key, shape",
    [
        ("resnet18", "layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("resnet18", "layer4.1.conv2.weight", (512, 512, 3, 3)),
        ("resnet50", "layer4.2.conv3.weight", (2048, 512, 1, 1)),
        ("resnet50", "layer3.0.downsample.0.weight", (1024, 512, 1, 1)),
        ("resnet50", "layer3.0.downsample.1.running_var", (1024,)),
        ("resnet101", "layer3.22.bn3.weight", (1024,)),
        ("mobilenet_v2", "features.0.0.weight", (32, 3, 3, 3)),
        ("mobilenet_v2", "features.1.conv.1.weight", (16, 32, 1, 1)),
        ("mobilenet_v2", "features.17.conv.2.weight", (320, 960, 1, 1)),
        ("mobilenet_v2", "features.17.conv.0.0.weight", (960, 160, 1, 1)),
        ("mobilenet_v2", "features.18.0.weight", (1280, 320, 1, 1)),
        ("vgg16", "features.28.weight", (512, 512, 3, 3)),
        ("vgg16_bn", "features.40.weight", (512, 512, 3, 3)),
        ("vgg16_bn", "features.41.running_mean", (512,)),
    ],
)
def test_torchvision_key_names(name: str, key: str, shape: tuple[int, ...]) -> None:
    assert tuple(create_encoder(name).state_dict()[key].shape) == shape


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A state dict as torchvision would save it, with random (positive) values."""
    encoder = create_encoder(name)
    generator = torch.Generator().manual_seed(0)
    state = {
        k: torch.rand(v.shape, generator=generator) if v.is_floating_point() else v.clone()
        for k, v in encoder.state_dict().items()
    }
    state.update({k: torch.rand(shape, generator=generator) for k, shape in CLASSIFIERS[name].items()})
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_load_torchvision_weights(tmp_path, name: str, suffix: str) -> None:
    state = torchvision_state_dict(name)
    path = tmp_path / f"{name}{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = create_encoder(name, weights=str(path)).state_dict()
    assert not any(key.startswith(("fc.", "classifier.")) for key in loaded)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_loaded_values_land_in_modules(tmp_path) -> None:
    state = torchvision_state_dict("resnet50")
    # An old torchvision file: saved before batch norm had num_batches_tracked, and by DataParallel.
    state = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 90}, tmp_path / "r50.pth")
    encoder = create_encoder("resnet50", weights=tmp_path / "r50.pth")
    assert torch.equal(encoder.layer1[0].conv1.weight, state["module.layer1.0.conv1.weight"])
    assert torch.equal(encoder.layer4[2].bn3.running_var, state["module.layer4.2.bn3.running_var"])


def test_load_from_url_uses_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    state = torchvision_state_dict("resnet18")
    source = tmp_path / "upload.pth"
    torch.save(state, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    named = source.rename(tmp_path / f"resnet18-{digest}.pth")
    encoder = create_encoder("resnet18", weights=named.as_uri())
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    cache = tmp_path / "home" / "hub" / "checkpoints"
    assert [p.name for p in cache.iterdir()] == [named.name]
    named.unlink()  # the second load must come from the cache
    create_encoder("resnet18", weights=named.as_uri())


def test_url_with_wrong_hash_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    torch.save(torchvision_state_dict("resnet18"), tmp_path / "resnet18-00000000.pth")
    with pytest.raises(ValueError, match="has SHA-256 [0-9a-f]{64}, not the published 00000000; nothing was kept"):
        create_encoder("resnet18", weights=(tmp_path / "resnet18-00000000.pth").as_uri())
    assert list((tmp_path / "home" / "hub" / "checkpoints").iterdir()) == []
    with pytest.raises(ValueError, match="could not download"):
        create_encoder("resnet18", weights=(tmp_path / "absent.pth").as_uri())


@pytest.mark.parametrize("in_channels", [1, 2, 4, 5, 6])
def test_adapt_input_conv_preserves_grey_response(in_channels: int) -> None:
    weight = torch.randn(8, 3, 7, 7)
    adapted = adapt_input_conv(weight, in_channels)
    assert adapted.shape == (8, in_channels, 7, 7)
    torch.testing.assert_close(adapted.sum(1), weight.sum(1))
    if in_channels == 1:
        torch.testing.assert_close(adapted, weight.sum(1, keepdim=True))
    if in_channels == 6:  # a multiple of 3: RGB repeated, scaled by 3/C
        torch.testing.assert_close(adapted, weight.repeat(1, 2, 1, 1) / 2)
    assert torch.equal(adapt_input_conv(weight, 3), weight)
    with pytest.raises(ValueError, match="RGB convolution weight"):
        adapt_input_conv(adapted, 3)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_first_conv_adapted_to_input_channels(tmp_path, name: str) -> None:
    state = torchvision_state_dict(name)
    torch.save(state, tmp_path / "w.pth")
    rgb = create_encoder(name, weights=tmp_path / "w.pth")
    grey = create_encoder(name, in_channels=1, weights=tmp_path / "w.pth")
    four = create_encoder(name, in_channels=4, weights=tmp_path / "w.pth")
    key = rgb.first_conv_key
    torch.testing.assert_close(grey.state_dict()[key], state[key].sum(1, keepdim=True))
    first_conv = {"resnet18": lambda e: e.conv1, "mobilenet_v2": lambda e: e.features[0][0]}[name]
    image = torch.rand(1, 1, 32, 32)
    expected = first_conv(rgb)(image.expand(1, 3, 32, 32))
    torch.testing.assert_close(first_conv(four)(image.expand(1, 4, 32, 32)), expected)
    torch.testing.assert_close(first_conv(grey)(image), expected)


@pytest.mark.slow  # 10 s: VGG16's 138 M weights made, saved and loaded
def test_vgg_fc_layers_load_as_convolutions(tmp_path) -> None:
    encoder = VGGEncoder(fc=FullyConvolutional(padding=3))
    state = torchvision_state_dict("vgg16")
    torch.save(state, tmp_path / "vgg16.pth")
    load_encoder_weights(encoder, tmp_path / "vgg16.pth")
    assert torch.equal(encoder.fc6.weight, state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(encoder.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])
    pool5 = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        conv = F.conv2d(pool5, encoder.fc6.weight, encoder.fc6.bias)  # valid padding: 7x7 → 1x1
    torch.testing.assert_close(conv.flatten(1), linear, rtol=1e-4, atol=1e-3)  # sums of 25088 terms


class NotAStateDict:
    pass


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"absent\.pth does not exist"):
        create_encoder("resnet18", weights=str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file(tmp_path, suffix: str) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=rf"cannot read weights file .*corrupt\{suffix}"):
        create_encoder("resnet18", weights=path)


def test_pickled_object_is_refused(tmp_path) -> None:
    torch.save({"model": NotAStateDict()}, tmp_path / "object.pth")
    # weights_only refuses to rebuild a class: loading a weights file must never run code.
    with pytest.raises(ValueError, match=r"cannot read weights file .*object\.pth .*Unsupported global"):
        create_encoder("resnet18", weights=tmp_path / "object.pth")
    torch.save({"epoch": 3}, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match=r"dict\.pth holds a dict, not a state dict"):
        create_encoder("resnet18", weights=tmp_path / "dict.pth")


def test_wrong_architecture(tmp_path) -> None:
    torch.save(torchvision_state_dict("resnet18"), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError) as info:
        create_encoder("resnet50", weights=tmp_path / "resnet18.pth")
    message = str(info.value)
    for expected in (
        "resnet18.pth",
        "do not fit encoder resnet50",
        "missing keys",
        "layer1.0.conv3.weight",
        "shape mismatch at",
        "pass the file that matches encoder 'resnet50'",
    ):
        assert expected in message
