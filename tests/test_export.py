"""ONNX export: every architecture, dynamic sizes, ONNX Runtime against PyTorch, the onnx engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segforge import create_model
from segforge.decoders.pspnet import _bin_average
from segforge.export import OnnxSegmenter, check_export, example_sizes, export_onnx

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx, onnxscript and onnxruntime (segforge[onnx])")
pytest.importorskip("onnxruntime", reason="the onnx engine needs onnxruntime (segforge[onnx])")

# (model, encoder): every architecture. Exporting with dynamic sizes spends most of its time in the
# exporter's symbolic shape reasoning: 13-47 s each here (MobileNetV2's 50 layers the longest), the
# VGG/ResNet-50 ones 3 GB too. The default run keeps one and the CLI's; CI runs them all.
FAST = [("segnet_basic", None)]
SLOW = [
    ("pspnet", "resnet18"),
    ("unet", None),
    ("unet_padded", "mobilenet_v2"),
    ("fcn32s", None),
    ("fcn16s", None),
    ("fcn8s", None),
    ("segnet", None),
    ("deconvnet", None),
    ("pspnet", None),
    ("unet_padded", None),
    ("unet_padded", "resnet18"),
    ("unet_padded", "efficientnet_lite0"),
]  # TensorFlow's SAME padding, from the input's size


def _sizes(model) -> list[tuple[int, int, int, int]]:
    """Two inputs the export's own check does not use: another batch, sides off the stride grid."""
    base = example_sizes(model)[0]
    if model.geometry.valid_convolutions:  # the original U-Net: 16k + 124 only
        return [(1, model.in_channels, base + 32, base), (3, model.in_channels, base + 16, base + 48)]
    stride = model.geometry.tile_period
    return [(1, model.in_channels, base + 5, base + 2 * stride + 7), (3, model.in_channels, base + 1, base)]


def _export_and_compare(tmp_path, name: str, encoder: str | None) -> None:
    model = create_model(name, 3, in_channels=3, encoder=encoder).eval()
    assert export_onnx(model, tmp_path / f"{name}.onnx", info={"classes": ["a", "b", "c"]}, check=False) is None
    graph = onnx.load(tmp_path / f"{name}.onnx").graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3])), dims  # dynamic
    engine = OnnxSegmenter(tmp_path / f"{name}.onnx")
    assert engine.num_classes == 3 and engine.info == {"classes": ["a", "b", "c"]}
    for shape in _sizes(model):
        x = torch.randn(shape)
        with torch.inference_mode():
            expected = model(x)
        got = engine(x)
        assert got.shape == expected.shape
        # Float rounding differs between the two runtimes (1e-7 here), and where two pooled
        # activations are that close, max-unpooling puts the value in the other place: SegNet-Basic's
        # random weights show such spots at 3e-5 on logits of 0.1.
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= 1e-5 + 1e-3 * scale


@pytest.mark.slow  # 8 s (the command line's export and ONNX Runtime predict: test_cli_export_then_predict...)
@pytest.mark.parametrize("name,encoder", FAST)
def test_each_architecture_exports_with_dynamic_sizes_and_matches_pytorch(tmp_path, name, encoder) -> None:
    _export_and_compare(tmp_path, name, encoder)


@pytest.mark.slow
@pytest.mark.parametrize("name,encoder", SLOW)
def test_each_large_architecture_exports_with_dynamic_sizes_and_matches_pytorch(tmp_path, name, encoder) -> None:
    _export_and_compare(tmp_path, name, encoder)


