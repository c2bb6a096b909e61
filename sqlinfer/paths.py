"""The one check that a path a project names stays inside the project folder."""

from __future__ import annotations

from pathlib import Path

from sqlinfer.errors import ConfigError


def inside(root: Path, relative: str, *, what: str, path: Path | str, line: int | None) -> Path:
    """``root / relative`` resolved, refused when it leaves ``root``. ``what`` names the setting for
    the message; ``path`` and ``line`` are where the setting is written."""
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ConfigError(f"{what} {relative!r} leaves the project folder", code="config.path_outside_project",
                          path=path, line=line)
    return resolved
