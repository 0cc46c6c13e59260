"""Training as separate processes: killed with SIGKILL, stopped with Ctrl-C, and data-parallel under torchrun.

Each run is a real ``segforge train`` process (``tests/helpers/train_tiny.py`` adds a tiny
architecture so that a run takes seconds); the resumed or distributed results are compared with a
straight, single-process run of the same config.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segforge.checkpoint import load_state, read_checkpoint
from segforge.data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "tests" / "helpers" / "train_tiny.py"), "train"]
# one thread per process: runs are repeatable bit for bit, and two processes fit on two cores
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_train=16, num_val=4, size=32, num_classes=3, seed=0
    )


def train_args(data_root, out, name, *extra):
    return [
        "--data",
        str(data_root),
        "--format",
        "folder",
        "--model",
        "tiny_unet",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--name",
        name,
        *extra,
    ]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300, **kwargs)


def assert_same_weights(a: Path, b: Path, *, atol: float = 0.0) -> None:
    weights_a, _, _ = read_checkpoint(a)
    weights_b, _, _ = read_checkpoint(b)
    assert weights_a.keys() == weights_b.keys()
    for key, value in weights_a.items():
        torch.testing.assert_close(weights_b[key], value, rtol=0, atol=atol, msg=key)


def losses(folder: Path) -> list[float]:
    return [float(row["train_loss"]) for row in csv.DictReader(open(folder / "metrics.csv"))]


def start_and_signal(args, state: Path, sig: int, delay: float) -> subprocess.CompletedProcess:
    """Starts a training process, sends ``sig`` ``delay`` seconds after its first saved state appears."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    result = run(TRAIN + train_args(data_root, out, "run", "--epochs", "12"))
    assert result.returncode == 0, result.stderr
    return out / "run"


@pytest.mark.parametrize(
    "delay",
    [pytest.param(delay, marks=pytest.mark.slow) for delay in (0.0, 0.35, 0.8)],  # 15 s each, 11 s setup
)
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(data_root, tmp_path, straight, delay) -> None:
    # The state is saved after every step (checkpoint-minutes ~ 6 ms), so the kill lands mid-epoch,
    # between or during writes; whatever it hit, the saved state must load and resuming must end
    # exactly where the uninterrupted run ended.
    args = TRAIN + train_args(data_root, tmp_path, "killed", "--epochs", "12", "--checkpoint-minutes", "0.0001")
    killed = start_and_signal(args, tmp_path / "killed" / "state.pt", signal.SIGKILL, delay)
    assert killed.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    state = load_state(tmp_path / "killed" / "state.pt")  # never corrupt
    assert 0 <= state["progress"]["step"] < 12 * 4
    resumed = run(TRAIN + ["--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight / "last.safetensors", tmp_path / "killed" / "last.safetensors")
    assert losses(tmp_path / "killed") == losses(straight)  # every epoch's row once, with the same numbers


@pytest.mark.slow  # 15 s, 11 s setup (in-process: tests/test_training.py's interruption tests)
def test_ctrl_c_saves_mid_epoch_exits_130_and_resume_is_exact(data_root, tmp_path, straight) -> None:
    args = TRAIN + train_args(data_root, tmp_path, "stopped", "--epochs", "12", "--checkpoint-minutes", "0")
    stopped = start_and_signal(args, tmp_path / "stopped" / "state.pt", signal.SIGINT, 0.3)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"continue with: segforge train --resume {tmp_path / 'stopped'}" in stopped.stdout
    state = load_state(tmp_path / "stopped" / "state.pt")
    # without periodic saves, a state saved mid-round can only come from the Ctrl-C
    assert f"stopped at step {state['progress']['step']}: saved the state there" in stopped.stdout
    resumed = run(TRAIN + ["--resume", str(tmp_path / "stopped")])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight / "last.safetensors", tmp_path / "stopped" / "last.safetensors")
    assert losses(tmp_path / "stopped") == losses(straight)


@pytest.mark.slow  # 6 s
def test_sigterm_to_the_whole_process_group_saves_with_data_loader_workers(data_root, tmp_path) -> None:
    # A job scheduler's stop (or kill -- -PID) signals every process of the run, the data loader's
    # workers too: they must leave the stop to the main process, which saves first.
    args = TRAIN + train_args(data_root, tmp_path, "group", "--epochs", "200", "--checkpoint-minutes", "0")
    args[args.index("--workers") + 1] = "2"
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "group" / "metrics.csv").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "SIGTERM: saving a checkpoint" in err
    state = load_state(tmp_path / "group" / "state.pt")
    assert f"stopped at step {state['progress']['step']}: saved the state there" in out


