"""Instance segmentation through segforge's loop and commands: the layouts found, the recipe, a run's columns
and checkpoints, an exact resume, evaluate, predict and the ONNX refusal."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from segforge.checkpoint import load_model, load_state
from segforge.cli import main
from segforge.config import load_config
from segforge.data import create_dataset, detect_layout
from segforge.instances import MaskRCNN, write_synthetic_instance_dataset
from segforge.training import fit


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_synthetic_instance_dataset(tmp_path_factory.mktemp("instances"), num_train=6, num_val=2, size=64)


def instance_config(data_root: Path, out: Path, name: str, **overrides):
    values = {
        "data.root": str(data_root),
        "data.workers": 0,
        "train.iterations": 2,
        "train.eval_steps": 2,
        "train.out": str(out),
        "train.name": name,
        "schedule.warmup_iters": 0,
    }
    return load_config(None, values | overrides)


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory) -> Path:
    return fit(instance_config(data_root, tmp_path_factory.mktemp("runs"), "run"), progress=False)


def test_the_instance_layouts_are_detected(data_root, tmp_path) -> None:
    assert detect_layout(data_root) == "instance_folder"
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    assert detect_layout(coco) == "coco"
    with pytest.raises(ValueError, match="label_map does not apply to the instance_folder layout"):
        create_dataset("auto", data_root, "train", label_map={255: 1})


def test_a_run_on_instance_data_trains_mask_rcnn_with_its_columns_and_report(run) -> None:
    config = load_config(run / "config.yaml")
    assert (config.model.name, config.model.encoder, config.data.num_classes) == ("mask_rcnn", "resnet18", 4)
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [2]
    for column in ("train_rpn_loss", "train_box_loss", "train_mask_loss", "val_loss", "val_mask_ap", "val_box_ap"):
        assert rows[0][column] != "", column
    assert float(rows[0]["train_loss"]) == pytest.approx(
        sum(float(rows[0][c]) for c in ("train_rpn_loss", "train_box_loss", "train_mask_loss")), rel=1e-4
    )
    model, info = load_model(run / "best.safetensors")
    assert isinstance(model, MaskRCNN) and info["classes"] == ["background", "ellipse", "square", "blob"]
    assert "best_mask_ap" in info
    report = json.loads((run / "report.json").read_text())
    assert {"mask_ap", "mask_ap50", "box_ap", "mean_iou", "count_error"} <= set(report["summary"])
    assert list((run / "overlays").glob("*.png"))


@pytest.mark.slow
def test_a_resumed_instance_run_ends_where_an_uninterrupted_one_does(data_root, tmp_path) -> None:
    """Two steps, then two more after a resume, equal four in a row: the same weights, bit for bit (the RoI
    and anchor sampling draw from the saved random state)."""
    options = {"schedule.name": "constant", "data.batch_size": 2}
    whole = fit(instance_config(data_root, tmp_path, "whole", **options, **{"train.iterations": 4}), progress=False)
    halves = fit(instance_config(data_root, tmp_path, "halves", **options), progress=False)
    state = load_state(halves / "state.pt")
    state["progress"]["total_steps"] = 4
    torch.save(state, halves / "state.pt")
    fit(None, resume=halves, progress=False)
    a, b = load_model(whole / "last.safetensors")[0], load_model(halves / "last.safetensors")[0]
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


def test_models_and_data_of_another_task_are_refused(data_root, tmp_path) -> None:
    with pytest.raises(ValueError, match="hold instances .* which model 'unet_padded' cannot learn"):
        fit(instance_config(data_root, tmp_path, "unet", **{"model.name": "unet_padded"}), progress=False)
    from segforge.data.synthetic import write_synthetic_dataset

    semantic = write_synthetic_dataset(tmp_path / "semantic", num_train=4, num_val=2, size=32, num_classes=3)
    config = instance_config(semantic, tmp_path, "semantic", **{"model.name": "mask_rcnn", "data.format": "folder"})
    with pytest.raises(ValueError, match="masks of classes, without instances"):
        fit(config, progress=False)
    assert not (tmp_path / "semantic-run").exists()


def test_evaluate_predict_and_export_from_the_command_line(run, data_root, tmp_path, capsys) -> None:
    out, checkpoint = tmp_path / "eval", str(run / "best.safetensors")
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", str(data_root), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 2 and "mask_ap50" in capsys.readouterr().out
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data_root / "images" / "0006.png", images)
    predicted = tmp_path / "predicted"
    assert main(["predict", "--checkpoint", checkpoint, str(images), "--out", str(predicted)]) == 0
    assert {p.name for p in predicted.iterdir()} == {"0006_instances.png", "0006_ids.png", "0006.json"}
    assert json.loads((predicted / "0006.json").read_text())["height"] == 64
    assert main(["predict", "--checkpoint", checkpoint, str(images), "--out", str(predicted), "--tile", "32"]) == 2
    assert "--tile applies to semantic models" in capsys.readouterr().err
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "m.onnx")]) == 2
    assert "mask_rcnn is not exported to ONNX" in capsys.readouterr().err


def test_the_doctor_describes_instance_data_and_names_a_bad_file(data_root, tmp_path) -> None:
    from segforge.data import diagnose

    report = diagnose(data_root, progress=False)
    assert report.layout == "instance_folder" and not report.problems
    assert any(note.startswith("[train] 6 images") for note in report.notes)
    bad = tmp_path / "bad"
    shutil.copytree(data_root, bad)
    table = json.loads((bad / "instances.json").read_text())
    table["0001"]["1"] = 9
    (bad / "instances.json").write_text(json.dumps(table))
    report = diagnose(bad, progress=False)
    assert report.exit_code == 1
    assert "instance 1 of " in report.errors[0].message and "has class 9, outside 1..3" in report.errors[0].message
