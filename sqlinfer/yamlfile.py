"""YAML files into validated, frozen objects, with every error at ``path:line``.

Loading is safe (``yaml.SafeLoader``: a tag such as ``!!python/object/apply`` is an error, nothing
is constructed from it) and bounded: aliases (``*name``) may repeat at most
:data:`MAX_ALIAS_VALUES` values, so a "billion laughs" file is refused before it is built (the
values would be shared, but everything that walks them later, validation, fingerprints, rendering,
would take exponential time and memory). It remembers lines: mappings load as :class:`LineDict` (a
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
# How many values aliases may add to a file, counting each alias as a copy of what it names. A
# project's files use a handful (a shared `preprocess:`); a "billion laughs" adds 9**9.
MAX_ALIAS_VALUES = 100_000


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
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.own_pairs: dict[int, int] = {}  # id(mapping node) -> its pairs written in it, not merged

        def flatten_mapping(self, node: yaml.MappingNode) -> None:
            # Flattening puts the pairs of `<<: *other` first; count the mapping's own pairs before
            # (PyYAML also flattens a mapping when another merges it, before it is constructed).
            merge = "tag:yaml.org,2002:merge"
            self.own_pairs.setdefault(id(node), sum(1 for key, _ in node.value if key.tag != merge))
            super().flatten_mapping(node)

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:
            self.flatten_mapping(node)
            merged = len(node.value) - self.own_pairs[id(node)]
            result = LineDict()
            result.line = node.start_mark.line + 1
            result.key_lines = {}
            own: set[Any] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                key = self.construct_object(key_node, deep=True)
                if index >= merged:
                    # Written twice in the mapping is an error; a written key overriding a merged
                    # one is what `<<:` is for.
                    if key in own:
                        raise ConfigError(f"duplicate key {key!r}", code="config.duplicate_key",
                                          path=self.name, line=key_node.start_mark.line + 1)
                    own.add(key)
                result[key] = self.construct_object(value_node, deep=True)  # a later pair wins, as in PyYAML
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
    """Parse a YAML file safely; syntax errors, refused tags and alias bombs become ``path:line``
    errors."""
    import yaml
    from yaml.reader import ReaderError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}", code="config.missing_file", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid YAML: not UTF-8 text ({exc.reason} at byte {exc.start})", code="config.yaml_syntax",
                          path=path, line=exc.object.count(b"\n", 0, exc.start) + 1) from None
    try:
        loader = _loader_class()(text)
    except ReaderError as exc:  # a control character (checked first, for the whole text)
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(f"invalid YAML: character {character}: {exc.reason}", code="config.yaml_syntax",
                          path=path, line=text.count("\n", 0, exc.position) + 1) from None
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_aliases(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {_problem(exc)}", code="config.yaml_syntax",
                          path=path, line=line) from None
    except RecursionError:
        # PyYAML composes and constructs recursively: some hundreds of levels exhaust the stack.
        raise ConfigError("invalid YAML: nested too deeply", code="config.yaml_too_large", path=path,
                          line=loader.line + 1) from None
    finally:
        loader.dispose()


def _problem(exc: Any) -> str:
    """PyYAML's complaint; for a tag the safe loader has no constructor for (``!!python/object``
    and the like: what would run code), one that says so."""
    problem = str(exc.problem or exc)
    tag = re.match(r"could not determine a constructor for the tag '(.*)'", problem)
    if tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return f"the tag {name} is not allowed (only plain YAML values are read, never Python objects)"
    return problem


def check_aliases(root: Any, path: Path) -> None:
    """Refuse a document whose aliases repeat more than :data:`MAX_ALIAS_VALUES` values. Works on
    the composed nodes, where an alias is the anchored node itself: counting is linear in the
    file's size however far aliases would expand it."""
    import yaml

    sizes: dict[int, int] = {}  # id(node) -> values it expands to, once counted
    open_nodes: set[int] = set()  # on the current path: an alias to one of them is recursive
    added = 0

    def size(node: yaml.Node, line: int) -> int:
        nonlocal added
        key = id(node)
        if key in sizes:  # seen before: this is an alias, a full copy of the anchored value
            added += sizes[key]
            if added > MAX_ALIAS_VALUES:
                raise ConfigError(f"aliases (*name) repeat more than {MAX_ALIAS_VALUES} values: refused as a "
                                  "YAML bomb", code="config.yaml_too_large", path=path, line=line)
            return sizes[key]
        if key in open_nodes:
            return 1  # a recursive alias: the constructor refuses it with its own message
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            # An alias item has the anchor's position: the sequence's own line is the nearest.
            total += sum(size(child, node.start_mark.line + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                where = key_node.start_mark.line + 1
                total += size(key_node, where) + size(value_node, where)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, root.start_mark.line + 1)


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
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        in_where = f" in {field_path(loc[:-1], data)}" if len(loc) > 1 else ""
        message = f"unknown key {key!r}{in_where}{closest(key, keys_at(schema, loc[:-1]))}"
        code = "config.unknown_key"
    elif err["type"] == "missing":
        in_where = f" in {field_path(loc[:-1], data)}" if len(loc) > 1 else ""
        message, code = f"missing key {loc[-1]!r}{in_where}", "config.missing_key"
    else:
        where = field_path(loc, data)
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
        elif node is None or (isinstance(node, dict) and part in node):
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
        else:
            # Past the YAML value, pydantic names the union member it tried (`crop.int`,
            # `output.literal['logits',...]` for a mapping): the user never wrote those.
            break
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
