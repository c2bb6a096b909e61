"""YAML files into validated, frozen objects, with every error at ``path:line``.

Loading is safe (``yaml.SafeLoader``) and remembers lines: mappings load as :class:`LineDict` (a
plain ``dict`` plus ``key_lines``), so validation can say *where* a bad value is without a second
parse. :class:`Strict` is the base of every validated object (frozen, unknown keys are errors) and
:func:`validation_error` turns pydantic's first complaint into a located
:class:`~sqlinfer.errors.ConfigError`, suggesting the closest key for a misspelt one.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sqlinfer.errors import ConfigError, closest

if TYPE_CHECKING:
    import yaml

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """Frozen, and unknown keys are errors: the base of every validated YAML object."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LineDict(dict):
    """A dict loaded from YAML: ``line`` is where the mapping starts, ``key_lines[k]`` where key k is."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list loaded from YAML; ``item_lines[i]`` is the line of item i."""

    line: int = 0
    item_lines: list[int]


@cache
def _loader_class() -> type[yaml.SafeLoader]:
    """``yaml.SafeLoader`` (no arbitrary objects) that records line numbers (1-based). Made on first
    use: the workers import this module (through the declarations) and need no YAML library."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:
            self.flatten_mapping(node)
            result = LineDict()
            result.line = node.start_mark.line + 1
            result.key_lines = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in result:
                    raise ConfigError(f"duplicate key {key!r}", code="config.duplicate_key",
                                      path=self.name, line=key_node.start_mark.line + 1)
                result[key] = self.construct_object(value_node, deep=True)
                result.key_lines[key] = key_node.start_mark.line + 1
            return result

        def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:
            result = LineList(self.construct_object(child, deep=True) for child in node.value)
            result.line = node.start_mark.line + 1
            result.item_lines = [child.start_mark.line + 1 for child in node.value]
            return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, Loader.construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, Loader.construct_sequence)
    return Loader


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely; syntax errors become ``path:line`` errors."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}", code="config.missing_file", path=path) from None
    loader = _loader_class()(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", code="config.yaml_syntax",
                          path=path, line=line) from None
    finally:
        loader.dispose()


def line_of(data: Any, loc: Sequence[Any]) -> int | None:
    """The line of the deepest node along ``loc`` (a pydantic error location) that we know."""
    line = getattr(data, "line", None)
    node = data
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line = node.line_of(part)
            node = node[part]
        elif isinstance(node, LineDict):
            # An unknown or missing key: point at the mapping it should be in (or is in).
            line = node.key_lines.get(part, node.line)
            break
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


def validation_error(exc: ValidationError, data: Any, path: Path, schema: type[BaseModel]) -> ConfigError:
    """The first pydantic error as a ``path:line`` error (the line of the offending key).

    ``schema`` is the class ``data`` was validated as: it gives the valid keys for a suggestion.
    """
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = field_path(loc, data)
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        in_where = f" in {field_path(loc[:-1], data)}" if len(loc) > 1 else ""
        message = f"unknown key {key!r}{in_where}{closest(key, keys_at(schema, loc[:-1]))}"
        code = "config.unknown_key"
    elif err["type"] == "missing":
        in_where = f" in {field_path(loc[:-1], data)}" if len(loc) > 1 else ""
        message, code = f"missing key {loc[-1]!r}{in_where}", "config.missing_key"
    else:
        message = err["msg"].removeprefix("Value error, ")
        message, code = (f"{where}: {message}" if where else message), "config.invalid_value"
    return ConfigError(message, code=code, path=path, line=line_of(data, loc))


def field_path(loc: Sequence[Any], data: Any) -> str:
    """A pydantic location as a user reads it: list items by their ``name:`` where they have one,
    else by 1-based position (``models['tiny'].preprocess.crop``, ``models[2].output``)."""
    text = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            text += f"[{name!r}]" if isinstance(name, str) else f"[{part + 1}]"
            node = item
        elif isinstance(node, dict) or node is None:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
        else:
            break  # past the YAML value: pydantic names the union member it tried (`.int`)
    return text


def keys_at(schema: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the object at ``loc`` inside ``schema`` accepts (aliases as written in YAML)."""
    current: Any = schema
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    model = _model_in(current)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one location part further into ``annotation``."""
    model = _model_in(annotation)
    if isinstance(part, str) and model is not None:
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    for option in _options(annotation):
        origin = typing.get_origin(option)
        args = typing.get_args(option)
        if origin in (tuple, list) and args:
            return args[0]
        if origin is dict and len(args) == 2:
            return args[1]
    return None


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None
