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


# The catalogue re-run (a second round of cases, tried as a new user would): each class below was found
# there and closed.


# 3. Outputs that would overwrite the inputs, or one another, are refused before any work.
def test_3_predict_never_writes_over_its_inputs_or_twice_to_one_file(data, checkpoint, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0000.png", "0001.png"):
        (images / name).write_bytes((data / "images" / name).read_bytes())
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    fails(capsys, ["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(images)], "is an input")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0000.png").write_bytes(before["0000.png"])
    argv = ["predict", "--checkpoint", str(checkpoint), str(images), str(tmp_path / "b"), "--out", str(tmp_path / "o")]
    fails(capsys, argv, "would both write", "0000.png", "separate --out folders")
    assert not (tmp_path / "o").exists()


# 6. File names with spaces, or beginning with "#", train and evaluate like any other.
def test_6_sample_names_with_spaces_and_hashes_survive_the_split_lists(data, tmp_path, capsys) -> None:
    root = copy_data(data, tmp_path / "data")
    for sub in ("images", "masks"):
        (root / sub / "0000.png").rename(root / sub / "my image 0.png")
        (root / sub / "0001.png").rename(root / sub / "#0001.png")
    for name in ("train.txt", "val.txt"):
        (root / name).unlink()  # a seeded hold-out, written to the run's split lists
    assert main(train_argv(root, tmp_path / "runs", "--workers", "0", "--val-fraction", "0.5")) == 0
    splits = tmp_path / "runs" / "run" / "splits"
    listed = (splits / "train.txt").read_text().splitlines() + (splits / "val.txt").read_text().splitlines()
    assert "my image 0" in listed and "#0001" in listed
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "runs" / "run" / "last.safetensors"), "--data", str(root)])
        == 0
    )
    assert "pixels" in capsys.readouterr().out


# 4. Mask values that are not class indices: 16-bit codes, or a lossy JPEG's invented values.
def test_4_masks_whose_values_are_not_class_indices_are_refused_with_a_label_map(data, tmp_path, capsys) -> None:
    root = copy_data(data, tmp_path / "codes")
    for mask in (root / "masks").iterdir():
        labels = np.asarray(Image.open(mask)).astype(np.uint16)
        Image.fromarray(labels * 30000).save(mask)
    argv = ["train", "--data", str(root), "--iterations", "1", "--out", str(tmp_path / "runs")]
    fails(capsys, argv, "are >= the number of classes (3)", "--label-map 30000=3,60000=4")  # classes.txt: 3
    (root / "classes.txt").unlink()  # the classes inferred: from the largest value, as 0..60000
    fails(capsys, argv, "60001 classes", "--label-map 30000=1,60000=2")
    jpeg = copy_data(data, tmp_path / "jpeg")
    for mask in list((jpeg / "masks").iterdir()):
        labels = (np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 255
        Image.fromarray(labels).save(mask.with_suffix(".jpg"), quality=75)
        mask.unlink()
    fails(capsys, ["train", "--data", str(jpeg), "--iterations", "1", "--out", str(tmp_path / "runs")], "JPEG")


# 7. A run whose weights diverge ends as an error, keeps no diverged weights, and a diverged model's
# output is refused rather than written as class 0.
def test_7_a_diverged_run_is_an_error_and_its_output_is_never_used(data, checkpoint, tmp_path, capsys) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    argv = train_argv(data, tmp_path / "runs", "--workers", "0", "--lr", "1e30", "--optimizer", "sgd")
    fails(capsys, argv, "lower the learning rate")
    assert not (tmp_path / "runs" / "run" / "best.safetensors").exists()
    nan = tmp_path / "nan.safetensors"
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        metadata = f.metadata()
    tensors = {
        key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
        for key, value in load_file(str(checkpoint)).items()
    }
    save_file(tensors, str(nan), metadata=metadata)
    image = str(data / "images" / "0000.png")
    fails(capsys, ["predict", "--checkpoint", str(nan), image, "--out", str(tmp_path / "p")], "not finite")
    assert not (tmp_path / "p" / "0000.png").exists()
    fails(capsys, ["evaluate", "--checkpoint", str(nan), "--data", str(data)], "not finite")


# 2. Values that cannot be right: a run name that is a path, scales that shrink an image to nothing.
def test_2_run_names_and_test_time_scales_that_cannot_be_right(data, checkpoint, tmp_path, capsys) -> None:
    fails(capsys, train_argv(data, tmp_path / "runs", "--name", "../../escape"), "train.name", "not a path")
    assert not (tmp_path.parent / "escape").exists()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    image = str(tmp_path / "dot.png")
    argv = ["predict", "--checkpoint", str(checkpoint), image, "--out", str(tmp_path / "p"), "--scales", "0.5", "1"]
    fails(capsys, argv, "test-time scale 0.5 makes 1x1 pixels smaller than one pixel")


# 5. Streaming reads one image: a multi-page TIFF, or asking for probabilities it does not keep, is refused.
def test_5_streaming_refuses_what_it_would_only_half_do(checkpoint, tmp_path, capsys) -> None:
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((2, 40, 40, 3), np.uint8), photometric="rgb")
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "pages.tif"), "--stream", "--tile", "32"]
    fails(capsys, [*argv, "--out", str(tmp_path / "s")], "holds 2 pages")
    fails(capsys, [*argv, "--out", str(tmp_path / "s"), "--probabilities"], "drop --probabilities")


