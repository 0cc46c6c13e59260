"""Checkpoints: round trip, atomic writes, safe and clear loading errors."""

from __future__ import annotations

import math
import os

import pytest
import torch

from segforge import create_model
from segforge.files import atomic_write
from segforge.checkpoint import load_model, load_state, read_checkpoint, save_checkpoint, save_state


def test_round_trip_rebuilds_the_same_model(tmp_path) -> None:
    model = create_model("unet_padded", 3, in_channels=1, encoder="resnet18").eval()
    path = save_checkpoint(tmp_path / "best.safetensors", model, classes=["a", "b", "c"], epoch=4,
                           metrics={"mean_iou": 0.5, "absent": math.nan})
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
