"""The hostile-input catalogue, one test per class of failure, each case run as a user runs it.

Every case goes through ``segforge.cli.main`` with inputs the test builds, and must end with exit
status 2 and one line ``segforge COMMAND: error: ...`` that names the file or value at fault, with no
traceback, and without touching a good file that was there before. New cases go in the tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segforge.cli import main
from segforge.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), num_train=6, num_val=2, size=32, num_classes=3)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(train_argv(data, out, "--workers", "0")) == 0
    return out / "run" / "last.safetensors"


def fails(capsys, argv: list[str], *named: str) -> str:
    """Runs ``segforge argv``; asserts exit 2 and an error that starts ``segforge COMMAND: error:`` and names
    each of ``named`` (a doctor's report may follow on more lines); returns the error."""
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own checks exit from parse_args
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    at = err.find(f"segforge {argv[0]}: error: ")
    assert at >= 0, err
    error = err[at:]
    for text in named:
        assert text in error, (text, error)
    return error


def copy_data(data: Path, target: Path) -> Path:
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True)
        for file in (data / sub).iterdir():
            (target / sub / file.name).write_bytes(file.read_bytes())
    for name in ("train.txt", "val.txt", "classes.txt"):
        (target / name).write_text((data / name).read_text())
    return target


def train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    options = "--model segnet_basic --epochs 1 --batch-size 2 --crop-size 32 --name run".split()
    return ["train", "--data", str(root), *options, "--out", str(out), *extra]


# 1. A bad sample that is not the first: the command's check before training names it (a data-loader
# worker meeting one reports it as the main process would: test_training.py covers the Python API).
def _mask_of_another_size(root: Path) -> str:
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "masks" / "0004.png")
    return "0004.png"


def _label_out_of_range(root: Path) -> str:
    mask = np.array(Image.open(root / "masks" / "0005.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "masks" / "0005.png")
    return "0005.png"


def _negative_label_in_an_int16_tiff(root: Path) -> str:
    mask = np.array(Image.open(root / "masks" / "0002.png")).astype(np.int16)
    mask[3, 3] = -1
    (root / "masks" / "0002.png").unlink()
    tifffile.imwrite(root / "masks" / "0002.tif", mask)
    return "0002.tif"


def _corrupt_image(root: Path) -> str:
    (root / "images" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return "0003.png"


@pytest.mark.parametrize(
    "damage", [_mask_of_another_size, _label_out_of_range, _negative_label_in_an_int16_tiff, _corrupt_image]
)
def test_1_worker_errors_read_as_the_main_process_would_print_them(data, tmp_path, capsys, damage) -> None:
    root = copy_data(data, tmp_path / "data")
    named = damage(root)
    fails(capsys, train_argv(root, tmp_path / "runs", "--workers", "1", "--num-classes", "3"), named)


# 2. Values that pass the flags but not the config, whichever way they come in.
@pytest.mark.parametrize(
    "extra, named",
    [
        (["--set", "data.batch_size=0"], "data.batch_size"),
        (["--batch-size", "0"], "0"),
        (["--set", "train.epochs=0"], "train.epochs"),
        (["--set", "data.crop_size=[1"], "[1"),
        (["--device", "banana"], "banana"),
        (["--config", "{yaml}"], "train.epochs"),
    ],
)
def test_2_values_are_checked_however_they_come_in(data, tmp_path, capsys, extra, named) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 0\n")
    extra = [text.format(yaml=tmp_path / "c.yaml") for text in extra]
    fails(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "runs"), *extra], named)
    assert not (tmp_path / "runs").exists()


def test_2_test_time_scales_must_be_positive(data, checkpoint, capsys) -> None:
    fails(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--scales", "0"], "0")


# 3. Output paths: checked before the work starts.
def test_3_output_paths_are_checked_first(data, checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "a_file").write_text("keep")
    fails(capsys, train_argv(data, tmp_path / "a_file"), "a_file", "not a folder")
    fails(capsys, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path)], str(tmp_path), "is a folder")
    fails(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            str(data / "images" / "0000.png"),
            "--out",
            str(tmp_path / "a_file"),
        ],
        "a_file",
    )
    assert (tmp_path / "a_file").read_text() == "keep"


# 4. Non-finite pixels: refused naming the file; the good mask of the same name survives.
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_4_non_finite_pixels_are_refused_and_nothing_is_replaced(checkpoint, tmp_path, capsys, bad) -> None:
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    image[5, 7, 1] = bad
    tifffile.imwrite(tmp_path / "scan.tif", image, photometric="rgb")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scan.png").write_bytes(b"a good mask")
    fails(
        capsys,
        ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "scan.tif"), "--out", str(tmp_path / "out")],
        "scan.tif",
        "non-finite",
    )
    assert (tmp_path / "out" / "scan.png").read_bytes() == b"a good mask"


# 5. Memory bombs: refused before allocating, with the way round.
def test_5_an_image_over_the_decode_limit_is_refused_before_decoding(checkpoint, tmp_path, capsys) -> None:
    Image.new("L", (2048, 2048)).save(tmp_path / "huge.png")  # 4 MB decoded, a few KB on disk
    line = fails(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            str(tmp_path / "huge.png"),
            "--out",
            str(tmp_path / "out"),
            "--max-image-mb",
            "1",
        ],
        "huge.png",
        "2048 x 2048",
        "--max-image-mb",
    )
    assert "--tile" in line and "--stream" in line


