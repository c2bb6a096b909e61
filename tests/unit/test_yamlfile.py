"""YAML with line numbers: where keys and items are, the line of a pydantic error location, field
paths as users read them, and the closest-key suggestion for an unknown key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from sqlinfer.errors import ConfigError
from sqlinfer.models.declaration import ModelDecl, ModelsFile, Preprocess
from sqlinfer.yamlfile import LineDict, LineList, field_path, keys_at, line_of, load_yaml, validation_error

MODELS = """\
# a comment
models:
  - name: tiny
    flavor: torchvision
    architecture: resnet18
    weights: random
    preprocess:
      resize: 40
      crop: 32
    output: topk

  - flavor: torchscript
    weights: w.pt
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "models.yml"
    path.write_text(textwrap.dedent(text))
    return load_yaml(path)


@pytest.fixture()
def data(tmp_path: Path) -> LineDict:
    loaded = load(tmp_path, MODELS)
    assert isinstance(loaded, LineDict)
    return loaded


def test_mappings_know_the_line_of_each_key(data: LineDict) -> None:
    first = data["models"][0]
    assert isinstance(first, LineDict)
    assert (first.line, first.line_of("name"), first.line_of("output")) == (3, 3, 10)
    assert first["preprocess"].key_lines == {"resize": 8, "crop": 9}


def test_a_missing_key_is_at_its_mapping(data: LineDict) -> None:
    assert data["models"][1].line_of("name") == 12
    assert data["models"][0]["preprocess"].line_of("mean") == 8


def test_lists_know_the_line_of_each_item(data: LineDict) -> None:
    models = data["models"]
    assert isinstance(models, LineList)
    assert (models.line, models.item_lines) == (3, [3, 12])


def test_loaded_values_are_plain_python(data: LineDict) -> None:
    assert data == {"models": [
        {"name": "tiny", "flavor": "torchvision", "architecture": "resnet18", "weights": "random",
         "preprocess": {"resize": 40, "crop": 32}, "output": "topk"},
        {"flavor": "torchscript", "weights": "w.pt"},
    ]}


@pytest.mark.parametrize(("loc", "line"), [
    ((), 2),  # the document's mapping starts at its first key
    (("models",), 2),
    (("models", 0), 3),
    (("models", 0, "output"), 10),
    (("models", 0, "preprocess", "crop"), 9),
    (("models", 0, "preprocess", "nope"), 8),  # not there: where its mapping starts
    (("models", 1, "name"), 12),  # missing key: the mapping it should be in
    (("models", 1), 12),
    (("models", 5), 2),  # no such item: the key of the list
])
def test_line_of_a_location(data: LineDict, loc: tuple, line: int) -> None:
    assert line_of(data, loc) == line


def test_duplicate_key_is_an_error_at_the_second_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "models:\n  - name: a\n    output: label\n    name: b\n")
    assert (info.value.code, info.value.line, info.value.path) == ("config.duplicate_key", 4,
                                                                    str(tmp_path / "models.yml"))
    assert info.value.message == "duplicate key 'name'"


def test_syntax_error_has_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "models:\n  - name: a\n   output: label\n")
    assert (info.value.code, info.value.line) == ("config.yaml_syntax", 3)
    assert info.value.message == "invalid YAML: expected <block end>, but found '<block mapping start>'"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path / "nope.yml")
    assert (info.value.code, info.value.message) == ("config.missing_file", f"file not found: {tmp_path / 'nope.yml'}")


@pytest.mark.parametrize(("loc", "text"), [
    (("models", 0, "output"), "models['tiny'].output"),
    (("models", 0, "preprocess", "crop"), "models['tiny'].preprocess.crop"),
    (("models", 1, "weights"), "models[2].weights"),  # no name: its 1-based position
    (("models", 7), "models[8]"),
    (("models",), "models"),
])
def test_field_path_names_items_by_name_or_position(data: LineDict, loc: tuple, text: str) -> None:
    assert field_path(loc, data) == text


def test_keys_at_a_location_are_the_keys_written_in_yaml() -> None:
    keys = keys_at(ModelsFile, ("models", 0))  # through tuple[ModelDecl, ...]
    assert keys[:5] == ["name", "description", "flavor", "architecture", "class"]  # `class_path` is written `class`
    assert keys == [field.alias or name for name, field in ModelDecl.model_fields.items()]
    assert "class_path" not in keys


def test_keys_at_a_nested_optional_mapping() -> None:
    keys = keys_at(ModelsFile, ("models", 0, "preprocess"))  # through `Preprocess | None`
    assert keys[:4] == ["resize", "crop", "mean", "std"]
    assert keys == list(Preprocess.model_fields)


@pytest.mark.parametrize(("loc", "keys"), [((), ["models"]), (("models", 0, "nope"), []),
                                           (("models", 0, "preprocess", "crop"), [])])
def test_keys_at_the_top_or_nowhere(loc: tuple, keys: list[str]) -> None:
    assert keys_at(ModelsFile, loc) == keys


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "models.yml"
    path.write_text(text)
    data = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        ModelsFile.model_validate(data)
    return validation_error(info.value, data, path, ModelsFile)


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    error = error_for(tmp_path, MODELS.replace("    architecture: resnet18", "    archtecture: resnet18"))
    assert (error.code, error.line, error.path) == ("config.unknown_key", 5, str(tmp_path / "models.yml"))
    assert error.message == "unknown key 'archtecture' in models['tiny'] (did you mean 'architecture'?)"


def test_unknown_nested_key_suggests_the_closest(tmp_path: Path) -> None:
    error = error_for(tmp_path, MODELS.replace("      crop: 32", "      crop: 32\n      resise: 3"))
    assert (error.code, error.line) == ("config.unknown_key", 10)
    assert error.message == "unknown key 'resise' in models['tiny'].preprocess (did you mean 'resize'?)"


def test_unknown_key_with_nothing_close_has_no_suggestion(tmp_path: Path) -> None:
    error = error_for(tmp_path, MODELS.replace("    output: topk", "    output: topk\n    zzz: 1"))
    assert (error.code, error.line) == ("config.unknown_key", 11)
    assert error.message == "unknown key 'zzz' in models['tiny']"


def test_bad_value_names_its_field_and_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, MODELS.replace("    output: topk", "    output: topk\n    k: many"))
    assert (error.code, error.line) == ("config.invalid_value", 11)
    assert error.message == "models['tiny'].k: Input should be a valid integer, unable to parse string as an integer"


def test_field_path_stops_at_the_yaml_value_not_the_union_member_pydantic_tried() -> None:
    data = {"models": [{"name": "tiny", "preprocess": {"crop": "big"}}]}
    assert field_path(("models", 0, "preprocess", "crop", "int"), data) == "models['tiny'].preprocess.crop"
    assert field_path(("models", 3, "output"), data) == "models[4].output"
