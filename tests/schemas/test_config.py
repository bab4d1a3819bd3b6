"""Build config loading: overrides (flat, dotted, double-underscore) and who a bad value is blamed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmix.errors import DiffmixError
from diffmix.schemas.config import load_build_config


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"partition_rows": 7}, ("partition_rows",), 7),
        ({"split.seed": 5}, ("split", "seed"), 5),
        ({"split__seed": 6}, ("split", "seed"), 6),
        ({"split": {"by": "repo"}}, ("split", "by"), "repo"),
        ({"partition_rows": None}, ("partition_rows",), 2000),  # an option not given
    ],
)
def test_overrides_set_fields(overrides: dict, field: tuple[str, ...], expected: object) -> None:
    value: object = load_build_config(None, **overrides)
    for part in field:
        value = getattr(value, part)
    assert value == expected


def test_a_dotted_override_keeps_the_rest_of_its_section(tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text("split: {by: repo, seed: 3}\n", encoding="utf-8")
    config = load_build_config(path, **{"split.seed": 9})
    assert (config.split.by, config.split.seed) == ("repo", 9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": "nope"}, "given option: format:"),
        ({"split.seed": "x"}, "given option: split.seed:"),
        ({"partition_rows.deep": 1}, "partition_rows: expected a mapping to set 'partition_rows.deep'"),
    ],
)
def test_a_bad_override_is_blamed_on_the_option(overrides: dict, message: str) -> None:
    with pytest.raises(DiffmixError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_build_config(None, **overrides)


@pytest.mark.parametrize("value", [True, "5000"])
def test_a_number_must_be_a_number(value: object) -> None:
    with pytest.raises(DiffmixError, match=r"partition_rows: expected a number"):
        load_build_config(None, partition_rows=value)


def test_exponent_floats_are_numbers(tmp_path: Path) -> None:
    from diffmix.training import load_train_config

    path = tmp_path / "train.yaml"
    path.write_text("lr: 3e-4\nsteps: 1e2\n", encoding="utf-8")  # PyYAML alone reads both as strings
    config = load_train_config(path)
    assert (config.lr, config.steps) == (3e-4, 100)



def test_hostile_yaml_is_one_line(tmp_path: Path) -> None:
    from diffmix.training import load_train_config

    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"  # 9^9 strings once expanded: the error shows a few of them
    bomb.write_text("zzz:\n" + "\n".join("  " + line for line in levels) + "\n")
    with pytest.raises(DiffmixError, match=r"zzz: Extra inputs are not permitted \(got \{'a0': \['lol'"):
        load_train_config(bomb)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("steps: 5  # by René\n".encode("latin-1"))
    with pytest.raises(DiffmixError, match="training config is not UTF-8 text"):
        load_train_config(latin)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(DiffmixError, match="nested too deeply"):
        load_build_config(deep)
