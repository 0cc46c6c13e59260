"""The training config: YAML + overrides, strict keys and types."""

from __future__ import annotations

import pytest

from segforge.config import Config, config_from_dict, load_config


def test_defaults_and_round_trip() -> None:
    config = config_from_dict({})
    assert config == Config()
    assert config_from_dict(config.to_dict()) == config


def test_yaml_values_and_overrides_where_unset_flags_do_not_override(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {name: segnet_basic}\ndata: {root: data/camvid, batch_size: 4, ignore_index: 11}\n"
        "optimizer: {name: sgd, lr: 0.1, momentum: 0.99}\n"
    )
    config = load_config(path, {"data.batch_size": 16, "optimizer.lr": None, "train.epochs": 3})
    assert config.model.name == "segnet_basic"
    assert config.data.batch_size == 16  # the flag wins
    assert config.optimizer.lr == 0.1  # an unset flag (None) never overrides the file
    assert config.optimizer.momentum == 0.99 and config.train.epochs == 3 and config.data.ignore_index == 11


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert config_from_dict({"optimizer": {"lr": 1}}).optimizer.lr == 1.0


def test_unknown_key_names_it_and_lists_the_valid_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown config key 'data.batchsize'; valid keys in data: \['root'"):
        config_from_dict({"data": {"batchsize": 4}})
    with pytest.raises(ValueError, match=r"unknown config key 'optimiser'; valid keys in the config: \['model'"):
        config_from_dict({"optimiser": {}})
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epoch: 3}\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown config key 'train.epoch'"):
        load_config(path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"data": {"batch_size": "8"}}, r"'data.batch_size' must be int \| null, got '8'"),
        ({"train": {"channels_last": 1}}, r"'train.channels_last' must be bool \| 'auto', got 1"),
        (
            {"optimizer": {"name": "rmsprop"}},
            r"optimizer.name 'rmsprop' is not one segforge knows; choose from "
            r"\['adam', 'adamw', 'sgd'\]",
        ),
        (
            {"schedule": {"name": "linear"}},
            r"schedule.name 'linear' is not one .* \['constant', 'cosine', 'poly', 'step'\]",
        ),
        ({"loss": {"name": "focal"}}, r"loss.name 'focal' is not one .* \['ce', 'ce\+dice', 'dice'\]"),
        ({"data": {"format": "kitti"}}, r"data.format 'kitti' is not one .* \['auto', 'ade20k', 'camvid'"),
        ({"model": {"name": "deeplab"}}, r"model.name 'deeplab' is not one .* \['deconvnet', 'fcn16s'"),
        ({"model": {"encoder": "resnet152"}}, r"model.encoder 'resnet152' is not one .* \['efficientnet_lite0'"),
        ({"data": {"class_weights": [1, "x"]}}, r"'data.class_weights' must be 'none' \| 'median_frequency' \| list"),
        ({"model": "unet"}, r"config section 'model' must be a mapping"),
    ],
)
def test_wrong_types_are_rejected_with_the_key_and_the_choices(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"override 'lr' must name a section and a key"):
        load_config(None, {"lr": 0.1})


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[1].glob("configs/*.yaml")))
def test_every_shipped_config_is_valid(path) -> None:
    from segforge.data.transforms import build_transforms

    config = load_config(path)
    build_transforms(config.data.augmentation, ignore_index=255, crop_size=config.data.crop_size)


BAD_NUMBERS = [
    ("data.crop_size", -3),
    ("data.batch_size", 0),
    ("data.workers", -2),
    ("data.num_classes", 0),
    ("data.max_image_mb", 0),
    ("data.temporal_dropout", 1.0),
    ("adversarial.weight", -0.5),
    ("adversarial.steps", 0),
    ("adversarial.lr", 0),
    ("adversarial.stride", 0),
    ("model.in_channels", 0),
    ("loss.dice_weight", -1),
    ("loss.aux_weight", -0.4),
    ("loss.smooth", -1),
    ("optimizer.lr", 0),
    ("optimizer.momentum", 1.5),
    ("optimizer.weight_decay", -0.1),
    ("schedule.power", 0),
    ("schedule.step_size", 0),
    ("schedule.gamma", 0),
    ("schedule.warmup_iters", -5),
    ("train.epochs", 0),
    ("train.iterations", 0),
    ("train.accumulate", 0),
    ("train.eval_every", 0),
    ("train.eval_steps", 0),
    ("train.early_stop", 0),
    ("train.checkpoint_minutes", -1),
]


@pytest.mark.parametrize("key, value", BAD_NUMBERS)
def test_numbers_that_cannot_be_right_name_the_key_in_yaml_and_overrides(tmp_path, key: str, value) -> None:
    section, name = key.split(".")
    (tmp_path / "bad.yaml").write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ValueError, match=rf"bad.yaml: {key} must be .*, got {value}"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=rf"^{key} must be .*, got {value}"):
        load_config(None, {key: value})


def test_every_checked_key_exists_and_every_bad_number_is_listed() -> None:
    from segforge.config import RANGES

    assert {key for key, _, _ in RANGES} == {key for key, _ in BAD_NUMBERS}
    for key, _ in BAD_NUMBERS:  # a key of the config, not a typo
        section, name = key.split(".")
        assert hasattr(getattr(Config(), section), name), key


@pytest.mark.parametrize("device", ["banana", "mps", "cuda:x", "gpu"])
def test_a_device_that_is_not_one_is_refused(device: str) -> None:
    with pytest.raises(ValueError, match=rf"train.device must be auto, cpu, cuda or cuda:N .*got '{device}'"):
        load_config(None, {"train.device": device})


def test_invalid_yaml_after_set_is_an_error_that_shows_the_value(capsys) -> None:
    from segforge.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", "x", "--set", "data.batch_size=[1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "the value of data.batch_size is not valid YAML" in err and "'[1'" in err and "Traceback" not in err


def test_a_name_registered_later_is_accepted_by_the_config_and_the_command_line() -> None:
    from segforge.cli import build_parser
    from segforge.training.optim import SCHEDULES

    @SCHEDULES.register("half")
    def half(step, decayed, steps_per_epoch, config) -> float:
        return 0.5

    try:
        assert config_from_dict({"schedule": {"name": "half"}}).schedule.name == "half"
        args = build_parser().parse_args(["train", "--data", "d", "--schedule", "half"])
        assert getattr(args, "schedule.name") == "half"
    finally:
        SCHEDULES._builders.pop("half")
    with pytest.raises(ValueError, match="schedule.name 'half' is not one segforge knows"):
        config_from_dict({"schedule": {"name": "half"}})