# 1. Files that are not what they should be: a broken link, images of mixed modes, a blank band.
def test_1_broken_links_and_mixed_images_are_named_and_blank_bands_train(data, tmp_path, capsys) -> None:
    root = copy_data(data, tmp_path / "links")
    (root / "train.txt").unlink()  # every pair trains: the link too
    for sub in ("images", "masks"):
        (root / sub / "0099.png").symlink_to(tmp_path / "nowhere.png")
    fails(capsys, ["train", "--data", str(root), "--iterations", "1", "--out", str(tmp_path / "r")], "broken link")
    mixed = copy_data(data, tmp_path / "mixed")
    Image.open(mixed / "images" / "0001.png").convert("L").save(mixed / "images" / "0001.png")
    fails(capsys, ["train", "--data", str(mixed), "--iterations", "1", "--out", str(tmp_path / "r")], "0001.png")
    blank = copy_data(data, tmp_path / "blank")
    for image in (blank / "images").iterdir():
        pixels = np.asarray(Image.open(image)).copy()
        pixels[..., 2] = 7
        Image.fromarray(pixels).save(image)
    assert main(train_argv(blank, tmp_path / "r", "--workers", "0")) == 0
    assert "channel(s) [2] hold one value in every training image" in capsys.readouterr().out


# 3. Paths of the wrong kind, files that are not what their command takes, a layout that is not the data's.
def test_3_paths_of_the_wrong_kind_say_what_they_are(data, checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    fails(capsys, ["train", "--data", str(tmp_path / "file.txt"), "--out", str(tmp_path / "r")], "is a file")
    evaluate = ["evaluate", "--data", str(data), "--checkpoint"]
    fails(capsys, [*evaluate, str(checkpoint.parent)], "is a folder", "best.safetensors")
    fails(capsys, [*evaluate, str(checkpoint.parent / "state.pt")], "resume state")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    fails(capsys, [*evaluate, str(tmp_path / "m.onnx")], "exported ONNX model")
    (tmp_path / "latin1.yaml").write_bytes(b"\xff\xfe train: 1")
    fails(capsys, ["train", "--config", str(tmp_path / "latin1.yaml")], "latin1.yaml", "UTF-8")
    fails(capsys, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.bin")], "must end in .onnx")
    argv = ["train", "--data", str(data), "--format", "voc", "--out", str(tmp_path / "r")]
    fails(capsys, argv, "not in the voc layout", "JPEGImages")


# 8. A run whose data folder moved since: --resume says how, and --data tells it where.
def test_8_a_run_resumes_after_its_data_moved(data, tmp_path, capsys) -> None:
    root = copy_data(data, tmp_path / "before")
    common = ["--model", "segnet_basic", "--iterations", "4", "--eval-steps", "2", "--batch-size", "2"]
    argv = ["train", "--data", str(root), *common, "--crop-size", "32", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "runs"), "--name", "run"]) == 0
    state = tmp_path / "runs" / "run" / "state.pt"
    import torch

    saved = torch.load(state, weights_only=True)
    saved["progress"]["total_steps"] = 6  # two more steps to go
    torch.save(saved, state)
    root.rename(tmp_path / "after")
    fails(capsys, ["train", "--resume", str(tmp_path / "runs" / "run")], "does not exist", "--data FOLDER")
    assert main(["train", "--resume", str(tmp_path / "runs" / "run"), "--data", str(tmp_path / "after")]) == 0
    assert torch.load(state, weights_only=True)["progress"]["step"] == 6


def test_2_a_label_map_that_maps_a_value_twice_and_export_sizes_too_small(checkpoint, data, tmp_path, capsys) -> None:
    argv = ["train", "--data", str(data), "--label-map", "2=1,2=0", "--out", str(tmp_path)]
    fails(capsys, argv, "value 2 is mapped twice (2=1, 2=0)")
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--size", "1"]
    fails(capsys, argv, "--size 1 is smaller than segnet_basic takes")


def test_2_one_folder_for_images_and_masks_and_crops_larger_than_the_images(data, tmp_path, capsys) -> None:
    argv = ["train", "--data", str(data), "--image-dir", "images", "--mask-dir", "images", "--out", str(tmp_path)]
    fails(capsys, argv, "would both be read from", "two folders")
    argv = ["train", "--data", str(data), "--model", "segnet_basic", "--iterations", "1", "--crop-size", "64"]
    assert main([*argv, "--workers", "0", "--out", str(tmp_path), "--name", "big"]) == 0
    assert "64-px crops are larger than the images (32x32 px, median)" in capsys.readouterr().out
