"""Checkpoints: round trip, atomic writes, safe and clear loading errors."""

from __future__ import annotations

import math
import os

import pytest
import torch

from segforge import create_model
from segforge.checkpoint import FORMAT, load_model, load_state, read_checkpoint, save_checkpoint, save_state
from segforge.files import atomic_write


def test_round_trip_rebuilds_the_same_model(tmp_path) -> None:
    model = create_model("unet_padded", 3, in_channels=1, encoder="resnet18").eval()
    path = save_checkpoint(
        tmp_path / "best.safetensors",
        model,
        classes=["a", "b", "c"],
        epoch=4,
        metrics={"mean_iou": 0.5, "absent": math.nan},
    )
    loaded, info = load_model(path)
    assert loaded.config == model.config
    assert info["classes"] == ["a", "b", "c"] and info["epoch"] == 4 and math.isnan(info["metrics"]["absent"])
    x = torch.randn(1, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_a_failed_write_keeps_the_previous_file(tmp_path) -> None:
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"previous")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["last.safetensors"]  # no temporary file left behind


def test_missing_truncated_and_foreign_checkpoints_are_explained(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"checkpoint .*nope.safetensors does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    path = save_checkpoint(tmp_path / "c.safetensors", create_model("segnet_basic", 2))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.safetensors is corrupt"):
        read_checkpoint(truncated)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a segforge checkpoint"):
        read_checkpoint(tmp_path / "plain.safetensors")


def test_training_state_refuses_pickled_objects(tmp_path) -> None:
    state = {"epoch": 3, "rng": torch.get_rng_state(), "optimizer": {"lr": [0.1]}}
    path = save_state(tmp_path / "state.pt", state)
    assert load_state(path)["epoch"] == 3

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt is corrupt or holds more than tensors"):
        load_state(tmp_path / "evil.pt")


def _forged(path, state: dict, config: object, info: object = None) -> None:
    import json

    from safetensors.torch import save_file

    metadata = {"format": FORMAT, "config": json.dumps(config), "info": json.dumps(info if info is not None else {})}
    save_file(state, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"name": "segnet_basic", "in_channels": 3}, "lacks num_classes"),
        ({"name": "segnet_basic", "num_classes": 10**9, "in_channels": 3}, "num_classes is 1000000000, not a count"),
        ({"name": "segnet_basic", "num_classes": 0, "in_channels": 3}, "num_classes is 0, not a count"),
        ({"name": "segnet_basic", "num_classes": 2, "in_channels": "3"}, "in_channels is '3', not a count"),
        ({"name": "resnet", "num_classes": 2, "in_channels": 3}, "unknown model 'resnet'"),
        ({"name": 7, "num_classes": 2, "in_channels": 3}, "the model name is 7, not a name"),
        ({"name": "unet_padded", "num_classes": 2, "in_channels": 3, "encoder": "vgg99"}, "unknown encoder 'vgg99'"),
        (["segnet_basic"], "the model config is a list, not a mapping"),
    ],
)
def test_damaged_checkpoint_metadata_is_named_before_anything_is_built(tmp_path, config, message) -> None:
    _forged(tmp_path / "damaged.safetensors", {"x": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match=rf"checkpoint .*damaged.safetensors: .*{message}"):
        load_model(tmp_path / "damaged.safetensors")


def test_weights_of_another_model_get_a_short_message(tmp_path) -> None:
    other = create_model("unet_padded", 3, encoder="unet16")
    config = create_model("segnet_basic", 3).config
    _forged(tmp_path / "swapped.safetensors", other.state_dict(), config)
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / "swapped.safetensors")
    message = str(err.value)
    assert "holds the weights of another model than the segnet_basic" in message
    assert "missing tensors" in message and "unexpected tensors" in message and len(message) < 800
    save_checkpoint(tmp_path / "resized.safetensors", create_model("segnet_basic", 5))  # a head for 5 classes
    _forged(tmp_path / "resized2.safetensors", read_checkpoint(tmp_path / "resized.safetensors")[0], config)
    with pytest.raises(ValueError, match=r"'head.0.bias' is \(5,\) in the file, \(3,\) in the model"):
        load_model(tmp_path / "resized2.safetensors")


def test_a_plain_state_dict_is_not_a_training_state(tmp_path) -> None:
    from segforge.training import fit

    torch.save(create_model("segnet_basic", 3).state_dict(), tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"state.pt is not a segforge training state"):
        fit(None, resume=tmp_path)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("{not json", "damaged segforge metadata \\(JSONDecodeError"),
        ('{"config": {}}', "damaged segforge metadata \\(KeyError"),
        (
            '{"config": {"name": "segnet_basic", "num_classes": -1, "in_channels": 3}, "info": {}, '
            '"valid_convolutions": false}',
            "num_classes is -1, not a count",
        ),
    ],
)
def test_onnx_files_with_forged_metadata_are_named(tmp_path, metadata, message) -> None:
    onnx = pytest.importorskip("onnx", reason="ONNX export is the segforge[onnx] extra")
    pytest.importorskip("onnxruntime", reason="the onnx engine needs onnxruntime")
    from onnx import TensorProto, helper

    from segforge.export import METADATA_KEY, load_onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["logits"])],
        "forged",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: metadata})
    onnx.save(model, tmp_path / "forged.onnx")
    with pytest.raises(ValueError, match=rf"ONNX model .*forged.onnx.*{message}"):
        load_onnx(tmp_path / "forged.onnx")


def test_a_write_removes_what_a_killed_write_of_the_same_file_left(tmp_path) -> None:
    stale = tmp_path / ".mask[1].tif.k3j4.tmp"  # a kill mid-write left it; the name holds glob characters
    fresh = tmp_path / ".mask[1].tif.x9z8.tmp"  # another write of it, still going on
    other = tmp_path / ".other.tif.k3j4.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    old = os.path.getmtime(stale) - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write(tmp_path / "mask[1].tif", lambda tmp: open(tmp, "wb").write(b"done"))
    assert (tmp_path / "mask[1].tif").read_bytes() == b"done"
    assert not stale.exists() and fresh.exists() and other.exists()
