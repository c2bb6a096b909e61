"""The one check that a path a project names stays inside the project folder."""

from __future__ import annotations

import os.path
from pathlib import Path

from sqlinfer.errors import ConfigError


def inside(root: Path, relative: str, *, what: str, path: Path | str, line: int | None,
           allow_outside: bool = False) -> Path:
    """``root / relative`` resolved, refused when it leaves ``root``. ``what`` names the setting for
    the message; ``path`` and ``line`` are where the setting is written. The check is on the
    resolved path, so ``..``, an absolute path and a symbolic link that points out of the project
    are all refused; ``allow_outside`` (a declaration's explicit ``allow_outside_project: true``)
    lifts it."""
    resolved = (root / relative).resolve()
    if allow_outside or resolved.is_relative_to(root.resolve()):
        return resolved
    # A path that stays inside until a link is followed: say where the link goes, or the user
    # looks at a path that seems to be in the project.
    lexical = Path(_normalized(root / relative))
    link = f" (a link to {resolved})" if lexical.is_relative_to(_normalized(root)) else ""
    raise ConfigError(f"{what} {relative!r} leaves the project folder{link}", code="config.path_outside_project",
                      path=path, line=line)


def _normalized(path: Path) -> str:
    """``path`` absolute with ``.`` and ``..`` removed, without following links."""
    return os.path.normpath(os.path.abspath(path))