@pytest.mark.slow  # an export: 10-30 s
def test_the_original_unet_declares_its_valid_sizes_and_padded_nets_name_their_output_dims(tmp_path) -> None:
    export_onnx(create_model("unet", 2), tmp_path / "u.onnx")
    dims = [d.dim_param for d in onnx.load(tmp_path / "u.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == ["16*k_height + 124", "16*k_width + 124"]
    model = create_model("segnet_basic", 2, in_channels=1)  # in training mode
    check = export_onnx(model, tmp_path / "s.onnx")
    assert model.training  # exported in eval mode, handed back as it was
    assert check.shapes == ((2, 1, 64, 64), (1, 1, 73, 83)) and max(check.max_abs_diff) < 1e-5
    output = onnx.load(tmp_path / "s.onnx").graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in output] == ["batch", 2, "height", "width"]
    with pytest.raises(ValueError, match=r"the original U-Net cannot take 200 pixels.*use 188 or 204"):
        OnnxSegmenter(tmp_path / "u.onnx")(torch.zeros(1, 1, 200, 188))
    with pytest.raises(ValueError, match=r"s.onnx takes \(N, 1, H, W\) images, got shape \(1, 3, 64, 64\)"):
        OnnxSegmenter(tmp_path / "s.onnx")(torch.zeros(1, 3, 64, 64))


@pytest.mark.slow  # an export: 10-30 s
def test_the_check_fails_when_the_file_computes_something_else(tmp_path) -> None:
    torch.manual_seed(0)
    export_onnx(create_model("segnet_basic", 2, in_channels=1), tmp_path / "a.onnx", check=False)
    other = create_model("segnet_basic", 2, in_channels=1).eval()  # other random weights
    with pytest.raises(ValueError, match=r"a.onnx differs from PyTorch on input \(1, 1, 64, 64\): max \|Δlogit\|"):
        check_export(other, tmp_path / "a.onnx", [(1, 1, 64, 64)])


def test_bad_onnx_files_get_errors_that_name_them(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"ONNX model .*none.onnx does not exist; write one with segforge export"):
        OnnxSegmenter(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"bad.onnx is corrupt or not an ONNX file"):
        OnnxSegmenter(tmp_path / "bad.onnx")
    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["image"], ["logits"])],
            "g",
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
            [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
        ir_version=10,
    )
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match=r"plain.onnx was not written by segforge export"):
        OnnxSegmenter(tmp_path / "plain.onnx")


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_the_exported_pyramid_pooling_bins_equal_adaptive_average_pooling(bins) -> None:
    for height, width in [(1, 1), (5, 7), (6, 6), (13, 8), (64, 33)]:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        rows, cols = _bin_average(height, bins, x), _bin_average(width, bins, x)
        torch.testing.assert_close(rows @ x @ cols.T, F.adaptive_avg_pool2d(x, bins))


def test_cli_export_then_predict_with_onnx_runtime_gives_the_pytorch_masks(tmp_path, capsys) -> None:
    import tifffile

    from segforge.checkpoint import save_checkpoint
    from segforge.cli import main

    model = create_model("segnet_basic", 3, in_channels=1)
    with torch.no_grad():  # random weights predict one class everywhere; larger scores make masks with all three
        model.head[0].weight.mul_(200)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model, classes=["a", "b", "c"], mean=[0.5], std=[0.25])
    (tmp_path / "in").mkdir()
    image = (np.random.default_rng(1).random((90, 70)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "input 2x1x64x64: max |Δlogit|" in out and "sides any" in out
    onnx_file = str(tmp_path / "m.onnx")
    runs = {
        "torch": [str(checkpoint)],
        "onnx": [onnx_file, "--engine", "onnx"],
        "onnx_tiles": [onnx_file, "--tile", "32", "--overlap", "0.5"],
        "torch_tiles": [str(checkpoint), "--tile", "32", "--overlap", "0.5"],
    }
    for name, args in runs.items():
        assert main(["predict", "--checkpoint", *args, str(tmp_path / "in"), "--out", str(tmp_path / name)]) == 0
    from PIL import Image

    masks = {name: np.asarray(Image.open(tmp_path / name / "a.png")) for name in runs}
    assert np.array_equal(masks["torch"], masks["onnx"]) and np.array_equal(masks["torch_tiles"], masks["onnx_tiles"])
    assert len(np.unique(masks["torch"])) > 1  # not a trivial all-one-class answer
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--engine",
                "onnx",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--engine onnx runs an exported model: export" in capsys.readouterr().err


@pytest.mark.slow  # an export of the original U-Net: 10-30 s
def test_an_exported_original_unet_predicts_in_tiles_with_onnx_runtime(tmp_path, capsys) -> None:
    import tifffile
    from PIL import Image

    from segforge.checkpoint import save_checkpoint
    from segforge.cli import main
    from segforge.export import load_onnx

    model = create_model("unet", 2, in_channels=1)
    checkpoint = save_checkpoint(tmp_path / "u.safetensors", model, classes=["a", "b"], mean=[0.5], std=[0.25])
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", (np.random.default_rng(2).random((70, 101)) * 255).astype(np.uint8))
    assert main(["export", "--checkpoint", str(checkpoint)]) == 0
    assert "sides 16k + 124" in capsys.readouterr().out
    onnx_model, _ = load_onnx(tmp_path / "u.onnx")
    assert repr(onnx_model.geometry) == repr(model.geometry) and onnx_model.geometry.border(70, 101) == (
        92,
        106,
        92,
        107,
    )
    for name, args in {"torch": [str(checkpoint)], "onnx": [str(tmp_path / "u.onnx"), "--engine", "onnx"]}.items():
        assert (
            main(
                ["predict", "--checkpoint", *args, str(tmp_path / "in"), "--tile", "32", "--out", str(tmp_path / name)]
            )
            == 0
        ), capsys.readouterr().err
    masks = [np.asarray(Image.open(tmp_path / name / "a.png")) for name in ("torch", "onnx")]
    assert masks[0].shape == (70, 101) and np.array_equal(*masks)
