"""``segforge models``: the table of architectures, and FLOPs counted against a hand calculation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from segforge import __version__, list_models
from segforge.cli import main
from segforge.data import DatasetError
from segforge.errors import user_message
from segforge.summary import summarize


def test_models_prints_a_row_per_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--size", "256"]) == 0
    architectures, decoders = capsys.readouterr().out.split("unet_padded's decoder widths")
    rows = {line.split()[0]: line for line in architectures.strip().splitlines()[4:]}
    assert set(rows) == set(list_models())
    assert "256 → 256" in rows["segnet"]
    assert "444 → 260" in rows["unet"]  # the smallest valid input whose output covers 256
    assert "resnet50            256, 128, 64, 32, 16 (default)" in decoders and "(skips)" in decoders
    resnet50 = [line for line in decoders.splitlines() if line.startswith("resnet50 ")]
    assert len(resnet50) == 2 and "(default)" in resnet50[0] and "(skips)" in resnet50[1]
    flops = [float(line.split()[-1]) for line in resnet50]
    assert flops[0] < flops[1] / 3  # what each decoder width costs: 2048-wide skips over three times the light one


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "segforge", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"segforge {__version__}"


def test_bad_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--size", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_segnet_basic_flops_equal_the_hand_count() -> None:
    size, classes = 64, 11
    flops = 0
    for level in range(4):  # encoder conv at size / 2**level, decoder conv at the same size
        side = size // 2**level
        c_in = 3 if level == 0 else 64
        flops += 2 * 7 * 7 * c_in * 64 * side * side  # encoder
        flops += 2 * 7 * 7 * 64 * 64 * side * side  # decoder
    flops += 2 * 64 * classes * size * size  # 1x1 classifier
    summary = summarize("segnet_basic", size, num_classes=classes)
    assert summary.flops == flops
    assert (
        summary.parameters
        == sum(7 * 7 * c * 64 + 64 + 2 * 64 for c in (3, 64, 64, 64))
        + 4 * (7 * 7 * 64 * 64 + 2 * 64)
        + 64 * classes
        + classes
    )


class _FailsAtThree(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 3:
            raise DatasetError(
                "mask masks/3.png is 480x360 but its image images/3.png is 640x480: "
                "re-export the mask at the image's size\n(second line of the message)"
            )
        return torch.zeros(1)


def test_an_error_in_a_data_loader_worker_reads_as_the_worker_raised_it() -> None:
    loader = torch.utils.data.DataLoader(_FailsAtThree(), batch_size=2, num_workers=1)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    assert str(caught.value).startswith("Caught DatasetError in DataLoader worker process 0")  # torch's wrapper
    assert user_message(caught.value) == (
        "mask masks/3.png is 480x360 but its image images/3.png is 640x480: "
        "re-export the mask at the image's size\n(second line of the message)"
    )
    assert user_message(ValueError("plain")) == "plain"


def test_expected_errors_exit_2_and_bugs_get_a_short_report(monkeypatch, capsys) -> None:
    import segforge.cli as cli

    def broken(args):
        raise TypeError("unsupported operand")

    def unreadable(args):
        raise PermissionError(13, "Permission denied", "/data/locked.png")

    monkeypatch.setattr(cli, "_models", unreadable)
    assert main(["models"]) == 2
    assert "segforge models: error: [Errno 13] Permission denied: '/data/locked.png'" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_models", broken)
    assert main(["models"]) == 3
    err = capsys.readouterr().err
    assert "internal error: TypeError: unsupported operand" in err and "Traceback" not in err
    assert "--debug" in err and "SEGFORGE_DEBUG=1" in err
    with pytest.raises(TypeError):
        main(["--debug", "models"])
    monkeypatch.setenv("SEGFORGE_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["models"])
    # an expected error's traceback is there too on request: a ValueError may still be a bug's
    monkeypatch.setattr(cli, "_models", unreadable)
    with pytest.raises(PermissionError):
        main(["models"])


def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    from segforge.files import check_output_file, check_output_folder

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"--out .*a_file is a file, not a folder: give a folder"):
        check_output_folder(tmp_path / "a_file")
    with pytest.raises(ValueError, match=r"a_file is a file, not a folder; choose another path"):
        check_output_folder(tmp_path / "a_file" / "sub" / "run")
    with pytest.raises(ValueError, match=r"is a folder; this writes one file: give a file path such as .*model.onnx"):
        check_output_file(tmp_path)
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # created later
    monkeypatch.setattr("os.access", lambda path, mode: False)  # (the tests may run as root, who writes anywhere)
    with pytest.raises(ValueError, match=rf"cannot write in {tmp_path} \(permission denied\)"):
        check_output_folder(tmp_path / "run")
    monkeypatch.undo()

    # The commands check before reading any data or checkpoint: neither exists here.
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a_file")]) == 2
    assert "train.out (--out)" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "is a folder; this writes one file" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "missing.safetensors"),
                str(tmp_path),
                "--out",
                str(tmp_path / "a_file"),
            ]
        )
        == 2
    )
    assert "a_file is a file, not a folder" in capsys.readouterr().err


def test_a_recursive_glob_names_each_real_file_once_through_symlink_loops(tmp_path) -> None:
    import os
    import time

    from segforge.inference import expand_inputs

    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png", "sub/notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "sub" / "up")  # loops back to the top
    os.symlink(tmp_path / "sub", tmp_path / "sub" / "deeper" / "back")  # a second loop
    os.symlink(tmp_path / "sub" / "b.png", tmp_path / "alias.png")  # a second name for b.png
    started = time.monotonic()
    found = expand_inputs([f"{tmp_path}/**/*.png"])
    assert time.monotonic() - started < 5
    assert found == [tmp_path / "a.png", tmp_path / "sub" / "b.png", tmp_path / "sub" / "deeper" / "c.png"]
    assert expand_inputs([f"{tmp_path}/*.png"]) == [tmp_path / "a.png", tmp_path / "alias.png"]
    assert expand_inputs([f"{tmp_path}/sub/*.png", tmp_path / "alias.png"]) == [tmp_path / "sub" / "b.png"]
    with pytest.raises(ValueError, match="no files match"):
        expand_inputs([f"{tmp_path}/**/*.jpg"])
