"""Rows as an aligned plain-text table for the terminal (`sqlinfer sql`, `ls`, `models`, the bench)."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if hasattr(value, "asDict"):
        return "{" + ", ".join(f"{k}: {_cell(v)}" for k, v in value.asDict().items()) + "}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        items = [_cell(v) for v in value[:8]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 8 else "") + "]"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def format_table(header: list[str], rows: list[tuple[Any, ...]] | list[list[Any]]) -> str:
    """A header line, a rule, and a line per row, columns left-aligned."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
