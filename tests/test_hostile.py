"""Random command lines and config files: every one ends in a result or a one-line error, never a traceback."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segforge.cli import build_parser
from segforge.config import Config, config_from_dict, load_config

COMMANDS = ["models", "doctor", "train", "evaluate", "predict", "export", "serve", "demo"]
FLAGS = sorted(
    {
        option
        for action in build_parser()._subparsers._group_actions[0].choices.values()
        for act in action._actions
        for option in act.option_strings
    }
)
SECTIONS = {f.name: [g.name for g in dataclasses.fields(getattr(Config(), f.name))] for f in dataclasses.fields(Config)}
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "none", "imagenet", "cuda:9", "1e309", "-0", "[1"]),
    st.lists(st.one_of(st.integers(-5, 300), st.floats(-2, 2)), max_size=4),
    st.dictionaries(st.integers(-3, 300), st.integers(-3, 300), max_size=3),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(COMMANDS),
    args=st.lists(
        st.one_of(
            st.sampled_from(FLAGS),
            st.text(max_size=10),
            st.sampled_from(["0", "-1", "nan", "inf", "1e9", "x=y", "data.batch_size=0"]),
        ),
        max_size=8,
    ),
)
def test_random_command_lines_parse_or_exit_2(command: str, args: list[str], capsys) -> None:
    args = [a for a in args if a not in ("--help", "-h", "--version")]  # (those exit 0 by design)
    capsys.readouterr()
    try:
        build_parser().parse_args([command, *args])
    except SystemExit as exited:
        assert exited.code == 2
        assert "error:" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(SECTIONS)),
        st.one_of(
            VALUES,
            st.dictionaries(
                st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys})), VALUES, max_size=5
            ),
        ),
        max_size=4,
    )
)
def test_random_configs_build_or_raise_one_value_error(values: dict) -> None:
    try:
        config = config_from_dict(values)
    except ValueError as err:  # names what is wrong: a section, a key or the config
        message = str(err)
        assert "config" in message or any(f"{section}." in message for section in SECTIONS), message
        return
    for key in ("data.batch_size", "optimizer.lr", "train.epochs"):  # what was accepted is usable
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        assert value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_random_yaml_files_load_or_raise_one_value_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ValueError as err:
        assert str(path) in str(err) or "config" in str(err)


def test_the_fuzzers_know_every_command_and_section() -> None:
    assert set(COMMANDS) == set(build_parser()._subparsers._group_actions[0].choices)
    assert {"model", "data", "loss", "optimizer", "schedule", "train", "adversarial"} == set(SECTIONS)
    assert {"--max-image-mb", "--set", "--checkpoint", "--scales"} <= set(FLAGS) and "workers" in SECTIONS["data"]
