"""``train.compile``: when ``auto`` compiles the training step, and that a failed compilation loses nothing."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import tiny_config
from torch import nn

from segforge.checkpoint import read_checkpoint
from segforge.data import write_synthetic_dataset
from segforge.training import compilation, fit, loop
from segforge.training.distributed import Process


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=2, size=32, num_classes=3, seed=0
    )


def config(data_root, out, name, **overrides):
    # 10 steps: auto decides after the sixth (a warm-up step, then 5 measured)
    return tiny_config(data_root, out, name, **{"train.epochs": 5} | overrides)


class Counting(nn.Module):
    """Stands in for the compiled network: calls the eager one, counting the calls; ``fail`` first raises what
    a failed compilation raises; ``delay`` makes each call slower by that many seconds."""

    def __init__(self, model: nn.Module, fail: bool = False, delay: float = 0.0) -> None:
        super().__init__()
        self.model, self.fail, self.delay, self.calls = model, fail, delay, 0

    def forward(self, x):
        if self.fail:
            self.fail = False
            raise torch._dynamo.exc.TorchRuntimeError("no working C++ compiler\nmore lines")
        self.calls += 1
        time.sleep(self.delay)
        return self.model(x)


@pytest.fixture
def stand_ins(monkeypatch):
    made = []

    def compile_network(model, fail=False):
        made.append(Counting(model, fail))
        return made[-1]

    monkeypatch.setattr(compilation, "compile_network", compile_network)
    return made


def test_auto_compiles_after_the_measured_steps_when_enough_training_is_left(
    data_root, tmp_path, stand_ins, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(compilation, "AUTO_MIN_SECONDS", 0.0)
    fit(config(data_root, tmp_path, "auto"), progress=False)
    assert len(stand_ins) == 1 and stand_ins[0].calls == 4  # steps 7-10
    assert "train.compile auto: compiling the training step" in capsys.readouterr().out


@pytest.mark.slow  # 5-7 s each
@pytest.mark.parametrize("faster", [False, True])
def test_auto_keeps_the_compiled_step_only_when_its_measured_steps_are_faster(
    data_root, tmp_path, monkeypatch, capsys, faster
) -> None:
    made = []
    monkeypatch.setattr(compilation, "AUTO_MIN_SECONDS", 0.0)
    # slower: each call 0.2 s late; faster: a gain threshold of -100 % that any speed meets
    monkeypatch.setattr(compilation, "AUTO_MIN_GAIN", -1.0 if faster else compilation.AUTO_MIN_GAIN)
    monkeypatch.setattr(
        compilation,
        "compile_network",
        lambda model: made.append(Counting(model, delay=0 if faster else 0.2)) or made[-1],
    )
    fit(config(data_root, tmp_path, "trial", **{"train.epochs": 8}), progress=False)  # 16 steps
    out = capsys.readouterr().out
    if faster:  # compiled from step 7 to the end
        assert made[0].calls == 10 and "s eager: keeping it" in out
    else:  # step 7 compiles, steps 8-12 are measured, then eager again
        assert made[0].calls == 6 and "s eager: going on eager" in out


def test_a_resumed_run_that_had_compiled_compiles_from_its_first_step(
    data_root, tmp_path, stand_ins, monkeypatch
) -> None:
    monkeypatch.setattr(compilation, "AUTO_MIN_SECONDS", 0.0)
    original = loop._save

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        if args[7].step == 8:  # epoch 4 is saved, two steps after auto compiled
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(config(data_root, tmp_path, "resumed"), progress=False)
    monkeypatch.setattr(loop, "_save", original)
    fit(None, resume=tmp_path / "resumed", progress=False)
    assert [made.calls for made in stand_ins] == [2, 2]  # steps 7-8, then 9-10 of the resumed sitting


@pytest.mark.slow  # 8 s
def test_auto_stays_eager_for_short_runs_and_changing_shapes(data_root, tmp_path, stand_ins, monkeypatch) -> None:
    fit(config(data_root, tmp_path, "short"), progress=False)  # 4 steps left: seconds, not AUTO_MIN_SECONDS
    monkeypatch.setattr(compilation, "AUTO_MIN_SECONDS", 0.0)
    fit(config(data_root, tmp_path, "uncropped", **{"data.crop_size": None, "train.epochs": 4}), progress=False)
    fit(config(data_root, tmp_path, "off", **{"train.compile": "off"}), progress=False)
    assert stand_ins == []


def test_a_failed_compilation_goes_on_eager_from_the_same_batch(data_root, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(compilation, "compile_network", lambda model: Counting(model, fail=True))
    failed = fit(config(data_root, tmp_path, "failed", **{"train.compile": "on"}), progress=False)
    out = capsys.readouterr().out
    assert "torch.compile failed (TorchRuntimeError: no working C++ compiler); training goes on eager" in out
    eager = fit(config(data_root, tmp_path, "eager", **{"train.compile": "off"}), progress=False)
    weights_a, _, _ = read_checkpoint(failed / "last.safetensors")
    weights_b, _, _ = read_checkpoint(eager / "last.safetensors")
    for key, value in weights_b.items():
        torch.testing.assert_close(weights_a[key], value, rtol=0, atol=0, msg=key)


def test_an_error_of_the_step_itself_is_not_taken_for_a_compile_failure(data_root, tmp_path, monkeypatch) -> None:
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("a real bug")

    monkeypatch.setattr(compilation, "compile_network", lambda model: Broken())
    with pytest.raises(RuntimeError, match="a real bug"):
        fit(config(data_root, tmp_path, "broken", **{"train.compile": "on"}), progress=False)


def test_why_auto_leaves_a_run_eager(data_root, tmp_path, monkeypatch) -> None:
    cropped = config(data_root, tmp_path, "x")
    assert compilation.compile_blocker(cropped, Process()) is None
    assert "torchrun" in compilation.compile_blocker(cropped, Process(rank=0, world_size=2))
    uncropped = config(data_root, tmp_path, "x", **{"data.crop_size": None})
    assert "data.crop_size" in compilation.compile_blocker(uncropped, Process())
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    assert "no C++ compiler" in compilation.compile_blocker(cropped, Process())


@pytest.mark.slow  # 20-60 s: Inductor compiles SegNet-Basic's forward and backward
def test_a_compiled_run_trains_as_the_eager_one(data_root, tmp_path, capsys) -> None:
    if not compilation.has_cpp_compiler():
        pytest.skip("TorchInductor needs a C++ compiler (g++) on PATH")
    from torch._dynamo.utils import counters

    counters.clear()
    # SGD: Adam's first steps are nearly sign(gradient), which turns float rounding into 2 x lr
    sgd = {"optimizer.name": "sgd", "optimizer.lr": 0.01, "optimizer.momentum": 0.9, "train.epochs": 2}
    compiled = fit(config(data_root, tmp_path, "compiled", **sgd, **{"train.compile": "on"}), progress=False)
    assert "torch.compile failed" not in capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] >= 1  # Dynamo captured the network: the steps ran compiled
    eager = fit(config(data_root, tmp_path, "eager", **sgd, **{"train.compile": "off"}), progress=False)
    weights_a, _, _ = read_checkpoint(compiled / "last.safetensors")
    weights_b, _, _ = read_checkpoint(eager / "last.safetensors")
    for key, value in weights_b.items():  # the same steps, up to Inductor's order of float operations
        torch.testing.assert_close(weights_a[key], value, rtol=0, atol=1e-4, msg=key)
