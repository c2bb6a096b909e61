"""Safe YAML loading that remembers the line of every mapping key, and maps validation errors
back to ``path:line``.

Mappings load as :class:`LineDict` (a plain ``dict`` plus ``key_lines``), so validation code can
say *where* a bad value is without a second parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sqlinfer.errors import SqlinferError


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


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that records line numbers (1-based)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:  # type: ignore[override]
        self.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in result:
                raise SqlinferError(f"duplicate key {key!r}", code="config.duplicate_key",
                                    path=self.name, line=key_node.start_mark.line + 1)
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:  # type: ignore[override]
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Loader.construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely; syntax errors become ``path:line`` errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SqlinferError(f"file not found: {path}", code="config.missing_file", path=path) from None
    loader = _Loader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SqlinferError(f"invalid YAML: {exc.problem or exc}", code="config.yaml_syntax",
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
