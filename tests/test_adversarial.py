"""Adversarial training: the adversary's encodings and fields of view, the softened ground truth, where the
gradients go, weight 0 equal to plain training, and an exact resume with the adversary."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from segforge.checkpoint import load_model, load_state
from segforge.data.synthetic import write_synthetic_dataset
from segforge.models.adversary import ADVERSARIES, create_adversary, encode, encoding_channels, soften
from segforge.training import fit
from segforge.training.adversarial import AdversarialTask


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), num_train=8, num_val=2, size=32, num_classes=3)


@pytest.mark.parametrize("network", ADVERSARIES.names())
@pytest.mark.parametrize(("encoding", "channels"), [("basic", 5), ("product", 15), ("scaling", 5)])
def test_each_encoding_has_the_papers_channel_count(network, encoding, channels) -> None:
    """5 classes over 3-channel images: basic and scaling K channels, product K x C."""
    assert encoding_channels(encoding, 5, 3) == channels
    adversary = create_adversary(network, num_classes=5, in_channels=3, encoding=encoding)
    image, label_map = torch.randn(2, 3, 40, 48), torch.rand(2, 5, 40, 48).softmax(1)
    encoded = encode(label_map, image, encoding)
    assert encoded.shape[1] == channels
    logits = adversary(encoded, image)
    assert logits.shape[:2] == (2, 1) and logits.shape[-2:] == (10, 12)  # two poolings: a logit per location


@pytest.mark.parametrize(("network", "field"), [("large_fov", 34), ("small_fov", 18)])
def test_the_fields_of_view_are_the_papers(network, field) -> None:
    """The input pixels one output location depends on: 34x34 (large) and 18x18 (small)."""
    torch.manual_seed(0)
    adversary = create_adversary(network, num_classes=2, in_channels=1, encoding="basic").double()
    for module in adversary.modules():  # positive weights: no cancellation hides a pixel the output sees
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.uniform_(module.weight, 0.1, 1.0)
            torch.nn.init.constant_(module.bias, 1.0)
    for index, module in enumerate(adversary.body):  # (max pooling passes one pixel's gradient: average instead)
        if isinstance(module, torch.nn.MaxPool2d):
            adversary.body[index] = torch.nn.AvgPool2d(2, ceil_mode=True)
    x = torch.ones(1, 2, 96, 96, dtype=torch.float64, requires_grad=True)
    adversary(x, x[:, :1])[0, 0, 12, 12].backward()
    rows, cols = x.grad[0, 0].abs().sum(1).nonzero(), x.grad[0, 0].abs().sum(0).nonzero()
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (field, field)


def test_the_softened_ground_truth() -> None:
    """The true class keeps at least tau = 0.9, the rest is shared as the prediction shares it, rows sum to 1;
    a prediction already surer than tau of the true class is left as it is."""
    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.95, 0.03, 0.02]]).T.reshape(1, 3, 1, 2)
    onehot = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    softened = soften(onehot, probabilities)
    torch.testing.assert_close(softened.sum(1), torch.ones(1, 1, 2))
    torch.testing.assert_close(softened[0, :, 0, 0], torch.tensor([0.1 * 0.5 / 0.7, 0.9, 0.1 * 0.2 / 0.7]))
    torch.testing.assert_close(softened[0, :, 0, 1], probabilities[0, :, 0, 1])


def _task(data_root, weight: float) -> AdversarialTask:
    from segforge.training.distributed import Process
    from segforge.training.loop import build_datasets

    config = tiny_config(data_root, "runs", "x", **{"adversarial.enabled": True, "adversarial.weight": weight})
    config.data.num_classes, config.data.class_weights, config.loss.name = 3, "none", "ce"
    config.data.train_split, config.data.val_split = "train", "val"  # (what the recipe resolves in a run)
    return AdversarialTask.build(config, build_datasets(config), None, Process(), torch.device("cpu"))


def test_the_adversary_reaches_the_segmenter_only_through_its_weighted_term(data_root) -> None:
    """The adversary's own steps leave the segmenter without gradients (the ground truth and the detached
    prediction reach only the adversary); the weighted term changes every segmenter gradient."""
    torch.manual_seed(0)
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    grads = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        task = _task(data_root, weight)
        task.settings.judges = "location"
        before = {k: v.clone() for k, v in task.adversary.state_dict().items()}
        loss, (_, counts) = task.forward((images, masks))
        assert all(p.grad is None for p in task.net.parameters())  # the adversary's steps stopped at it
        assert any(not torch.equal(before[k], v) for k, v in task.adversary.state_dict().items())  # it learned
        # one batch; real and predicted maps: 32 px pooled by the stride 8, then the adversary's two poolings
        assert counts[1] == 1 and counts[3] == 2 * 2 * 1 * 1
        loss.backward()
        grads[weight] = [p.grad.clone() for p in task.net.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(grads[0.0], grads[0.5], strict=True))
    task.settings.stride = 1  # every pixel: 32 px, pooled twice by the adversary to 8x8 logits
    assert task.forward((images, masks))[1][1][3] == 2 * 2 * 8 * 8


def test_weight_zero_trains_exactly_as_without_an_adversary(data_root, tmp_path) -> None:
    plain = fit(tiny_config(data_root, tmp_path, "plain"), progress=False)
    config = tiny_config(data_root, tmp_path, "adversarial", **{"adversarial.enabled": True, "adversarial.weight": 0})
    adversarial = fit(config, progress=False)
    a, b = load_model(plain / "last.safetensors")[0], load_model(adversarial / "last.safetensors")[0]
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
    rows = (adversarial / "metrics.csv").read_text().splitlines()
    assert "train_adversary_loss" in rows[0] and "train_adversary_accuracy" in rows[0]
    assert "adversary" in load_state(adversarial / "state.pt")["task"]


@pytest.mark.slow  # 4 s
def test_a_resumed_adversarial_run_ends_where_an_uninterrupted_one_does(data_root, tmp_path) -> None:
    """Two steps, then two more after a resume (the adversary and its optimizer restored) equal four in a
    row: the same weights, bit for bit."""
    options = {
        "adversarial.enabled": True,
        "adversarial.weight": 0.3,
        "train.epochs": None,
        "train.eval_steps": 2,
        "schedule.name": "constant",
        "schedule.warmup_iters": 0,
    }
    whole = fit(tiny_config(data_root, tmp_path, "whole", **options, **{"train.iterations": 4}), progress=False)
    halves = fit(tiny_config(data_root, tmp_path, "halves", **options, **{"train.iterations": 2}), progress=False)
    state = torch.load(halves / "state.pt", weights_only=True)
    state["progress"]["total_steps"] = 4  # two more steps to go, at the same constant rate
    torch.save(state, halves / "state.pt")
    fit(None, resume=halves, progress=False)
    a, b = load_model(whole / "last.safetensors")[0], load_model(halves / "last.safetensors")[0]
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


def test_adversarial_settings_are_checked() -> None:
    from segforge.config import load_config

    with pytest.raises(ValueError, match="adversarial.network 'patchgan' is not one segforge knows; choose from"):
        load_config(None, {"adversarial.network": "patchgan"})
    with pytest.raises(ValueError, match="adversarial.weight must be >= 0"):
        load_config(None, {"adversarial.weight": -1})
    with pytest.raises(ValueError, match="adversarial.stride must be >= 1"):
        load_config(None, {"adversarial.stride": 0})
    with pytest.raises(ValueError, match="unknown adversarial encoding 'sharp'"):
        encoding_channels("sharp", 3, 3)


def test_the_command_line_trains_with_an_adversary(data_root, tmp_path) -> None:
    import yaml

    from segforge.cli import main

    argv = ["train", "--data", str(data_root), "--model", "segnet_basic", "--iterations", "2", "--workers", "0"]
    argv += ["--adversarial", "--adversarial-weight", "0.2", "--adversarial-encoding", "product", "--adversary"]
    assert main([*argv, "small_fov", "--crop-size", "32", "--out", str(tmp_path), "--name", "run"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["adversarial"]
    expected = {"enabled": True, "weight": 0.2, "encoding": "product", "network": "small_fov", "steps": 1}
    assert saved == expected | {"lr": 1e-4, "judges": "location", "stride": 8}
    assert "adversary_accuracy" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_one_verdict_per_image(data_root) -> None:
    task = _task(data_root, 0.5)
    task.settings.judges = "image"
    _, (_, counts) = task.forward((torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))))
    assert counts[3] == 4  # two images' ground truths and two predictions, one verdict each
