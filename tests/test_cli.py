"""``segforge models``: the table of architectures, and FLOPs counted against a hand calculation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segforge import list_models
from segforge.cli import main
from segforge.summary import summarize


def test_models_prints_a_row_per_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--size", "256"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[4:]}
    assert set(rows) == set(list_models())
    assert "256 → 256" in rows["segnet"]
    assert "444 → 260" in rows["unet"]  # the smallest valid input whose output covers 256


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "segforge", "models", "--size", "64"],
                            capture_output=True, text=True, check=True)
    assert "fcn8s" in result.stdout


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
    assert summary.parameters == sum(7 * 7 * c * 64 + 64 + 2 * 64 for c in (3, 64, 64, 64)) \
        + 4 * (7 * 7 * 64 * 64 + 2 * 64) + 64 * classes + classes
