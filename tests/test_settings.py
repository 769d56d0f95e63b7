"""The settings machinery (contracts/settings.py, contracts/cli.py) and the run folder's config.json.

Each test names the one-line regression it catches.
"""

import dataclasses
import json
import os

import pytest
from absl import flags

from contracts import cli, settings
from contracts.errors import UserInputError
from contracts.settings import REQUIRED, Shared, setting
from training import config as config_lib
from training.config import TrainConfig

COLOUR = Shared("colour", "red", "The colour.", choices=("red", "green", "blue"))
SIZE = Shared("size", 4, "The size.", lower=1, upper=10)
KINDS = {"a": 1, "b": 2}


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str = setting(REQUIRED, "Required: no default.")
    colour: str = COLOUR.field(note="Here: the tool's.")
    size: int = SIZE.field(6, upper=8)
    kinds: tuple[str, ...] = setting((), lambda: f"Kinds: {', '.join(KINDS)}.", choices=KINDS.keys())
    ratio: float | None = setting(None, "A share.", lower=0.0, upper=1.0)
    hidden: bool = setting(True, "Python only.", flag=False)

    def __post_init__(self):
        settings.check(self)


def _parse(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    cli.define_flags(Tool, values)
    values(["tool", *argv])
    return values


def test_bounds_are_held_from_python_and_from_the_flags():
    # Regression: drop the `lower` (or `upper`) comparison in settings.check.
    with pytest.raises(UserInputError, match=r"^ratio=-0\.1 is below its minimum 0$"):
        Tool(name="x", ratio=-0.1)
    with pytest.raises(UserInputError, match=r"^ratio=1\.5 is above its maximum 1$"):
        Tool(name="x", ratio=1.5)
    # A tool tightens a shared bound (size: 1..10 shared, at most 8 here); the flag holds it too.
    with pytest.raises(UserInputError, match="size=9 is above its maximum 8"):
        Tool(name="x", size=9)
    with pytest.raises(flags.IllegalFlagValueError):
        _parse("--name=x", "--size=9")
    assert Tool(name="x", ratio=None, size=8).size == 8  # None is "unset", never out of bounds


def test_choices_are_held_and_a_live_view_follows_later_entries(monkeypatch):
    # Regression: check `choices` only for flags (a config built in Python then takes any value).
    with pytest.raises(UserInputError, match="colour='pink' is not one of red, green, blue"):
        Tool(name="x", colour="pink")
    with pytest.raises(UserInputError, match="kinds='c' is not one of a, b"):
        Tool(name="x", kinds=("a", "c"))  # each value of a repeated setting
    monkeypatch.setitem(KINDS, "c", 3)  # registered after the class was made, as tests register backbones
    assert Tool(name="x", kinds=("c",)).kinds == ("c",)
    assert "Kinds: a, b, c." in _parse("--name=x")["kinds"].help  # help computed when the flags are defined


def test_a_repeated_setting_is_a_repeated_flag_and_a_tuple():
    # Regression: `tuple(value or ())` -> `value` in cli.config_from_flags (a list, or None when not given).
    assert cli.config_from_flags(Tool, _parse("--name=x", "--kinds=a", "--kinds=b")).kinds == ("a", "b")
    assert cli.config_from_flags(Tool, _parse("--name=x")).kinds == ()
    with pytest.raises(flags.IllegalFlagValueError):
        _parse("--name=x", "--kinds=z")


def test_required_settings_have_no_default_and_flags_without_it_fail():
    # Regression: treat REQUIRED as "the shared default" in Shared.field (dataclasses.MISSING is both).
    @dataclasses.dataclass(frozen=True)
    class Needs:
        colour: str = COLOUR.field(REQUIRED)
        size: int = SIZE.field()

    assert cli.required(Needs) == ["colour"] and cli.required(Tool) == ["name"]
    with pytest.raises(TypeError):
        Needs()
    assert Needs(colour="blue").size == 4  # the shared default where the tool gives none
    assert "hidden" not in _parse("--name=x")  # flag=False: Python only
    assert cli.config_from_flags(Tool, _parse("--name=x"), hidden=False).hidden is False


def test_a_shared_field_under_another_name_raises():
    # Regression: drop the name comparison in settings.specs (a tool's `size` could mean `colour`).
    @dataclasses.dataclass(frozen=True)
    class Wrong:
        shade: str = COLOUR.field()

    with pytest.raises(TypeError, match="Wrong.shade is defined by shared 'colour'"):
        cli.define_flags(Wrong, flags.FlagValues())


def test_a_shared_field_carries_the_shared_help_with_the_tools_note():
    # Regression: drop `note` (or the shared help) from the text Shared.field joins.
    help_text = _parse("--name=x")["colour"].help
    assert help_text.endswith(": The colour. Here: the tool's.")  # absl puts the choices first
    assert settings.specs(Tool)["size"][1].lower == 1  # the shared lower bound, kept beside the tool's upper


def test_the_cli_spells_settings_as_flags_in_messages_from_below():
    # Regression: `names` not passed to guarded_main by cli.run (or the lookbehind dropped: paths break).
    names = ["model_dir", "image_size"]
    assert cli.flag_spelling("run/x holds image_size=224; use another model_dir=b", names) == \
        "run/x holds --image_size=224; use another --model_dir=b"
    assert cli.flag_spelling("--image_size=3 a/model_dir=4 max_image_size=5", names) == \
        "--image_size=3 a/model_dir=4 max_image_size=5"


def test_given_names_the_flags_on_the_command_line(monkeypatch):
    # Regression: `fv[name].present` -> `fv[name].value is not None` (a default would count as given).
    values = _parse("--name=x", "--size=6")
    assert cli.given(Tool, values) == {"name", "size"}


def test_resume_must_match_is_read_from_the_fields():
    # Regression: drop `resume_must_match=True` from one of TrainConfig's model- or data-shaping fields.
    assert set(settings.resume_must_match(TrainConfig)) == {
        "backbone", "image_size", "augment", "feature_layer", "train_split", "val_split", "findings_weight",
        "precision"}


def _run_folder(tmp_path, **fields) -> TrainConfig:
    config = TrainConfig(backbone="tiny_test", data_dir="shards", model_dir=str(tmp_path / "run"), image_size=32,
                         **fields)
    os.makedirs(config.model_dir)
    config_lib.write_config(config, {"replicas": 1})
    return config


def test_config_json_is_the_config_with_a_format_version_and_reads_back(tmp_path):
    # Regression: drop `"format_version": ...` from write_config (every later resume is refused).
    config = _run_folder(tmp_path, epochs=3)
    with open(os.path.join(config.model_dir, "config.json")) as f:
        written = json.load(f)
    assert written["format_version"] == config_lib.CONFIG_FORMAT_VERSION and written["runtime"] == {"replicas": 1}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig(**{k: v for k, v in written.items() if k in names}) == config
    config_lib.check_resumable(config)  # the same settings resume


def test_a_run_with_another_model_setting_is_refused_in_one_line(tmp_path):
    # Regression: `previous[name] != new[name]` -> `==` in check_resumable, or the loop over the names dropped.
    config = _run_folder(tmp_path)
    with pytest.raises(UserInputError) as refused:
        config_lib.check_resumable(dataclasses.replace(config, image_size=64))
    message = str(refused.value)
    assert "\n" not in message and config.model_dir in message and "image_size=32" in message
    assert "another model_dir" in message


def test_an_old_run_folder_is_refused_in_one_line_naming_it_and_the_fix(tmp_path):
    # Regression: drop the format_version comparison in check_resumable (an old run resumes under new state).
    config = _run_folder(tmp_path)
    path = os.path.join(config.model_dir, "config.json")
    with open(path) as f:
        old = json.load(f)
    del old["format_version"]  # as the previous version wrote it
    with open(path, "w") as f:
        json.dump(old, f)
    with pytest.raises(UserInputError) as refused:
        config_lib.check_resumable(config)
    message = str(refused.value)
    assert "\n" not in message and config.model_dir in message and "format 1" in message
    assert "another model_dir" in message
