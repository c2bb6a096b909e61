"""The one error type users see: a code, a message, and where in their files it comes from."""

from __future__ import annotations

from pathlib import Path


class SqlinferError(Exception):
    """A user-facing error.

    ``code`` is a stable, greppable identifier (``config.unknown_key``, ``udf.bad_input`` ...);
    ``path`` and ``line`` point into the user's files when the error comes from one of them.
    ``str(err)`` is the ``path:line: message [code]`` form the CLI prints.
    """

    def __init__(self, message: str, *, code: str, path: str | Path | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.path = str(path) if path is not None else None
        self.line = line

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line else self.path

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.message} [{self.code}]"
