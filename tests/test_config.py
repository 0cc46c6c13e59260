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
    path.write_text("model: {name: segnet_basic}\ndata: {root: data/camvid, batch_size: 4, ignore_index: 11}\n"
                    "optimizer: {name: sgd, lr: 0.1, momentum: 0.99}\n")
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


@pytest.mark.parametrize("values, message", [
    ({"data": {"batch_size": "8"}}, r"'data.batch_size' must be int \| null, got '8'"),
    ({"train": {"channels_last": 1}}, r"'train.channels_last' must be bool, got 1"),
    ({"optimizer": {"name": "rmsprop"}}, r"'optimizer.name' must be 'sgd' \| 'adam' \| 'adamw' \| null, got 'rmsprop'"),
    ({"data": {"class_weights": [1, "x"]}}, r"'data.class_weights' must be 'none' \| 'median_frequency' \| list"),
    ({"model": "unet"}, r"config section 'model' must be a mapping"),
])
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