def test_5_an_image_too_large_for_one_pass_points_at_tiles(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    import segforge.inference.memory

    Image.new("RGB", (600, 400)).save(tmp_path / "wide.png")
    monkeypatch.setattr(segforge.inference.memory, "available_bytes", lambda device: 64 * 2**20)  # a 64 MB machine
    line = fails(
        capsys,
        ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "wide.png"), "--out", str(tmp_path / "out")],
        "wide.png",
        "400x600",
        "--tile",
    )
    assert "64 MB" not in line and "0.1 GB available" in line
    assert not (tmp_path / "out" / "wide.png").exists()
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(tmp_path / "wide.png"),
                "--out",
                str(tmp_path / "out"),
                "--tile",
                "64",
            ]
        )
        == 0
    )  # the advice works
    assert Image.open(tmp_path / "out" / "wide.png").size == (600, 400)


def test_5_evaluation_images_too_large_for_one_pass_are_refused(
    data, checkpoint, tmp_path, capsys, monkeypatch
) -> None:
    import segforge.inference.memory

    monkeypatch.setattr(segforge.inference.memory, "available_bytes", lambda device: 2**16)
    fails(
        capsys,
        ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path)],
        "an evaluation image is 32x32 pixels",
        "cut the images and their masks into tiles",
    )


def test_5_the_peak_memory_of_a_pass_is_counted_from_shapes() -> None:
    from torch import nn

    from segforge.inference.memory import forward_peak_bytes

    # conv (3,200 B) and ReLU (3,200 B) alive together; then the ReLU's output and the second conv's (1,600 B)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    assert forward_peak_bytes(net, (1, 3, 10, 10)) == 6400
    net[1] = nn.ReLU(inplace=True)  # in place: no new memory
    assert forward_peak_bytes(net, (1, 3, 10, 10)) == 4800
    assert forward_peak_bytes(net, (2, 3, 20, 10)) == 4 * 4800  # twice the images, twice the pixels
    assert all(not p.is_meta for p in net.parameters())  # the model is untouched


def test_5_an_allocation_failure_is_turned_into_the_advice() -> None:
    import torch

    from segforge.inference.memory import out_of_memory_hint

    with pytest.raises(ValueError, match=r"image a.png: the machine ran out of memory .* --tile 1024"):
        with out_of_memory_hint("image a.png"):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 1099511627776 bytes. Error code 12"
            )
    with pytest.raises(ValueError, match=r"image a.png: the device ran out of memory"):
        with out_of_memory_hint("image a.png"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not memory errors
        with out_of_memory_hint("image a.png"):
            raise RuntimeError("shape mismatch")


# 6. Globs over symlink loops: each real file once, and an end.
def test_6_a_recursive_glob_over_symlink_loops_predicts_each_image_once(data, checkpoint, tmp_path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("0000.png", "0001.png"):
        (tmp_path / "in" / "sub" / name).write_bytes((data / "images" / name).read_bytes())
    os.symlink(tmp_path / "in", tmp_path / "in" / "sub" / "loop")
    os.symlink(tmp_path / "in" / "sub", tmp_path / "in" / "again")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                f"{tmp_path}/in/**/*.png",
                "--out",
                str(tmp_path / "out"),
                "--no-overlay",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0001.png"]


# 7. Endings that mislead: nothing to learn from is refused before training, and leaves no folder.
def test_7_masks_that_are_all_ignore_are_refused_before_training(data, tmp_path, capsys) -> None:
    root = copy_data(data, tmp_path / "data")
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    fails(
        capsys, train_argv(root, tmp_path / "runs", "--num-classes", "3", "--ignore-index", "255"), "no labelled pixels"
    )
    assert not (tmp_path / "runs" / "run").exists()


# 8. Damaged checkpoints and models: the file and what is wrong with it.
def _metadata_without_num_classes(path: Path, good: Path) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    config = json.loads(metadata["config"])
    del config["num_classes"]
    save_file(tensors, str(path), metadata=metadata | {"config": json.dumps(config)})
    return "num_classes"


def _tensors_of_another_model(path: Path, good: Path) -> str:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), "pt") as f:
        metadata = f.metadata()
    save_file({"conv.weight": torch.zeros(2, 2)}, str(path), metadata=metadata)
    return "conv.weight"


def _not_a_checkpoint(path: Path, good: Path) -> str:
    path.write_bytes(b"\x00" * 100)
    return "damaged.safetensors"


@pytest.mark.parametrize("damage", [_metadata_without_num_classes, _tensors_of_another_model, _not_a_checkpoint])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_8_damaged_checkpoints_are_named(data, checkpoint, tmp_path, capsys, damage, command) -> None:
    path = tmp_path / "damaged.safetensors"
    named = damage(path, checkpoint)
    argv = {
        "predict": ["predict", str(data / "images" / "0000.png"), "--out", str(tmp_path / "out")],
        "evaluate": ["evaluate", "--data", str(data), "--out", str(tmp_path / "out")],
        "export": ["export", "--out", str(tmp_path / "m.onnx")],
    }[command]
    fails(capsys, [*argv, "--checkpoint", str(path)], "damaged.safetensors", named)


def test_8_a_plain_state_dict_is_not_a_training_state(data, checkpoint, tmp_path, capsys) -> None:
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    fails(capsys, ["train", "--resume", str(tmp_path)], "state.pt")


# 9. Leftovers: the next write removes what a killed write of the same file left.
def test_9_stale_temporary_files_are_removed_by_the_next_write(data, checkpoint, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / ".0000.png.abc123.tmp"
    stale.write_bytes(b"half a mask")
    os.utime(stale, (0, 0))  # written long ago
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(data / "images" / "0000.png"),
                "--out",
                str(tmp_path / "out"),
                "--no-overlay",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png"]
