"""The dataset doctor: known-answer class weights, one test per problem it must catch, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segforge.cli import main
from segforge.data import (
    CamVidDataset,
    FolderDataset,
    SyntheticDataset,
    class_pixel_counts,
    class_weights,
    count_class_pixels,
    default_palette,
    diagnose,
    median_frequency_weights,
    write_synthetic_dataset,
)

SHARED = Path(__file__).parents[2] / "shared" / "data"
# Measured on CamVid train (367 masks) with SegNet's convention; see the issue and CLASSES.md.
CAMVID_WEIGHTS = [0.279, 0.202, 4.787, 0.149, 1.000, 0.422, 3.847, 1.974, 0.789, 6.375, 8.859]


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (CI clones the repository with shared/data beside it)")
    return path


def _pair(
    root: Path, name: str, mask: np.ndarray, image_size: tuple[int, int] | None = None, channels: int = 3
) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape[:2]
    pixels = np.full((h, w, channels), 100, np.uint8)
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(root / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{name}.png")


BINARY = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])


def _messages(report) -> str:
    return "\n".join(f"{p.severity}: {p.message} | {p.fix} | {p.files}" for p in report.problems)


# --- median-frequency weights ---------------------------------------------------------------------------


def test_median_frequency_known_answer() -> None:
    # freq = [10/100, 30/100, -, 5/50] = [0.1, 0.3, -, 0.1]; median 0.1; an absent class gets 1
    weights = median_frequency_weights(np.array([10, 30, 0, 5]), np.array([100, 100, 0, 50]))
    np.testing.assert_allclose(weights, [1.0, 1 / 3, 1.0, 1.0])


def test_frequency_is_over_the_images_that_contain_the_class() -> None:
    # two 100-pixel images: A fills image 1 (100 px), B has 50 px in each. SegNet: freq A = 100/100 = 1,
    # freq B = 100/200 = 0.5 (a global frequency would give both 0.5 and equal weights)
    a = np.zeros((10, 10), np.int64)
    b = np.where(np.arange(100).reshape(10, 10) < 50, 1, 2)
    counts = [class_pixel_counts(m, 3) for m in (a, b)]
    present = sum(np.where(c > 0, 100, 0) for c in counts)
    weights = median_frequency_weights(sum(counts), present)
    np.testing.assert_allclose(weights, [0.5 / 1.0, 1.0, 1.0])


def test_class_pixel_counts_skip_the_ignore_index() -> None:
    mask = np.array([[0, 1, 255], [1, 1, -1]])
    assert class_pixel_counts(mask, 2).tolist() == [1, 3]


def test_weights_of_a_dataset_equal_a_direct_count() -> None:
    dataset = SyntheticDataset(6, size=24, num_classes=4, seed=3)
    pixels = count_class_pixels(dataset, workers=2)
    masks = [dataset.load_raw_mask(i) for i in range(len(dataset))]
    assert pixels.class_pixels.tolist() == [int(sum((m == c).sum() for m in masks)) for c in range(4)]
    assert pixels.present_pixels.tolist() == [sum(m.size for m in masks if (m == c).any()) for c in range(4)]
    class_totals = np.array([int(sum((m == c).sum() for m in masks)) for c in range(4)])
    present_totals = np.array([sum(m.size for m in masks if (m == c).any()) for c in range(4)])
    np.testing.assert_allclose(class_weights(dataset), median_frequency_weights(class_totals, present_totals))


def test_weights_need_the_number_of_classes(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    with pytest.raises(ValueError, match="the dataset does not know its classes; give classes= or num_classes="):
        class_weights(FolderDataset(tmp_path))


def test_median_frequency_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must both be"):
        median_frequency_weights(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="no class occurs"):
        median_frequency_weights(np.zeros(3), np.zeros(3))


def test_camvid_weights_match_the_measured_values() -> None:
    root = _shared("camvid")
    np.testing.assert_allclose(class_weights(CamVidDataset(root, "train")), CAMVID_WEIGHTS, atol=5e-4)
    report = diagnose(root, split="train")
    assert report.layout == "camvid" and report.weights_split == "train" and report.exit_code == 0
    np.testing.assert_allclose(report.weights, CAMVID_WEIGHTS, atol=5e-4)
    assert {name: s.samples for name, s in report.splits.items()} == {"train": 367, "val": 101, "test": 233}
    assert "Bicyclist" in report.format() and "8.859" in report.format()


# --- ISBI: 0/255 masks ---------------------------------------------------------------------------------


def test_isbi_read_as_plain_folder_is_flagged_as_0_255() -> None:
    root = _shared("isbi2012") / "train"
    report = diagnose(root, layout="folder", num_classes=2)
    assert report.exit_code == 1
    assert "masks store a binary task as 0 and 255" in _messages(report)
    assert "--label-map 255=1" in _messages(report)
    assert diagnose(root, layout="folder", num_classes=2, label_map={255: 1}).exit_code == 0


def test_isbi_layout_maps_0_255_itself() -> None:
    report = diagnose(_shared("isbi2012"))
    assert report.layout == "isbi" and report.exit_code == 0, _messages(report)
    assert any("0 -> 1 (membrane), 255 -> 0 (cell)" in note for note in report.notes)
    assert report.splits["test"].labelled == 0 and report.splits["train"].labelled == 30


# --- one test per problem --------------------------------------------------------------------------------


def test_a_clean_synthetic_dataset_has_no_problems(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path, num_train=8, num_val=2, size=32, num_classes=4, seed=1)
    report = diagnose(root)
    assert report.problems == [], _messages(report)
    assert report.exit_code == 0 and report.layout == "folder" and report.classes[0] == "background"
    assert [s.samples for s in report.splits.values()] == [8, 2]
    assert "no problems found" in report.format()


def test_size_mismatch(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    _pair(tmp_path, "b", BINARY, image_size=(3, 4))
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1
    [problem] = [p for p in report.problems if "differ in size" in p.message]
    assert problem.files == [tmp_path / "masks" / "b.png"] and "nearest-neighbour" in problem.fix


def test_missing_pair(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    Image.new("RGB", (4, 2)).save(tmp_path / "images" / "lonely.png")
    Image.new("L", (4, 2)).save(tmp_path / "masks" / "orphan.png")
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1
    text = _messages(report)
    assert "error: [all] 1 image(s) have no mask | add the masks" in text and "lonely.png" in text
    assert "warning: [all] 1 mask(s) have no image" in text and "orphan.png" in text


def test_unreadable_file(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    _pair(tmp_path, "b", BINARY)
    (tmp_path / "masks" / "b.png").write_bytes(b"not a png")
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1
    [problem] = report.problems
    assert "1 file(s) cannot be used: cannot read mask" in problem.message
    assert problem.files == [tmp_path / "masks" / "b.png"] and "re-export" in problem.fix


def test_colour_masks(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[:, :2] = (128, 64, 128)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1
    text = _messages(report)
    assert "is RGB: colour-coded masks need a palette mapping" in text and "(128, 64, 128)" in text
    assert "--palette colours.yaml" in text
    (tmp_path / "palette.yaml").write_text("bg: [0, 0, 0]\nroad: [128, 64, 128]\n")
    assert diagnose(tmp_path, colour_map=tmp_path / "palette.yaml").exit_code == 0


def test_colour_masks_converted_to_grey(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2, 15], [15, 2, 1, 0]])
    colours = np.asarray(default_palette(21), np.uint8)[labels]  # PASCAL VOC colours
    grey = np.asarray(Image.fromarray(colours).convert("L"))  # what a careless export does
    _pair(tmp_path, "a", grey)
    report = diagnose(tmp_path, num_classes=21)
    assert report.exit_code == 1
    assert "masks look like colour masks converted to grey" in _messages(report)


def test_labels_out_of_range(tmp_path: Path) -> None:
    _pair(tmp_path, "a", np.array([[0, 1, 7, 7], [1, 0, 0, 250]]))
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1
    [problem] = [p for p in report.problems if "label values" in p.message]
    assert "7 (67%), 250 (33%)" in problem.message and "not the ignore index (None)" in problem.message
    assert problem.files == [tmp_path / "masks" / "a.png"] and "--ignore-index" in problem.fix
    assert diagnose(tmp_path, num_classes=8, ignore_index=250).errors == []


def test_class_that_never_occurs_is_a_warning(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    (tmp_path / "classes.txt").write_text("bg\nfg\nghost\n")
    report = diagnose(tmp_path)
    assert report.exit_code == 0
    [problem] = report.problems
    assert problem.severity == "warning" and "1 class(es) never occur: ghost" in problem.message


def test_unknown_class_count_is_inferred_as_training_infers_it(tmp_path: Path) -> None:
    _pair(tmp_path, "a", np.array([[0, 1, 2, 2]]))
    report = diagnose(tmp_path)
    assert report.problems == [] and report.num_classes == 3
    assert any(
        note.startswith("classes: 3, inferred from the labels (the largest label is 2)")
        and f"`segforge train --data {tmp_path} --num-classes 3`" in note
        for note in report.notes
    )
    assert report.weights is not None and len(report.weights) == 3


def test_mixed_channels(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    _pair(tmp_path, "b", BINARY, channels=1)
    report = diagnose(tmp_path, num_classes=2)
    assert (
        "images differ in channels or pixel type (1 x uint8 in 1, e.g. b.png, 3 x uint8 in 1, e.g. a.png)"
        in _messages(report)
    )


def test_no_pairs_is_reported_not_raised(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY)
    (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "a_mask.png")
    report = diagnose(tmp_path, num_classes=2)
    assert report.exit_code == 1 and "no image/mask pairs" in report.problems[0].message


def test_only_the_chosen_split_is_scanned(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path, num_train=3, num_val=2, size=16)
    report = diagnose(root, split="val")
    assert not report.splits["train"].scanned and report.splits["val"].scanned
    assert report.weights_split == "val" and "(not scanned)" in report.format()


# --- the command line --------------------------------------------------------------------------------------


def test_cli_doctor_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pair(tmp_path, "a", BINARY * 255)
    assert main(["doctor", "--data", str(tmp_path), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert "layout detected from the folder structure: folder" in out
    assert "ERROR: [all] masks store a binary task as 0 and 255" in out
    assert (
        main(["doctor", "--data", str(tmp_path), "--num-classes", "2", "--label-map", "255=1", "--format", "folder"])
        == 0
    )
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_cli_doctor_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--data", str(tmp_path / "nope")]) == 2
    assert f"data folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["doctor", "--data", str(tmp_path)]) == 2
    assert f"cannot tell the layout of {tmp_path}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["doctor", "--data", str(tmp_path), "--label-map", "x"])
    assert "expected RAW=LABEL pairs like 255=1" in capsys.readouterr().err


def test_cli_doctor_with_an_inline_palette(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pair(tmp_path, "a", BINARY)
    Image.fromarray(np.where(BINARY[:, :, None] == 1, [70, 130, 180], [0, 0, 0]).astype(np.uint8)).save(
        tmp_path / "masks" / "a.png"
    )
    assert main(["doctor", "--data", str(tmp_path), "--palette", "void=0,0,0;sky=70,130,180"]) == 0
    assert "sky" in capsys.readouterr().out


def test_0_255_masks_beyond_a_short_label_map_are_reported_not_a_crash(tmp_path: Path) -> None:
    _pair(tmp_path, "a", np.array([[0, 255], [255, 0]]))
    report = diagnose(tmp_path, num_classes=2, label_map=[0, 1])
    assert report.exit_code == 1
    assert "255" in _messages(report) and "label map" in _messages(report)


# --- every fix is a command the named command accepts -----------------------------------------------------


def _problem_datasets(tmp_path: Path) -> list[tuple[Path, dict]]:
    """One small dataset (and diagnose options) per kind of problem whose fix names a command."""
    cases = []
    binary = tmp_path / "binary"  # 0/255 masks
    _pair(binary, "a", BINARY * 255)
    cases.append((binary, {}))
    cases.append((binary, {"num_classes": 2}))
    out_of_range = tmp_path / "range"  # labels beyond the class count
    _pair(out_of_range, "a", np.array([[0, 1, 7, 7], [1, 0, 0, 250]]))
    cases.append((out_of_range, {"num_classes": 2, "label_map": {3: 1}}))
    colour = tmp_path / "colour"  # RGB masks without a palette
    _pair(colour, "a", BINARY)
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[:, :2] = (128, 64, 128)
    Image.fromarray(rgb).save(colour / "masks" / "a.png")
    cases.append((colour, {"layout": "folder"}))
    grey = tmp_path / "grey"  # colour masks converted to grey
    palette = default_palette(21)
    levels = [round((299 * r + 587 * g + 114 * b) / 1000) for r, g, b in palette[1:4]]
    _pair(grey, "a", np.array([[0, levels[0], levels[1], levels[2]]] * 2))
    cases.append((grey, {"num_classes": 21, "ignore_index": 255}))
    inferred = tmp_path / "inferred"  # class count inferred: a note with a command
    _pair(inferred, "a", np.array([[0, 1, 2, 2]]))
    cases.append((inferred, {"region_masks": None}))
    return cases


def test_every_fix_the_doctor_prints_is_a_command_line_the_command_accepts(tmp_path: Path) -> None:
    import re
    import shlex

    from segforge.cli import build_parser

    parser, commands = build_parser(), []
    for root, options in _problem_datasets(tmp_path):
        report = diagnose(root, **options)
        texts = [p.fix for p in report.problems] + [note for note in report.notes if "`" in note]
        assert texts, root
        for text in texts:
            quoted = re.findall(r"`([^`]*)`", text)
            outside = re.sub(r"`[^`]*`", "", text)
            assert not re.search(r"(^|\s)--[a-z]", outside), f"a flag outside a command line: {text}"
            commands += [q for q in quoted if q.startswith("segforge ")]
    assert {shlex.split(c)[1] for c in commands} == {"train"} and len(commands) >= 6
    assert any("--label-map 255=1" in c for c in commands) and any("--palette colours.yaml" in c for c in commands)
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # exits (SystemExit) on anything it does not accept
        assert args.run.__name__ == "_train" and getattr(args, "data.root") is not None, command


def test_a_label_map_naming_values_the_masks_lack_is_a_warning(tmp_path: Path) -> None:
    _pair(tmp_path, "a", BINARY * 255)
    report = diagnose(tmp_path, num_classes=2, label_map={255: 1, 128: 1})
    assert report.exit_code == 0
    [warning] = report.problems
    assert warning.severity == "warning"
    assert "the label map names value(s) [128] that no mask holds (the masks hold [0, 255])" in warning.message
