"""The top-level Python API, as the README shows it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import segforge

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys) -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- python-api:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README lost its Python API example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert "(48, 48) (3, 48, 48)" in capsys.readouterr().out
    assert (tmp_path / "runs" / "shapes" / "best.safetensors").is_file() and (tmp_path / "shapes.onnx").is_file()


def test_predict_takes_paths_and_arrays_alike(tmp_path) -> None:
    from PIL import Image

    model = segforge.create_model("segnet_basic", 3, in_channels=1).eval()
    model.info = {"mean": [0.5], "std": [0.25]}
    image = np.random.default_rng(1).integers(0, 65536, (37, 45), dtype=np.uint16)
    Image.fromarray(image).save(tmp_path / "a.png")
    from_file, from_array = segforge.predict(model, tmp_path / "a.png"), segforge.predict(model, image)
    assert from_array.mask.shape == (37, 45) and from_array.probabilities.shape == (3, 37, 45)
    np.testing.assert_array_equal(from_file.probabilities, from_array.probabilities)  # same scaling, same mean/std
    np.testing.assert_array_equal(from_array.mask, from_array.probabilities.argmax(0))
    np.testing.assert_allclose(from_array.probabilities.sum(0), 1, atol=1e-5)
    other = segforge.predict(model, image, info={})  # without the normalisation: another answer
    assert not np.array_equal(other.probabilities, from_array.probabilities)
    with pytest.raises(ValueError, match=r"image array \(37, 45, 3\) does not fit the model's 1 channel"):
        segforge.predict(model, np.zeros((37, 45, 3), np.uint8))
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        segforge.train  # noqa: B018  (only the documented names are lazy)