@pytest.mark.slow  # 20-25 s
def test_two_processes_under_torchrun_equal_one_process_with_the_same_global_batch(data_root, tmp_path) -> None:
    # SGD: Adam's first steps are nearly sign(gradient), which turns float rounding into 2 x lr. A fixed
    # crop: images of one batch padded to different sizes per process would see different borders. Cross
    # entropy: a Dice term is computed over each process's share of the batch, not the global batch. No
    # rotation: its unlabelled corners would give the processes different numbers of labelled pixels.
    sgd = (
        "--epochs",
        "3",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--crop-size",
        "24",
        "--loss",
        "ce",
        "--set",
        "data.augmentation={hflip: {}, jitter: {}}",
    )
    single = run(TRAIN + train_args(data_root, tmp_path, "single", *sgd))
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "helpers" / "train_tiny.py"),
        "train",
    ]
    double = run(torchrun + train_args(data_root, tmp_path, "double", *sgd))
    assert double.returncode == 0, double.stderr
    # rank 0 alone wrote and printed: one line per epoch, one run folder
    assert double.stdout.count("epoch=1 ") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["double", "single"]
    assert_same_weights(tmp_path / "single" / "last.safetensors", tmp_path / "double" / "last.safetensors", atol=1e-5)
    rows_1 = list(csv.DictReader(open(tmp_path / "single" / "metrics.csv")))
    rows_2 = list(csv.DictReader(open(tmp_path / "double" / "metrics.csv")))
    for a, b in zip(rows_1, rows_2, strict=True):
        for key in ("train_loss", "train_mean_iou", "val_loss", "val_mean_iou", "val_pixel_accuracy"):
            assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-4), key
    # the global batch must split evenly over the processes
    odd = run(torchrun + train_args(data_root, tmp_path, "odd", "--epochs", "1", "--batch-size", "3"))
    assert odd.returncode != 0 and "data.batch_size 3 is the global batch and must be a multiple of the 2" in odd.stderr


@pytest.mark.slow  # 20-40 s
def test_time_series_train_under_torchrun(tmp_path) -> None:
    """Two processes, series of different lengths padded per process, batch norm over each process's dates:
    the run completes with one run folder, its rows written once, and finite weights."""
    from segforge.data.series_folder import write_synthetic_series_dataset

    data = write_synthetic_series_dataset(tmp_path / "series", num_train=8, num_val=2, size=24, dates=(3, 6))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--data", str(data), "--iterations", "4", "--eval-steps", "2", "--batch-size", "4", "--workers", "0"]
    done = run([*torchrun, "-m", "segforge", "train", *args, "--out", str(tmp_path / "runs"), "--name", "run"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("step=2 ") == 1 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]
    state, config, _ = read_checkpoint(tmp_path / "runs" / "run" / "last.safetensors")
    assert config["name"] == "temporal_unet"
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.slow  # 30-60 s
def test_instance_segmentation_trains_under_torchrun(tmp_path) -> None:
    """Two processes of Mask R-CNN (each image's objects its own, some heads without a gradient in a step): one run
    folder, its rows written once, the same AP on every process (gathered detections), finite weights."""
    from segforge.instances import write_synthetic_instance_dataset

    data = write_synthetic_instance_dataset(tmp_path / "instances", num_train=8, num_val=3, size=48)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--data", str(data), "--iterations", "2", "--eval-steps", "2", "--batch-size", "4", "--workers", "0"]
    done = run([*torchrun, "-m", "segforge", "train", *args, "--out", str(tmp_path / "runs"), "--name", "run"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("step=2 ") == 1 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]
    with open(tmp_path / "runs" / "run" / "metrics.csv", newline="") as handle:
        row = list(csv.DictReader(handle))[-1]
    assert row["val_mask_ap"] != "" and row["train_mask_loss"] != ""
    state, config, _ = read_checkpoint(tmp_path / "runs" / "run" / "last.safetensors")
    assert config["name"] == "mask_rcnn"
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def _untrained_checkpoint(path: Path) -> Path:
    from segforge.checkpoint import save_checkpoint
    from segforge.models import create_model

    torch.manual_seed(0)
    model = create_model("segnet_basic", 3, in_channels=3)
    return save_checkpoint(path, model, classes=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)


def test_predict_skip_existing_continues_an_interrupted_corpus(data_root, tmp_path, capsys) -> None:
    from segforge.cli import main

    checkpoint, out = str(_untrained_checkpoint(tmp_path / "m.safetensors")), tmp_path / "masks"
    images = [str(data_root / "images" / name) for name in ("0000.png", "0001.png", "0002.png")]
    assert main(["predict", "--checkpoint", checkpoint, *images, "--out", str(out)]) == 0
    first = (out / "0001.png").read_bytes()
    (out / "0000.png").write_bytes(b"kept as it is")  # a mask written before the interruption
    (out / "0001.png").unlink()  # one the interrupted run never wrote
    capsys.readouterr()
    assert main(["predict", "--checkpoint", checkpoint, *images, "--out", str(out), "--skip-existing"]) == 0
    assert "1 image(s) predicted" in capsys.readouterr().out
    assert (out / "0000.png").read_bytes() == b"kept as it is" and (out / "0001.png").read_bytes() == first


@pytest.mark.slow  # 20-40 s
def test_predict_under_torchrun_writes_what_one_process_writes(data_root, tmp_path) -> None:
    """Two processes (gloo) each predict their share of the inputs; the folder equals a single process's."""
    checkpoint = str(_untrained_checkpoint(tmp_path / "m.safetensors"))
    predict = ["-m", "segforge", "predict", "--checkpoint", checkpoint, str(data_root / "images")]
    single = run([sys.executable, *predict, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = run([*torchrun, *predict, "--out", str(tmp_path / "two")])
    assert double.returncode == 0, double.stderr
    counts = sorted(int(line.split()[0]) for line in double.stdout.splitlines() if "predicted (process" in line)
    assert counts == [10, 10]  # 20 images, every other one each
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 40  # mask and overlay per image
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
